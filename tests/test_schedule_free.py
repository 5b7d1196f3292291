"""Schedule-free SGD and AdamW against the `schedulefree` package (1.4.1): its reference classes (which keep
x, y and z) and its memory-saving classes (which keep z and move the parameters with lerp), over runs with
several parameter groups, parameters without gradients at some steps, train()/eval() toggled mid-run and a
state_dict round trip; the signatures and defaults; the refused constructions and steps, which change nothing."""
import contextlib, copy, importlib, inspect, io
import numpy as np
import pytest
from conftest import _missing, require_torch
from parity import Param, initial_arrays, make_grads, split_groups
from minima.optim.optimizer import elementwise
from minima.optim.schedule_free import (AdamWScheduleFree, SGDScheduleFree, adamw_schedule_free,
                                        sgd_schedule_free)

TOL = {np.float64: 1e-12, np.float32: 1e-5}
TOL_LERP = {np.float64: 1e-10, np.float32: 1e-5}   # the package's lerp between y and x rounds at each switch


def require_schedulefree():
    "The oracle, skipping locally and failing under CI when it is missing."
    require_torch()
    try: return importlib.import_module("schedulefree")
    except ImportError: _missing("schedulefree", "install it with `pip install schedulefree==1.4.1`")


def quiet(fn, *args):
    "Call `fn` without its prints (the reference AdamW prints when it switches modes)."
    with contextlib.redirect_stdout(io.StringIO()): return fn(*args)


def close(mine, ref, dtype, what, tol):
    scale = max(1.0, float(np.max(np.abs(ref))))
    assert mine.dtype == ref.dtype, what
    np.testing.assert_allclose(mine, ref, rtol=tol, atol=tol * scale, err_msg=what)


def overrides(base_lr):
    "Three groups: a warmup, polynomial weights without lr weighting, weight decay and another lr."
    return [{"warmup_steps": 10}, {"r": 1.0, "weight_lr_power": 0.0},
            {"weight_decay": 0.1, "lr": 2 * base_lr}]


class Pair:
    "A minima schedule-free optimizer and the package's, over identical parameters, both put in train mode."
    def __init__(self, mine_cls, ref_cls, kwargs, dtype, groups, seed=0):
        self.torch = require_torch()
        self.dtype, self.rng, self.groups, self.kwargs = dtype, np.random.default_rng(seed + 1), groups, kwargs
        self.mine_cls = mine_cls
        arrays = initial_arrays(dtype, seed)
        self.mparams = [Param(a.copy()) for a in arrays]
        self.tparams = [self.torch.tensor(a.copy(), requires_grad=True) for a in arrays]
        self.mopt = mine_cls(split_groups(self.mparams, groups), **kwargs)
        self.topt = ref_cls(split_groups(self.tparams, groups), **kwargs)
        self.mopt.train(); quiet(self.topt.train)
        self.steps = 0

    def step(self):
        ref = [t.detach().numpy() for t in self.tparams]
        grads = make_grads(ref, self.steps, self.rng, self.dtype)
        for m, t, g in zip(self.mparams, self.tparams, grads):
            m.grad = None if g is None else g.copy()
            t.grad = None if g is None else self.torch.from_numpy(g.copy())
        self.mopt.step(); self.topt.step()
        self.steps += 1

    def check(self, tol, what=""):
        for i, (m, t) in enumerate(zip(self.mparams, self.tparams)):
            close(m.data, t.detach().numpy(), self.dtype, f"param {i} after step {self.steps} {what}", tol)

    def toggle(self, tol):
        "eval() on both, compare (x), train() on both, compare (y)."
        self.mopt.eval(); quiet(self.topt.eval); self.check(tol, "in eval mode")
        self.mopt.train(); quiet(self.topt.train); self.check(tol, "back in train mode")

    def run(self, steps, tol, toggle_every=None):
        for _ in range(steps):
            self.step(); self.check(tol)
            if toggle_every and self.steps % toggle_every == 0: self.toggle(tol)

    def reload(self):
        "A fresh minima optimizer over fresh parameters, loaded from a state_dict saved now."
        sd = self.mopt.state_dict()
        self.mparams = [Param(m.data.copy()) for m in self.mparams]
        self.mopt = self.mine_cls(split_groups(self.mparams, self.groups), **self.kwargs)
        self.mopt.load_state_dict(sd)


SGD_CASES = [dict(lr=0.05), dict(lr=0.02, momentum=0.5, weight_decay=0.01, warmup_steps=5, r=0.5)]
ADAMW_CASES = [dict(lr=0.01), dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, warmup_steps=5,
                                   r=0.5, weight_lr_power=1.0)]


def references(sf):
    "(minima class, package class, extra kwargs, tolerance table) for each oracle."
    return [(SGDScheduleFree, sf.SGDScheduleFreeReference, {}, TOL, SGD_CASES),
            (SGDScheduleFree, sf.SGDScheduleFree, {"foreach": False}, TOL_LERP, SGD_CASES),
            (SGDScheduleFree, sf.SGDScheduleFree, {"foreach": True}, TOL_LERP, SGD_CASES),
            (AdamWScheduleFree, sf.AdamWScheduleFreeReference, {}, TOL, ADAMW_CASES),
            (AdamWScheduleFree, sf.AdamWScheduleFreeReference, {"decay_at_z": True}, TOL, ADAMW_CASES),
            (AdamWScheduleFree, sf.AdamWScheduleFree, {"foreach": False}, TOL_LERP, ADAMW_CASES),
            (AdamWScheduleFree, sf.AdamWScheduleFree, {"foreach": True}, TOL_LERP, ADAMW_CASES)]


def all_cases():
    sf = require_schedulefree()
    return [(m, r, {**kw, **extra}, tol) for m, r, extra, tol, cases in references(sf) for kw in cases]


@pytest.fixture(params=range(14), ids=lambda i: f"case{i}")
def case(request):
    return all_cases()[request.param]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_parity_with_toggling(case, dtype):
    mine_cls, ref_cls, kwargs, tol = case
    base_lr = kwargs.get("lr", 0.01)
    pair = Pair(mine_cls, ref_cls, kwargs, dtype, overrides(base_lr))
    pair.run(60, tol[dtype], toggle_every=7)
    pair.mopt.eval(); quiet(pair.topt.eval); pair.check(tol[dtype], "final eval")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_parity_without_toggling(case, dtype):
    mine_cls, ref_cls, kwargs, tol = case
    pair = Pair(mine_cls, ref_cls, kwargs, dtype, overrides(kwargs.get("lr", 0.01)))
    pair.run(60, tol[dtype])


def test_state_dict_roundtrip_mid_run():
    sf = require_schedulefree()
    for mine_cls, ref_cls, kwargs in [(SGDScheduleFree, sf.SGDScheduleFreeReference, SGD_CASES[1]),
                                      (AdamWScheduleFree, sf.AdamWScheduleFreeReference, ADAMW_CASES[1])]:
        pair = Pair(mine_cls, ref_cls, kwargs, np.float64, overrides(kwargs["lr"]))
        pair.run(30, 1e-12, toggle_every=11)
        mine, ref = pair.mopt.state_dict(), pair.topt.state_dict()
        # the package's eval()/train() leave an empty state for parameters that never had a gradient
        ref_states = {idx: s for idx, s in ref["state"].items() if s}
        assert sorted(mine["state"]) == sorted(ref_states)
        for idx, tstate in ref_states.items():
            mstate = mine["state"][idx]
            assert set(mstate) == set(tstate) - {"y"}, (set(mstate), set(tstate))
            for k, v in mstate.items():
                close(v, tstate[k].numpy(), np.float64, f"state[{idx}][{k!r}]", 1e-12)
        for mg, tg in zip(mine["param_groups"], ref["param_groups"]):
            assert set(mg) == set(tg) | {"foreach", "decay_at_z"} & set(mg)
            for k in ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode"):
                assert mg[k] == pytest.approx(tg[k], rel=1e-15), k
        pair.reload()                                  # saved in train mode
        pair.run(15, 1e-12)
        pair.mopt.eval(); quiet(pair.topt.eval)        # saved in eval mode, as the package advises
        pair.reload(); pair.check(1e-12, "loaded in eval mode")
        pair.mopt.train(); quiet(pair.topt.train)
        pair.run(15, 1e-12)


def test_every_group_advances_without_gradients():
    "A group none of whose parameters has a gradient still advances its counters, as the package's."
    sf = require_schedulefree()
    torch = require_torch()
    a, b = Param(np.ones(3)), Param(np.ones(2))
    ta, tb = torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    mine = SGDScheduleFree([{"params": [a]}, {"params": [b]}], lr=0.1)
    ref = sf.SGDScheduleFreeReference([{"params": [ta]}, {"params": [tb]}], lr=0.1)
    mine.train()
    for k in range(6):
        ga = np.full(3, 0.5)
        gb = None if k < 4 else np.full(2, -1.0)   # b's first gradient comes at the group's step 4
        a.grad, ta.grad = ga.copy(), torch.from_numpy(ga.copy())
        b.grad, tb.grad = (None, None) if gb is None else (gb.copy(), torch.from_numpy(gb.copy()))
        mine.step(); ref.step()
        for g, tg in zip(mine.param_groups, ref.param_groups):
            assert (g["k"], g["weight_sum"], g["lr_max"]) == (tg["k"], tg["weight_sum"], tg["lr_max"])
        np.testing.assert_allclose(b.data, tb.numpy(), rtol=1e-15)
        np.testing.assert_allclose(a.data, ta.numpy(), rtol=1e-15)


def test_train_restores_y_bit_for_bit():
    rng = np.random.default_rng(0)
    for cls, dtype in [(SGDScheduleFree, np.float32), (AdamWScheduleFree, np.float64)]:
        p = Param(rng.standard_normal(50).astype(dtype))
        opt = cls([p], lr=0.01)
        opt.train()
        for _ in range(7): p.grad = (p.data + rng.standard_normal(50)).astype(dtype); opt.step()
        y = p.data.copy()
        opt.eval(); assert np.array_equal(p.data, opt.state[p]["x"])
        opt.eval(); assert np.array_equal(p.data, opt.state[p]["x"])     # twice: nothing more happens
        opt.train(); assert np.array_equal(p.data, y)
        opt.train(); assert np.array_equal(p.data, y)


def signature_of(cls):
    return [(n, p.default) for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"]


def test_signatures_and_defaults():
    sf = require_schedulefree()
    # SGD: the package's two classes agree with each other and with minima's
    assert signature_of(SGDScheduleFree) == signature_of(sf.SGDScheduleFreeReference) == signature_of(sf.SGDScheduleFree)
    # AdamW: the reference's names and order (with decay_at_z), the defaults of both package classes;
    # foreach defaults as the non-reference class's (the reference ignores it and defaults it to False)
    mine, ref, plain = map(dict, map(signature_of, (AdamWScheduleFree, sf.AdamWScheduleFreeReference,
                                                    sf.AdamWScheduleFree)))
    assert list(mine) == list(ref)
    assert set(plain) | {"decay_at_z"} == set(mine)
    for name, default in mine.items():
        if name == "foreach": assert default == plain["foreach"]
        elif name in plain: assert default == plain[name] == ref[name], name
        else: assert default == ref[name], name
    # the groups hold the package's keys and values
    torch = require_torch()
    for cls, refs in [(SGDScheduleFree, (sf.SGDScheduleFree, sf.SGDScheduleFreeReference)),
                      (AdamWScheduleFree, (sf.AdamWScheduleFree, sf.AdamWScheduleFreeReference))]:
        opt = cls([Param(np.zeros(2))])
        for ref_cls in refs:
            r = ref_cls([torch.zeros(2, requires_grad=True)])
            assert set(r.defaults) <= set(opt.defaults)
            for k, v in r.defaults.items():
                if k == "train_mode" or (k == "foreach" and "Reference" in ref_cls.__name__): continue
                assert opt.defaults[k] == v, (cls.__name__, ref_cls.__name__, k)
        assert opt.defaults["train_mode"] is False      # as the package's (non-reference) classes
        assert set(opt.defaults) == set(refs[0]([torch.zeros(2, requires_grad=True)]).defaults) | (
            {"decay_at_z"} if cls is AdamWScheduleFree else set())


def snapshot(opt, params):
    return [p.data.copy() for p in params], copy.deepcopy(opt.state_dict())


def assert_unchanged(before, after):
    (data0, sd0), (data1, sd1) = before, after
    for a, b in zip(data0, data1): np.testing.assert_array_equal(a, b)
    assert sd0["param_groups"] == sd1["param_groups"]
    assert sorted(sd0["state"]) == sorted(sd1["state"])
    for k, s in sd0["state"].items():
        assert set(s) == set(sd1["state"][k])
        for key, v in s.items(): np.testing.assert_array_equal(v, sd1["state"][k][key])


@pytest.mark.parametrize("cls", [SGDScheduleFree, AdamWScheduleFree])
def test_step_in_eval_mode_is_refused_and_changes_nothing(cls):
    sf = require_schedulefree()
    torch = require_torch()
    ref_cls = getattr(sf, cls.__name__)
    # a fresh optimizer is in eval mode: both refuse the first step with the same exception
    p, t = Param(np.arange(3.0)), torch.arange(3.0, dtype=torch.float64, requires_grad=True)
    p.grad, t.grad = np.ones(3), torch.ones(3, dtype=torch.float64)
    mine, ref = cls([p], lr=0.1), ref_cls([t], lr=0.1)
    errors = []
    for opt in (mine, ref):
        with pytest.raises(Exception) as info: opt.step()
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]
    # mid-run, after eval(): refused with the parameters at x, nothing changes, a closure is not called
    mine.train()
    for _ in range(5): mine.step()
    mine.eval()
    before = snapshot(mine, [p])
    calls = []
    with pytest.raises(Exception, match="not in train mode"): mine.step(lambda: calls.append(1))
    assert not calls
    assert_unchanged(before, snapshot(mine, [p]))


def assert_same_error(mine_cls, ref_cls, kwargs):
    torch = require_torch()
    p = Param(np.arange(3.0)); p.grad = np.ones(3)
    with pytest.raises(Exception) as mine: mine_cls([p], **kwargs)
    with pytest.raises(Exception) as ref: ref_cls([torch.zeros(3, dtype=torch.float64, requires_grad=True)], **kwargs)
    assert (type(mine.value), str(mine.value)) == (type(ref.value), str(ref.value))
    np.testing.assert_array_equal(p.data, np.arange(3.0)); np.testing.assert_array_equal(p.grad, np.ones(3))


@pytest.mark.parametrize("kwargs", [dict(lr=-0.1), dict(weight_decay=-1e-3), dict(momentum=0.0), dict(momentum=1.0),
                                    dict(momentum=-0.5), dict(momentum=1.5)], ids=str)
def test_sgd_refuses_what_the_package_refuses(kwargs):
    sf = require_schedulefree()
    assert_same_error(SGDScheduleFree, sf.SGDScheduleFreeReference, kwargs)
    assert_same_error(SGDScheduleFree, sf.SGDScheduleFree, kwargs)


@pytest.mark.parametrize("cls, kwargs, message", [
    (AdamWScheduleFree, dict(lr=-1e-3), "Invalid learning rate: -0.001"),
    (AdamWScheduleFree, dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (AdamWScheduleFree, dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (AdamWScheduleFree, dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (AdamWScheduleFree, dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    (AdamWScheduleFree, dict(warmup_steps=-1), "Invalid warmup_steps value: -1"),
    (SGDScheduleFree, dict(warmup_steps=-5), "Invalid warmup_steps value: -5"),
], ids=str)
def test_refusals_beyond_the_package(cls, kwargs, message):
    "The package checks nothing of AdamW's (nor warmup_steps): minima refuses with PyTorch-style messages."
    p = Param(np.arange(3.0)); p.grad = np.ones(3)
    with pytest.raises(ValueError) as info: cls([p], **kwargs)
    assert str(info.value) == message
    np.testing.assert_array_equal(p.data, np.arange(3.0)); np.testing.assert_array_equal(p.grad, np.ones(3))


def test_gradients_are_not_modified():
    rng = np.random.default_rng(0)
    for cls, kw in [(SGDScheduleFree, dict(weight_decay=0.1)), (AdamWScheduleFree, dict(weight_decay=0.1))]:
        p = Param(rng.standard_normal(5)); g = rng.standard_normal(5); p.grad = g.copy()
        opt = cls([p], **kw); opt.train(); opt.step()
        np.testing.assert_array_equal(p.grad, g)


def test_closure_loss_is_returned():
    p = Param(np.ones(2))
    opt = SGDScheduleFree([p], lr=0.1); opt.train()
    def closure():
        p.grad = 2 * p.data
        return float(p.data @ p.data)
    assert opt.step(closure) == 2.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rules_compile_to_the_same_bits(dtype):
    "The rules are elementwise: numba's one loop (minima.fast.fused) gives elementwise's bits exactly."
    pytest.importorskip("numba")
    from minima.fast.fused import compiled
    def run(kernel, apply, n_states, **kw):
        rng = np.random.default_rng(0)
        arrays = [rng.standard_normal(257).astype(dtype) for _ in range(2 + n_states)]
        if n_states == 3: arrays[-1] = np.abs(arrays[-1])
        schedule = dict(k=0, lr_max=-1.0, weight_sum=0.0)
        for _ in range(6):
            g = rng.standard_normal(257).astype(dtype)
            kernel([arrays[0]], [g], *[[a] for a in arrays[2:]], schedule, apply=apply, **kw)
        return arrays
    common = dict(warmup_steps=3, r=0.5, weight_lr_power=2.0)
    for wd in (0.0, 0.1):
        kw = dict(lr=0.1, momentum=0.9, weight_decay=wd, **common)
        for a, b in zip(run(sgd_schedule_free, elementwise, 2, **kw), run(sgd_schedule_free, compiled, 2, **kw)):
            assert np.array_equal(a, b)
        for at_z in (False, True):
            kw = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd, decay_at_z=at_z, **common)
            for a, b in zip(run(adamw_schedule_free, elementwise, 3, **kw),
                            run(adamw_schedule_free, compiled, 3, **kw)):
                assert np.array_equal(a, b)
