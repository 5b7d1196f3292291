"""Prodigy against prodigyopt 1.1.2 (the authors' package): each option that changes the math, both dtypes,
several groups, save/load mid-run, validation, and nothing changed by a refused construction or step."""
import copy, importlib, inspect, itertools
import numpy as np
import pytest
import parity
from parity import Param, run_parity, run_state_dict_roundtrip, assert_same_error
from conftest import _missing
from minima.optim.prodigy import Prodigy, prodigy_constants, prodigy_distance

DTYPES = [np.float64, np.float32]
# three groups: another eps and no decay; a frozen group (lr=0: no moments, no share in d, still stepped)
GROUPS = ({}, {"weight_decay": 0.0, "eps": 1e-6}, {"lr": 0.0})
SINGLE = [dict(), dict(decouple=False, weight_decay=0.1), dict(weight_decay=0.1), dict(use_bias_correction=True),
          dict(safeguard_warmup=True), dict(d_coef=2.0), dict(d_coef=0.5), dict(growth_rate=1.05),
          dict(betas=(0.0, 0.99)), dict(betas=(0.0, 0.99), weight_decay=0.1, decouple=False),
          dict(beta3=0.9), dict(lr=0.5), dict(d0=1e-3), dict(slice_p=3), dict(eps=1e-4)]
GRID = [dict(decouple=dc, use_bias_correction=bc, safeguard_warmup=sw, weight_decay=wd, d_coef=k, growth_rate=gr,
             betas=b)
        for dc, bc, sw, wd, k, gr, b in itertools.product(
            [True, False], [False, True], [False, True], [0.0, 0.1], [1.0, 2.0], [float("inf"), 1.05],
            [(0.9, 0.999), (0.0, 0.99)])
        if not (wd == 0.0 and not dc)]  # without decay, decouple changes nothing
# the frozen group only with momentum: with beta1 = 0 prodigyopt steps it by -d*lr*grad/eps (it still steps
# groups whose lr is 0), which these tests would only turn into overflow
FROZEN_OK = lambda kw: kw.get("betas", (0.9,))[0] > 0


def ids(kw): return ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults"


@pytest.fixture(scope="module")
def Reference(torch):
    try: return importlib.import_module("prodigyopt").Prodigy
    except ImportError: _missing("prodigyopt", "install it with `pip install prodigyopt==1.1.2`")


def groups_for(kw): return GROUPS if FROZEN_OK(kw) else GROUPS[:2]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("kwargs", SINGLE, ids=ids)
def test_parity(Reference, kwargs, dtype):
    "60 steps, every parameter after every step: float64 to 1e-12 relative (parity's), float32 to 1e-5."
    twins = run_parity(Prodigy, Reference, kwargs, dtype=dtype, steps=60, group_overrides=groups_for(kwargs))
    for mine, ref in zip(twins.mopt.param_groups, twins.topt.param_groups):
        for key in ("d", "d_max", "d_hat", "d_numerator", "d_denom"):
            np.testing.assert_allclose(mine[key], ref[key], rtol=1e-10 if dtype == np.float64 else 1e-3)
        assert mine["k"] == ref["k"] == 60


@pytest.mark.parametrize("kwargs", GRID, ids=ids)
def test_parity_full_grid_float64(Reference, kwargs):
    "Every combination of the options that change the math, 60 steps in float64."
    run_parity(Prodigy, Reference, kwargs, dtype=np.float64, steps=60, group_overrides=groups_for(kwargs))


def test_parity_full_grid_float32(Reference):
    """The same grid in float32. The sums of d's estimate are float32 reductions (dot, sum of |s|) that NumPy and
    torch add up in different orders; d amplifies those roundings, so a few combinations drift to about 1.3e-5
    after 45 steps. Held to 5e-5 here (the single options above hold 1e-5)."""
    old = parity.TOLERANCE[np.float32]
    parity.TOLERANCE[np.float32] = 5e-5
    try:
        for kw in GRID: run_parity(Prodigy, Reference, kw, dtype=np.float32, steps=60, group_overrides=groups_for(kw))
    finally: parity.TOLERANCE[np.float32] = old


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("kwargs", [dict(), dict(use_bias_correction=True, weight_decay=0.1, decouple=False),
                                    dict(betas=(0.0, 0.99), safeguard_warmup=True, growth_rate=1.05),
                                    dict(slice_p=2, d_coef=2.0)], ids=ids)
def test_state_dict_roundtrip(Reference, kwargs, dtype):
    "Saved after 30 steps and loaded into fresh objects, the run goes on as prodigyopt's uninterrupted one."
    run_state_dict_roundtrip(Prodigy, Reference, kwargs, dtype=dtype, steps=60, split=30,
                             group_overrides=groups_for(kwargs))


def test_defaults_and_signature_match(Reference, torch):
    mine = Prodigy([Param(np.zeros(2))])
    ref = Reference([torch.zeros(2, requires_grad=True)])
    assert mine.defaults == ref.defaults and mine.d0 == ref.d0
    sig = lambda cls: [(p.name, p.default, p.kind) for p in inspect.signature(cls).parameters.values()]
    assert sig(Prodigy) == sig(Reference)


BAD = [dict(d0=0.0), dict(d0=-1.0), dict(lr=0.0), dict(lr=-1.0), dict(eps=0.0), dict(betas=(1.0, 0.999)),
       dict(betas=(-0.1, 0.999)), dict(betas=(0.9, 1.0)), dict(betas=(0.9, -0.5)),
       dict(lr=-1.0, d0=-1.0, eps=-1.0)]  # the first failing check wins, in prodigyopt's order


@pytest.mark.parametrize("kwargs", BAD, ids=ids)
def test_validation_errors_match(Reference, kwargs):
    assert_same_error(Prodigy, Reference, kwargs)


REFUSED = [(dict(fsdp_in_use=True), "fsdp_in_use=True"), (dict(slice_p=0), "slice_p"), (dict(slice_p=1.5), "slice_p"),
           (dict(beta3=1.0), "beta3"), (dict(beta3=-0.5), "beta3"), (dict(weight_decay=-0.1), "weight_decay"),
           (dict(d_coef=0.0), "d_coef"), (dict(growth_rate=0.5), "growth_rate")]


@pytest.mark.parametrize("kwargs,name", REFUSED, ids=[n for _, n in REFUSED])
def test_what_cannot_apply_is_refused(kwargs, name):
    "prodigyopt lets these through (and fails later, or silently misbehaves); minima refuses them at once."
    p = Param(np.arange(3.0)); p.grad = np.ones(3)
    with pytest.raises(ValueError, match=name): Prodigy([p], **kwargs)
    np.testing.assert_array_equal(p.data, np.arange(3.0)); np.testing.assert_array_equal(p.grad, np.ones(3))


def test_different_lrs_are_refused_before_anything_changes(Reference, torch):
    "prodigyopt's error at step time; minima raises it before touching a parameter or the state."
    ps = [Param(np.linspace(-1, 1, 4)), Param(np.ones(3))]
    opt = Prodigy([{"params": [ps[0]]}, {"params": [ps[1]]}])
    for p in ps: p.grad = np.full(p.data.shape, 0.5)
    opt.step()
    opt.param_groups[1]["lr"] = 0.5
    before, data = copy.deepcopy(opt.state_dict()), [p.data.copy() for p in ps]
    with pytest.raises(RuntimeError) as mine: opt.step()
    t = [torch.zeros(2, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    ref = Reference([{"params": [t[0]]}, {"params": [t[1], ], "lr": 0.5}])
    for x in t: x.grad = torch.ones(2, dtype=torch.float64)
    with pytest.raises(RuntimeError) as theirs: ref.step()
    assert str(mine.value) == str(theirs.value)
    for p, d in zip(ps, data): np.testing.assert_array_equal(p.data, d)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k, s in before["state"].items():
        for key, v in s.items(): np.testing.assert_array_equal(after["state"][k][key], v)


def test_grads_are_not_modified_and_closure_loss_is_returned():
    p = Param(np.linspace(-1, 1, 5)); g = np.arange(5.0) - 2; p.grad = g.copy()
    opt = Prodigy([p], weight_decay=0.5, decouple=False)
    assert opt.step(lambda: 3.5) == 3.5
    np.testing.assert_array_equal(p.grad, g)


def test_no_gradient_no_step():
    "Without gradients (or with zero ones) d's denominator is 0: nothing moves and k stays 0, as prodigyopt."
    p = Param(np.ones(3)); opt = Prodigy([p])
    opt.step()
    assert opt.param_groups[0]["k"] == 0 and not opt.state
    p.grad = np.zeros(3); opt.step()
    np.testing.assert_array_equal(p.data, np.ones(3))
    assert opt.param_groups[0]["k"] == 0 and opt.state[p]["step"] == 0


def test_first_step_closed_form():
    "Step 1: d = d0 (r = 0 at the start), the step is d0*lr*g/(|g| + d0*eps) * d0*(1-beta1)/(d0*sqrt(1-beta2))."
    g = np.array([1e-3, -2.0, 50.0])
    p = Param(np.ones(3)); p.grad = g.copy()
    opt = Prodigy([p]); opt.step()
    d0, b1, b2 = 1e-6, 0.9, 0.999
    step = d0 * (d0 * (1 - b1) * g) / (np.sqrt(d0 * d0 * (1 - b2) * g * g) + d0 * 1e-8)
    np.testing.assert_allclose(p.data, 1 - step, rtol=1e-15)
    assert opt.param_groups[0]["d"] == d0


def test_constants_and_distance():
    c = prodigy_constants(0.5, 0, 2.0, lr=1.0, betas=(0.9, 0.999), beta3=None, use_bias_correction=True)
    np.testing.assert_allclose(c.beta3, np.sqrt(0.999))
    np.testing.assert_allclose(c.dlr, 0.5 * np.sqrt(1 - 0.999) / (1 - 0.9))
    np.testing.assert_allclose(c.d_numerator, 2.0 * np.sqrt(0.999))
    # d grows to d_hat from d0 at once, afterwards by at most growth_rate per step, never beyond d_max
    assert prodigy_distance(1e-6, 1e-6, 3.0, 1.0, d0=1e-6, d_coef=1.0, growth_rate=2.0) == (3.0, 3.0, 3.0)
    assert prodigy_distance(0.1, 0.1, 3.0, 1.0, d0=1e-6, d_coef=1.0, growth_rate=2.0) == (0.2, 3.0, 3.0)
    assert prodigy_distance(0.1, 0.5, 0.2, 1.0, d0=1e-6, d_coef=0.5, growth_rate=10.0) == (0.5, 0.5, 0.1)
