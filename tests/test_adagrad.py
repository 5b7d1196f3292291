"""Adagrad against torch.optim.Adagrad: every option, both dtypes, two groups, state_dict layout and errors."""
import itertools
import numpy as np
import pytest
import parity
from parity import run_parity, run_state_dict_roundtrip, Param, assert_same_error
from minima.optim.adagrad import Adagrad, AdaGrad, adagrad
from fastcheck import assert_fast_paths_agree_bitwise

DTYPES = [np.float32, np.float64]
# lr_decay, weight_decay, initial_accumulator_value, maximize
OPTIONS = list(itertools.product((0, 0.01), (0, 0.1), (0, 0.5), (False, True)))
SECOND_GROUP = {"lr": 0.2, "lr_decay": 0.05}  # another lr and another lr_decay


def kwargs_for(lr_decay, weight_decay, init, maximize):
    return dict(lr=0.05, lr_decay=lr_decay, weight_decay=weight_decay,
                initial_accumulator_value=init, maximize=maximize)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS)
def test_parity_with_torch(torch, dtype, options):
    run_parity(Adagrad, torch.optim.Adagrad, kwargs_for(*options), dtype=dtype, steps=100,
               group_overrides=({}, SECOND_GROUP))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS)
def test_state_dict_roundtrip(torch, dtype, options):
    twins = run_state_dict_roundtrip(Adagrad, torch.optim.Adagrad, kwargs_for(*options), dtype=dtype,
                                     group_overrides=({}, SECOND_GROUP))
    # like torch's, Adagrad's state exists for the parameter that never gets a gradient, untouched
    never = twins.mopt.state[twins.mparams[parity.NEVER_GRAD]]
    assert float(never["step"]) == 0.0
    np.testing.assert_array_equal(never["sum"], kwargs_for(*options)["initial_accumulator_value"])


def test_state_exists_from_the_constructor_like_torch(torch):
    mine = Adagrad([Param(np.ones(3)), Param(np.ones(2))], initial_accumulator_value=0.3)
    ref = torch.optim.Adagrad([torch.ones(3, dtype=torch.float64, requires_grad=True),
                               torch.ones(2, dtype=torch.float64, requires_grad=True)],
                              initial_accumulator_value=0.3)
    for idx, tstate in ref.state_dict()["state"].items():
        mstate = mine.state_dict()["state"][idx]
        assert set(mstate) == set(tstate)
        assert mstate["step"].dtype == np.float64 and float(mstate["step"]) == float(tstate["step"])
        np.testing.assert_array_equal(mstate["sum"], tstate["sum"].numpy())


def test_group_initial_accumulator_value_is_ignored_like_torch(torch):
    "torch fills every sum with the constructor's value, even in a group that sets its own."
    twins = run_parity(Adagrad, torch.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.1),
                       dtype=np.float64, steps=20, group_overrides=({}, {"initial_accumulator_value": 2.0}))
    np.testing.assert_array_equal(twins.mopt.state[twins.mparams[1]]["sum"], 0.1)


def test_added_group_gets_lazy_state_from_defaults(torch):
    twins = run_parity(Adagrad, torch.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.2),
                       dtype=np.float64, steps=3)
    extra_m, extra_t = Param(np.full(4, 2.0)), torch.full((4,), 2.0, dtype=torch.float64, requires_grad=True)
    twins.mopt.add_param_group({"params": [extra_m], "lr": 0.3, "initial_accumulator_value": 5.0})
    twins.topt.add_param_group({"params": [extra_t], "lr": 0.3, "initial_accumulator_value": 5.0})
    assert extra_m not in twins.mopt.state
    for step in range(5):
        g = np.linspace(-1, 1, 4) * (step + 1)
        extra_m.grad, extra_t.grad = g.copy(), torch.from_numpy(g.copy())
        twins.step(); twins.check()
        np.testing.assert_allclose(extra_m.data, extra_t.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(twins.mopt.state[extra_m]["sum"], twins.topt.state[extra_t]["sum"].numpy(), rtol=1e-12)


def test_alias_and_positional_foreach():
    assert AdaGrad is Adagrad
    opt = Adagrad([Param(np.zeros(2))], 0.1, 0.0, 0.0, 0.0, 1e-10, None)  # foreach is positional, as in torch
    assert opt.defaults["foreach"] is None and opt.defaults["maximize"] is False


def test_group_keys_match_torch(torch):
    mine = Adagrad([Param(np.zeros(2))]).state_dict()["param_groups"][0]
    ref = torch.optim.Adagrad([torch.zeros(2, requires_grad=True)]).state_dict()["param_groups"][0]
    assert set(mine) == set(ref) - parity.TORCH_ONLY_GROUP_KEYS
    assert all(mine[k] == ref[k] for k in mine if k != "params")


def test_signature_matches_torch(torch):
    import inspect
    ref = inspect.signature(torch.optim.Adagrad).parameters.values()
    expected = [(p.name, p.kind, p.default) for p in ref if p.name not in parity.TORCH_ONLY_GROUP_KEYS]
    assert [(p.name, p.kind, p.default) for p in inspect.signature(Adagrad).parameters.values()] == expected


def test_fused_and_foreach_cannot_both_be_true(torch):
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together."):
        Adagrad([Param(np.zeros(2))], foreach=True, fused=True)


def test_kernel_leaves_grads_alone_and_counts_steps():
    params, grads = [np.array([1.0, -2.0])], [np.array([0.5, 4.0])]
    sums, steps = [np.zeros(2)], [np.zeros((), np.float64)]
    adagrad(params, grads, sums, steps, lr=0.1, weight_decay=0.1, lr_decay=0.0, eps=1e-10, maximize=True)
    np.testing.assert_array_equal(grads[0], [0.5, 4.0])
    assert float(steps[0]) == 1.0 and steps[0].shape == ()
    # maximize with weight decay: g = -grad + wd*param; the step is lr * g/|g| per coordinate
    g = -np.array([0.5, 4.0]) + 0.1 * np.array([1.0, -2.0])
    np.testing.assert_allclose(params[0], np.array([1.0, -2.0]) - 0.1 * np.sign(g), rtol=1e-9)
    np.testing.assert_allclose(sums[0], g * g)


def test_closure_loss_is_returned():
    p = Param(np.ones(2))
    opt = Adagrad([p], lr=0.1)
    def closure():
        p.grad = 2 * p.data
        return float(np.sum(p.data ** 2))
    assert opt.step(closure) == 2.0
    np.testing.assert_allclose(p.data, 0.9)


ERRORS = [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(lr_decay=-0.5), "Invalid lr_decay value: -0.5"),
    (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    (dict(initial_accumulator_value=-1.0), "Invalid initial_accumulator_value value: -1.0"),
    (dict(eps=-1e-3), "Invalid epsilon value: -0.001"),
]


@pytest.mark.parametrize("kwargs,message", ERRORS)
def test_validation_errors_match_torch(torch, kwargs, message):
    assert message in assert_same_error(Adagrad, torch.optim.Adagrad, kwargs)


def test_first_invalid_argument_is_reported_in_torch_order(torch):
    bad = dict(lr=-1.0, lr_decay=-1.0, weight_decay=-1.0, initial_accumulator_value=-1.0, eps=-1.0)
    with pytest.raises(ValueError) as mine: Adagrad([Param(np.zeros(1))], **bad)
    with pytest.raises(ValueError) as ref: torch.optim.Adagrad([torch.zeros(1, requires_grad=True)], **bad)
    assert str(mine.value) == str(ref.value)


# fused=True (a compiled loop) and foreach=True (the kernel on pieces of a flat buffer) do the reference's
# arithmetic: they must agree with foreach=False bit for bit. Nine small tensors in one group (fused shares a
# buffer among them) and one larger than a flat piece in another (fused updates it in place, foreach in pieces).


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS)
def test_fast_paths_agree_bitwise_with_the_reference(dtype, options):
    assert_fast_paths_agree_bitwise(Adagrad, kwargs_for(*options), dtype)
