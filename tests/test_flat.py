"""The flat fast path (minima.optim.flat): both paths of every elementwise optimizer against torch, the cases that
must rebuild or leave the buffers (missing gradients, load_state_dict, add_param_group, replaced p.data, new
gradient arrays, mixed dtypes), allocation-free steps, and the optional numba backend against the NumPy kernels."""
import functools, tracemalloc
import numpy as np
import pytest
import parity
from parity import Param, assert_close, run_parity, run_state_dict_roundtrip
from minima.optim import flat
from minima.optim import SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, RAdam, Rprop, ASGD

DTYPES = [np.float64, np.float32]
CASES = [  # (minima class, torch class name, keyword arguments)
    (SGD, "SGD", dict(lr=0.05)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.1)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    (Adagrad, "Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
    (Adagrad, "Adagrad", dict(lr=0.1, maximize=True)),
    (RMSprop, "RMSprop", dict(lr=0.01)),
    (RMSprop, "RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, maximize=True)),
    (Adadelta, "Adadelta", dict(lr=0.5, weight_decay=0.1)),
    (Adadelta, "Adadelta", dict(lr=0.5, maximize=True)),
    (Adam, "Adam", dict(lr=0.01)),
    (Adam, "Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    (Adam, "Adam", dict(lr=0.01, betas=(0.3, 0.9))),   # the other branch of lerp
    (AdamW, "AdamW", dict(lr=0.01, weight_decay=0.1)),
    (AdamW, "AdamW", dict(lr=0.01, amsgrad=True, maximize=True)),
    (Adamax, "Adamax", dict(lr=0.01, weight_decay=0.1)),
    (Adamax, "Adamax", dict(lr=0.01, maximize=True)),
    (NAdam, "NAdam", dict(lr=0.01, weight_decay=0.1)),
    (NAdam, "NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    (RAdam, "RAdam", dict(lr=0.01, weight_decay=0.1)),
    (RAdam, "RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    (Rprop, "Rprop", dict(lr=0.01)),
    (Rprop, "Rprop", dict(lr=0.01, maximize=True)),
    (ASGD, "ASGD", dict(lr=0.01, t0=10)),
    (ASGD, "ASGD", dict(lr=0.01, t0=10, weight_decay=0.1, maximize=True)),
]
SECOND_GROUP = {"lr": 0.02}


def ids(case):
    cls, _, kw = case
    return cls.__name__ + "(" + ",".join(f"{k}={v}" for k, v in kw.items()) + ")"


def dense_grads(arrays, step, rng, dtype):
    "parity.make_grads, except that only the never-updated parameter misses gradients: the flat path stays on."
    grads = []
    for i, (p, scale) in enumerate(zip(arrays, parity.GRAD_SCALES)):
        if i == parity.NEVER_GRAD: grads.append(None); continue
        grads.append((scale * ((0.5 + 0.1 * i) * p + rng.standard_normal(p.shape))).astype(dtype))
    return grads


def with_foreach(cls, foreach):
    "`cls` with `foreach` set; torch gets no `foreach`, so its single-tensor kernels (minima's reference) run on CPU."
    return functools.partial(cls, foreach=foreach)


def used_flat(opt): return any(c.buffers for c in opt.__dict__.get("_flat_buffers", {}).values())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_parity_with_missing_gradients(torch, case, foreach, dtype):
    "parity's gradients (a parameter misses one step in five): the flat path must leave and rebuild its buffers."
    cls, name, kw = case
    run_parity(with_foreach(cls, foreach), getattr(torch.optim, name), kw, dtype=dtype, steps=40,
               group_overrides=({}, SECOND_GROUP))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_flat_parity_in_small_chunks(torch, monkeypatch, case, dtype):
    "Every step on the flat path, in chunks of 7 elements (a chunk straddles parameters; 0-d state advances once)."
    monkeypatch.setattr(parity, "make_grads", dense_grads)
    monkeypatch.setattr(flat, "CHUNK", 7)
    cls, name, kw = case
    twins = run_parity(with_foreach(cls, True), getattr(torch.optim, name), kw, dtype=dtype, steps=40,
                       group_overrides=({}, SECOND_GROUP))
    assert used_flat(twins.mopt)
    parity.check_state_dict_matches_torch(twins)


@pytest.mark.parametrize("case", CASES[1::2], ids=ids)
def test_state_dict_roundtrip_on_the_flat_path(torch, monkeypatch, case):
    monkeypatch.setattr(parity, "make_grads", dense_grads)
    cls, name, kw = case
    run_state_dict_roundtrip(with_foreach(cls, True), getattr(torch.optim, name), kw, dtype=np.float64,
                             steps=30, split=15, group_overrides=({}, SECOND_GROUP) * 3)


def twins_dense(torch, monkeypatch, cls=Adam, name="Adam", kw=None, dtype=np.float64):
    monkeypatch.setattr(parity, "make_grads", dense_grads)
    twins = parity.Twins(with_foreach(cls, True), getattr(torch.optim, name), kw or dict(lr=0.01, amsgrad=True),
                         dtype, ({}, SECOND_GROUP))
    twins.run(5)
    assert used_flat(twins.mopt)
    return twins


def test_load_state_dict_into_the_same_optimizer_rebuilds(torch, monkeypatch):
    twins = twins_dense(torch, monkeypatch)
    old = twins.mparams[0].data
    twins.mopt.load_state_dict(twins.mopt.state_dict())   # new state arrays: the old buffers no longer hold them
    twins.run(5)
    assert twins.mparams[0].data.base is not old.base and used_flat(twins.mopt)


def test_replaced_data_is_taken_into_a_new_buffer(torch, monkeypatch):
    twins = twins_dense(torch, monkeypatch)
    p, t = twins.mparams[0], twins.tparams[0]
    p.data = p.data * 0.5
    with torch.no_grad(): t.mul_(0.5)
    twins.run(5)


def test_add_param_group_mid_run(torch, monkeypatch):
    twins = twins_dense(torch, monkeypatch, SGD, "SGD", dict(lr=0.05, momentum=0.9))
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 2))
    extra_m, extra_t = Param(a.copy()), torch.tensor(a.copy(), requires_grad=True)
    twins.mopt.add_param_group({"params": [extra_m], "lr": 0.1})
    twins.topt.add_param_group({"params": [extra_t], "lr": 0.1})
    for _ in range(6):
        g = rng.standard_normal((3, 2))
        extra_m.grad, extra_t.grad = g.copy(), torch.from_numpy(g.copy())
        twins.step(); twins.check()
        assert_close(extra_m.data, extra_t.detach().numpy(), np.float64, "added parameter")


def test_gradients_accumulated_into_the_flat_views(torch, monkeypatch):
    "After a flat step p.grad is a view of the flat gradient, with the same values; in-place accumulation works."
    twins = twins_dense(torch, monkeypatch, SGD, "SGD", dict(lr=0.05, momentum=0.9))
    rng = np.random.default_rng(7)
    for _ in range(5):
        twins.mopt.zero_grad(set_to_none=False); twins.topt.zero_grad(set_to_none=False)
        for m, t in zip(twins.mparams, twins.tparams):
            if m.grad is None: continue
            for _ in range(2):   # two backward passes
                g = rng.standard_normal(m.data.shape)
                m.grad += g
                t.grad += torch.from_numpy(g)
        views = [m.grad for m in twins.mparams]
        twins.mopt.step(); twins.topt.step(); twins.check()
        assert all(m.grad is v for m, v in zip(twins.mparams, views)), "in-place gradients were not used as they are"


def mixed(seed=0):
    rng = np.random.default_rng(seed)
    params = [Param(rng.standard_normal(s).astype(d)) for s, d in
              [((4, 3), np.float32), ((5,), np.float64), ((2, 2), np.float32), ((7,), np.float64), ((1,), np.float32)]]
    grads = [[rng.standard_normal(p.data.shape).astype(p.data.dtype) for p in params] for _ in range(6)]
    return params, grads


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_flat_path_equals_per_tensor_path_with_mixed_dtypes(case):
    "One buffer per dtype; the flat path runs the same kernel, so its results are identical to the per-tensor path's."
    cls, _, kw = case
    results = []
    for foreach in (False, True):
        params, grads = mixed()
        opt = cls(params, **kw, foreach=foreach)
        for gs in grads:
            for p, g in zip(params, gs): p.grad = g.copy()
            opt.step()
        assert used_flat(opt) == foreach
        results.append([p.data.copy() for p in params])
    for per_tensor, flat_path in zip(*results):
        assert per_tensor.dtype == flat_path.dtype
        np.testing.assert_array_equal(per_tensor, flat_path)
    if foreach:
        assert len(next(iter(opt._flat_buffers.values())).buffers) == 2   # float32 and float64


def test_gradients_are_not_modified_and_old_data_goes_stale():
    params, grads = mixed()
    old = [p.data for p in params]
    for p, g in zip(params, grads[0]): p.grad = g.copy()
    opt = Adam(params, lr=0.1, weight_decay=0.1, maximize=True, foreach=True)
    assert opt.step(lambda: 2.5) == 2.5
    for p, g in zip(params, grads[0]): np.testing.assert_array_equal(p.grad, g)
    buffer = opt._flat_buffers[id(opt.param_groups[0])].buffers[0]
    assert np.shares_memory(params[0].data, buffer.data)
    assert params[0].data is not old[0]   # documented: an array taken from p.data before the first flat step is stale
    np.testing.assert_array_equal(old[0], mixed()[0][0].data)


def test_foreach_none_takes_the_flat_path_for_large_groups_only():
    small = [Param(np.ones(3)) for _ in range(flat.FLAT_MIN_PARAMS - 1)]
    many = [Param(np.ones(3)) for _ in range(flat.FLAT_MIN_PARAMS)]
    big = [Param(np.ones(flat.FLAT_MIN_ELEMENTS))]
    for params, expected in [(small, False), (many, True), (big, True)]:
        for p in params: p.grad = np.ones_like(p.data)
        opt = Adam(params)
        opt.step()
        assert used_flat(opt) == expected


def test_hooks_run_around_a_flat_step():
    params, grads = mixed()
    for p, g in zip(params, grads[0]): p.grad = g
    opt = SGD(params, lr=0.1, foreach=True)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    opt.step()
    assert calls == ["pre", "post"] and used_flat(opt)


ALLOCATION_CASES = [(cls, kw) for cls, _, kw in CASES] + [
    (Adam, dict(weight_decay=0.1, decoupled_weight_decay=True)), (Adadelta, dict(weight_decay=0.1, maximize=True))]


@pytest.mark.parametrize("cls,kw", ALLOCATION_CASES, ids=lambda x: x.__name__ if isinstance(x, type) else str(x))
def test_a_flat_step_allocates_no_array(monkeypatch, cls, kw):
    """After the buffers exist a step allocates nothing the size of a piece, and the scratch is at most one chunk:
    this checks each optimizer's `_temporaries` (the per-tensor path allocates its temporaries)."""
    monkeypatch.setattr(flat, "CHUNK", 1 << 15)   # pieces of 10,922 float32 elements or more: 43 KB
    rng = np.random.default_rng(0)
    n, peaks = 1 << 17, {}
    for foreach in (False, True):
        params = [Param(rng.standard_normal(n // 4).astype(np.float32)) for _ in range(4)]
        opt = cls(params, **kw, foreach=foreach)
        for _ in range(2):
            for p in params: p.grad = rng.standard_normal(p.data.shape).astype(np.float32)
            opt.step()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]; opt.step()
            peaks[foreach] = tracemalloc.get_traced_memory()[1] - base
        finally: tracemalloc.stop()
        if foreach:
            (buffer,) = opt._flat_buffers[id(opt.param_groups[0])].buffers
            assert buffer.scratch.size <= flat.CHUNK, f"scratch of {buffer.scratch.size} elements"
    assert peaks[True] < (1 << 13), f"a flat step allocated {peaks[True]} bytes"   # Python objects, no array
    assert peaks[False] >= n, "the per-tensor path was expected to allocate its temporaries"


def test_step_bytes_counts_reads_and_writes():
    p = Param(np.zeros(10, np.float32)); p.grad = np.zeros(10, np.float32)
    assert flat.step_bytes(Adam([p])) == 10 * 4 * 7                 # read p, g, m, v; write p, m, v
    assert flat.step_bytes(Adam([p], amsgrad=True)) == 10 * 4 * 9
    assert flat.step_bytes(SGD([p], lr=0.1)) == 10 * 4 * 3
    assert flat.step_bytes(SGD([p], lr=0.1, momentum=0.9)) == 10 * 4 * 5


def test_temporaries_are_pieces_of_the_scratch_when_they_fit():
    scratch = np.empty(13, np.float32)
    like = np.zeros((2, 3), np.float32)
    pieces = flat.temporaries(scratch, like, 2)
    assert all(r.shape == (2, 3) and np.shares_memory(r, scratch) for r in pieces)
    assert not np.shares_memory(pieces[0], pieces[1])
    for bad, count in [(None, 2), (np.empty(11, np.float32), 2), (np.empty(13, np.float64), 2), (scratch, 3)]:
        fresh = flat.temporaries(bad, like, count)
        assert len(fresh) == count and all(f.shape == like.shape and f.dtype == like.dtype for f in fresh)
        assert bad is None or not any(np.shares_memory(f, bad) for f in fresh)


def test_pieces_fit_the_temporaries_in_one_chunk_of_scratch():
    params = [Param(np.arange(n, dtype=np.float64)) for n in (10, 7, 3)]
    states = [{"step": np.zeros(()), "m": np.zeros(p.data.shape)} for p in params]
    for p in params: p.grad = np.ones_like(p.data)
    buffer = flat.FlatBuffer(params, states, ("m",), chunk=8)
    for temporaries, length in [(1, 8), (2, 4), (3, 2)]:
        datas, grads, piece_states = buffer.pieces(temporaries)
        assert [d.size for d in datas] == [length] * (20 // length) + ([20 % length] if 20 % length else [])
        assert np.array_equal(np.concatenate(datas), buffer.data) and all(np.shares_memory(d, buffer.data) for d in datas)
        assert all(s["m"].base is buffer.state["m"] for s in piece_states)
        assert buffer.scratch.size <= 8
        assert buffer.pieces(temporaries) is buffer.pieces(temporaries)   # cut once, reused every step
    assert buffer.pieces(0) is buffer.pieces(1)   # no temporaries: pieces as long as the chunk, cut once
    # the 0-d state: each piece advances its own copy, and the shared counter advances once per step
    def update(group, datas, grads, states, scratch):
        for s in states: s["step"] += 1
    buffer.run(update, {}, 3); buffer.run(update, {}, 3)
    assert float(buffer.scalars["step"]) == 2 and all(s["step"] is buffer.scalars["step"] for s in states)


def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="Invalid backend: 'cuda'"): flat.set_backend("cuda")
    assert flat.get_backend() == "numpy"


# The compiled backend is an optional extra: these tests skip (also under CI) when numba is missing.
def require_numba():
    try: import numba  # noqa: F401
    except ImportError: pytest.skip("numba is not installed; the compiled backend is optional: "
                                    "pip install 'minima-optim[fast]' (or pip install numba) to test it")


COMPILED_CASES = [
    (Adam, dict(lr=0.01)), (Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    (Adam, dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0.1, decoupled_weight_decay=True)),
    (AdamW, dict(lr=0.01)), (AdamW, dict(lr=0.01, amsgrad=True, maximize=True)),
    (SGD, dict(lr=0.05)), (SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.1)),
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("cls,kw", COMPILED_CASES, ids=lambda x: x.__name__ if isinstance(x, type) else str(x))
def test_numba_backend_agrees_with_numpy_kernels(cls, kw, dtype):
    require_numba()
    rng = np.random.default_rng(3)
    shapes = [(50, 3), (7,), (33,), (2, 2, 5)]
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(30)]
    finals = {}
    for backend in ("numpy", "numba"):
        params = [Param(a.copy()) for a in start]
        opt = cls(params, **kw, foreach=True)
        previous = flat.set_backend(backend)
        try:
            for gs in grads:
                for p, g in zip(params, gs): p.grad = g.copy()
                opt.step()
        finally: flat.set_backend(previous)
        assert used_flat(opt)
        finals[backend] = ([p.data.copy() for p in params], opt.state_dict()["state"])
    for mine, ref in zip(finals["numba"][0], finals["numpy"][0]):
        assert_close(mine, ref, dtype, "compiled parameters")
    for idx, state in finals["numpy"][1].items():
        for k, v in state.items():
            if k == "step": assert float(finals["numba"][1][idx][k]) == float(v)
            else: assert_close(finals["numba"][1][idx][k], v, dtype, f"compiled state {k}")
