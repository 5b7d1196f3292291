"""Adam and AMSGrad against torch.optim.Adam: every option, both dtypes, two groups, save/load, validation."""
import itertools
import numpy as np
import pytest
from parity import Param, run_parity, run_state_dict_roundtrip, assert_same_error
from minima.optim.adam import Adam, adam
from minima.optim.optimizer import lerp

DTYPES = [np.float64, np.float32]
SECOND_GROUP = ({}, {"lr": 0.05, "betas": (0.5, 0.9)})
OPTIONS = [dict(lr=0.01, amsgrad=a, maximize=m, weight_decay=wd, decoupled_weight_decay=d, betas=b)
           for a, m, wd, d, b in itertools.product([False, True], [False, True], [0.0, 0.1], [False, True],
                                                   [(0.9, 0.999), (0.8, 0.99)])
           if not (d and wd == 0.0)]  # decoupling without decay is the same computation as not decoupling


def ids(kw): return ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("kwargs", OPTIONS, ids=ids)
def test_parity_with_torch(torch, kwargs, dtype):
    run_parity(Adam, torch.optim.Adam, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("kwargs", OPTIONS, ids=ids)
def test_state_dict_roundtrip(torch, kwargs, dtype):
    run_state_dict_roundtrip(Adam, torch.optim.Adam, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)


def test_defaults_match_torch(torch):
    mine = Adam([Param(np.zeros(2))]).defaults
    ref = torch.optim.Adam([torch.zeros(2, requires_grad=True)]).defaults
    assert mine == {k: v for k, v in ref.items() if k not in ("capturable", "differentiable")}


BAD = [dict(lr=-1.0), dict(eps=-1e-3), dict(betas=(1.0, 0.999)), dict(betas=(-0.1, 0.999)),
       dict(betas=(0.9, 1.0)), dict(betas=(0.9, -0.5)), dict(weight_decay=-0.1), dict(betas=(0, 0.999)),
       dict(lr=-1.0, betas=(1.0, 1.0))]  # the first failing check wins, in torch's order


@pytest.mark.parametrize("kwargs", BAD, ids=ids)
def test_validation_errors_match_torch(torch, kwargs):
    assert_same_error(Adam, torch.optim.Adam, kwargs)


def test_grads_are_not_modified_and_closure_loss_is_returned():
    p = Param(np.linspace(-1, 1, 5)); g = np.arange(5.0) - 2; p.grad = g.copy()
    opt = Adam([p], lr=0.1, weight_decay=0.5, maximize=True, amsgrad=True)
    assert opt.step(lambda: 3.5) == 3.5
    np.testing.assert_array_equal(p.grad, g)


def test_first_step_is_lr_times_sign():
    "Closed form: after bias correction the first step is lr * g / (|g| + eps) for any gradient scale."
    g = np.array([1e-6, -3.0, 1e4])
    p = Param(np.zeros(3)); p.grad = g.copy()
    Adam([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, -0.1 * g / (np.abs(g) + 1e-8), rtol=1e-14)


def test_amsgrad_state_is_a_running_maximum():
    rng = np.random.default_rng(0)
    p = Param(np.zeros(4)); opt = Adam([p], amsgrad=True)
    previous = np.zeros(4)
    for k in range(30):
        p.grad = rng.standard_normal(4) * (10.0 if k == 3 else 1.0); opt.step()
        s = opt.state[p]
        assert np.all(s["max_exp_avg_sq"] >= s["exp_avg_sq"]) and np.all(s["max_exp_avg_sq"] >= previous)
        previous = s["max_exp_avg_sq"].copy()
    q = Param(np.zeros(1)); q.grad = np.ones(1)
    plain = Adam([q]); plain.step()
    assert set(plain.state[q]) == {"step", "exp_avg", "exp_avg_sq"}  # the maximum is kept only with amsgrad


@pytest.mark.parametrize("weight", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_lerp_matches_torch(torch, weight):
    "`lerp` on arrays in the arrays' dtype gives torch's `lerp_`, in place below weight 1/2 (exact at 0 and 1)."
    rng = np.random.default_rng(1)
    for dtype in DTYPES:
        a, b = rng.standard_normal(50).astype(dtype), rng.standard_normal(50).astype(dtype)
        ref = torch.from_numpy(a.copy()).lerp_(torch.from_numpy(b), weight).numpy()
        T = dtype(0).dtype.type
        out = lerp(a, b, T(weight), T(1))
        assert (out is a) == (weight < 0.5) and out.dtype == dtype
        np.testing.assert_allclose(out, ref, rtol=2 * np.finfo(dtype).eps, atol=2 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(lerp(np.array([1.0, 2.0]), np.array([3.0, 5.0]), 1.0, 1.0), [3.0, 5.0])


def test_kernel_updates_step_counters_in_place():
    p, g = np.zeros(2), np.ones(2)
    m, v, step = np.zeros(2), np.zeros(2), np.zeros((), np.float64)
    for _ in range(3):
        adam([p], [g], [m], [v], [], [step], amsgrad=False, beta1=0.9, beta2=0.999, lr=0.1, weight_decay=0.0,
             eps=1e-8, maximize=False)
    assert step.dtype == np.float64 and float(step) == 3.0


def test_signature_matches_torch(torch):
    import inspect
    ref = inspect.signature(torch.optim.Adam).parameters.values()
    expected = [(p.name, p.kind, p.default) for p in ref if p.name not in ("capturable", "differentiable")]
    assert [(p.name, p.kind, p.default) for p in inspect.signature(Adam).parameters.values()] == expected
