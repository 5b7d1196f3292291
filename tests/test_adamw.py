"""AdamW against torch.optim.AdamW (every option, both dtypes, two groups, save/load, validation), and
AdamW as Adam with decoupled weight decay."""
import itertools
import numpy as np
import pytest
from parity import Param, run_parity, run_state_dict_roundtrip, assert_same_error
from minima.optim.adam import Adam
from minima.optim.adamw import AdamW, adamw

DTYPES = [np.float64, np.float32]
SECOND_GROUP = ({}, {"lr": 0.05, "betas": (0.5, 0.9)})
OPTIONS = [dict(lr=0.01, amsgrad=a, maximize=m, weight_decay=wd, betas=b)
           for a, m, wd, b in itertools.product([False, True], [False, True], [0.0, 0.1], [(0.9, 0.999), (0.8, 0.99)])]


def ids(kw): return ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("kwargs", OPTIONS, ids=ids)
def test_parity_with_torch(torch, kwargs, dtype):
    run_parity(AdamW, torch.optim.AdamW, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)
    run_state_dict_roundtrip(AdamW, torch.optim.AdamW, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)


def test_default_weight_decay_parity(torch):
    "AdamW's default weight_decay (1e-2) is on: the run with no arguments but lr must match too."
    run_parity(AdamW, torch.optim.AdamW, dict(lr=0.01), dtype=np.float64)


def test_defaults_and_group_keys_match_torch(torch):
    mine = AdamW([Param(np.zeros(2))]).defaults
    ref = torch.optim.AdamW([torch.zeros(2, requires_grad=True)]).defaults
    assert mine == {k: v for k, v in ref.items() if k not in ("capturable", "differentiable")}
    assert mine["decoupled_weight_decay"] is True and mine["weight_decay"] == 1e-2


def test_adamw_is_adam_with_decoupled_weight_decay():
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((40, 7))
    kwargs = dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.3, amsgrad=True, maximize=True)
    a, b = Param(np.ones(7)), Param(np.ones(7))
    opt_a, opt_b = AdamW([a], **kwargs), Adam([b], decoupled_weight_decay=True, **kwargs)
    for g in grads:
        a.grad, b.grad = g.copy(), g.copy()
        opt_a.step(); opt_b.step()
    np.testing.assert_array_equal(a.data, b.data)
    # the AdamW state dict loads into Adam and keeps decoupling (the flag is a group key)
    c = Param(a.data.copy()); opt_c = Adam([c]); opt_c.load_state_dict(opt_a.state_dict())
    assert opt_c.param_groups[0]["decoupled_weight_decay"] is True


def test_functional_adamw_is_decoupled_adam():
    p, g = np.ones(3), np.array([0.5, -1.0, 2.0])
    m, v, step = np.zeros(3), np.zeros(3), np.zeros((), np.float64)
    adamw([p], [g], [m], [v], [], [step], amsgrad=False, beta1=0.9, beta2=0.999, lr=0.1, weight_decay=0.5,
          eps=1e-8, maximize=False)
    np.testing.assert_allclose(p, (1 - 0.1 * 0.5) - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-14)


def test_zero_gradient_is_pure_exponential_decay():
    "Closed form: with g = 0 the Adam part of the step is 0/(0+eps) = 0, so theta_t = (1 - lr*wd)^t theta_0."
    p = Param(np.array([2.0, -3.0])); opt = AdamW([p], lr=1e-2, weight_decay=0.5)
    for _ in range(25): p.grad = np.zeros(2); opt.step()
    np.testing.assert_allclose(p.data, np.array([2.0, -3.0]) * (1 - 1e-2 * 0.5) ** 25, rtol=1e-13)


BAD = [dict(lr=-1.0), dict(eps=-1e-3), dict(betas=(1.0, 0.999)), dict(betas=(0.9, 1.0)),
       dict(weight_decay=-0.1), dict(betas=(0.9, 1))]


@pytest.mark.parametrize("kwargs", BAD, ids=ids)
def test_validation_errors_match_torch(torch, kwargs):
    assert_same_error(AdamW, torch.optim.AdamW, kwargs)


def test_no_decoupled_weight_decay_argument(torch):
    "As in torch, AdamW does not take `decoupled_weight_decay` (it is always on)."
    with pytest.raises(TypeError): AdamW([Param(np.zeros(1))], decoupled_weight_decay=False)
    with pytest.raises(TypeError): torch.optim.AdamW([torch.zeros(1, requires_grad=True)], decoupled_weight_decay=False)


def test_signature_matches_torch(torch):
    import inspect
    ref = inspect.signature(torch.optim.AdamW).parameters.values()
    expected = [(p.name, p.kind, p.default) for p in ref if p.name not in ("capturable", "differentiable")]
    assert [(p.name, p.kind, p.default) for p in inspect.signature(AdamW).parameters.values()] == expected
