"SGD and GD against torch.optim.SGD: every option combination, both dtypes, two parameter groups."
import itertools
import numpy as np
import pytest
from parity import run_parity, run_state_dict_roundtrip, Param
from minima.optim.sgd import SGD, GD, sgd

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
