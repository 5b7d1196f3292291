"""Named parameters (`(name, parameter)` pairs, PyTorch >= 2.6) and `load_state_dict` refusing a state that does not fit.

Names: the groups, `state_dict()` and the errors are held to torch 2.13's; every other optimizer of minima runs
the same numbers with and without names (the names only label). Refusals: a state array of the wrong shape or
kind raises a ValueError naming the parameter, before anything changes.
"""
import copy, re, warnings
import numpy as np
import pytest
from parity import Param, TORCH_ONLY_GROUP_KEYS, assert_close

from minima.optim.optimizer import Optimizer
from minima.optim.sgd import SGD
from minima.optim.adam import Adam
from minima.optim.adafactor import Adafactor
from minima.optim.lbfgs import LBFGS
from minima.optim.lion import Lion
from minima.optim.lookahead import Lookahead
from minima.optim.prodigy import Prodigy
from minima.optim.rprop import Rprop
from minima.optim.schedule_free import AdamWScheduleFree, SGDScheduleFree

SHAPES = [(3, 4), (5,), (2, 3)]
NAMES = ["fc.weight", "fc.bias", "head.weight"]


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in SHAPES]


def twins(torch, seed=0):
    a = arrays(seed)
    return [Param(x.copy()) for x in a], [torch.tensor(x.copy(), requires_grad=True) for x in a]


def give_grads(torch, mparams, tparams, step):
    rng = np.random.default_rng(100 + step)
    for m, t in zip(mparams, tparams):
        g = rng.standard_normal(m.data.shape)
        m.grad, t.grad = g.copy(), torch.from_numpy(g.copy())


def without_torch_keys(group):
    "A group dict's items in order, without torch's CUDA/autograd keys and with params as a list."
    return [(k, v) for k, v in group.items() if k not in TORCH_ONLY_GROUP_KEYS]


def assert_groups_match(mine, theirs, *, params_as_index=True):
    assert len(mine) == len(theirs)
    for mg, tg in zip(mine, theirs):
        mi, ti = without_torch_keys(mg), without_torch_keys(tg)
        assert [k for k, _ in mi] == [k for k, _ in ti], "group keys (in order)"
        for (k, mv), (_, tv) in zip(mi, ti):
            if k == "params" and not params_as_index:
                assert len(mv) == len(tv)
            else:
                assert mv == tv, k


def error_of(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 -- the type is what is compared
        return type(e), str(e)
    return None


# --- named parameters, against torch ---------------------------------------------------------------------------

def test_named_parameters_make_one_group_with_names(torch):
    mp, tp = twins(torch)
    mopt = SGD(zip(NAMES, mp), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(zip(NAMES, tp), lr=0.1, momentum=0.9)
    assert mopt.param_groups[0]["param_names"] == NAMES
    assert all(a is b for a, b in zip(mopt.param_groups[0]["params"], mp))
    assert_groups_match(mopt.param_groups, topt.param_groups, params_as_index=False)
    for step in range(4):
        give_grads(torch, mp, tp, step)
        mopt.step(); topt.step()
    for m, t in zip(mp, tp):
        assert_close(m.data, t.detach().numpy(), np.float64, "param")
    assert_groups_match(mopt.state_dict()["param_groups"], topt.state_dict()["param_groups"])


def test_groups_of_pairs_keep_names_per_group(torch):
    mp, tp = twins(torch)

    def groups(ps):
        return [{"params": [(NAMES[0], ps[0]), (NAMES[2], ps[2])], "lr": 0.05}, {"params": [(NAMES[1], ps[1])]}]

    mopt, topt = Adam(groups(mp), lr=0.1), torch.optim.Adam(groups(tp), lr=0.1)
    assert [g["param_names"] for g in mopt.param_groups] == [[NAMES[0], NAMES[2]], [NAMES[1]]]
    for step in range(3):
        give_grads(torch, mp, tp, step)
        mopt.step(); topt.step()
    ms, ts = mopt.state_dict(), topt.state_dict()
    assert_groups_match(ms["param_groups"], ts["param_groups"])
    assert sorted(ms["state"]) == sorted(ts["state"])
    for i, tstate in ts["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            assert_close(ms["state"][i][k], tstate[k].numpy(), np.float64, f"state {i} {k}")


def test_a_user_param_names_key_is_kept_as_torch_does(torch):
    mp, tp = twins(torch)
    mopt = SGD([{"params": mp[:2], "param_names": ["x", "y"]}], lr=0.1)
    topt = torch.optim.SGD([{"params": tp[:2], "param_names": ["x", "y"]}], lr=0.1)
    assert_groups_match(mopt.state_dict()["param_groups"], topt.state_dict()["param_groups"])
    # and it counts as "with names" for the next group
    mine = error_of(lambda: mopt.add_param_group({"params": [mp[2]]}))
    assert mine is not None and mine == error_of(lambda: topt.add_param_group({"params": [tp[2]]}))


def test_caller_group_is_not_modified():
    mp = [Param(a) for a in arrays()]
    group = {"params": list(zip(NAMES, mp)), "lr": 0.1}
    before = copy.copy(group["params"])
    SGD([group])
    assert set(group) == {"params", "lr"} and group["params"] == before


@pytest.mark.parametrize("case", ["some names missing", "group with names after one without",
                                  "group without names after one with", "pair of a non-parameter"])
def test_name_errors_match_torch_and_change_nothing(torch, case):
    mp, tp = twins(torch)

    def build(ps, cls):
        if case == "some names missing":
            return lambda: cls([(NAMES[0], ps[0]), ps[1]], lr=0.1)
        if case == "group with names after one without":
            return lambda: cls([{"params": [ps[0]]}, {"params": [(NAMES[1], ps[1])]}], lr=0.1)
        if case == "group without names after one with":
            return lambda: cls([{"params": [(NAMES[0], ps[0])]}, {"params": [ps[1]]}], lr=0.1)
        return lambda: cls([(NAMES[0], ps[0]), (NAMES[1], 3.0)], lr=0.1)

    mine, theirs = error_of(build(mp, SGD)), error_of(build(tp, torch.optim.SGD))
    assert theirs is not None and mine == theirs
    for m, a in zip(mp, arrays()):
        np.testing.assert_array_equal(m.data, a)


@pytest.mark.parametrize("named_first", [True, False])
def test_add_param_group_with_and_without_names(torch, named_first):
    mp, tp = twins(torch)

    def start(ps, cls):
        first = [(NAMES[0], ps[0])] if named_first else [ps[0]]
        opt = cls(first, lr=0.1, momentum=0.9)
        return opt

    mopt, topt = start(mp, SGD), start(tp, torch.optim.SGD)
    give_grads(torch, mp, tp, 0)
    mopt.step(); topt.step()
    before = copy.deepcopy(mopt.state_dict())
    bad_m = {"params": [mp[1]]} if named_first else {"params": [(NAMES[1], mp[1])]}
    bad_t = {"params": [tp[1]]} if named_first else {"params": [(NAMES[1], tp[1])]}
    mine, theirs = error_of(lambda: mopt.add_param_group(bad_m)), error_of(lambda: topt.add_param_group(bad_t))
    assert theirs is not None and mine == theirs
    assert_state_dicts_equal(mopt.state_dict(), before)
    good = (lambda ps: {"params": [(NAMES[1], ps[1])], "lr": 0.01}) if named_first else \
        (lambda ps: {"params": [ps[1]], "lr": 0.01})
    mopt.add_param_group(good(mp)); topt.add_param_group(good(tp))
    assert_groups_match(mopt.state_dict()["param_groups"], topt.state_dict()["param_groups"])


def test_names_are_checked_before_the_duplicate_check_as_torch(torch):
    "Names across groups disagree and the parameter is already in a group: torch reports the names."
    mp, tp = twins(torch)
    mopt, topt = SGD([(NAMES[0], mp[0])], lr=0.1), torch.optim.SGD([(NAMES[0], tp[0])], lr=0.1)
    mine = error_of(lambda: mopt.add_param_group({"params": [mp[0]]}))
    assert mine == error_of(lambda: topt.add_param_group({"params": [tp[0]]}))


def test_duplicates_are_numbered_as_torch(torch):
    mp, tp = twins(torch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mopt = SGD([{"params": [mp[0], mp[0], mp[1]]}, {"params": [mp[2]]}], lr=0.1)
        topt = torch.optim.SGD([{"params": [tp[0], tp[0], tp[1]]}, {"params": [tp[2]]}], lr=0.1)
    assert [g["params"] for g in mopt.state_dict()["param_groups"]] == \
        [g["params"] for g in topt.state_dict()["param_groups"]]


@pytest.mark.parametrize("saved_named,current_named", [(True, False), (False, True), (True, True)])
def test_load_state_dict_with_names(torch, saved_named, current_named):
    "Saved names replace the current ones; saved groups without names keep the current names (torch's rule)."
    mp, tp = twins(torch)

    def opt(cls, ps, named, names=NAMES):
        return cls(list(zip(names, ps)) if named else ps, lr=0.1, momentum=0.9)

    msrc, tsrc = opt(SGD, mp, saved_named), opt(torch.optim.SGD, tp, saved_named)
    for step in range(2):
        give_grads(torch, mp, tp, step)
        msrc.step(); tsrc.step()
    other = ["a", "b", "c"]
    mp2, tp2 = twins(torch, seed=1)
    mdst, tdst = opt(SGD, mp2, current_named, other), opt(torch.optim.SGD, tp2, current_named, other)
    mdst.load_state_dict(msrc.state_dict()); tdst.load_state_dict(tsrc.state_dict())
    assert_groups_match(mdst.param_groups, tdst.param_groups, params_as_index=False)
    assert mdst.param_groups[0]["param_names"] == (NAMES if saved_named else other)
    for step in range(2, 4):
        give_grads(torch, mp2, tp2, step)
        mdst.step(); tdst.step()
    for m, t in zip(mp2, tp2):
        assert_close(m.data, t.detach().numpy(), np.float64, "param after the load")


# --- the other optimizers run the same numbers with names -----------------------------------------------------

def quadratic_closure(params, scale=1.0):
    def closure():
        loss = 0.0
        for i, p in enumerate(params):
            p.grad = scale * (1.0 + i) * p.data - 0.3
            loss += float(0.5 * scale * (1.0 + i) * np.sum(p.data ** 2) - 0.3 * np.sum(p.data))
        return loss
    return closure


OTHERS = {
    "SGD": lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "Rprop": lambda ps: Rprop(ps, lr=0.01),
    "Adafactor": lambda ps: Adafactor(ps, lr=0.01),
    "Lion": lambda ps: Lion(ps, lr=1e-3),
    "LBFGS": lambda ps: LBFGS(ps, lr=0.5, history_size=3),
    "LBFGS strong_wolfe": lambda ps: LBFGS(ps, line_search_fn="strong_wolfe"),
    "Prodigy": lambda ps: Prodigy(ps, lr=1.0),
    "SGDScheduleFree": lambda ps: SGDScheduleFree(ps, lr=0.05, warmup_steps=2),
    "AdamWScheduleFree": lambda ps: AdamWScheduleFree(ps, lr=0.01, warmup_steps=2),
    "Lookahead(SGD)": lambda ps: Lookahead(SGD(ps, lr=0.05, momentum=0.9), k=2, pullback_momentum="pullback"),
}


@pytest.mark.parametrize("name", list(OTHERS))
def test_names_only_label(name):
    "With `(name, parameter)` pairs every optimizer takes the same steps, and its state dict round-trips."
    plain, named = [Param(a) for a in arrays()], [Param(a) for a in arrays()]
    po, no = OTHERS[name](plain), OTHERS[name](list(zip(NAMES, named)))
    for ps, opt in ((plain, po), (named, no)):
        closure = quadratic_closure(ps)
        if hasattr(opt, "train"):
            opt.train()
        for _ in range(5):
            closure()
            opt.step(closure)
    for a, b in zip(plain, named):
        np.testing.assert_array_equal(a.data, b.data)
    groups = no.param_groups
    assert groups[0]["param_names"] == NAMES
    # save, load into a fresh named optimizer, continue: the same as the plain run continued
    sd = no.state_dict()
    again = [Param(p.data.copy()) for p in named]
    ao = OTHERS[name](list(zip(NAMES, again)))
    ao.load_state_dict(sd)
    for ps, opt in ((plain, po), (again, ao)):
        closure = quadratic_closure(ps)
        for _ in range(3):
            closure()
            opt.step(closure)
    for a, b in zip(plain, again):
        np.testing.assert_array_equal(a.data, b.data)


# --- load_state_dict refuses a state that does not fit ---------------------------------------------------------

def assert_state_dicts_equal(a, b):
    assert a.keys() == b.keys()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        sa, sb = a["state"][k], b["state"][k]
        assert sa.keys() == sb.keys()
        for key in sa:
            np.testing.assert_array_equal(sa[key], sb[key])
            assert np.asarray(sa[key]).dtype == np.asarray(sb[key]).dtype


def trained_adam(shapes, names=None, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    ps = [Param(rng.standard_normal(s).astype(dtype)) for s in shapes]
    opt = Adam(list(zip(names, ps)) if names else ps, lr=0.1)
    for _ in range(2):
        for p in ps:
            p.grad = rng.standard_normal(p.data.shape).astype(dtype)
        opt.step()
    return ps, opt


def refuses(opt, params, sd, match):
    "`load_state_dict(sd)` raises a ValueError matching `match`, and the optimizer and parameters are unchanged."
    before_sd, before_p = copy.deepcopy(opt.state_dict()), [p.data.copy() for p in params]
    before_sd_arg = copy.deepcopy(sd)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert_state_dicts_equal(opt.state_dict(), before_sd)
    for p, b in zip(params, before_p):
        np.testing.assert_array_equal(p.data, b)
    assert_state_dicts_equal(sd, before_sd_arg)  # nor is the dict given


@pytest.mark.parametrize("named", [False, True])
def test_load_refuses_a_state_of_another_shape(named):
    _, src = trained_adam([(3, 4), (5,)], NAMES[:2] if named else None)
    ps, dst = trained_adam([(3, 4), (6,)], ["w", "b"] if named else None, seed=1)
    where = r"parameter 1 of group 0" + (r" \('b'\)" if named else "")
    refuses(dst, ps, src.state_dict(),
            where + r": state 'exp_avg' has shape \(5,\), but the parameter has shape \(6,\)")


def test_load_refuses_in_a_later_group_naming_it():
    rng = np.random.default_rng(0)
    a = [Param(rng.standard_normal(s)) for s in [(2,), (3,), (4,)]]
    b = [Param(rng.standard_normal(s)) for s in [(2,), (3,), (2, 2)]]
    src = SGD([{"params": a[:1]}, {"params": a[1:]}], lr=0.1, momentum=0.9)
    dst = SGD([{"params": b[:1]}, {"params": b[1:]}], lr=0.1, momentum=0.9)
    for p in a:
        p.grad = np.ones_like(p.data)
    src.step()
    refuses(dst, b, src.state_dict(), r"parameter 1 of group 1: state 'momentum_buffer' has shape \(4,\), but "
                                      r"the parameter has shape \(2, 2\)")


def test_load_refuses_a_complex_state_for_a_real_parameter():
    ps, opt = trained_adam([(3,), (2,)])
    sd = opt.state_dict()
    sd["state"][1]["exp_avg_sq"] = sd["state"][1]["exp_avg_sq"].astype(np.complex128)
    fresh = [Param(p.data.copy()) for p in ps]
    refuses(Adam(fresh, lr=0.1), fresh, sd,
            r"parameter 1 of group 0: state 'exp_avg_sq' has dtype complex128, but the parameter has dtype float64")


def test_load_refuses_a_real_state_for_a_complex_parameter():
    p = Param(np.array([1 + 2j, 3 - 1j]))
    sd = {"state": {0: {"step": np.array(1.0), "momentum_buffer": np.zeros(2)}},
          "param_groups": [{**SGD([Param(np.zeros(2))], lr=0.1, momentum=0.9).state_dict()["param_groups"][0]}]}
    refuses(SGD([p], lr=0.1, momentum=0.9), [p], sd,
            r"parameter 0 of group 0: state 'momentum_buffer' has dtype float64, but the parameter has dtype complex128")


def test_load_checks_with_the_saved_hyper_parameters():
    "A momentum buffer saved with momentum=0.9 is checked even when the current group has momentum 0."
    a, b = [Param(np.ones(3))], [Param(np.ones(4))]
    src, dst = SGD(a, lr=0.1, momentum=0.9), SGD(b, lr=0.1)
    a[0].grad = np.ones(3)
    src.step()
    refuses(dst, b, src.state_dict(), r"state 'momentum_buffer' has shape \(3,\)")


def test_a_float32_state_fits_a_float64_parameter_and_is_cast_as_torch(torch):
    _, src = trained_adam([(3,), (2,)], dtype=np.float32)
    ps, dst = trained_adam([(3,), (2,)], seed=1)
    dst.load_state_dict(src.state_dict())
    tp = [torch.zeros(3, dtype=torch.float64, requires_grad=True), torch.zeros(2, dtype=torch.float64, requires_grad=True)]
    topt = torch.optim.Adam(tp, lr=0.1)
    tsd = {"state": {k: {kk: torch.from_numpy(np.asarray(v)) for kk, v in s.items()}
                     for k, s in src.state_dict()["state"].items()},
           "param_groups": [{k: v for k, v in g.items()} for g in src.state_dict()["param_groups"]]}
    topt.load_state_dict(tsd)
    for i in (0, 1):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            mine, theirs = dst.state[ps[i]][key], topt.state[tp[i]][key].numpy()
            assert mine.dtype == theirs.dtype, key
            np.testing.assert_array_equal(mine, theirs)


def test_torch_checks_keep_torch_messages(torch):
    "As many groups and parameters per group: torch's own messages, still before the new checks."
    ps, opt = trained_adam([(3,), (2,)])
    sd = opt.state_dict()
    sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:1]
    tp = [torch.zeros(3, dtype=torch.float64, requires_grad=True), torch.zeros(2, dtype=torch.float64, requires_grad=True)]
    topt = torch.optim.Adam(tp, lr=0.1)
    mine = error_of(lambda: opt.load_state_dict(sd))
    theirs = error_of(lambda: topt.load_state_dict({"state": {}, "param_groups": sd["param_groups"]}))
    assert theirs is not None and mine == theirs


def test_state_of_other_layouts_is_not_judged():
    "Entries that are not the arrays `_state_keys` lists (Adafactor's factors, LBFGS's history) load as before."
    rng = np.random.default_rng(0)
    ps = [Param(rng.standard_normal(s)) for s in [(3, 4), (5,)]]
    opt = Adafactor(ps, lr=0.01)
    for p in ps:
        p.grad = rng.standard_normal(p.data.shape)
    opt.step()
    fresh = [Param(p.data.copy()) for p in ps]
    again = Adafactor(fresh, lr=0.01)
    again.load_state_dict(opt.state_dict())
    for p, q in zip(ps, fresh):
        p.grad = q.grad = np.ones_like(p.data)
    opt.step(); again.step()
    for p, q in zip(ps, fresh):
        np.testing.assert_array_equal(p.data, q.data)


def test_base_optimizer_without_state_keys_loads():
    class Plain(Optimizer):
        def __init__(self, params):
            super().__init__(params, dict(lr=0.1))

    p = Param(np.zeros(2))
    opt = Plain([p])
    opt.load_state_dict({"state": {0: {"anything": np.zeros(7)}}, "param_groups": [{"lr": 0.2, "params": [0]}]})
    assert opt.param_groups[0]["lr"] == 0.2 and opt.state[p]["anything"].shape == (7,)


@pytest.mark.parametrize("named", [False, True])
def test_lookahead_refuses_slow_copies_of_another_shape_before_the_inner_load(named):
    def build(shapes, seed):
        rng = np.random.default_rng(seed)
        ps = [Param(rng.standard_normal(s)) for s in shapes]
        opt = Lookahead(SGD(list(zip(NAMES, ps)) if named else ps, lr=0.1, momentum=0.9), k=2)
        for _ in range(3):
            for p in ps:
                p.grad = rng.standard_normal(p.data.shape)
            opt.step()
        return ps, opt

    _, src = build([(3,), (2, 2)], 0)
    ps, dst = build([(3,), (4,)], 1)
    sd = src.state_dict()
    before = copy.deepcopy(dst.state_dict())
    data = [p.data.copy() for p in ps]
    where = "parameter 1 of group 0" + (" ('fc.bias')" if named else "")
    with pytest.raises(ValueError, match=re.escape(
            f"{where}: state 'slow_params' has shape (2, 2), but the parameter has shape (4,)")):
        dst.load_state_dict(sd)
    after = dst.state_dict()
    assert_state_dicts_equal(after["base_optimizer"], before["base_optimizer"])
    for key, state in before["lookahead_state"].items():
        for n, v in state.items():
            np.testing.assert_array_equal(after["lookahead_state"][key][n], v)
    for p, d in zip(ps, data):
        np.testing.assert_array_equal(p.data, d)
