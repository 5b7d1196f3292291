"""The flat fast path (minima.fast.flat): both paths of every elementwise optimizer against torch, the cases that
must rebuild or leave the buffers (missing gradients, load_state_dict, add_param_group, replaced p.data, new
gradient arrays, mixed dtypes), the pieces of a buffer, and when `foreach=None` goes flat. The fused paths, the
bitwise comparisons over every option and the memory a step allocates are in test_fast.py."""
import functools
import numpy as np
import pytest
import parity
from parity import Param, assert_close, run_parity, run_state_dict_roundtrip
from minima.fast import flat
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


def used_flat(opt):
    "True when minima.fast holds flat buffers for `opt` (instances of minima.fast.flat.FlatBuffer)."
    caches = opt.__dict__.get("_flat_buffers", {}).values()
    return any(isinstance(b, flat.FlatBuffer) for c in caches for b in c.buffers)


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
def test_flat_parity_in_small_pieces(torch, monkeypatch, case, dtype):
    "Every step on the flat path, in pieces of 7 elements (a piece straddles parameters; 0-d state advances once)."
    monkeypatch.setattr(parity, "make_grads", dense_grads)
    monkeypatch.setattr(flat, "PIECE", 7)
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


SAMPLES = [(Adam, "Adam", dict(lr=0.01, amsgrad=True)), (SGD, "SGD", dict(lr=0.05, momentum=0.9))]


@pytest.mark.parametrize("case", SAMPLES, ids=ids)
def test_add_param_group_mid_run(torch, monkeypatch, case):
    twins = twins_dense(torch, monkeypatch, *case)
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


@pytest.mark.parametrize("case", SAMPLES, ids=ids)
def test_gradients_accumulated_into_the_flat_views(torch, monkeypatch, case):
    "After a flat step p.grad is a view of the flat gradient, with the same values; in-place accumulation works."
    twins = twins_dense(torch, monkeypatch, *case)
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
        assert used_flat(twins.mopt)


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


def test_foreach_none_takes_the_flat_path_for_large_groups_of_small_tensors_only(monkeypatch):
    "Few small tensors: the reference; many small ones (or many elements): one buffer; large tensors: their own arrays."
    small = [Param(np.ones(3)) for _ in range(flat.FLAT_MIN_PARAMS - 1)]
    many = [Param(np.ones(3)) for _ in range(flat.FLAT_MIN_PARAMS)]
    elements = [Param(np.ones(flat.FLAT_MIN_ELEMENTS // 2)) for _ in range(2)]
    large = [Param(np.ones(flat.SMALL_TENSOR))]
    runs = []
    original = flat.step_tensor_pieces
    monkeypatch.setattr(flat, "step_tensor_pieces", lambda o, g: runs.append(original(o, g)) or runs[-1])
    for params, expected, pieces in [(small, False, []), (many, True, []), (elements, True, []), (large, False, [True])]:
        runs.clear()
        for p in params: p.grad = np.ones_like(p.data)
        data = [p.data for p in params]
        opt = Adam(params)
        opt.step()
        assert used_flat(opt) == expected and runs == pieces
        if not expected: assert all(p.data is d for p, d in zip(params, data)), "p.data was rebound"


def test_large_tensors_run_in_pieces_of_their_own_arrays(monkeypatch):
    "The kernel sees pieces of at most PIECE elements that are views of each tensor's arrays; numbers as the reference."
    monkeypatch.setattr(flat, "PIECE", 1000)
    monkeypatch.setattr(flat, "SMALL_TENSOR", 1000)   # these tensors count as large
    starts = [np.random.default_rng(0).standard_normal(s) for s in [(70, 100), (2500,), (3, 0)]]
    seen = []
    class Spy(Adam):
        def _update(self, group, params, grads, states, apply=None):
            seen.append([p.size for p in params])
            super()._update(group, params, grads, states, apply)
    params, ref_params = [Param(a.copy()) for a in starts], [Param(a.copy()) for a in starts]
    kw = dict(lr=0.1, weight_decay=0.1, amsgrad=True)
    opt, ref_opt = Spy(params, foreach=True, **kw), Adam(ref_params, foreach=False, **kw)
    data, rng = [p.data for p in params], np.random.default_rng(1)
    for k in range(5):
        for p, q in zip(params, ref_params):
            g = rng.standard_normal(p.data.shape); p.grad, q.grad = g, g.copy()
        opt.step(); ref_opt.step()
    assert len(seen) == 5 and all(max(sizes) <= 1000 and len(sizes) == 7 + 3 + 1 for sizes in seen)
    assert all(p.data is d for p, d in zip(params, data)), "p.data was rebound"
    for p, q in zip(params, ref_params):
        np.testing.assert_array_equal(p.data, q.data)
        assert set(opt.state[p]) == set(ref_opt.state[q])
        for key in opt.state[p]: np.testing.assert_array_equal(opt.state[p][key], ref_opt.state[q][key])


@pytest.mark.parametrize("cls", [Adam, SGD], ids=lambda c: c.__name__)
def test_hooks_run_around_a_flat_step(cls):
    params, grads = mixed()
    for p, g in zip(params, grads[0]): p.grad = g
    opt = cls(params, lr=0.1, foreach=True)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    opt.step()
    assert calls == ["pre", "post"] and used_flat(opt)


def test_step_bytes_counts_reads_and_writes():
    p = Param(np.zeros(10, np.float32)); p.grad = np.zeros(10, np.float32)
    assert flat.step_bytes(Adam([p])) == 10 * 4 * 7                 # read p, g, m, v; write p, m, v
    assert flat.step_bytes(Adam([p], amsgrad=True)) == 10 * 4 * 9
    assert flat.step_bytes(SGD([p], lr=0.1)) == 10 * 4 * 3
    assert flat.step_bytes(SGD([p], lr=0.1, momentum=0.9)) == 10 * 4 * 5


def test_pieces_are_views_of_the_buffer_cut_once():
    "Pieces of `piece` elements over the whole buffer (the last one shorter), views of its arrays, cut once."
    params = [Param(np.arange(n, dtype=np.float64)) for n in (10, 7, 3)]
    states = [{"step": np.zeros(()), "m": np.zeros(p.data.shape)} for p in params]
    for p in params: p.grad = np.ones_like(p.data)
    buffer = flat.FlatBuffer(params, states, ("m",), piece=8)
    datas, grads, piece_states = buffer.pieces()
    assert [d.size for d in datas] == [8, 8, 4] and [g.size for g in grads] == [8, 8, 4]
    assert np.array_equal(np.concatenate(datas), buffer.data) and all(np.shares_memory(d, buffer.data) for d in datas)
    assert all(np.shares_memory(g, buffer.grad) for g in grads)
    assert all(s["m"].base is buffer.state["m"] for s in piece_states)
    assert buffer.pieces() is buffer.pieces()   # cut once, reused every step
    for p, view in zip(params, buffer.data_views): assert p.data is view and np.shares_memory(p.data, buffer.data)
    # the 0-d state: each piece advances its own copy, and the shared counter advances once per step
    def update(group, datas, grads, states, apply):
        assert apply is flat.elementwise
        for s in states: s["step"] += 1
    buffer.run(update, {}); buffer.run(update, {})
    assert float(buffer.scalars["step"]) == 2 and all(s["step"] is buffer.scalars["step"] for s in states)
    assert all(float(s["step"]) == 2 for s in buffer.pieces()[2])
    assert flat.FlatBuffer(params[:1], states[:1], ("m",)).piece == flat.PIECE   # the default

