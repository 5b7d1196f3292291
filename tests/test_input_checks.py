"""Bad input is refused before anything changes, naming what was wrong and where.

A parameter that is neither floating point nor complex is refused when the optimizer is built and in
`add_param_group` (torch has no such check; minima's message names the dtype, the group and the position). A
gradient that does not fit its parameter (shape, dtype, not an array), which torch refuses when `.grad` is
assigned, is refused when `step` starts, or each time a closure has set the gradients, for every optimizer and
path: parameters, state (`state_dict()`, deep-copied) and step counters are as before, and the run then continues
exactly as a twin that never saw the bad gradient."""
import copy
import numpy as np
import pytest
from conftest import require_torch
from parity import Param
from test_complex import assert_same
import test_fast
from test_fast import OPTIONS, ELEMENTWISE
from minima.optim.optimizer import Optimizer
from minima.optim.lbfgs import LBFGS
from minima.optim.adafactor import Adafactor
from minima.optim.lion import Lion
from minima.optim.lookahead import Lookahead
from minima.optim.adam import Adam
from minima.optim.schedule_free import SGDScheduleFree, AdamWScheduleFree
from minima.optim.prodigy import Prodigy

FAST = {"reference": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def elementwise_factory(cls, mode):
    kw = {**OPTIONS[cls][-1], **FAST[mode]} if cls in OPTIONS else {"lr": 0.01, **FAST[mode]}
    return lambda groups: cls(groups, **kw)


FACTORIES = {
    **{f"{cls.__name__}-{mode}": elementwise_factory(cls, mode) for cls in ELEMENTWISE + [Lion] for mode in FAST},
    "Adafactor": lambda groups: Adafactor(groups, lr=0.01),
    "Lookahead(Adam)": lambda groups: Lookahead(Adam(groups, lr=0.01), k=2),
    "SGDScheduleFree": lambda groups: SGDScheduleFree(groups, lr=0.1),
    "AdamWScheduleFree": lambda groups: AdamWScheduleFree(groups, lr=0.01),
    "Prodigy": lambda groups: Prodigy(groups),
    "LBFGS": lambda groups: LBFGS([p for g in groups for p in g["params"]], lr=0.1, max_iter=3),
}
SHAPES = [[(3, 4), (5,)], [(2, 3), (5,)]]   # two groups; the bad gradient goes to group 1, position 1


def build(name, seed=0):
    rng = np.random.default_rng(seed)
    groups = [[Param(rng.standard_normal(s)) for s in g] for g in SHAPES]
    opt = FACTORIES[name]([{"params": ps} for ps in groups])
    if hasattr(opt, "train"):
        opt.train()
    params = [p for ps in groups for p in ps]
    # (group, position) of the parameter that gets the bad gradient; LBFGS keeps one group
    where = (0, 3) if name == "LBFGS" else (1, 1)
    return params, opt, where


def good_grads(params, step):
    return [(0.5 + 0.1 * step) * p.data + np.cos(np.arange(p.data.size) + step).reshape(p.data.shape)
            for p in params]


def step_with(name, opt, params, grads, use_closure):
    "One step on `grads`: set before `step()`, or by a closure (always for LBFGS)."
    def closure():
        for p, g in zip(params, grads):
            p.grad = g
        return float(sum(np.sum(np.abs(p.data) ** 2) for p in params))
    if use_closure or name == "LBFGS":
        return opt.step(closure)
    closure()
    return opt.step()


def snapshot(params, opt):
    return [p.data.copy() for p in params], copy.deepcopy(opt.state_dict())


def assert_unchanged(before, params, opt):
    datas, sd = before
    for i, (d, p) in enumerate(zip(datas, params)):
        assert d.dtype == p.data.dtype and np.array_equal(d, p.data), f"parameter {i} changed"
    assert_same(sd, copy.deepcopy(opt.state_dict()))


BAD = {   # what is wrong -> (the gradient for a float64 parameter of shape (5,), error type, words it must say)
    "shape": (lambda: np.ones(4), RuntimeError, ["size '[4]'", "size '[5]'"]),
    "shape-2d": (lambda: np.ones((5, 1)), RuntimeError, ["size '[5, 1]'", "size '[5]'"]),
    "dtype": (lambda: np.ones(5, np.float32), RuntimeError, ["dtype float32", "dtype float64"]),
    "complex-dtype": (lambda: np.ones(5, np.complex128), RuntimeError, ["dtype complex128", "dtype float64"]),
    "not-an-array": (lambda: [1.0] * 5, TypeError, ["is a list", "numpy.ndarray"]),
}


@pytest.mark.parametrize("use_closure", [False, True], ids=["grads", "closure"])
@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("name", list(FACTORIES))
def test_bad_gradient_is_refused_before_anything_changes(name, bad, use_closure):
    if "fused" in name:
        test_fast.require_numba()
    if use_closure and name == "LBFGS":
        pytest.skip("LBFGS always takes a closure (the other case covers it)")
    params, opt, (gi, pos) = build(name)
    twin_params, twin, _ = build(name)
    for step in range(3):   # state, step counters, flat buffers
        step_with(name, opt, params, good_grads(params, step), use_closure)
        step_with(name, twin, twin_params, good_grads(twin_params, step), use_closure)
    grads = good_grads(params, 3)
    index = sum(len(g) for g in SHAPES[:gi]) + pos if name != "LBFGS" else pos
    make, error, words = BAD[bad]
    grads[index] = make()
    before = snapshot(params, opt)
    with pytest.raises(error) as info:
        step_with(name, opt, params, grads, use_closure)
    message = str(info.value)
    for w in [f"parameter {pos} of group {gi}", *words]:
        assert w in message, f"{w!r} not in {message!r}"
    assert_unchanged(before, params, opt)
    for step in range(3, 6):   # and the run goes on as if the bad step had never been tried
        step_with(name, opt, params, good_grads(params, step), use_closure)
        step_with(name, twin, twin_params, good_grads(twin_params, step), use_closure)
    for i, (p, q) in enumerate(zip(params, twin_params)):
        assert np.array_equal(p.data, q.data), f"parameter {i} differs from the twin"
    assert_same(opt.state_dict(), twin.state_dict())


def test_torch_refuses_the_same_gradients():
    "The checks mirror torch's own (made when `.grad` is assigned): the same gradients are refused there."
    torch = require_torch()
    t = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    for bad in (torch.ones(4, dtype=torch.float64), torch.ones((5, 1), dtype=torch.float64),
                torch.ones(5, dtype=torch.float32), torch.ones(5, dtype=torch.complex128)):
        with pytest.raises(RuntimeError, match="attempting to assign a gradient"):
            t.grad = bad
    with pytest.raises(TypeError):
        t.grad = [1.0] * 5


NOT_OPTIMIZABLE = [np.int64, np.int32, np.uint8, np.bool_, object]


def build_with(name, groups):
    return FACTORIES[name]([{"params": ps} for ps in groups])


@pytest.mark.parametrize("dtype", NOT_OPTIMIZABLE, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(FACTORIES))
def test_parameter_dtype_is_refused_at_construction(name, dtype):
    bad = Param(np.zeros(5, dtype))
    groups = [[Param(np.zeros((3, 4)))], [Param(np.zeros(2)), bad]]
    if name == "LBFGS":   # one group
        groups = [[Param(np.zeros((3, 4))), Param(np.zeros(2)), bad]]
    with pytest.raises(ValueError) as info:
        build_with(name, groups)
    where = "parameter 2 of group 0" if name == "LBFGS" else "parameter 1 of group 1"
    assert str(info.value) == (f"can't optimize a parameter of dtype {np.dtype(dtype)} ({where}): only floating "
                               "point and complex parameters can be optimized")


@pytest.mark.parametrize("name", [n for n in FACTORIES if n != "LBFGS"])
def test_add_param_group_refuses_a_bad_dtype_and_changes_nothing(name):
    rng = np.random.default_rng(0)
    params = [Param(rng.standard_normal(3)), Param(rng.standard_normal(2))]
    opt = build_with(name, [[params[0]], [params[1]]])
    if hasattr(opt, "train"):
        opt.train()
    for step in range(2):
        for p, g in zip(params, good_grads(params, step)):
            p.grad = g
        opt.step()
    before, n_groups = snapshot(params, opt), len(opt.param_groups)
    with pytest.raises(ValueError, match=r"dtype int64 \(parameter 1 of group 2\)"):
        opt.add_param_group({"params": [Param(np.zeros(2)), Param(np.zeros(3, np.int64))]})
    assert len(opt.param_groups) == n_groups
    assert_unchanged(before, params, opt)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64, np.complex128],
                         ids=lambda d: np.dtype(d).name)
def test_floating_and_complex_parameters_are_accepted(dtype):
    p = Param(np.ones(3, dtype))
    opt = Adam([p], lr=0.1)
    p.grad = np.ones(3, dtype)
    opt.step()
    assert p.data.dtype == dtype and np.all(p.data.real < 1)


def test_a_parameter_rebound_to_integers_is_refused_at_step():
    p, q = Param(np.ones(3)), Param(np.ones(2))
    opt = Adam([{"params": [p]}, {"params": [q]}], lr=0.1)
    p.grad, q.grad = np.ones(3), np.ones(2)
    opt.step()
    q.data, q.grad = np.ones(2, np.int64), np.ones(2, np.int64)
    before = snapshot([p], opt)
    with pytest.raises(ValueError, match=r"dtype int64 \(parameter 0 of group 1\)"):
        opt.step()
    assert_unchanged(before, [p], opt)


def test_hooks_see_the_callers_closure_and_the_check_runs_after_pre_hooks():
    "A pre hook may still fix the gradients (it runs first); hooks get the arguments step was called with."
    p = Param(np.ones(3))
    opt = Adam([p], lr=0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: setattr(p, "grad", np.ones(3)))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append((args[1:], kwargs)))
    p.grad = np.ones(4)   # wrong, but the pre hook replaces it
    opt.step()
    assert seen == [((), {})]

    def closure():
        return 1.0
    assert opt.step(closure) == 1.0 and seen[-1] == ((closure,), {})
    assert opt.step(closure=closure) == 1.0 and seen[-1] == ((), {"closure": closure})


def test_custom_subclass_step_is_checked_too():
    "An optimizer with its own `step` (the book's SignSGD-like pattern) is checked by the base class's wrapper."
    class Sign(Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr))

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.data -= group["lr"] * np.sign(p.grad)
    p, q = Param(np.ones(3)), Param(np.ones(2))
    opt = Sign([{"params": [p]}, {"params": [q]}])
    p.grad, q.grad = np.ones(3), np.ones(3)
    with pytest.raises(RuntimeError, match=r"parameter 0 of group 1 has size '\[3\]'"):
        opt.step()
    assert np.array_equal(p.data, np.ones(3))
