"""Adafactor against torch.optim.Adafactor: every option, both dtypes, two groups, save/load, parameters of 0 to 4
dimensions, validation, the signatures, and torch's own optim_db entries for Adafactor."""
import copy, inspect, re
import numpy as np
import pytest
import parity
from parity import Param, run_parity, run_state_dict_roundtrip, assert_same_error, assert_close
from minima.optim.adafactor import Adafactor, adafactor

DTYPES = [np.float64, np.float32]
SECOND_GROUP = ({}, {"lr": 0.05, "d": 2.0, "weight_decay": 0.05})


def ids(kw): return ",".join(f"{k}={v}" for k, v in kw.items())


# One option at a time, then a few combinations.
OPTIONS = ([{}]
           + [dict(lr=lr) for lr in (1e-3, 0.1, 0.5)]
           + [dict(maximize=True), dict(weight_decay=0.1), dict(weight_decay=0.1, lr=0.1)]
           + [dict(d=d) for d in (1.5, 4.0)]
           + [dict(eps=e) for e in ((1e-30, 1e-3), (1e-8, 1e-3), (None, 1e-2), (None, 0.0), (0.0, 1e-3))]
           + [dict(beta2_decay=b) for b in (-1.0, -0.5, 0.0)]
           + [dict(lr=0.1, maximize=True, weight_decay=0.1, d=1.5, eps=(1e-6, 1e-2), beta2_decay=-0.6),
              dict(lr=0.02, weight_decay=0.5, d=1.0, eps=(None, 1e-4), beta2_decay=-1.0)])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("kwargs", OPTIONS, ids=ids)
def test_parity_with_torch(torch, kwargs, dtype):
    run_parity(Adafactor, torch.optim.Adafactor, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)
    run_state_dict_roundtrip(Adafactor, torch.optim.Adafactor, kwargs, dtype=dtype,
                             group_overrides=SECOND_GROUP)


# parity.SHAPES has 1-d and 3-d parameters; these add 2-d, 4-d and matrices with a dimension of 1.
OTHER_SHAPES = [(4, 6), (3,), (2, 3, 4, 5), (1, 1), (5, 1), (1, 7)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("kwargs", [{}, dict(lr=0.1, weight_decay=0.1, maximize=True, d=1.5)], ids=ids)
def test_parity_with_torch_2d_4d_and_0d_params(torch, monkeypatch, kwargs, dtype):
    monkeypatch.setattr(parity, "SHAPES", OTHER_SHAPES)
    twins = run_state_dict_roundtrip(Adafactor, torch.optim.Adafactor, kwargs, dtype=dtype, steps=80, split=40,
                                     group_overrides=SECOND_GROUP)
    parity.check_state_dict_matches_torch(twins)
    for mp, tp in zip(twins.mparams, twins.tparams):
        mine, ref = twins.mopt.state.get(mp, {}), twins.topt.state.get(tp, {})
        assert set(mine) == set(ref)
        for k in ref: assert np.shape(mine[k]) == tuple(ref[k].shape), (mp, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_parity_with_torch_0d_param(torch, dtype):
    "A scalar parameter is not factored: its state is `variance`, a 0-d array."
    rng = np.random.default_rng(0)
    mine, ref = Param(np.array(1.5, dtype)), torch.tensor(np.array(1.5, dtype), requires_grad=True)
    opt_m, opt_t = Adafactor([mine], weight_decay=0.1), torch.optim.Adafactor([ref], weight_decay=0.1)
    for _ in range(50):
        g = np.array(0.5 * float(ref.detach()) + rng.standard_normal(), dtype)
        mine.grad, ref.grad = g.copy(), torch.from_numpy(g.copy())
        opt_m.step(); opt_t.step()
        assert_close(mine.data, ref.detach().numpy(), dtype, "0-d parameter")
    assert set(opt_m.state[mine]) == set(opt_t.state[ref]) == {"step", "variance"}
    assert opt_m.state[mine]["variance"].shape == ()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_state_keys_are_torchs(torch, dtype):
    "`row_var` and `col_var` (shapes with dim -1 and -2 of 1) for >= 2 dims, `variance` for 0 and 1 dims."
    twins = run_parity(Adafactor, torch.optim.Adafactor, {}, dtype=dtype, steps=3)
    for mp in twins.mparams:
        state = twins.mopt.state.get(mp)
        if state is None: continue
        if mp.data.ndim > 1:
            assert set(state) == {"step", "row_var", "col_var"}
            assert state["row_var"].shape == mp.data.shape[:-1] + (1,)
            assert state["col_var"].shape == mp.data.shape[:-2] + (1,) + mp.data.shape[-1:]
        else: assert set(state) == {"step", "variance"}
        assert all(v.dtype == dtype for k, v in state.items() if k != "step")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_foreach_runs_the_same_numbers_as_torchs_foreach(torch, dtype):
    "torch's multi-tensor Adafactor and minima's `foreach=True` (the same reference kernel) agree."
    kwargs = dict(foreach=True, weight_decay=0.1, d=1.5)
    run_parity(Adafactor, torch.optim.Adafactor, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)
    run_state_dict_roundtrip(Adafactor, torch.optim.Adafactor, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)


def test_foreach_true_and_false_agree_bitwise():
    runs = []
    for foreach in (None, False, True):
        rng = np.random.default_rng(0)
        ps = [Param(rng.standard_normal(s)) for s in [(3, 4), (5,), (2, 3, 2)]]
        opt = Adafactor(ps, foreach=foreach, weight_decay=0.1)
        for _ in range(20):
            for p in ps: p.grad = rng.standard_normal(p.data.shape)
            opt.step()
        runs.append([p.data.copy() for p in ps])
    for other in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(runs[0], other))


def test_eps1_none_takes_the_first_parameters_dtype_like_torch(torch):
    "With eps1=None torch uses the machine epsilon of the first parameter's dtype for the whole group."
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((3, 4)).astype(np.float32), 1e-9 * rng.standard_normal(5)]
    mine = [Param(a.copy()) for a in arrays]
    ref = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    opt_m, opt_t = Adafactor(mine), torch.optim.Adafactor(ref)
    for _ in range(10):
        for m, t in zip(mine, ref):
            g = (1e-9 * rng.standard_normal(m.data.shape)).astype(m.data.dtype)
            m.grad, t.grad = g.copy(), torch.from_numpy(g.copy())
        opt_m.step(); opt_t.step()
        assert_close(mine[0].data, ref[0].detach().numpy(), np.float32, "float32 matrix")
        np.testing.assert_allclose(mine[1].data, ref[1].detach().numpy(), rtol=1e-10, atol=0)
    # The float64 vector's gradients (1e-9) are divided by float32's eps1 = 1.2e-7, not by |g|: each step is
    # about 1e-5 * 1e-2 (it would be 1e-5 with float64's eps1).
    moved = np.abs(mine[1].data - arrays[1]).max()
    assert 1e-7 < moved < 1e-5


def test_signature_and_defaults_match_torch(torch):
    "torch's signature and defaults exactly: torch's Adafactor has no `fused`, and neither has minima's."
    mine, ref = inspect.signature(Adafactor), inspect.signature(torch.optim.Adafactor)
    assert [(p.name, p.kind, p.default) for p in mine.parameters.values()] == \
           [(p.name, p.kind, p.default) for p in ref.parameters.values()]
    assert Adafactor([Param(np.zeros(2))]).defaults == \
           torch.optim.Adafactor([torch.zeros(2, requires_grad=True)]).defaults


def test_kernel_keywords_match_torchs_functional_api(torch):
    "`adafactor(params, grads, row_vars, col_vars, variances, state_steps, *, d, lr, ...)` as torch's."
    from torch.optim._adafactor import adafactor as torch_adafactor
    kw_only = lambda f: [p.name for p in inspect.signature(f).parameters.values() if p.kind == p.KEYWORD_ONLY]
    positional = lambda f: [p.name for p in inspect.signature(f).parameters.values()
                            if p.kind == p.POSITIONAL_OR_KEYWORD][:6]
    assert kw_only(adafactor) == kw_only(torch_adafactor)
    assert positional(adafactor) == positional(torch_adafactor)


BAD = [dict(lr=-1.0), dict(beta2_decay=0.5), dict(beta2_decay=1e-9), dict(eps=(-1e-30, 1e-3)),
       dict(eps=(None, -1.0)), dict(eps=(1e-3, -1e-3)), dict(d=0.0), dict(d=0.999), dict(weight_decay=-0.1),
       dict(lr=-1.0, d=0.0), dict(d=0.5, weight_decay=-1.0), dict(eps=(-1.0, -1.0)), dict(beta2_decay=0.1, lr=-2.0)]


@pytest.mark.parametrize("kwargs", BAD, ids=ids)
def test_validation_errors_match_torch(torch, kwargs):
    assert_same_error(Adafactor, torch.optim.Adafactor, kwargs)


def test_a_refused_construction_changes_nothing():
    p = Param(np.arange(6.0).reshape(2, 3)); p.grad = np.ones((2, 3))
    opt = Adafactor([p]); opt.step()
    before, state = p.data.copy(), copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError): Adafactor([p], d=0.5)
    np.testing.assert_array_equal(p.data, before)
    after = opt.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for k, v in state["state"][0].items(): np.testing.assert_array_equal(after["state"][0][k], v)


def test_grads_not_modified_and_closure_loss_returned():
    p, q = Param(np.linspace(-1, 1, 6).reshape(2, 3)), Param(np.linspace(-1, 1, 5))
    g, h = np.arange(6.0).reshape(2, 3) - 2, np.arange(5.0) - 2
    p.grad, q.grad = g.copy(), h.copy()
    opt = Adafactor([p, q], weight_decay=0.5, maximize=True)
    for _ in range(8): assert opt.step(lambda: 1.25) == 1.25
    np.testing.assert_array_equal(p.grad, g)
    np.testing.assert_array_equal(q.grad, h)


# ---- torch's own test inputs for Adafactor (torch.testing._internal.common_optimizers.optim_db) ----

def optim_info():
    "torch's OptimizerInfo for Adafactor; importing its test helpers needs `expecttest`."
    try:
        from torch.testing._internal.common_optimizers import optim_db
    except ImportError as e:
        pytest.skip(f"torch.testing._internal.common_optimizers does not import ({e}); "
                    "add `expecttest==0.3.0` to the dev extras to run torch's optim_db inputs")
    return next(info for info in optim_db if info.optim_cls.__name__ == "Adafactor")


def test_optim_db_inputs_match_torch(torch):
    info = optim_info()
    inputs = info.optim_inputs_func(device="cpu", dtype=torch.float64)
    assert {i.desc for i in inputs} >= {"default", "nonzero weight_decay", "maximize"}
    for inp in inputs:
        assert inp.params is None
        for dtype in DTYPES:
            run_parity(Adafactor, torch.optim.Adafactor, inp.kwargs, dtype=dtype, steps=50,
                       group_overrides=SECOND_GROUP)


def test_optim_db_error_inputs_match_torch(torch):
    "The error inputs that are about Adafactor's hyper-parameters (not the base class's tensor-only cases)."
    info = optim_info()
    checked = 0
    for err in info.optim_error_inputs_func(device="cpu", dtype=torch.float64):
        inp = err.optimizer_error_input
        if inp.params is not None or any(isinstance(v, torch.Tensor) for v in inp.kwargs.values()): continue
        message = assert_same_error(Adafactor, torch.optim.Adafactor, inp.kwargs)
        assert err.error_type is ValueError and re.search(err.error_regex, message), (inp.desc, message)
        checked += 1
    assert checked >= 3
