"""Adamax, NAdam and RAdam against torch.optim: every option, both dtypes, two groups, save/load, validation,
and the signatures; and `fused=True` and `foreach=True` bit for bit against the reference `foreach=False`."""
import inspect, itertools
import numpy as np
import pytest
from parity import Param, run_parity, run_state_dict_roundtrip, assert_same_error
import minima.fast   # registers the fast paths (as `import minima.optim` does)
from minima.fast import flat as fast_flat
from minima.optim.adamax import Adamax, adamax
from minima.optim.nadam import NAdam, nadam
from minima.optim.radam import RAdam, radam

DTYPES = [np.float64, np.float32]
SECOND_GROUP = ({}, {"lr": 0.05, "betas": (0.5, 0.9)})
TORCH_ONLY_ARGS = {"capturable", "differentiable"}  # torch has no `fused` for these three: minima adds it
BETAS = [(0.9, 0.999), (0.8, 0.99)]


def ids(kw): return ",".join(f"{k}={v}" for k, v in kw.items())


def options(decoupled):
    dwd = [False, True] if decoupled else [False]
    return [dict(lr=0.01, maximize=m, weight_decay=wd, betas=b, **({"decoupled_weight_decay": d} if decoupled else {}))
            for m, wd, d, b in itertools.product([False, True], [0.0, 0.1], dwd, BETAS) if not (d and wd == 0.0)]


CASES = ([("Adamax", kw) for kw in options(False)] + [("NAdam", kw) for kw in options(True)]
         + [("NAdam", dict(lr=0.01, momentum_decay=0.04))] + [("RAdam", kw) for kw in options(True)])
CLASSES = {"Adamax": Adamax, "NAdam": NAdam, "RAdam": RAdam}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{ids(kw)}" for n, kw in CASES])
def test_parity_with_torch(torch, name, kwargs, dtype):
    cls, ref = CLASSES[name], getattr(torch.optim, name)
    run_parity(cls, ref, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)
    run_state_dict_roundtrip(cls, ref, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)


@pytest.mark.parametrize("name", CLASSES)
def test_signature_and_defaults_match_torch(torch, name):
    "torch's signature and defaults, plus `fused=None`: keyword-only, right after `foreach`."
    mine, ref = inspect.signature(CLASSES[name]), inspect.signature(getattr(torch.optim, name))
    expected = [(p.name, p.kind, p.default) for p in ref.parameters.values() if p.name not in TORCH_ONLY_ARGS]
    at = [n for n, *_ in expected].index("foreach") + 1
    expected.insert(at, ("fused", inspect.Parameter.KEYWORD_ONLY, None))
    assert [(p.name, p.kind, p.default) for p in mine.parameters.values()] == expected
    d_mine = CLASSES[name]([Param(np.zeros(2))]).defaults
    d_ref = getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)]).defaults
    assert d_mine == {**{k: v for k, v in d_ref.items() if k not in TORCH_ONLY_ARGS}, "fused": None}


@pytest.mark.parametrize("name", CLASSES)
def test_fused_and_foreach_together_is_torchs_error(name):
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together."):
        CLASSES[name]([Param(np.zeros(2))], foreach=True, fused=True)


BAD = [dict(lr=-1.0), dict(eps=-1e-3), dict(betas=(1.0, 0.999)), dict(betas=(-0.1, 0.999)), dict(betas=(0.9, 1.0)),
       dict(weight_decay=-0.1), dict(lr=-1.0, weight_decay=-1.0)]
ERROR_CASES = [(n, kw) for n in CLASSES for kw in BAD] + [("NAdam", dict(momentum_decay=-0.2)),
                                                          ("NAdam", dict(weight_decay=-1.0, momentum_decay=-0.2))]


@pytest.mark.parametrize("name,kwargs", ERROR_CASES, ids=[f"{n}-{ids(kw)}" for n, kw in ERROR_CASES])
def test_validation_errors_match_torch(torch, name, kwargs):
    assert_same_error(CLASSES[name], getattr(torch.optim, name), kwargs)


@pytest.mark.parametrize("name", CLASSES)
def test_grads_not_modified_and_closure_loss_returned(name):
    kwargs = dict(weight_decay=0.5, maximize=True)
    p = Param(np.linspace(-1, 1, 5)); g = np.arange(5.0) - 2; p.grad = g.copy()
    opt = CLASSES[name]([p], **kwargs)
    for _ in range(8): assert opt.step(lambda: 1.25) == 1.25
    np.testing.assert_array_equal(p.grad, g)


def test_nadam_mu_product_is_float32_like_torch(torch):
    twins = run_parity(NAdam, torch.optim.NAdam, dict(lr=0.01), dtype=np.float64, steps=20)
    for p, t in zip(twins.mparams, twins.tparams):
        if p.grad is None and t not in twins.topt.state: continue
        mine, ref = twins.mopt.state[p]["mu_product"], twins.topt.state[t]["mu_product"]
        assert mine.shape == () and mine.dtype == np.float32 and ref.dtype == torch.float32
        assert float(mine) == float(ref)
    # it stays float32 after a save and load (torch's loader would cast it to the parameter's dtype)
    twins.reload_minima()
    assert all(s["mu_product"].dtype == np.float32 for s in twins.mopt.state.values())


def test_adamax_constant_gradient_closed_form():
    "With a constant gradient, u = |g| + eps and m_hat = g: every step is lr * g / (|g| + eps)."
    g = np.array([2.0, -1e-3, 30.0])
    p = Param(np.zeros(3)); opt = Adamax([p], lr=0.01)
    for t in range(1, 8):
        p.grad = g.copy(); opt.step()
        np.testing.assert_allclose(p.data, -0.01 * t * g / (np.abs(g) + 1e-8), rtol=1e-12)


def test_radam_first_steps_are_momentum_sgd():
    "While rho_t <= 5 the update is lr * m_hat: it grows with the gradient (no adaptive scaling)."
    g = np.array([100.0, -0.01])
    p = Param(np.zeros(2)); opt = RAdam([p], lr=1e-3)
    p.grad = g.copy(); opt.step()
    np.testing.assert_allclose(p.data, -1e-3 * g, rtol=1e-14)


def test_kernels_increment_steps_in_place():
    p, g = np.zeros(2), np.ones(2)
    bufs = [np.zeros(2) for _ in range(4)]
    steps = [np.zeros((), np.float64) for _ in range(3)]
    mu = np.ones((), np.float32)
    common = dict(beta1=0.9, beta2=0.999, lr=0.1, weight_decay=0.0, eps=1e-8, maximize=False)
    adamax([p], [g], [bufs[0]], [bufs[1]], [steps[0]], **common)
    nadam([p], [g], [bufs[2]], [bufs[3]], [mu], [steps[1]], momentum_decay=4e-3, decoupled_weight_decay=False, **common)
    radam([p], [g], [np.zeros(2)], [np.zeros(2)], [steps[2]], decoupled_weight_decay=False, **common)
    assert all(s.dtype == np.float64 and float(s) == 1.0 for s in steps)
    assert mu.dtype == np.float32 and float(mu) < 1.0


def test_nadam_early_reload_continues_exactly(torch):
    "A save and load in the first steps, while mu_product is far from 0: its float32 rounding must survive."
    run_state_dict_roundtrip(NAdam, torch.optim.NAdam, dict(lr=0.05), dtype=np.float64, steps=40, split=3,
                             group_overrides=SECOND_GROUP)


# ---------------------------------------------------------------- the fast paths, bit for bit
def grid(**options):
    "Every combination of `options` (each a list of values), as keyword-argument dicts."
    return [dict(zip(options, values)) for values in itertools.product(*options.values())]


FAST_OPTIONS = {
    "Adamax": grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9)], weight_decay=[0.0, 0.1], maximize=[False, True]),
    "NAdam": [kw for kw in grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9)], momentum_decay=[4e-3, 0.1],
                                weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True])
              if not (kw["decoupled_weight_decay"] and kw["weight_decay"] == 0)],
    # betas[1] = 0.999 rectifies from step 6 on, 0.9 from step 3 on, and 0.5 never (rho_inf = 3 < 5)
    "RAdam": [kw for kw in grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9), (0.8, 0.5)], weight_decay=[0.0, 0.1],
                                decoupled_weight_decay=[False, True], maximize=[False, True])
              if not (kw["decoupled_weight_decay"] and kw["weight_decay"] == 0)],
}
FAST_CASES = [(n, kw) for n, kws in FAST_OPTIONS.items() for kw in kws]
MANY = [(3, 4), (5,), (2, 3, 2), (1,), (4,), (6,), (7,), (2, 2), (3,)]   # 9 tensors: a fused step goes flat
FEW = [(40,), (3, 5)]                                                    # 2 tensors: fused per tensor


def fast_run(cls, kw, dtype, shapes, steps=12, **mode):
    "Parameters and state after `steps` steps with `mode` (`foreach` / `fused`); one tensor misses a gradient."
    rng = np.random.default_rng(5)
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params = [Param(a.copy()) for a in start]
    opt = cls(params, **kw, **mode)
    for k in range(steps):
        for i, (p, a) in enumerate(zip(params, start)):
            p.grad = None if i == 1 and k % 4 == 3 else (rng.standard_normal(a.shape) + 0.3 * p.data).astype(dtype)
        opt.step()
    return [p.data.copy() for p in params], opt.state_dict()["state"]


def assert_bitwise(mine, ref):
    (mparams, mstate), (rparams, rstate) = mine, ref
    for m, r in zip(mparams, rparams): assert m.dtype == r.dtype and np.array_equal(m, r)
    assert sorted(mstate) == sorted(rstate)
    for idx, state in rstate.items():
        assert set(mstate[idx]) == set(state)
        for k, v in state.items():
            mv = np.asarray(mstate[idx][k]); v = np.asarray(v)
            assert mv.dtype == v.dtype and mv.shape == v.shape and np.array_equal(mv, v), f"state[{idx}][{k!r}]"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name,kwargs", FAST_CASES, ids=[f"{n}-{ids(kw)}" for n, kw in FAST_CASES])
def test_fast_paths_agree_bitwise_with_the_reference(name, kwargs, dtype, monkeypatch):
    """`foreach=True` (flat buffers cut into pieces: 5 elements here, so several) and `fused=True` (the rule
    compiled by numba, flat or per tensor) take exactly the reference's steps, 0-d state included."""
    cls = CLASSES[name]
    monkeypatch.setattr(fast_flat, "PIECE", 5)
    for shapes in (MANY, FEW):
        ref = fast_run(cls, kwargs, dtype, shapes, foreach=False)
        assert_bitwise(fast_run(cls, kwargs, dtype, shapes, foreach=True), ref)
        try: import numba  # noqa: F401
        except ImportError: continue   # fused needs the optional numba
        assert_bitwise(fast_run(cls, kwargs, dtype, shapes, fused=True), ref)
