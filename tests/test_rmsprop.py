"""RMSprop and Adadelta against torch.optim: every option, both dtypes, two groups, state_dict layout and errors."""
import itertools
import numpy as np
import pytest
from parity import run_parity, run_state_dict_roundtrip, Param, expected_group_keys, assert_same_error
from minima.optim.rmsprop import RMSprop, RMSProp, rmsprop
from minima.optim.adadelta import Adadelta, adadelta
from fastcheck import assert_fast_paths_agree_bitwise

DTYPES = [np.float32, np.float64]

# momentum, centered, weight_decay, maximize, alpha
RMSPROP_OPTIONS = list(itertools.product((0, 0.9), (False, True), (0, 0.1), (False, True), (0.99, 0.9)))
RMSPROP_SECOND_GROUP = {"lr": 0.003, "alpha": 0.95}
# rho, weight_decay, maximize, lr
ADADELTA_OPTIONS = list(itertools.product((0.9, 0.5), (0, 0.1), (False, True), (1.0, 0.5)))
ADADELTA_SECOND_GROUP = {"lr": 0.3, "rho": 0.7}


def rmsprop_kwargs(momentum, centered, weight_decay, maximize, alpha):
    return dict(lr=0.01, momentum=momentum, centered=centered, weight_decay=weight_decay,
                maximize=maximize, alpha=alpha)


def adadelta_kwargs(rho, weight_decay, maximize, lr):
    return dict(lr=lr, rho=rho, weight_decay=weight_decay, maximize=maximize)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", RMSPROP_OPTIONS)
def test_rmsprop_parity_with_torch(torch, dtype, options):
    run_parity(RMSprop, torch.optim.RMSprop, rmsprop_kwargs(*options), dtype=dtype, steps=100,
               group_overrides=({}, RMSPROP_SECOND_GROUP))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", RMSPROP_OPTIONS)
def test_rmsprop_state_dict_roundtrip(torch, dtype, options):
    run_state_dict_roundtrip(RMSprop, torch.optim.RMSprop, rmsprop_kwargs(*options), dtype=dtype,
                             group_overrides=({}, RMSPROP_SECOND_GROUP))


def test_rmsprop_groups_with_different_buffers(torch):
    "momentum and centering per group: each group's state has exactly the buffers torch gives it."
    twins = run_state_dict_roundtrip(RMSprop, torch.optim.RMSprop, dict(lr=0.01), dtype=np.float64,
                                     group_overrides=({"momentum": 0.9}, {"centered": True}, {}))
    keys = {frozenset(s) for s in twins.mopt.state_dict()["state"].values()}
    assert keys == {frozenset({"step", "square_avg", "momentum_buffer"}), frozenset({"step", "square_avg", "grad_avg"}),
                    frozenset({"step", "square_avg"})}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", ADADELTA_OPTIONS)
def test_adadelta_parity_with_torch(torch, dtype, options):
    run_parity(Adadelta, torch.optim.Adadelta, adadelta_kwargs(*options), dtype=dtype, steps=100,
               group_overrides=({}, ADADELTA_SECOND_GROUP))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", ADADELTA_OPTIONS)
def test_adadelta_state_dict_roundtrip(torch, dtype, options):
    run_state_dict_roundtrip(Adadelta, torch.optim.Adadelta, adadelta_kwargs(*options), dtype=dtype,
                             group_overrides=({}, ADADELTA_SECOND_GROUP))


@pytest.mark.parametrize("cls_name", ["RMSprop", "Adadelta"])
def test_group_keys_match_torch(torch, cls_name):
    mine = globals()[cls_name]([Param(np.zeros(2))]).state_dict()["param_groups"][0]
    ref = getattr(torch.optim, cls_name)([torch.zeros(2, requires_grad=True)]).state_dict()["param_groups"][0]
    assert set(mine) == expected_group_keys(mine, ref)
    assert all(mine[k] == ref[k] for k in mine if k in ref and k != "params")
    assert mine["fused"] is None


def test_alias_and_signatures():
    assert RMSProp is RMSprop
    opt = Adadelta([Param(np.zeros(2))], 1.0, 0.9, 1e-6, 0.0, None)  # foreach is positional, as in torch
    assert opt.defaults["foreach"] is None and opt.defaults["maximize"] is False
    opt = RMSprop([Param(np.zeros(2))], 0.01, 0.99, 1e-8, 0.0, 0.5, True, maximize=True, foreach=False)
    assert opt.defaults["momentum"] == 0.5 and opt.defaults["centered"] and opt.defaults["maximize"]


@pytest.mark.parametrize("cls", [RMSprop, Adadelta])
def test_fused_and_foreach_cannot_both_be_true(cls):
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together."):
        cls([Param(np.zeros(2))], foreach=True, fused=True)


def test_rmsprop_first_step_closed_form():
    "v_1 = (1 - alpha) g^2, so the first step is lr / sqrt(1 - alpha) per coordinate (eps aside)."
    params, grads = [np.array([1.0, -2.0, 3.0])], [np.array([0.5, -4.0, 1e3])]
    avgs, steps = [np.zeros(3)], [np.zeros((), np.float64)]
    rmsprop(params, grads, avgs, [], [], steps, lr=0.1, alpha=0.9, eps=0.0, weight_decay=0.0, momentum=0.0,
            centered=False, maximize=False)
    np.testing.assert_allclose(params[0], [1.0, -2.0, 3.0] - 0.1 / np.sqrt(0.1) * np.sign(grads[0]), rtol=1e-12)
    np.testing.assert_array_equal(grads[0], [0.5, -4.0, 1e3])
    assert float(steps[0]) == 1.0 and steps[0].shape == ()


def test_adadelta_first_step_closed_form():
    "u_0 = 0: the first update is sqrt(eps) * g / sqrt((1 - rho) g^2 + eps)."
    g = np.array([0.5, -4.0])
    params, grads = [np.array([1.0, -2.0])], [g.copy()]
    sq, acc, steps = [np.zeros(2)], [np.zeros(2)], [np.zeros((), np.float64)]
    adadelta(params, grads, sq, acc, steps, lr=2.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=True)
    delta = np.sqrt(1e-6) * -g / np.sqrt(0.1 * g**2 + 1e-6)
    np.testing.assert_allclose(params[0], np.array([1.0, -2.0]) - 2.0 * delta, rtol=1e-12)
    np.testing.assert_allclose(acc[0], 0.1 * delta**2, rtol=1e-12)
    np.testing.assert_array_equal(grads[0], g)
    assert float(steps[0]) == 1.0


@pytest.mark.parametrize("cls", [RMSprop, Adadelta])
def test_closure_loss_is_returned(cls):
    p = Param(np.ones(2))
    opt = cls([p])
    def closure():
        p.grad = 2 * p.data
        return float(np.sum(p.data ** 2))
    assert opt.step(closure) == 2.0
    assert np.all(p.data < 1.0)


ERRORS = [
    ("RMSprop", dict(lr=-1.0), "Invalid learning rate: -1.0"),
    ("RMSprop", dict(eps=-1.0), "Invalid epsilon value: -1.0"),
    ("RMSprop", dict(momentum=-0.5), "Invalid momentum value: -0.5"),
    ("RMSprop", dict(weight_decay=-1), "Invalid weight_decay value: -1"),
    ("RMSprop", dict(alpha=-0.1), "Invalid alpha value: -0.1"),
    ("Adadelta", dict(lr=-1.0), "Invalid learning rate: -1.0"),
    ("Adadelta", dict(rho=1.5), "Invalid rho value: 1.5"),
    ("Adadelta", dict(rho=-0.1), "Invalid rho value: -0.1"),
    ("Adadelta", dict(eps=-1.0), "Invalid epsilon value: -1.0"),
    ("Adadelta", dict(weight_decay=-1.0), "Invalid weight_decay value: -1.0"),
]


@pytest.mark.parametrize("cls_name,kwargs,message", ERRORS)
def test_validation_errors_match_torch(torch, cls_name, kwargs, message):
    assert message in assert_same_error(globals()[cls_name], getattr(torch.optim, cls_name), kwargs)


@pytest.mark.parametrize("cls_name,bad", [
    ("RMSprop", dict(lr=-1.0, eps=-1.0, momentum=-1.0, weight_decay=-1.0, alpha=-1.0)),
    ("RMSprop", dict(momentum=-1.0, weight_decay=-1.0, alpha=-1.0)),
    ("Adadelta", dict(lr=-1.0, rho=2.0, eps=-1.0, weight_decay=-1.0)),
    ("Adadelta", dict(eps=-1.0, weight_decay=-1.0)),
])
def test_first_invalid_argument_is_reported_in_torch_order(torch, cls_name, bad):
    with pytest.raises(ValueError) as mine: globals()[cls_name]([Param(np.zeros(1))], **bad)
    with pytest.raises(ValueError) as ref: getattr(torch.optim, cls_name)([torch.zeros(1, requires_grad=True)], **bad)
    assert str(mine.value) == str(ref.value)


def test_rmsprop_accepts_alpha_above_one_like_torch(torch):
    RMSprop([Param(np.zeros(1))], alpha=1.5)
    torch.optim.RMSprop([torch.zeros(1, requires_grad=True)], alpha=1.5)


# fused=True (a compiled loop) and foreach=True (the kernel on pieces of a flat buffer) do the reference's
# arithmetic: they must agree with foreach=False bit for bit. Nine small tensors in one group (fused shares a
# buffer among them) and one larger than a flat piece in another (fused updates it in place, foreach in pieces).


# momentum, centered, weight_decay, maximize
FAST_RMSPROP = list(itertools.product((0, 0.5), (False, True), (0, 0.1), (False, True)))
# rho, weight_decay, maximize
FAST_ADADELTA = list(itertools.product((0.9, 0.5), (0, 0.1), (False, True)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", FAST_RMSPROP)
def test_rmsprop_fast_paths_agree_bitwise_with_the_reference(dtype, options):
    momentum, centered, weight_decay, maximize = options
    assert_fast_paths_agree_bitwise(RMSprop, dict(lr=0.01, momentum=momentum, centered=centered,
                                                  weight_decay=weight_decay, maximize=maximize), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", FAST_ADADELTA)
def test_adadelta_fast_paths_agree_bitwise_with_the_reference(dtype, options):
    rho, weight_decay, maximize = options
    assert_fast_paths_agree_bitwise(Adadelta, dict(lr=0.5, rho=rho, weight_decay=weight_decay,
                                                   maximize=maximize), dtype)
