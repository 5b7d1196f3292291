"""Rprop and ASGD against torch.optim.Rprop / torch.optim.ASGD: every option, both dtypes, groups, state_dict
round trips, NaN and zero gradients; and the fast paths (foreach=True, fused=True) bitwise against the reference."""
import inspect, itertools
import numpy as np
import pytest
from parity import (run_parity, run_state_dict_roundtrip, check_state_dict_matches_torch, Param,
                    expected_group_keys)
from minima.optim.rprop import Rprop, rprop
from minima.optim.asgd import ASGD, asgd

DTYPES = (np.float32, np.float64)
dtype_ids = lambda d: np.dtype(d).name

RPROP_OPTIONS = {
    "defaults": {},
    "lr": dict(lr=0.05),
    "etas": dict(etas=(0.3, 1.5)),
    "step_sizes": dict(lr=0.1, step_sizes=(1e-3, 0.2)),   # both bounds are hit within 100 steps
    "maximize": dict(maximize=True),
    "all": dict(lr=0.02, etas=(0.6, 1.1), step_sizes=(1e-4, 1.0), maximize=True, foreach=False),
}
RPROP_GROUPS = ({}, {"lr": 0.05, "etas": (0.4, 1.3), "step_sizes": (1e-5, 0.5)})

ASGD_OPTIONS = {
    "defaults": {},                                     # t0=1e6: no averaging, ax is the last iterate
    "t0": dict(lr=0.05, t0=10),                         # averaging starts within the run
    "lambd_alpha": dict(lr=0.05, lambd=0.05, alpha=0.5, t0=5),
    "weight_decay": dict(lr=0.05, weight_decay=0.1, t0=20),
    "maximize": dict(lr=0.01, maximize=True, t0=10),
    "all": dict(lr=0.03, lambd=1e-2, alpha=1.0, t0=3, weight_decay=0.05, maximize=True, foreach=False),
}
ASGD_GROUPS = ({}, {"lr": 0.02, "lambd": 1e-3, "t0": 7, "weight_decay": 0.01})
# check_state_dict_matches_torch expects the never-updated parameter at state index 1: one parameter per group.
ROUNDTRIP = 3


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("name", RPROP_OPTIONS)
def test_rprop_parity(torch, name, dtype):
    kwargs = RPROP_OPTIONS[name]
    run_parity(Rprop, torch.optim.Rprop, kwargs, dtype=dtype, steps=100)
    run_parity(Rprop, torch.optim.Rprop, kwargs, dtype=dtype, steps=100, group_overrides=RPROP_GROUPS)
    run_state_dict_roundtrip(Rprop, torch.optim.Rprop, kwargs, dtype=dtype, group_overrides=RPROP_GROUPS * ROUNDTRIP)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("name", ASGD_OPTIONS)
def test_asgd_parity(torch, name, dtype):
    kwargs = ASGD_OPTIONS[name]
    twins = run_parity(ASGD, torch.optim.ASGD, kwargs, dtype=dtype, steps=100)
    check_state_dict_matches_torch(twins)                # ax, eta, mu (float32, as torch's) and step
    run_parity(ASGD, torch.optim.ASGD, kwargs, dtype=dtype, steps=100, group_overrides=ASGD_GROUPS)
    run_state_dict_roundtrip(ASGD, torch.optim.ASGD, kwargs, dtype=dtype, group_overrides=ASGD_GROUPS * ROUNDTRIP)


def test_asgd_state_dtypes_survive_a_reload():
    "eta and mu stay float32 scalars after load_state_dict into float64 parameters (torch would cast them)."
    p = Param(np.zeros(3)); p.grad = np.ones(3)
    opt = ASGD([p], t0=1)
    for _ in range(4): opt.step()
    fresh = ASGD([Param(p.data.copy())], t0=1)
    fresh.load_state_dict(opt.state_dict())
    state = next(iter(fresh.state.values()))
    assert state["eta"].dtype == state["mu"].dtype == np.float32
    assert state["step"].dtype == np.float64 and state["ax"].dtype == np.float64
    assert state["mu"] == opt.state[p]["mu"] and state["eta"] == opt.state[p]["eta"]


def test_asgd_average_is_the_mean_of_the_iterates_after_t0():
    "From step t0 + 2 on, ax is the plain mean of the iterates (to float32 rounding of the weights mu)."
    rng = np.random.default_rng(0)
    p = Param(rng.standard_normal(4))
    opt, t0, iterates = ASGD([p], lr=0.05, t0=10), 10, []
    for _ in range(60):
        p.grad = p.data + rng.standard_normal(4)
        opt.step()
        iterates.append(p.data.copy())
    np.testing.assert_allclose(opt.state[p]["ax"], np.mean(iterates[t0 + 1:], axis=0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(opt.state[p]["ax"], iterates[-1])


def test_rprop_ignores_gradient_scale():
    "Only signs matter: scaling every gradient by 1000 gives bit-identical parameters."
    rng = np.random.default_rng(1)
    runs = []
    for scale in (1.0, 1000.0):
        p = Param(np.array([3.0, -2.0, 0.5]))
        opt = Rprop([p], lr=0.1)
        for k in range(50):
            p.grad = scale * (np.array([0.1, 2.0, 30.0]) * p.data)
            opt.step()
        runs.append(p.data.copy())
    assert np.array_equal(*runs)


def test_kernels_do_not_modify_grads():
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(5), rng.standard_normal((2, 3))]
    grads = [rng.standard_normal(5), rng.standard_normal((2, 3))]
    saved = [g.copy() for g in grads]
    prevs = [g.copy() for g in grads]   # maximize negates g: every sign flips, and the kernel zeroes its own copy
    sizes = [np.full_like(p, 0.1) for p in params]
    steps = [np.zeros((), np.float64) for _ in params]
    rprop(params, grads, prevs, sizes, steps, step_size_min=1e-6, step_size_max=50, etaminus=0.5, etaplus=1.2,
          maximize=True)
    assert all(np.array_equal(g, s) for g, s in zip(grads, saved))
    assert all(np.all(prev == 0) for prev in prevs) and all(float(s) == 1 for s in steps)
    axs, mus = [np.zeros_like(p) for p in params], [np.ones((), np.float32) for _ in params]
    etas = [np.array(0.01, np.float32) for _ in params]
    asgd(params, grads, axs, mus, etas, steps, lambd=1e-4, lr=0.01, t0=0, alpha=0.75, weight_decay=0.1, maximize=True)
    assert all(np.array_equal(g, s) for g, s in zip(grads, saved))
    assert all(float(s) == 2 for s in steps) and all(float(m) == 1 / (2 - 0) for m in mus)   # mu = 1/max(1, step - t0)


@pytest.mark.parametrize("make, message", [
    (lambda cls, p: cls[0]([p], lr=-1.0), "Invalid learning rate: -1.0"),
    (lambda cls, p: cls[0]([p], etas=(1.0, 1.2)), "Invalid eta values: 1.0, 1.2"),
    (lambda cls, p: cls[0]([p], etas=(0.5, 1.0)), "Invalid eta values: 0.5, 1.0"),
    (lambda cls, p: cls[0]([p], etas=(0.0, 1.2)), "Invalid eta values: 0.0, 1.2"),
    (lambda cls, p: cls[1]([p], lr=-0.5), "Invalid learning rate: -0.5"),
    (lambda cls, p: cls[1]([p], weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
])
def test_errors_match_torch(torch, make, message):
    for classes, param in (((Rprop, ASGD), Param(np.zeros(2))),
                           ((torch.optim.Rprop, torch.optim.ASGD), torch.zeros(2, requires_grad=True))):
        with pytest.raises(ValueError) as err: make(classes, param)
        assert str(err.value) == message


def test_group_keys_are_torchs(torch):
    for mine, theirs in ((Rprop, torch.optim.Rprop), (ASGD, torch.optim.ASGD)):
        m = mine([Param(np.zeros(2))]).state_dict()["param_groups"][0]
        t = theirs([torch.zeros(2, requires_grad=True)]).state_dict()["param_groups"][0]
        assert set(m) == expected_group_keys(m, t)
        assert all(m[k] == t[k] for k in m if k != "fused")


@pytest.mark.parametrize("mine_name", ["Rprop", "ASGD"])
def test_signature_matches_torch(torch, mine_name):
    "torch's arguments, names, kinds and defaults, without its own; `fused` keyword-only as minima's addition."
    mine, ref = {"Rprop": Rprop, "ASGD": ASGD}[mine_name], getattr(torch.optim, mine_name)
    expected = [(p.name, p.kind, p.default) for p in inspect.signature(ref).parameters.values()
                if p.name not in ("capturable", "differentiable")]
    params = inspect.signature(mine).parameters.values()
    assert [(p.name, p.kind, p.default) for p in params if p.name != "fused"] == expected
    fused = inspect.signature(mine).parameters["fused"]
    assert fused.kind == inspect.Parameter.KEYWORD_ONLY and fused.default is None


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_rprop_nan_zero_and_underflow_as_torch(torch, dtype):
    "Torch's sign is 0 for NaN: a NaN gradient or `prev` keeps the step size and leaves the parameter where it is."
    x = np.array([1.0, -2.0, 3.0, 0.5, -1.0, 2.0, 4.0], dtype)
    grads = [[1.0, -1.0, 0.0, np.nan, 1.0, 1.0, 1e-30],     # 1e-30 * 1e-30 underflows in float32
             [-1.0, -1.0, 1.0, 1.0, np.nan, 0.0, 1e-30],
             [1.0, 2.0, -3.0, 1.0, 1.0, 1.0, -1.0],
             [-1.0, 2.0, -3.0, -1.0, 1.0, -1.0, -1.0]]
    for maximize in (False, True):
        p, tp = Param(x.copy()), torch.tensor(x.copy(), requires_grad=True)
        opt = Rprop([p], lr=0.1, maximize=maximize, foreach=False)
        topt = torch.optim.Rprop([tp], lr=0.1, maximize=maximize, foreach=False)
        for g in grads:
            g = np.array(g, dtype)
            p.grad, tp.grad = g.copy(), torch.from_numpy(g.copy())
            opt.step(); topt.step()
            for mine, ref in ((p.data, tp.detach()), (opt.state[p]["prev"], topt.state[tp]["prev"]),
                              (opt.state[p]["step_size"], topt.state[tp]["step_size"])):
                assert np.array_equal(mine, ref.numpy(), equal_nan=True), (mine, ref)


# The fast paths run the same rule: flat buffers in pieces (foreach=True) and compiled loops (fused=True) must
# give the reference's numbers bit for bit, parameters and state, on every option.
def grid(**options):
    return [dict(zip(options, values)) for values in itertools.product(*options.values())]

FAST_OPTIONS = {
    Rprop: grid(lr=[0.01], etas=[(0.5, 1.2), (0.3, 1.5)], step_sizes=[(1e-6, 50), (5e-3, 0.03)],
                maximize=[False, True]),
    ASGD: grid(lr=[0.01], lambd=[1e-4, 0.05], t0=[1e6, 10], weight_decay=[0.0, 0.1], maximize=[False, True]),
}
FAST_CASES = [(cls, kw) for cls, options in FAST_OPTIONS.items() for kw in options]
MANY_SMALL = [(3, 4), (5,), (2, 3, 2), (1,), (4,), (6,), (7,), (2, 2), (9,)]   # fused: one flat buffer
FEW_LARGE = [(300,), (20, 30)]                                                    # fused: in place, per tensor


def run_fast(cls, kwargs, dtype, shapes, steps=25, **fast):
    rng = np.random.default_rng(0)
    params = [Param(rng.standard_normal(s).astype(dtype)) for s in shapes]
    opt = cls(params, **kwargs, **fast)
    for k in range(steps):
        for i, p in enumerate(params):
            g = (0.5 * p.data + rng.standard_normal(p.data.shape)).astype(dtype)
            g.reshape(-1)[(k + i) % g.size] = 0   # exact zeros: Rprop's "otherwise" case
            p.grad = g
        opt.step()
    return params, opt


@pytest.mark.parametrize("shapes", [MANY_SMALL, FEW_LARGE], ids=["many-small", "few-large"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("cls, kwargs", FAST_CASES,
                         ids=[f"{c.__name__}-" + ",".join(f"{k}={v}" for k, v in kw.items()) for c, kw in FAST_CASES])
def test_fast_paths_are_bitwise_the_reference(cls, kwargs, dtype, shapes):
    pytest.importorskip("numba")
    ref_params, ref = run_fast(cls, kwargs, dtype, shapes, foreach=False)
    for fast in (dict(foreach=True), dict(fused=True)):
        params, opt = run_fast(cls, kwargs, dtype, shapes, **fast)
        for i, (p, q) in enumerate(zip(params, ref_params)):
            assert np.array_equal(p.data, q.data), (fast, i)
            mine, theirs = opt.state[p], ref.state[q]
            assert set(mine) == set(theirs)
            for key in theirs:
                assert mine[key].dtype == theirs[key].dtype and np.array_equal(mine[key], theirs[key]), (fast, i, key)
