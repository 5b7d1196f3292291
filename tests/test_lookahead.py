"Lookahead against pytorch-optimizer 4.1.0's Lookahead: minima's around minima's SGD/Adam, theirs around torch's."
import copy, inspect, itertools
import numpy as np
import pytest
from conftest import require_torch
from parity import Twins, Param, assert_close, initial_arrays, split_groups, make_grads
from minima.optim import SGD, Adam, RMSprop, lr_scheduler
from minima.optim.optimizer import Optimizer, elementwise
from minima.optim.lookahead import Lookahead, lookahead, lookahead_constants, lookahead_rule


def reference():
    "pytorch-optimizer's Lookahead (the oracle), or a skip (a failure under CI)."
    require_torch()
    try: from pytorch_optimizer import Lookahead as Ref
    except ImportError:
        from conftest import _missing
        _missing("pytorch-optimizer", "install it with `pip install pytorch-optimizer==4.1.0`")
    return Ref


INNER = {  # name -> (minima class, torch class name, kwargs, per-group overrides)
    "sgd": (SGD, "SGD", dict(lr=0.1), ({}, {"lr": 0.05})),
    "momentum": (SGD, "SGD", dict(lr=0.05, momentum=0.9), ({}, {"lr": 0.02, "momentum": 0.5})),
    "nesterov": (SGD, "SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                 ({}, {"lr": 0.02})),
    "adam": (Adam, "Adam", dict(lr=0.01), ({}, {"lr": 0.02, "betas": (0.8, 0.99)})),
    "rmsprop": (RMSprop, "RMSprop", dict(lr=0.01, momentum=0.5), ({}, {"lr": 0.005})),
}
KS, ALPHAS, PULLBACKS = (1, 5, 6), (0.5, 0.8), ("none", "reset", "pullback")


def makers(inner, k, alpha, pullback, **inner_extra):
    torch, Ref = require_torch(), reference()
    mcls, tname, kwargs, _ = INNER[inner]
    la = dict(k=k, alpha=alpha, pullback_momentum=pullback)
    mine = lambda groups: Lookahead(mcls(groups, **kwargs, **inner_extra), **la)
    ref = lambda groups: Ref(getattr(torch.optim, tname)(groups, **kwargs), **la)
    return mine, ref


def twins(inner, k, alpha, pullback, dtype, groups=None, **inner_extra):
    mine, ref = makers(inner, k, alpha, pullback, **inner_extra)
    overrides = INNER[inner][3] if groups is None else groups
    return Twins(lambda g, **_: mine(g), lambda g, **_: ref(g), {}, dtype, overrides)


def check_slow_weights(tw):
    "The slow copies (and slow momenta) equal the reference's, key by key."
    mine, ref = tw.mopt.state_dict()["lookahead_state"], tw.topt.state_dict()["lookahead_state"]
    assert sorted(mine) == sorted(ref)
    for key, state in ref.items():
        assert set(mine[key]) == set(state), key
        for name, value in state.items():
            assert_close(mine[key][name], value.detach().numpy(), tw.dtype, f"{key} {name}")


def check_base_state(tw):
    "The wrapped optimizers' state agrees where both have it (the reference adds zero buffers to Adam's)."
    mine, ref = tw.mopt.state_dict()["base_optimizer"], tw.topt.state_dict()["base_optimizer"]
    assert [g["counter"] for g in mine["param_groups"]] == [g["counter"] for g in ref["param_groups"]]
    for idx, state in mine["state"].items():
        for name, value in state.items():
            if name == "step": assert float(value) == float(ref["state"][idx][name])
            else: assert_close(value, ref["state"][idx][name].detach().numpy(), tw.dtype, f"{idx} {name}")


@pytest.mark.parametrize("pullback", PULLBACKS)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("inner", ["momentum", "adam"])
def test_parity_float64(inner, k, alpha, pullback):
    tw = twins(inner, k, alpha, pullback, np.float64)
    tw.run(60)   # 1e-12 relative after every step (stricter than the 1e-10 asked for)
    check_slow_weights(tw); check_base_state(tw)


@pytest.mark.parametrize("inner", ["sgd", "nesterov", "rmsprop"])
@pytest.mark.parametrize("pullback", PULLBACKS)
def test_parity_other_inner_optimizers(inner, pullback):
    tw = twins(inner, 5, 0.8, pullback, np.float64)
    tw.run(60)
    check_slow_weights(tw)


@pytest.mark.parametrize("pullback", PULLBACKS)
@pytest.mark.parametrize("inner", ["momentum", "adam"])
def test_parity_float32(inner, pullback):
    for k, alpha in [(5, 0.5), (6, 0.8)]:
        tw = twins(inner, k, alpha, pullback, np.float32)
        tw.run(60)
        check_slow_weights(tw)


@pytest.mark.parametrize("groups", [({},), ({}, {"lr": 0.02}, {"lr": 0.03})], ids=["one", "three"])
def test_parity_group_layouts(groups):
    tw = twins("momentum", 6, 0.5, "pullback", np.float64, groups=groups)
    tw.run(60)
    check_slow_weights(tw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("pullback", PULLBACKS)
@pytest.mark.parametrize("inner", ["momentum", "adam"])
def test_state_dict_round_trip_into_a_fresh_wrapper(inner, pullback, dtype):
    "Save mid-run (between two synchronisations), load into new parameters and a new wrapper: the run goes on."
    tw = twins(inner, 6, 0.8, pullback, dtype)
    tw.run(33)
    saved = copy.deepcopy(tw.mopt.state_dict())
    tw.reload_minima()
    assert tw.mopt.state_dict()["base_optimizer"]["param_groups"][0]["counter"] == 33 % 6
    tw.run(30)
    check_slow_weights(tw); check_base_state(tw)
    # the saved dict is a copy: the run did not change it
    later = tw.mopt.state_dict()["lookahead_state"]
    assert any(not np.array_equal(saved["lookahead_state"][key]["slow_params"], later[key]["slow_params"])
               for key in later)


def test_state_dict_layout_matches_the_reference():
    tw = twins("momentum", 5, 0.5, "pullback", np.float64)
    tw.run(12)
    mine, ref = tw.mopt.state_dict(), tw.topt.state_dict()
    assert set(mine) == set(ref) == {"lookahead_state", "base_optimizer"}
    assert sorted(mine["lookahead_state"]) == sorted(ref["lookahead_state"])
    assert set(mine["base_optimizer"]) == {"state", "param_groups"}
    for mg, rg in zip(mine["base_optimizer"]["param_groups"], ref["base_optimizer"]["param_groups"]):
        assert "counter" in mg and mg["params"] == rg["params"]


def test_saved_state_is_a_copy():
    p = Param(np.ones(3)); p.grad = np.ones(3)
    opt = Lookahead(SGD([p], lr=0.1), k=1)
    sd = opt.state_dict()
    opt.step()
    np.testing.assert_array_equal(sd["lookahead_state"][0, 0]["slow_params"], np.ones(3))
    other = Param(np.ones(3)); fresh = Lookahead(SGD([other], lr=0.1), k=1)
    fresh.load_state_dict(sd); sd["lookahead_state"][0, 0]["slow_params"][...] = 7
    assert np.array_equal(fresh.state[other]["slow_params"], np.ones(3))


def test_load_state_dict_refuses_other_parameters_and_changes_nothing():
    ps = [Param(np.arange(3.0)), Param(np.ones(2))]
    for p in ps: p.grad = np.ones_like(p.data)
    opt = Lookahead(SGD(ps, lr=0.1, momentum=0.9), k=2)
    opt.step(); opt.step(); opt.step()
    small = Lookahead(SGD([Param(np.zeros(3))], lr=0.1, momentum=0.9), k=2)
    small.state[small.param_groups[0]["params"][0]]  # nothing but a fresh wrapper
    before, data = copy.deepcopy(opt.state_dict()), [p.data.copy() for p in ps]
    with pytest.raises(ValueError, match="^lookahead state does not match the current parameters$"):
        opt.load_state_dict(small.state_dict())
    after = opt.state_dict()
    assert all(np.array_equal(p.data, d) for p, d in zip(ps, data))
    assert after["base_optimizer"]["param_groups"] == before["base_optimizer"]["param_groups"]
    for key, state in before["lookahead_state"].items():
        assert all(np.array_equal(v, after["lookahead_state"][key][n]) for n, v in state.items())
    for idx, state in before["base_optimizer"]["state"].items():
        assert all(np.array_equal(v, after["base_optimizer"]["state"][idx][n]) for n, v in state.items())


def test_defaults_and_signature_match_the_reference():
    Ref, torch = reference(), require_torch()
    mine, ref = inspect.signature(Lookahead), inspect.signature(Ref)
    assert [(p.name, p.default, p.kind) for p in mine.parameters.values()] == \
           [(p.name, p.default, p.kind) for p in ref.parameters.values()]
    p = Param(np.zeros(2)); t = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    m, r = Lookahead(SGD([p], lr=0.1)), Ref(torch.optim.SGD([t], lr=0.1))
    extra = {"differentiable"}   # a torch-only key of torch's SGD
    assert set(m.defaults) == set(r.defaults) - extra
    for key in ("lookahead_alpha", "lookahead_k", "lookahead_pullback_momentum"):
        assert m.defaults[key] == r.defaults[key]
    assert (m.k, m.alpha, m.pullback_momentum) == (r.k, r.alpha, r.pullback_momentum) == (5, 0.5, "none")
    assert m.param_groups is m.optimizer.param_groups
    assert m.param_groups[0]["counter"] == r.param_groups[0]["counter"] == 0


def test_accepts_a_class_with_params():
    Ref, torch = reference(), require_torch()
    p = Param(np.ones(2))
    opt = Lookahead(SGD, params=[p], lr=0.25, momentum=0.5, k=3)
    assert isinstance(opt.optimizer, SGD) and opt.param_groups[0]["lr"] == 0.25 and opt.k == 3
    r = Ref(torch.optim.SGD, params=[torch.ones(2, requires_grad=True)], lr=0.25, momentum=0.5, k=3)
    assert r.param_groups[0]["lr"] == 0.25


BAD = [dict(k=0), dict(k=-1), dict(k=-0.5), dict(alpha=1.0), dict(alpha=-0.1), dict(alpha=1.5),
       dict(pullback_momentum="zero"), dict(pullback_momentum="None"), dict(k=0, alpha=2.0)]


@pytest.mark.parametrize("bad", BAD, ids=str)
def test_validation_errors_match_the_reference_and_change_nothing(bad):
    Ref, torch = reference(), require_torch()
    p = Param(np.arange(3.0)); p.grad = np.ones(3)
    inner = SGD([p], lr=0.1, momentum=0.9); inner.step()
    before = copy.deepcopy(inner.state_dict()); data = p.data.copy()
    with pytest.raises(Exception) as mine: Lookahead(inner, **bad)
    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(Exception) as ref: Ref(torch.optim.SGD([t], lr=0.1), **bad)
    assert (mine.type, str(mine.value)) == (ref.type, str(ref.value))
    assert np.array_equal(p.data, data) and np.array_equal(p.grad, np.ones(3))
    after = inner.state_dict()
    assert after["param_groups"] == before["param_groups"] and "counter" not in inner.param_groups[0]
    assert np.array_equal(after["state"][0]["momentum_buffer"], before["state"][0]["momentum_buffer"])


def test_a_class_without_params_is_refused_like_the_reference():
    Ref, torch = reference(), require_torch()
    with pytest.raises(ValueError) as mine: Lookahead(SGD, lr=0.1)
    with pytest.raises(ValueError) as ref: Ref(torch.optim.SGD, lr=0.1)
    assert str(mine.value) == str(ref.value)


def test_scheduler_drives_the_wrapped_optimizer_like_the_reference():
    "minima's StepLR on Lookahead(SGD) = StepLR on SGD for the lr; = torch's StepLR on the reference for params."
    Ref, torch = reference(), require_torch()
    x = np.linspace(-1, 1, 4)
    p, q, t = Param(x.copy()), Param(x.copy()), torch.tensor(x.copy(), requires_grad=True)
    la = Lookahead(SGD([p], lr=0.1, momentum=0.9), k=3)
    plain = SGD([q], lr=0.1, momentum=0.9)
    ref = Ref(torch.optim.SGD([t], lr=0.1, momentum=0.9), k=3)
    s_la = lr_scheduler.StepLR(la, step_size=4, gamma=0.5)
    s_plain = lr_scheduler.StepLR(plain, step_size=4, gamma=0.5)
    s_ref = torch.optim.lr_scheduler.StepLR(ref, step_size=4, gamma=0.5)
    for _ in range(20):
        g = 0.5 * p.data + 1.0
        p.grad, q.grad, t.grad = g.copy(), g.copy(), torch.from_numpy(g.copy())
        la.step(); plain.step(); ref.step()
        s_la.step(); s_plain.step(); s_ref.step()
        assert s_la.get_last_lr() == s_plain.get_last_lr() == s_ref.get_last_lr()
        assert la.optimizer.param_groups[0]["lr"] == plain.param_groups[0]["lr"]
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert la.param_groups[0]["initial_lr"] == 0.1


def test_zero_grad_and_add_param_group_pass_through():
    Ref, torch = reference(), require_torch()
    a, b = Param(np.ones(2)), Param(np.full(3, 2.0))
    opt = Lookahead(SGD([a], lr=0.1), k=2, pullback_momentum="pullback")
    a.grad = np.ones(2); opt.zero_grad(); assert a.grad is None
    a.grad = np.ones(2); opt.zero_grad(set_to_none=False); assert np.array_equal(a.grad, np.zeros(2))
    opt.add_param_group({"params": [b], "lr": 0.5})
    assert len(opt.optimizer.param_groups) == 2 and opt.param_groups[1]["counter"] == 0
    assert np.array_equal(opt.state[b]["slow_params"], b.data) and opt.state[b]["slow_params"] is not b.data
    assert np.array_equal(opt.state[b]["slow_momentum"], np.zeros(3))
    # numbers after add_param_group agree with the reference
    ta, tb = torch.ones(2, dtype=torch.float64, requires_grad=True), torch.full((3,), 2.0, dtype=torch.float64,
                                                                                requires_grad=True)
    ref = Ref(torch.optim.SGD([ta], lr=0.1), k=2, pullback_momentum="pullback")
    ref.add_param_group({"params": [tb], "lr": 0.5})
    a.data[...] = 1.0
    for step in range(7):
        for m, t in ((a, ta), (b, tb)):
            g = m.data * 0.3 + step
            m.grad, t.grad = g.copy(), torch.from_numpy(g.copy())
        opt.step(); ref.step()
        np.testing.assert_allclose(b.data, tb.detach().numpy(), rtol=1e-12)


def test_parameters_without_gradients_at_a_sync_keep_their_slow_copy():
    a, b = Param(np.array([1.0])), Param(np.array([2.0]))
    opt = Lookahead(SGD([a, b], lr=0.1), k=2)
    a.grad = b.grad = np.array([1.0]); opt.step()
    b.grad = None; opt.step()
    assert opt.state[b]["slow_params"][0] == 2.0 and b.data[0] == 1.9
    assert a.data[0] == opt.state[a]["slow_params"][0]


def test_closure_and_hooks():
    p = Param(np.ones(2))
    opt = Lookahead(SGD([p], lr=0.1))
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    def closure():
        p.grad = p.data.copy(); calls.append("closure"); return 3.0
    assert opt.step(closure) == 3.0 and calls == ["pre", "closure", "post"]


def test_backup_and_restore_the_fast_weights():
    p = Param(np.array([1.0, -1.0]))
    opt = Lookahead(SGD([p], lr=0.1), k=5)
    for _ in range(7): p.grad = p.data.copy(); opt.step()
    fast, view = p.data.copy(), p.data
    opt.backup_and_load_cache()
    assert p.data is view and np.array_equal(p.data, opt.state[p]["slow_params"])
    opt.clear_and_load_backup()
    assert p.data is view and np.array_equal(p.data, fast) and "backup_params" not in opt.state[p]


def test_momentum_modes_leave_an_optimizer_without_a_buffer_alone():
    for mode in ("reset", "pullback"):
        p = Param(np.ones(3))
        opt = Lookahead(Adam([p], lr=0.1), k=1, pullback_momentum=mode)
        for _ in range(3): p.grad = p.data.copy(); opt.step()
        assert set(opt.optimizer.state[p]) == {"step", "exp_avg", "exp_avg_sq"}


def test_kernel_on_numbers_and_arrays():
    for alpha in (0.5, 0.8, 0.0, 0.3):
        c = lookahead_constants(alpha=alpha)
        fast, slow = np.array([3.0, -1.0]), np.array([1.0, 1.0])
        expected = [lookahead_rule(c, float(f), float(s))[0] for f, s in zip(fast, slow)]
        lookahead([fast], [slow], alpha=alpha)
        assert np.array_equal(fast, expected) and np.array_equal(slow, expected)
        np.testing.assert_allclose(fast, [1 + alpha * 2, 1 - alpha * 2], rtol=1e-15)


def test_kernel_compiles_bitwise():
    pytest.importorskip("numba")
    from minima.fast.fused import compiled
    rng = np.random.default_rng(0)
    for dtype, alpha in itertools.product((np.float32, np.float64), (0.5, 0.8, 0.3)):
        f, s = rng.standard_normal(1000).astype(dtype), rng.standard_normal(1000).astype(dtype)
        f2, s2 = f.copy(), s.copy()
        lookahead([f], [s], alpha=alpha); lookahead([f2], [s2], alpha=alpha, apply=compiled)
        assert np.array_equal(f, f2) and np.array_equal(s, s2)


# ---- the wrapped optimizer's fast paths still run, bitwise equal to foreach=False ----
FAST_INNER = [(SGD, dict(lr=0.05)), (SGD, dict(lr=0.05, momentum=0.9)),
              (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
              (SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, maximize=True)),
              (Adam, dict(lr=0.01)), (Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
              (RMSprop, dict(lr=0.01, momentum=0.5))]


def run_wrapped(cls, kwargs, switch, pullback, dtype, steps=40):
    arrays = initial_arrays(dtype) + initial_arrays(dtype, seed=3)   # 12 parameters: enough to go flat
    params = [Param(a.copy()) for a in arrays]
    opt = Lookahead(cls(split_groups(params, ({}, {"lr": 0.02})), **kwargs, **switch), k=5, alpha=0.8,
                    pullback_momentum=pullback)
    rng = np.random.default_rng(1)
    for step in range(steps):
        grads = make_grads([p.data for p in params], step, rng, dtype)
        for p, g in zip(params, grads): p.grad = g
        opt.step()
    return params, opt


@pytest.mark.parametrize("switch", [dict(foreach=True), dict(foreach=None), dict(fused=True)], ids=str)
@pytest.mark.parametrize("pullback", PULLBACKS)
@pytest.mark.parametrize("inner", range(len(FAST_INNER)), ids=lambda i: f"{FAST_INNER[i][0].__name__}{i}")
def test_fast_paths_under_the_wrapper_are_bitwise_equal(inner, pullback, switch):
    if "fused" in switch: pytest.importorskip("numba")
    cls, kwargs = FAST_INNER[inner]
    for dtype in (np.float32, np.float64):
        ref_params, ref_opt = run_wrapped(cls, kwargs, dict(foreach=False), pullback, dtype)
        params, opt = run_wrapped(cls, kwargs, switch, pullback, dtype)
        for p, r in zip(params, ref_params): assert np.array_equal(p.data, r.data)
        for p, r in zip(params, ref_params):
            for key, value in ref_opt.state[r].items(): assert np.array_equal(opt.state[p][key], value)
        if switch.get("foreach") is True:   # the flat buffers really were used, and still are
            assert opt.optimizer.__dict__.get("_flat_buffers")
            assert all(p.data.base is not None for p in params if p.grad is not None)
