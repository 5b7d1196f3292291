"""Lion against lion-pytorch 0.2.5: numbers, state, defaults, signature, validation, and the fast paths."""
import copy, inspect
import numpy as np
import pytest
import parity
from parity import Param, run_parity, run_state_dict_roundtrip
from conftest import require_torch, _missing
from minima.optim.lion import Lion, lion, lion_rule, sgn
from minima.optim.optimizer import _fast_step_for, register_fast_step


def require_lion_pytorch():
    "lion-pytorch (the oracle), skipping locally and failing under CI when it is missing."
    require_torch()
    try: import lion_pytorch
    except ImportError: _missing("lion-pytorch", "install it with `pip install lion-pytorch==0.2.5`")
    return lion_pytorch.Lion


@pytest.fixture(scope="module")
def ref(): return require_lion_pytorch()


@pytest.fixture
def lion_group_keys(monkeypatch):
    "lion-pytorch's groups have no `foreach`: allow it beside `fused` as a key minima adds."
    monkeypatch.setattr(parity, "BEYOND_TORCH_GROUP_KEYS", parity.BEYOND_TORCH_GROUP_KEYS | {"foreach"})


GROUPS = ({}, {"lr": 3e-3, "weight_decay": 0.3}, {"betas": (0.5, 0.9)})
CASES = [
    dict(lr=1e-2),
    dict(lr=1e-2, weight_decay=1.0),
    dict(lr=3e-2, betas=(0.8, 0.95), weight_decay=0.1),
    dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True),
    dict(lr=1e-2, betas=(1.0, 0.0), weight_decay=0.5),
]


def worst_relative(twins):
    out = 0.0
    for m, t in zip(twins.mparams, twins.tparams):
        r = t.detach().numpy()
        out = max(out, float(np.max(np.abs(m.data - r)) / max(1.0, float(np.max(np.abs(r))))))
    return out


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numbers_match_lion_pytorch(ref, kwargs, dtype):
    twins = run_parity(Lion, ref, kwargs, dtype=dtype, steps=60, group_overrides=GROUPS)
    assert worst_relative(twins) <= (1e-10 if dtype is np.float64 else 1e-5)


@pytest.mark.parametrize("kwargs", CASES[1::2])
def test_float64_is_bitwise_lion_pytorch(ref, kwargs):
    "The same operations in the same order: not a bit differs."
    twins = run_parity(Lion, ref, kwargs, dtype=np.float64, steps=60, group_overrides=GROUPS)
    assert worst_relative(twins) == 0.0


@pytest.mark.parametrize("kwargs", [CASES[1], CASES[3]])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_state_dict_roundtrip(ref, lion_group_keys, kwargs, dtype):
    twins = run_state_dict_roundtrip(Lion, ref, kwargs, dtype=dtype, steps=60, split=30, group_overrides=GROUPS)
    parity.check_state_dict_matches_torch(twins)


def test_state_is_exp_avg_only_and_none_without_gradient(ref):
    p, q = Param(np.ones(3)), Param(np.ones(2))
    opt = Lion([p, q], lr=0.1)
    p.grad = np.ones(3); opt.step()
    assert set(opt.state) == {p} and set(opt.state[p]) == {"exp_avg"}
    np.testing.assert_array_equal(q.data, np.ones(2))


def test_defaults_and_signature(ref):
    mine, theirs = inspect.signature(Lion).parameters, inspect.signature(ref).parameters
    assert list(theirs) == list(mine)[:len(theirs)]
    assert list(mine)[len(theirs):] == ["foreach", "fused"]
    for name, par in theirs.items():
        assert mine[name].default == par.default, name
        assert mine[name].kind == par.kind, name
    assert mine["foreach"].kind is mine["fused"].kind is inspect.Parameter.KEYWORD_ONLY
    torch = require_torch()
    r = ref([torch.zeros(2, dtype=torch.float64, requires_grad=True)])
    m = Lion([Param(np.zeros(2))])
    assert m.defaults == {**r.defaults, "foreach": None, "fused": None}
    assert (m._init_lr, m.decoupled_wd) == (r._init_lr, r.decoupled_wd)
    assert set(m.param_groups[0]) == set(r.param_groups[0]) | {"foreach", "fused"}


def state_snapshot(opt, params):
    return [p.data.copy() for p in params], copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize("kwargs, named", [
    (dict(lr=0.0), "Invalid learning rate: 0.0"), (dict(lr=-1e-3), "Invalid learning rate: -0.001"),
    (dict(lr=float("nan")), "Invalid learning rate: nan"),
    (dict(betas=(1.1, 0.9)), "Invalid beta parameter at index 0: 1.1"),
    (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1")])
def test_refuses_what_lion_pytorch_asserts(ref, kwargs, named):
    "Same exception type as lion-pytorch (its bare asserts, empty messages); minima's message names the value."
    torch = require_torch()
    with pytest.raises(AssertionError) as theirs:
        ref([torch.zeros(3, dtype=torch.float64, requires_grad=True)], **kwargs)
    assert str(theirs.value) == ""
    p = Param(np.arange(3.0)); p.grad = np.ones(3)
    with pytest.raises(AssertionError) as mine:
        Lion([p], **kwargs)
    assert type(mine.value) is type(theirs.value) and str(mine.value).startswith(named)
    np.testing.assert_array_equal(p.data, np.arange(3.0)); np.testing.assert_array_equal(p.grad, np.ones(3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    (dict(betas=(0.9,)), "betas must hold two numbers"),
    (dict(betas=(0.9, 0.99, 0.999)), "betas must hold two numbers"),
    (dict(use_triton=True), "use_triton=True needs triton"),
    (dict(foreach=True, fused=True), "`fused` and `foreach` cannot be `True` together."),
])
def test_refuses_what_lion_pytorch_lets_through(kwargs, message):
    p = Param(np.arange(3.0)); p.grad = np.ones(3)
    with pytest.raises((ValueError, RuntimeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        Lion([p], **kwargs)
    np.testing.assert_array_equal(p.data, np.arange(3.0)); np.testing.assert_array_equal(p.grad, np.ones(3))


def test_bad_parameters_change_nothing():
    "A refused add_param_group leaves parameters and state as they were."
    p = Param(np.ones(3)); opt = Lion([p], lr=0.1)
    p.grad = np.ones(3); opt.step()
    before = state_snapshot(opt, [p])
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [p]})   # p is already in a group
    after = state_snapshot(opt, [p])
    np.testing.assert_array_equal(before[0][0], after[0][0])
    np.testing.assert_array_equal(before[1]["state"][0]["exp_avg"], after[1]["state"][0]["exp_avg"])


def test_sgn_is_torchs_on_numbers_and_arrays():
    torch = require_torch()
    x = np.array([-2.0, -0.0, 0.0, 3.0, np.nan, -np.inf, 1e-300])
    np.testing.assert_array_equal(sgn(x, 1.0), torch.from_numpy(x).sgn().numpy())
    assert not np.signbit(sgn(x, 1.0)[1])
    assert [sgn(v, 1.0) for v in x.tolist()] == sgn(x, 1.0).tolist()
    assert sgn(x.astype(np.float32), np.float32(1)).dtype == np.float32


# ---- the fast paths: the same rule, the same bits ----

@pytest.fixture(scope="module")
def fast_registered():
    "Lion registered with the fast paths (minima.fast does it once Lion is in ELEMENTWISE)."
    from minima.fast.flat import step_group
    if _fast_step_for(Lion) is None: register_fast_step(Lion, step_group)
    return step_group


SHAPE_SETS = {"many small": [(3, 4)] * 9 + [(5,)], "few large": [(300, 300), (7,), (1000,)]}


def run_fast(dtype, shapes, kwargs, steps=25, seed=0):
    rng = np.random.default_rng(seed)
    ps = [Param(rng.standard_normal(s).astype(dtype)) for s in shapes]
    groups = [{"params": ps[0::2]}, {"params": ps[1::2], "lr": 2e-3, "betas": (0.5, 0.9)}]
    opt = Lion(groups, **kwargs)
    for t in range(steps):
        for i, p in enumerate(ps):
            p.grad = None if (t + i) % 5 == 0 else rng.standard_normal(p.data.shape).astype(dtype)
        opt.step()
    return [p.data.copy() for p in ps], [opt.state[p]["exp_avg"].copy() for p in ps], opt


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shapes", list(SHAPE_SETS))
@pytest.mark.parametrize("options", [dict(), dict(weight_decay=0.5), dict(weight_decay=1e-2, decoupled_weight_decay=True),
                                     dict(betas=(0.95, 0.98), weight_decay=0.1)])
@pytest.mark.parametrize("fast", [dict(foreach=True), dict(fused=True), dict(foreach=None)])
def test_fast_paths_bitwise_equal_to_reference(fast_registered, dtype, shapes, options, fast):
    pytest.importorskip("numba") if fast.get("fused") else None
    kwargs = dict(lr=1e-2, **options)
    ref_p, ref_m, _ = run_fast(dtype, SHAPE_SETS[shapes], {**kwargs, "foreach": False})
    got_p, got_m, opt = run_fast(dtype, SHAPE_SETS[shapes], {**kwargs, **fast})
    for a, b in zip(ref_p + ref_m, got_p + got_m):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    if fast.get("foreach"): assert opt.__dict__.get("_flat_buffers"), "the flat path did not run"


def test_fused_runs_the_compiled_rule(fast_registered):
    pytest.importorskip("numba")
    from minima.fast import fused
    run_fast(np.float32, SHAPE_SETS["few large"], dict(lr=1e-2, fused=True), steps=2)
    assert any(key[0] is lion_rule for key in fused._LOOPS)


def test_kernel_on_numbers_matches_arrays():
    "The rule runs on plain numbers with the meaning it has on arrays."
    rng = np.random.default_rng(3)
    p, g, m = rng.standard_normal(6), rng.standard_normal(6), rng.standard_normal(6)
    arrays = [p.copy()], [g.copy()], [m.copy()]
    lion(*arrays, lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.2)
    from minima.optim.lion import lion_constants
    c = lion_constants(lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.2)
    numbers = [lion_rule(c, float(a), float(b), float(d)) for a, b, d in zip(p, g, m)]
    np.testing.assert_array_equal(arrays[0][0], [n[0] for n in numbers])
    np.testing.assert_array_equal(arrays[2][0], [n[1] for n in numbers])
