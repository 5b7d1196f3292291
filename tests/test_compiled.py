"""The numba backend (minima.optim.compiled): every elementwise optimizer's compiled loop against its NumPy kernel
(every option, both dtypes, parameters and state, the shared 0-d state advanced once per step), against torch,
and a compiled step that allocates nothing the size of the buffer. numba is optional: these tests skip without it."""
import functools, itertools, tracemalloc
import numpy as np
import pytest
import parity
from parity import Param, assert_close, run_parity
from minima.optim import flat
from minima.optim import SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, RAdam, Rprop, ASGD

DTYPES = [np.float64, np.float32]
ELEMENTWISE = [SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, RAdam, Rprop, ASGD]


def require_numba():
    try: import numba  # noqa: F401
    except ImportError: pytest.skip("numba is not installed; the compiled backend is optional: "
                                    "pip install 'minima-optim[fast]' (or pip install numba) to test it")


def grid(**options):
    "Every combination of `options` (each a list of values), as keyword-argument dicts."
    return [dict(zip(options, values)) for values in itertools.product(*options.values())]


OPTIONS = {  # class -> keyword arguments: every boolean option, and each numeric option at zero and nonzero
    SGD: [kw for kw in grid(lr=[0.05], momentum=[0.0, 0.9], dampening=[0.0, 0.3], weight_decay=[0.0, 0.1],
                            nesterov=[False, True], maximize=[False, True])
          if not (kw["nesterov"] and (kw["momentum"] == 0 or kw["dampening"] != 0))],   # torch rejects these
    Adagrad: grid(lr=[0.1], lr_decay=[0.0, 0.01], weight_decay=[0.0, 0.1], initial_accumulator_value=[0.0, 0.5],
                  maximize=[False, True]),
    RMSprop: grid(lr=[0.01], momentum=[0.0, 0.5], centered=[False, True], weight_decay=[0.0, 0.1],
                  maximize=[False, True]),
    Adadelta: grid(lr=[0.5], rho=[0.9, 0.5], weight_decay=[0.0, 0.1], maximize=[False, True]),
    Adam: [kw for kw in grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9)], amsgrad=[False, True],
                             weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True])
           if not (kw["decoupled_weight_decay"] and kw["weight_decay"] == 0)],
    AdamW: grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9)], amsgrad=[False, True], weight_decay=[0.0, 0.1],
                maximize=[False, True]),
    Adamax: grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9)], weight_decay=[0.0, 0.1], maximize=[False, True]),
    NAdam: [kw for kw in grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9)], momentum_decay=[4e-3, 0.1],
                              weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True])
            if not (kw["decoupled_weight_decay"] and kw["weight_decay"] == 0)],
    # betas[1] = 0.999 rectifies from step 6 on, 0.9 from step 3 on, and 0.5 never (rho_inf = 3 < 5)
    RAdam: [kw for kw in grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9), (0.8, 0.5)], weight_decay=[0.0, 0.1],
                              decoupled_weight_decay=[False, True], maximize=[False, True])
            if not (kw["decoupled_weight_decay"] and kw["weight_decay"] == 0)],
    # tight step_sizes make the clip bind at both ends within 30 steps
    Rprop: grid(lr=[0.01], etas=[(0.5, 1.2), (0.3, 1.5)], step_sizes=[(1e-6, 50), (5e-3, 0.03)],
                maximize=[False, True]),
    ASGD: grid(lr=[0.01], lambd=[1e-4, 0.05], alpha=[0.75], t0=[1e6, 10], weight_decay=[0.0, 0.1],
               maximize=[False, True]),
}
CASES = [(cls, kw) for cls in ELEMENTWISE for kw in OPTIONS[cls]]


def case_id(case):
    cls, kw = case
    return cls.__name__ + "(" + ",".join(f"{k}={v}" for k, v in kw.items()) + ")"


def used_flat(opt): return any(c.buffers for c in opt.__dict__.get("_flat_buffers", {}).values())


@pytest.fixture
def numba_backend():
    "The numba backend for the test's duration; the previous backend is restored even when the test fails."
    require_numba()
    previous = flat.set_backend("numba")
    try: yield
    finally: flat.set_backend(previous)


def test_every_elementwise_optimizer_has_a_compiled_update(numba_backend):
    "AdamW inherits Adam's `_update`, so it is looked up under Adam's; LBFGS has no flat path."
    for cls in ELEMENTWISE:
        p = Param(np.zeros(3)); p.grad = np.ones(3)
        assert flat._compiled_update(cls([p])) is not None, f"{cls.__name__} has no compiled loop"
    assert AdamW._update is Adam._update


SHAPES = [(50, 3), (7,), (33,), (2, 2, 5), (1,)]


def run_backend(cls, kw, dtype, backend, steps=30, skip=False):
    """Parameters and state_dict state after `steps` flat steps under `backend`; with `skip`, one parameter misses
    a gradient every third step (the buffers are rebuilt without it)."""
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[(rng.standard_normal(s) + 0.3 * a).astype(dtype) for s, a in zip(SHAPES, start)] for _ in range(steps)]
    params = [Param(a.copy()) for a in start]
    opt = cls(params, **kw, foreach=True)
    previous = flat.set_backend(backend)
    try:
        for k, gs in enumerate(grads):
            for i, (p, g) in enumerate(zip(params, gs)): p.grad = None if skip and i == 1 and k % 3 == 2 else g.copy()
            opt.step()
    finally: flat.set_backend(previous)
    assert used_flat(opt)
    return [p.data.copy() for p in params], opt.state_dict()["state"]


def assert_same_run(mine, ref, dtype):
    (mparams, mstate), (rparams, rstate) = mine, ref
    for i, (m, r) in enumerate(zip(mparams, rparams)): assert_close(m, r, dtype, f"param {i}")
    assert sorted(mstate) == sorted(rstate)
    for idx, state in rstate.items():
        assert set(mstate[idx]) == set(state), f"state keys of param {idx}"
        for k, v in state.items():
            mv = mstate[idx][k]
            if np.ndim(v) == 0:   # step, NAdam's mu_product, ASGD's eta and mu: the same NumPy operations, bit for bit
                assert np.asarray(mv).dtype == np.asarray(v).dtype and float(mv) == float(v), f"state[{idx}][{k!r}]"
            else: assert_close(mv, v, dtype, f"state[{idx}][{k!r}]")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_numba_agrees_with_the_numpy_kernel(case, dtype):
    require_numba()
    cls, kw = case
    assert_same_run(run_backend(cls, kw, dtype, "numba"), run_backend(cls, kw, dtype, "numpy"), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", [(cls, OPTIONS[cls][-1]) for cls in ELEMENTWISE], ids=case_id)
def test_numba_agrees_with_numpy_when_gradients_go_missing(case, dtype):
    "A parameter without a gradient leaves the buffers; the rebuilt ones carry the shared 0-d state on."
    require_numba()
    cls, kw = case
    assert_same_run(run_backend(cls, kw, dtype, "numba", skip=True), run_backend(cls, kw, dtype, "numpy", skip=True),
                    dtype)


def assert_close_with_nonfinite(mine, ref, dtype, what):
    "NaN, inf and -inf in the same places, the finite numbers to rounding."
    mine, ref = np.asarray(mine), np.asarray(ref)
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(mine), test(ref), err_msg=f"{what}: {test.__name__}")
    finite = np.isfinite(ref)
    assert_close(mine[finite], ref[finite], dtype, what)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("cls", ELEMENTWISE, ids=lambda c: c.__name__)
def test_numba_follows_numpy_through_nan_and_inf(cls, dtype):
    "A gradient with NaN, inf and signed zeros: both backends leave the same NaN and inf in parameters and state."
    require_numba()
    def run(kw, backend):
        rng = np.random.default_rng(5)
        params = [Param(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
        grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(12)]
        grads[4][0].flat[:4] = [np.nan, np.inf, -np.inf, 0.0]
        grads[5][2].flat[:2] = [0.0, -0.0]
        opt = cls(params, **kw, foreach=True)
        previous = flat.set_backend(backend)
        try:
            with np.errstate(all="ignore"):
                for gs in grads:
                    for p, g in zip(params, gs): p.grad = g
                    opt.step()
        finally: flat.set_backend(previous)
        return [p.data for p in params], opt.state_dict()["state"]
    for kw in OPTIONS[cls]:
        (mparams, mstate), (rparams, rstate) = run(kw, "numba"), run(kw, "numpy")
        for i, (m, r) in enumerate(zip(mparams, rparams)):
            assert_close_with_nonfinite(m, r, dtype, f"{kw}: param {i}")
        for idx, state in rstate.items():
            for k, v in state.items(): assert_close_with_nonfinite(mstate[idx][k], v, dtype, f"{kw}: state[{idx}][{k!r}]")


TORCH_CASES = [  # (minima class, torch class name, keyword arguments): each option on in some case
    (SGD, "SGD", dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.1)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    (Adagrad, "Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
    (Adagrad, "Adagrad", dict(lr=0.1, maximize=True)),
    (RMSprop, "RMSprop", dict(lr=0.01)),
    (RMSprop, "RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, maximize=True)),
    (Adadelta, "Adadelta", dict(lr=0.5, weight_decay=0.1)),
    (Adadelta, "Adadelta", dict(lr=0.5, rho=0.5, maximize=True)),
    (Adam, "Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    (Adam, "Adam", dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0.1, decoupled_weight_decay=True)),
    (AdamW, "AdamW", dict(lr=0.01, weight_decay=0.1)),
    (AdamW, "AdamW", dict(lr=0.01, amsgrad=True, maximize=True)),
    (Adamax, "Adamax", dict(lr=0.01, weight_decay=0.1)),
    (Adamax, "Adamax", dict(lr=0.01, betas=(0.3, 0.9), maximize=True)),
    (NAdam, "NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.1)),
    (NAdam, "NAdam", dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    (RAdam, "RAdam", dict(lr=0.01, weight_decay=0.1)),
    (RAdam, "RAdam", dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    (RAdam, "RAdam", dict(lr=0.01, betas=(0.8, 0.5))),
    (Rprop, "Rprop", dict(lr=0.01)),
    (Rprop, "Rprop", dict(lr=0.01, etas=(0.3, 1.5), step_sizes=(5e-3, 0.03), maximize=True)),
    (ASGD, "ASGD", dict(lr=0.01, t0=10, lambd=0.05)),
    (ASGD, "ASGD", dict(lr=0.01, t0=10, weight_decay=0.1, maximize=True)),
]


def torch_id(case): return case_id((case[0], case[2]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", TORCH_CASES, ids=torch_id)
def test_numba_parity_with_torch(torch, numba_backend, case, dtype):
    """parity's run (two groups, a parameter that never gets a gradient, others missing one step in five) on the flat
    path (foreach=True, minima only: torch's single-tensor kernels are the reference) under the numba backend."""
    cls, name, kw = case
    twins = run_parity(functools.partial(cls, foreach=True), getattr(torch.optim, name), kw, dtype=dtype,
                       steps=60, group_overrides=({}, {"lr": 0.02}))
    assert used_flat(twins.mopt) and flat._compiled_update(twins.mopt) is not None
    parity.check_state_dict_matches_torch(twins)


ALLOCATION_CASES = [(cls, OPTIONS[cls][-1]) for cls in ELEMENTWISE]   # the last case of each turns most options on


@pytest.mark.parametrize("case", ALLOCATION_CASES, ids=case_id)
def test_a_compiled_step_allocates_nothing_the_size_of_the_buffer(numba_backend, case):
    cls, kw = case
    rng = np.random.default_rng(0)
    n = 1 << 16   # 256 KB of float32 parameters in four arrays
    params = [Param(rng.standard_normal(n // 4).astype(np.float32)) for _ in range(4)]
    for p in params: p.grad = rng.standard_normal(p.data.shape).astype(np.float32)
    opt = cls(params, **kw, foreach=True)
    opt.step(); opt.step()   # builds the buffers, compiles (or loads) the loop, creates the state
    assert used_flat(opt)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]; opt.step()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally: tracemalloc.stop()
    assert peak < 4096, f"a compiled {cls.__name__} step allocated {peak} bytes"
