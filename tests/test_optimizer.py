"The Optimizer base class: groups, errors (PyTorch's), zero_grad, hooks, state_dict, repr."
import copy, warnings
import numpy as np
import pytest
from parity import Param
from minima.optim.optimizer import (Optimizer, params_with_grad, param_groups_no_decay, is_parameter,
                                    validate_lr, validate_momentum, validate_weight_decay, validate_eps, validate_betas)
from minima.optim.sgd import SGD


class Scale(Optimizer):
    "A tiny optimizer with state: p -= lr * g, counts its steps in state['step']."
    def __init__(self, params, lr=0.1, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, maximize=False, foreach=None))

    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for p in params_with_grad(group):
                state = self.state[p]
                state.setdefault("step", np.zeros((), np.float64))
                state.setdefault("avg", np.zeros_like(p.data))
                state["step"] += 1
                state["avg"] += p.grad
                p.data -= group["lr"] * p.grad
        return loss


def params(n=3, dtype=np.float64):
    return [Param(np.arange(i + 2, dtype=dtype)) for i in range(n)]


def snapshot(opt):
    return copy.deepcopy((opt.param_groups, dict(opt.state)))


def assert_unchanged(opt, before):
    groups, state = before
    assert len(opt.param_groups) == len(groups)
    for g, h in zip(opt.param_groups, groups):
        assert {k: v for k, v in g.items() if k != "params"} == {k: v for k, v in h.items() if k != "params"}
        assert len(g["params"]) == len(h["params"])
    assert len(opt.state) == len(state)
    for (p, s), (q, t) in zip(opt.state.items(), state.items()):
        assert set(s) == set(t) and all(np.array_equal(s[k], t[k]) for k in s)


# --- construction and errors, against torch ---------------------------------------------------------

def message(fn):
    with pytest.raises((TypeError, ValueError)) as info: fn()
    return type(info.value), str(info.value)


def test_errors_match_torch(torch):
    p, t = Param(np.zeros(2)), torch.zeros(2, requires_grad=True)
    cases = [lambda x: [], lambda x: [{"params": {x}}], lambda x: [{"params": [x]}, {"params": [x]}]]
    for case in cases:
        assert message(lambda: SGD(case(p))) == message(lambda: torch.optim.SGD(case(t)))
    # a parameter among group dicts: same error, naming each library's own type
    kind, text = message(lambda: SGD([{"params": [p]}, p]))
    assert (kind, text) == (TypeError, f"param_group must be a dict, but got {type(p)}")
    assert message(lambda: torch.optim.SGD([{"params": [t]}, t]))[1] == f"param_group must be a dict, but got {type(t)}"


def test_single_parameter_is_refused(torch):
    kind, text = message(lambda: SGD(Param(np.zeros(2))))
    tkind, ttext = message(lambda: torch.optim.SGD(torch.zeros(2)))
    assert kind is tkind is TypeError
    assert text.startswith("params argument given to the optimizer should be an iterable of Tensors or dicts, but got")
    assert "Param" in text and ttext.startswith(text.split(", but got")[0])


@pytest.mark.parametrize("bad", [np.zeros(3), 1.5, "w", object()])
def test_non_parameter_is_refused_naming_its_type(bad):
    kind, text = message(lambda: SGD([Param(np.zeros(2)), bad]))
    assert kind is TypeError and text.startswith("optimizer can only optimize Tensors, but one of the params is")
    assert type(bad).__name__ in text


def test_empty_and_set():
    assert message(lambda: SGD([])) == (ValueError, "optimizer got an empty parameter list")
    kind, text = message(lambda: SGD([{"params": {Param(np.zeros(1))}}]))
    assert kind is TypeError and "Please use a list instead." in text


def test_duplicate_in_one_group_warns_like_torch(torch):
    p, t = Param(np.zeros(2)), torch.zeros(2, requires_grad=True)
    with pytest.warns(UserWarning, match="duplicate parameters") as mine:
        opt = SGD([p, p], lr=0.1)
    with pytest.warns(UserWarning) as theirs:
        topt = torch.optim.SGD([t, t], lr=0.1)
    assert str(mine[0].message) == str(theirs[0].message)
    # both keep the duplicate, so the parameter is updated twice per step
    p.grad, t.grad = np.ones(2), torch.ones(2)
    opt.step(); topt.step()
    assert len(opt.param_groups[0]["params"]) == 2 and np.allclose(p.data, -0.2) and np.allclose(t.detach().numpy(), -0.2)


def test_failed_add_param_group_changes_nothing():
    ps = params()
    opt = Scale([{"params": ps[:2]}], lr=0.1)
    for p in ps[:2]: p.grad = np.ones_like(p.data)
    opt.step()
    before = snapshot(opt)
    for bad in [{"params": [ps[0], ps[2]]}, {"params": {ps[2]}}, {"params": [ps[2], np.zeros(2)]}, [ps[2]],
                {"lr": 0.1}]:
        with pytest.raises((TypeError, ValueError, KeyError)): opt.add_param_group(bad)   # KeyError: no params, as torch
        assert_unchanged(opt, before)


def test_groups_take_missing_values_from_defaults_and_caller_dict_is_not_modified():
    ps = params()
    given = {"params": ps[1:], "lr": 0.01}
    opt = Scale([{"params": ps[:1]}, given], lr=0.1, weight_decay=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert all(g["weight_decay"] == 0.5 for g in opt.param_groups)
    assert given == {"params": ps[1:], "lr": 0.01}
    assert all(isinstance(g["params"], list) for g in opt.param_groups)


def test_add_param_group_and_generator_params():
    ps = params()
    opt = Scale(p for p in ps[:2])
    opt.add_param_group({"params": ps[2], "lr": 1.0})  # a single parameter becomes a list, as in torch
    assert opt.param_groups[1]["params"] == [ps[2]] and opt.param_groups[1]["lr"] == 1.0


def test_is_parameter():
    assert is_parameter(Param(np.zeros(1))) and not is_parameter(np.zeros(1)) and not is_parameter(3.0)


# --- step, grads, closure ------------------------------------------------------------------------------

def test_parameters_without_grad_are_skipped():
    ps = params()
    ps[0].grad = np.ones_like(ps[0].data)
    start = [p.data.copy() for p in ps]
    opt = Scale(ps, lr=0.5)
    opt.step()
    assert list(opt.state) == [ps[0]]
    assert not np.array_equal(ps[0].data, start[0])
    assert all(np.array_equal(p.data, s) for p, s in zip(ps[1:], start[1:]))
    assert params_with_grad(opt.param_groups[0]) == [ps[0]]


def test_zero_grad_both_modes():
    ps = params()
    for p in ps[:2]: p.grad = np.ones_like(p.data)
    arrays = [ps[0].grad, ps[1].grad]
    opt = Scale(ps)
    opt.zero_grad(set_to_none=False)
    assert ps[0].grad is arrays[0] and ps[1].grad is arrays[1]  # the same arrays, zeroed in place
    assert all(not a.any() for a in arrays) and ps[2].grad is None
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


def test_closure_value_is_returned():
    p = Param(np.ones(2))
    opt = SGD([p], lr=0.1)
    def closure():
        p.grad = 2 * p.data
        return float(p.data @ p.data)
    assert opt.step(closure) == 2.0 and np.allclose(p.data, 0.8)
    assert opt.step() is None


def test_base_step_is_abstract():
    "The base class steps its groups, but the update itself (`_update`) is the subclass's."
    p = Param(np.zeros(1)); p.grad = np.ones(1)
    with pytest.raises(NotImplementedError):
        Optimizer([p], {}).step()


# --- hooks -----------------------------------------------------------------------------------------------

def test_hooks_order_arguments_and_removal():
    p = Param(np.ones(1)); p.grad = np.ones(1)
    opt = SGD([p], lr=0.1)
    log = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: log.append(("pre1", o is opt, a[0] is opt, dict(k))))
    h2 = opt.register_step_pre_hook(lambda o, a, k: log.append(("pre2",)))
    h3 = opt.register_step_post_hook(lambda o, a, k: log.append(("post", float(p.data[0]))))
    opt.step()
    assert log == [("pre1", True, True, {}), ("pre2",), ("post", 0.9)]
    h1.remove(); h3.remove()
    log.clear(); opt.step()
    assert log == [("pre2",)]
    h2.remove(); h2.remove()  # removing twice is harmless
    log.clear(); opt.step()
    assert log == []


def test_pre_hook_can_replace_arguments():
    p = Param(np.ones(1))
    opt = SGD([p], lr=0.1)
    def closure():
        p.grad = np.ones(1)
        return 42.0
    opt.register_step_pre_hook(lambda o, args, kwargs: ((args[0],), {"closure": closure}))
    assert opt.step() == 42.0 and np.allclose(p.data, 0.9)


def test_bad_pre_hook_result_raises():
    opt = SGD([Param(np.ones(1))])
    opt.register_step_pre_hook(lambda o, a, k: "nonsense")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()


def test_hooks_run_once_when_a_subclass_calls_super_step():
    class Louder(SGD):
        def step(self, closure=None):
            return super().step(closure)
    p = Param(np.ones(1)); p.grad = np.ones(1)
    opt, calls = Louder([p], lr=0.1), []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.step()
    assert calls == ["pre", "post"] and np.allclose(p.data, 0.9)


# --- state_dict ------------------------------------------------------------------------------------------

def trained(dtype=np.float64, steps=3):
    ps = params(dtype=dtype)
    opt = Scale([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.01}])
    for _ in range(steps):
        for p in ps[:2]: p.grad = np.ones_like(p.data)
        opt.step()
    return ps, opt


def test_state_dict_layout_and_copies():
    ps, opt = trained()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1, 2]]
    assert sorted(sd["state"]) == [0, 1] and set(sd["state"][0]) == {"step", "avg"}
    assert [g["lr"] for g in sd["param_groups"]] == [0.1, 0.01]
    sd["state"][0]["avg"] += 100; sd["param_groups"][0]["lr"] = 5.0  # the saved dict is a copy
    assert opt.state[ps[0]]["avg"].max() < 100 and opt.param_groups[0]["lr"] == 0.1


def test_state_dict_matches_torch_layout(torch):
    ps = params()
    ts = [torch.tensor(p.data.copy(), requires_grad=True) for p in ps]
    groups = lambda xs: [{"params": xs[:1]}, {"params": xs[1:], "lr": 0.01}]
    mine, theirs = SGD(groups(ps), lr=0.1, momentum=0.9), torch.optim.SGD(groups(ts), lr=0.1, momentum=0.9)
    for p, t in zip(ps[1:], ts[1:]):
        p.grad = np.ones_like(p.data); t.grad = torch.ones_like(t)
    mine.step(); theirs.step()
    m, t = mine.state_dict(), theirs.state_dict()
    assert sorted(m["state"]) == sorted(t["state"]) == [1, 2]
    assert [g["params"] for g in m["param_groups"]] == [g["params"] for g in t["param_groups"]]
    assert list(m["param_groups"][0])[-1] == "params" == list(t["param_groups"][0])[-1]


def test_load_state_dict_restores_and_copies():
    ps, opt = trained()
    sd = opt.state_dict()
    qs = [Param(p.data.copy()) for p in ps]
    new = Scale([{"params": qs[:1]}, {"params": qs[1:]}], lr=0.3)
    new.load_state_dict(sd)
    assert [g["lr"] for g in new.param_groups] == [0.1, 0.01]  # saved hyper-parameters replace the current ones
    assert new.param_groups[1]["params"] == qs[1:]
    assert np.array_equal(new.state[qs[0]]["avg"], opt.state[ps[0]]["avg"])
    sd["state"][0]["avg"] += 1  # loading copied the arrays
    assert not np.array_equal(new.state[qs[0]]["avg"], sd["state"][0]["avg"])


def test_load_casts_floating_state_except_step():
    ps, opt = trained(np.float64)
    sd = opt.state_dict()
    qs = [Param(p.data.astype(np.float32)) for p in ps]
    new = Scale([{"params": qs[:1]}, {"params": qs[1:]}])
    new.load_state_dict(sd)
    assert new.state[qs[0]]["avg"].dtype == np.float32
    assert new.state[qs[0]]["step"].dtype == np.float64 and float(new.state[qs[0]]["step"]) == 3


def test_load_cast_matches_torch(torch):
    t64 = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    t32 = torch.zeros(2, dtype=torch.float32, requires_grad=True)
    src = torch.optim.Adam([t64]); t64.grad = torch.ones(2, dtype=torch.float64); src.step()
    dst = torch.optim.Adam([t32]); dst.load_state_dict(src.state_dict())
    assert dst.state[t32]["exp_avg"].dtype == torch.float32 and dst.state[t32]["step"].dtype == torch.float32
    # torch keeps the saved step tensor's dtype (float32 here): so does minima (float64 stays float64 above)


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd["param_groups"].pop(), "loaded state dict has a different number of parameter groups"),
    (lambda sd: sd["param_groups"][1]["params"].pop(),
     "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"),
])
def test_load_errors_change_nothing(change, message):
    ps, opt = trained()
    sd = opt.state_dict(); change(sd)
    before = snapshot(opt)
    with pytest.raises(ValueError) as info: opt.load_state_dict(sd)
    assert str(info.value) == message
    assert_unchanged(opt, before)


def test_load_errors_match_torch(torch):
    a, b = torch.optim.SGD([torch.zeros(1, requires_grad=True)]), torch.optim.SGD([torch.zeros(1, requires_grad=True)] * 0 + [torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)])
    with pytest.raises(ValueError) as theirs: a.load_state_dict(b.state_dict())
    x, y = SGD([Param(np.zeros(1))]), SGD([Param(np.zeros(1)), Param(np.zeros(1))])
    with pytest.raises(ValueError) as mine: x.load_state_dict(y.state_dict())
    assert str(mine.value) == str(theirs.value)


# --- repr, validation helpers, groups without decay ---------------------------------------------------------

def test_repr_matches_torch(torch):
    mine = SGD([Param(np.zeros(1))], lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    drop = lambda text: "\n".join(l for l in text.splitlines() if l.split(":")[0].strip() not in
                                  {"capturable", "differentiable"})
    assert repr(mine) == drop(repr(theirs))
    assert repr(mine).startswith("SGD (\nParameter Group 0\n    dampening: 0\n")


@pytest.mark.parametrize("check, bad, text", [
    (validate_lr, -1e-3, "Invalid learning rate: -0.001"), (validate_lr, float("nan"), "Invalid learning rate: nan"),
    (validate_momentum, -1, "Invalid momentum value: -1"), (validate_weight_decay, -0.1, "Invalid weight_decay value: -0.1"),
    (validate_eps, -1e-8, "Invalid epsilon value: -1e-08"), (validate_betas, (1.0, 0.9), "Invalid beta parameter at index 0: 1.0"),
    (validate_betas, (0.9, -0.1), "Invalid beta parameter at index 1: -0.1"),
])
def test_validation_helpers(check, bad, text):
    with pytest.raises(ValueError) as info: check(bad)
    assert str(info.value) == text


def test_validation_helpers_accept_edges():
    validate_lr(0); validate_momentum(0.0); validate_weight_decay(0); validate_eps(0.0); validate_betas((0.0, 0.999))


def test_param_groups_no_decay():
    named = [("fc.weight", Param(np.zeros((3, 2)))), ("fc.bias", Param(np.zeros(3))), ("norm.weight", Param(np.ones(3))),
             ("conv.weight", Param(np.zeros((2, 2, 3)))), ("layernorm.gain", Param(np.ones((1, 3))))]
    decay, no_decay = param_groups_no_decay(named, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["params"] == [named[0][1], named[3][1]]
    assert no_decay["params"] == [named[1][1], named[2][1], named[4][1]]
    opt = SGD(param_groups_no_decay(named, 0.1), lr=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert param_groups_no_decay(named[:1], 0.1) == [{"params": [named[0][1]], "weight_decay": 0.1}]


def test_param_groups_no_decay_with_minima_nn():
    nn = pytest.importorskip("minima.nn")
    if not hasattr(nn, "Linear"): pytest.skip("minima.nn has no Linear yet")
    model = nn.Linear(3, 2)
    groups = param_groups_no_decay(model.named_parameters(), 0.01)
    assert [len(g["params"]) for g in groups] == [1, 1] and groups[0]["params"][0].data.ndim == 2
