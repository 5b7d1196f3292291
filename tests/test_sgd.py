"SGD and GD against torch.optim.SGD: every option combination, both dtypes, two parameter groups."
import itertools
import numpy as np
import pytest
from parity import run_parity, run_state_dict_roundtrip, Param
from minima.optim.sgd import SGD, GD, sgd, sgd_constants, sgd_rule
from minima.optim.optimizer import elementwise, scalars_in_dtype

COMBOS = list(itertools.product((0, 0.9), (0, 0.1), (False, True), (0, 0.01), (False, True)))
DTYPES = (np.float32, np.float64)
# the second group has its own learning rate and momentum
GROUPS = ({}, {"lr": 0.05, "momentum": 0.5})


def kwargs_of(momentum, dampening, nesterov, weight_decay, maximize):
    return dict(lr=0.1, momentum=momentum, dampening=dampening, nesterov=nesterov,
                weight_decay=weight_decay, maximize=maximize)


def is_valid(momentum, dampening, nesterov, **_):
    return not nesterov or (momentum > 0 and dampening == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "m{}-d{}-n{:d}-wd{}-max{:d}".format(*c))
def test_parity_with_torch(torch, combo, dtype):
    kwargs = kwargs_of(*combo)
    if not is_valid(**kwargs):
        for cls in (SGD, torch.optim.SGD):
            with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero dampening"):
                cls([Param(np.zeros(2, dtype))] if cls is SGD else [torch.zeros(2, requires_grad=True)], **kwargs)
        return
    run_parity(SGD, torch.optim.SGD, kwargs, dtype=dtype, steps=100, group_overrides=GROUPS)
    for layout in (GROUPS, GROUPS * 3):  # two groups of three parameters, six groups of one
        run_state_dict_roundtrip(SGD, torch.optim.SGD, kwargs, dtype=dtype, group_overrides=layout)


def test_no_state_without_momentum(torch):
    twins = run_parity(SGD, torch.optim.SGD, dict(lr=0.1), dtype=np.float64, steps=5)
    assert twins.mopt.state_dict()["state"] == {} == twins.topt.state_dict()["state"]


def test_kernel_does_not_modify_grads_and_fills_buffers():
    rng = np.random.default_rng(0)
    params, grads = [rng.standard_normal(3), rng.standard_normal(2)], [rng.standard_normal(3), rng.standard_normal(2)]
    saved = [g.copy() for g in grads]
    buffers = [None, None]
    for nesterov in (False, True):
        sgd(params, grads, buffers, lr=0.1, weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=nesterov,
            maximize=True)
    assert all(np.array_equal(g, s) for g, s in zip(grads, saved))
    assert all(b is not None and b is not g for b, g in zip(buffers, grads))
    # first buffer is -g (maximize), second step: 0.9 * (-g) + (-g)
    np.testing.assert_allclose(buffers[0], -1.9 * saved[0])


def test_first_momentum_buffer_is_a_copy_of_the_gradient():
    p = Param(np.zeros(3)); p.grad = np.ones(3)
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    buf = opt.state[p]["momentum_buffer"]
    assert buf is not p.grad and np.array_equal(buf, np.ones(3))
    opt.step()
    assert np.array_equal(p.grad, np.ones(3))


def test_gd_equals_sgd_without_momentum():
    rng = np.random.default_rng(3)
    a, b = Param(rng.standard_normal(4)), Param(rng.standard_normal(4))
    b.data[...] = a.data
    gd, sgd_opt = GD([a], lr=0.2, weight_decay=0.01), SGD([b], lr=0.2, weight_decay=0.01)
    for _ in range(20):
        g = rng.standard_normal(4)
        a.grad, b.grad = g.copy(), g.copy()
        gd.step(); sgd_opt.step()
    assert np.array_equal(a.data, b.data)
    assert gd.param_groups[0]["momentum"] == 0 and isinstance(gd, SGD)


def test_gd_requires_lr():
    with pytest.raises(TypeError):
        GD([Param(np.zeros(2))])


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(momentum=-0.1), "Invalid momentum value: -0.1"),
    (dict(weight_decay=-0.5), "Invalid weight_decay value: -0.5"),
    (dict(momentum=0.0, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
])
def test_validation_matches_torch(torch, kwargs, message):
    with pytest.raises(ValueError) as mine:
        SGD([Param(np.zeros(2))], **kwargs)
    with pytest.raises(ValueError) as theirs:
        torch.optim.SGD([torch.zeros(2, requires_grad=True)], **kwargs)
    assert str(mine.value) == str(theirs.value) == message


def test_group_keys_match_torch(torch):
    from parity import TORCH_ONLY_GROUP_KEYS
    mine = SGD([Param(np.zeros(2))]).param_groups[0]
    theirs = torch.optim.SGD([torch.zeros(2, requires_grad=True)]).param_groups[0]
    assert set(mine) == set(theirs) - TORCH_ONLY_GROUP_KEYS
    assert all(mine[k] == theirs[k] for k in mine if k != "params")


def test_signature_matches_torch(torch):
    import inspect
    for mine, ref in ((SGD, torch.optim.SGD),):
        ref = inspect.signature(ref).parameters.values()
        expected = [(p.name, p.kind, p.default) for p in ref if p.name != "differentiable"]
        assert [(p.name, p.kind, p.default) for p in inspect.signature(mine).parameters.values()] == expected


def test_kernel_signature_matches_torch(torch):
    "Positional lists and keyword hyper-parameters under torch's names (torch's dispatch arguments aside)."
    import inspect
    from torch.optim.sgd import sgd as torch_sgd
    def names(fn, kind): return [p.name for p in inspect.signature(fn).parameters.values() if p.kind == kind]
    POS, KW = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    assert names(sgd, POS) == names(torch_sgd, POS)[:3]
    assert names(sgd, KW) == names(torch_sgd, KW) + ["apply"]


def test_fused_and_foreach_cannot_both_be_true(torch):
    from parity import assert_same_error
    assert assert_same_error(SGD, torch.optim.SGD, dict(foreach=True, fused=True)) == \
        "`fused` and `foreach` cannot be `True` together."


def test_rule_on_numbers_equals_rule_on_arrays():
    "The rule is the same function on one coordinate and on whole arrays, first step (new buffer) included."
    rng = np.random.default_rng(5)
    for new_buffer, nesterov, dampening, dtype in itertools.product((True, False), (False, True), (0.0, 0.3),
                                                                     DTYPES):
        if nesterov and dampening: continue
        c = sgd_constants(new_buffer, weight_decay=0.1, momentum=0.9, lr=0.05, dampening=dampening,
                          nesterov=nesterov, maximize=True)
        p, g, buf = (rng.standard_normal(4).astype(dtype) for _ in range(3))
        cd = scalars_in_dtype(c, dtype)
        one = [sgd_rule(cd, p[i], g[i], buf[i]) for i in range(4)]
        saved = g.copy()
        elementwise(sgd_rule, c, p, g, buf)
        assert np.array_equal(p, [x for x, _ in one]) and np.array_equal(buf, [b for _, b in one])
        assert np.array_equal(g, saved)


# --- the fast paths (minima.fast): the same rule, bit for bit ------------------------------------------------

VALID = [kwargs_of(*c) for c in itertools.product((0, 0.9), (0, 0.3), (False, True), (0, 0.1), (False, True))
         if is_valid(**kwargs_of(*c))]
SIZES = {"few small": [3, 5, 1, 7], "many": [300] * 10, "large": [70000, 3]}


def run_modes(kwargs, dtype, sizes, steps=6, **mode):
    "Parameters and state after `steps` steps; one parameter in five misses its gradient each step."
    rng = np.random.default_rng(0)
    ps = [Param(rng.standard_normal(n).astype(dtype)) for n in sizes]
    opt = SGD(ps, **kwargs, **mode)
    for t in range(steps):
        for i, p in enumerate(ps):
            p.grad = None if (t + i) % 5 == 0 else rng.standard_normal(p.data.shape).astype(dtype)
        opt.step()
    return [p.data.copy() for p in ps], opt.state_dict()["state"]


def fast_modes():
    modes = [dict(foreach=True), dict(foreach=None)]
    try: import numba  # noqa: F401
    except ImportError: return modes
    return modes + [dict(fused=True)]


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_fast_paths_agree_bitwise_with_the_reference(dtype, sizes):
    "foreach (flat buffers in pieces) and fused (compiled loops) against foreach=False, over every valid option."
    for kwargs in VALID:
        ref, ref_state = run_modes(kwargs, dtype, sizes, foreach=False)
        for mode in fast_modes():
            got, state = run_modes(kwargs, dtype, sizes, **mode)
            what = f"{kwargs} {mode}"
            assert all(np.array_equal(a, b) for a, b in zip(got, ref)), what
            if kwargs["momentum"] == 0: continue   # no state; see test_fast_paths_keep_no_state_without_momentum
            assert sorted(state) == sorted(ref_state), what
            for k, s in state.items():
                assert set(s) == set(ref_state[k]) == {"momentum_buffer"}, what
                assert np.array_equal(s["momentum_buffer"], ref_state[k]["momentum_buffer"]), what


def test_fast_paths_keep_no_state_without_momentum():
    _, state = run_modes(dict(lr=0.1), np.float64, SIZES["many"], foreach=True)
    assert state == {}
