"""minima.nn: modules, layers and losses against torch.nn with identical weights; registration, names,
state_dict and the errors."""
from collections import OrderedDict
import numpy as np
import pytest
from parity import assert_close
from minima.tensor import Tensor
import minima.nn as mnn
from minima.nn import (Parameter, Module, Linear, ReLU, Tanh, Sigmoid, Sequential, MSELoss, CrossEntropyLoss,
                       manual_seed)

DTYPES = [np.float32, np.float64]


def torch_twin(torch, model, torch_model):
    "Give the torch model minima's weights; loading by name also checks that the names agree."
    torch_model.to(dtype=torch.float64 if next(model.parameters()).dtype == np.float64 else torch.float32)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, strict=True)
    return torch_model


def assert_same_forward_backward(torch, model, torch_model, x, dtype):
    out = model(Tensor(x))
    tout = torch_model(torch.from_numpy(x))
    assert_close(out.data, tout.detach().numpy(), dtype, "output")
    upstream = np.random.default_rng(7).standard_normal(out.shape).astype(dtype)
    out.backward(upstream); tout.backward(torch.from_numpy(upstream))
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for n, _ in torch_model.named_parameters()]
    for (name, p), tp in zip(model.named_parameters(), torch_model.parameters()):
        assert p.grad.dtype == p.data.dtype == dtype
        assert_close(p.grad, tp.grad.numpy(), dtype, f"gradient of {name}")


def mlp(dtype, rng=None):
    return Sequential(Linear(4, 8, dtype=dtype, rng=rng), ReLU(), Linear(8, 8, dtype=dtype, rng=rng), Tanh(),
                      Linear(8, 3, dtype=dtype, rng=rng), Sigmoid())


def torch_mlp(torch):
    nn = torch.nn
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3), nn.Sigmoid())


# ---------------------------------------------------------------- layers against torch

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(torch, dtype, bias):
    layer = Linear(5, 3, bias=bias, dtype=dtype, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((7, 5)).astype(dtype)
    assert_same_forward_backward(torch, layer, torch_twin(torch, layer, torch.nn.Linear(5, 3, bias=bias)), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_on_a_single_sample_and_a_batch_of_batches(torch, dtype):
    layer = Linear(4, 2, dtype=dtype, rng=np.random.default_rng(0))
    tlayer = torch_twin(torch, layer, torch.nn.Linear(4, 2))
    for shape in [(4,), (2, 3, 4)]:
        layer.zero_grad(); tlayer.zero_grad()
        x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
        assert_same_forward_backward(torch, layer, tlayer, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_with_each_activation_matches_torch(torch, dtype):
    model = mlp(dtype, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(dtype)
    assert_same_forward_backward(torch, model, torch_twin(torch, model, torch_mlp(torch)), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_steps_track_torch(torch, dtype):
    "Gradients feed back into the weights: ten plain gradient steps stay together."
    model = mlp(dtype, np.random.default_rng(0))
    tmodel = torch_twin(torch, model, torch_mlp(torch))
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((16, 4)).astype(dtype), rng.integers(0, 3, 16)
    for _ in range(10):
        model.zero_grad(); tmodel.zero_grad()
        CrossEntropyLoss()(model(Tensor(x)), y).backward()
        torch.nn.CrossEntropyLoss()(tmodel(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        for p, tp in zip(model.parameters(), tmodel.parameters()):
            p.data -= 0.5 * p.grad
            with torch.no_grad(): tp -= 0.5 * tp.grad
    for (name, p), tp in zip(model.named_parameters(), tmodel.parameters()):
        assert_close(p.data, tp.detach().numpy(), dtype, name)


# ---------------------------------------------------------------- losses against torch

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_torch(torch, dtype, reduction):
    rng = np.random.default_rng(0)
    a, target = rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal((4, 3)).astype(dtype)
    x, tx = Tensor(a.copy(), requires_grad=True), torch.tensor(a, requires_grad=True)
    loss = MSELoss(reduction)(x, target)
    tloss = torch.nn.MSELoss(reduction=reduction)(tx, torch.from_numpy(target))
    assert loss.shape == tuple(tloss.shape)
    assert_close(loss.data, tloss.detach().numpy(), dtype, "loss")
    loss.sum().backward(); tloss.sum().backward()
    assert_close(x.grad, tx.grad.numpy(), dtype, "input gradient")


def test_mse_loss_gradient_reaches_a_target_that_requires_grad(torch):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(5), rng.standard_normal(5)
    x, y = Tensor(a, requires_grad=True), Tensor(b.copy(), requires_grad=True)
    tx, ty = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    MSELoss()(x, y).backward(); torch.nn.MSELoss()(tx, ty).backward()
    np.testing.assert_allclose(y.grad, ty.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("scale", [1.0, 1e3])  # 1e3: logits far beyond exp's range
def test_cross_entropy_matches_torch(torch, dtype, reduction, scale):
    rng = np.random.default_rng(0)
    logits, classes = (scale * rng.standard_normal((6, 4))).astype(dtype), rng.integers(0, 4, 6)
    x, tx = Tensor(logits.copy(), requires_grad=True), torch.tensor(logits, requires_grad=True)
    loss = CrossEntropyLoss(reduction)(x, classes)
    tloss = torch.nn.CrossEntropyLoss(reduction=reduction)(tx, torch.from_numpy(classes))
    assert loss.shape == tuple(tloss.shape)
    assert_close(loss.data, tloss.detach().numpy(), dtype, "loss")
    loss.sum().backward(); tloss.sum().backward()
    assert_close(x.grad, tx.grad.numpy(), dtype, "logit gradient")


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    rng = np.random.default_rng(0)
    logits, classes = rng.standard_normal((5, 3)), np.array([0, 2, 1, 1, 0])
    x = Tensor(logits, requires_grad=True)
    CrossEntropyLoss()(x, classes).backward()
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(x.grad, (p - np.eye(3)[classes]) / 5, rtol=1e-12)


def test_cross_entropy_unbatched_and_tensor_targets(torch):
    logits = np.array([0.5, -1.0, 2.0])
    x, tx = Tensor(logits, requires_grad=True), torch.tensor(logits, requires_grad=True)
    loss = CrossEntropyLoss()(x, np.array(2))
    tloss = torch.nn.CrossEntropyLoss()(tx, torch.tensor(2))
    np.testing.assert_allclose(loss.data, tloss.detach().numpy(), rtol=1e-12)
    loss.backward(); tloss.backward()
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12)
    batch = Tensor(np.zeros((2, 3)))
    np.testing.assert_allclose(CrossEntropyLoss()(batch, Tensor(np.array([0, 1]))).item(), np.log(3), rtol=1e-12)


@pytest.mark.parametrize("target", [np.array([0.0, 1.0]), np.array([True, False]), [0.5, 1.0]])
def test_cross_entropy_rejects_non_integer_targets(target):
    with pytest.raises(TypeError, match="integer class indices.*dtype"):
        CrossEntropyLoss()(Tensor(np.zeros((2, 3))), target)


@pytest.mark.parametrize("bad", [3, -1, 100])
def test_cross_entropy_rejects_targets_out_of_range(bad):
    with pytest.raises(ValueError, match=f"Target {bad} is out of bounds"):
        CrossEntropyLoss()(Tensor(np.zeros((2, 3))), np.array([0, bad]))


def test_loss_shape_errors():
    with pytest.raises(ValueError, match=r"target shape \(3,\).*\(2, 3\)"):
        CrossEntropyLoss()(Tensor(np.zeros((2, 3))), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(N, C\) or \(C,\).*\(2, 3, 4\)"):
        CrossEntropyLoss()(Tensor(np.zeros((2, 3, 4))), np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match=r"target shape \(3,\) differs from input shape \(2, 3\)"):
        MSELoss()(Tensor(np.zeros((2, 3))), np.zeros(3))


@pytest.mark.parametrize("loss", [MSELoss, CrossEntropyLoss])
def test_invalid_reduction(loss):
    with pytest.raises(ValueError, match="'average' is not a valid value for reduction"):
        loss(reduction="average")


# ---------------------------------------------------------------- names and order

def build_nested(nn, make_param, linear):
    "The same architecture in minima or torch: own parameter, nested Sequential, a layer used twice."
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = make_param()
            self.body = nn.Sequential(linear(3, 4), nn.Tanh(), nn.Sequential(linear(4, 4), nn.ReLU()))
            self.shared = linear(4, 4)
            self.head = nn.Sequential(self.shared, nn.Sigmoid(), self.shared)
            self.out = linear(4, 2, bias=False)
        def forward(self, x):
            return self.out(self.head(self.body(x * self.scale)))
    return Net()


@pytest.fixture
def nested_pair(torch):
    mine = build_nested(mnn, lambda: Parameter(np.linspace(0.5, 1.5, 3)),
                        lambda *args, **kw: Linear(*args, **kw, dtype=np.float64, rng=np.random.default_rng(0)))
    ref = build_nested(torch.nn, lambda: torch.nn.Parameter(torch.ones(3)), torch.nn.Linear)
    return mine, torch_twin(torch, mine, ref)


def test_parameter_names_and_order_match_torch(nested_pair):
    mine, ref = nested_pair
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert len(list(mine.parameters())) == len(list(ref.parameters()))  # the shared layer counted once
    assert [n for n, _ in mine.named_children()] == [n for n, _ in ref.named_children()]
    assert [n for n, _ in mine.named_modules()] == [n for n, _ in ref.named_modules()]
    assert list(mine.state_dict()) == list(ref.state_dict())  # state_dict repeats shared weights, as torch


def test_nested_model_matches_torch(torch, nested_pair):
    mine, ref = nested_pair
    x = np.random.default_rng(0).standard_normal((5, 3))
    assert_same_forward_backward(torch, mine, ref, x, np.float64)


def test_repr_matches_torch(nested_pair):
    mine, ref = nested_pair
    assert repr(mine.body) == repr(ref.body) and repr(mine.head) == repr(ref.head)
    assert repr(mine.out) == repr(ref.out)
    assert repr(MSELoss()) == "MSELoss()"


def test_parameters_without_recursion():
    model = build_nested(mnn, lambda: Parameter(np.ones(3)), Linear)
    assert [n for n, _ in model.named_parameters(recurse=False)] == ["scale"]


# ---------------------------------------------------------------- Linear initialisation

@pytest.mark.parametrize("n_in, n_out", [(400, 100), (3, 1000)])
def test_linear_init_is_uniform_within_torch_bound(n_in, n_out):
    layer = Linear(n_in, n_out, rng=np.random.default_rng(0))
    bound = 1 / np.sqrt(n_in)
    assert layer.weight.shape == (n_out, n_in) and layer.bias.shape == (n_out,)
    assert layer.weight.dtype == layer.bias.dtype == np.float32
    for w in (layer.weight.data, layer.bias.data):
        assert np.all(np.abs(w) <= bound)
        assert np.abs(w).max() > 0.95 * bound            # the whole interval is used
        # uniform on [-b, b]: mean 0, standard deviation b / sqrt(3); 5 standard errors of slack
        se = bound / np.sqrt(3) / np.sqrt(w.size)
        assert abs(w.mean()) < 5 * se
        assert abs(w.std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3)


def test_linear_init_statistics_match_torch(torch):
    torch.manual_seed(0)
    ref = torch.nn.Linear(300, 200).weight.detach().numpy()
    mine = Linear(300, 200, rng=np.random.default_rng(0)).weight.data
    assert abs(np.abs(ref).max() - np.abs(mine).max()) < 1e-3
    assert abs(ref.std() - mine.std()) < 0.02 * ref.std()


def test_manual_seed_and_rng_make_weights_reproducible():
    manual_seed(3); a = Linear(4, 3)
    manual_seed(3); b = Linear(4, 3)
    c = Linear(4, 3)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(b.weight.data, c.weight.data)
    d, e = Linear(4, 3, rng=np.random.default_rng(1)), Linear(4, 3, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(d.bias.data, e.bias.data)


def test_linear_argument_errors():
    with pytest.raises(TypeError, match="in_features must be an int"): Linear(2.5, 3)
    with pytest.raises(ValueError, match="out_features must be non-negative, got -1"): Linear(2, -1)
    with pytest.raises(TypeError, match="floating dtype.*int64"): Linear(2, 3, dtype=np.int64)
    assert Linear(2, 3, bias=False).bias is None
    assert Linear(2, 3, dtype=np.float64).weight.dtype == np.float64


# ---------------------------------------------------------------- state_dict

def test_state_dict_is_a_copy_with_torch_keys(torch):
    model = mlp(np.float32, np.random.default_rng(0))
    sd = model.state_dict()
    assert isinstance(sd, OrderedDict) and list(sd) == list(torch_mlp(torch).state_dict())
    sd["0.weight"][...] = 0
    assert not np.all(model[0].weight.data == 0)


def test_state_dict_round_trip_copies_in_place():
    model, fresh = mlp(np.float32, np.random.default_rng(0)), mlp(np.float32, np.random.default_rng(1))
    arrays = [p.data for p in fresh.parameters()]
    result = fresh.load_state_dict(model.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert all(p.data is a for p, a in zip(fresh.parameters(), arrays))  # optimizers keep their references
    x = Tensor(np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32))
    np.testing.assert_array_equal(fresh(x).data, model(x).data)


def test_load_a_torch_state_dict(torch):
    model, tmodel = mlp(np.float32), torch_mlp(torch)
    model.load_state_dict(tmodel.state_dict())
    for p, tp in zip(model.parameters(), tmodel.parameters()):
        np.testing.assert_array_equal(p.data, tp.detach().numpy())


def snapshot(model): return [p.data.copy() for p in model.parameters()]


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("2.bias"), r'Missing key\(s\) in state_dict: "2.bias"'),
    (lambda sd: sd.update(extra=np.zeros(1)), r'Unexpected key\(s\) in state_dict: "extra"'),
    (lambda sd: sd.update({"4.weight": np.zeros((4, 8))}),
     r"size mismatch for 4.weight: copying a param with shape \(4, 8\).*\(3, 8\)"),
    (lambda sd: sd.update({"0.bias": np.array(["a"] * 8)}), "dtype mismatch for 0.bias"),
])
def test_load_state_dict_errors_leave_the_model_untouched(edit, message):
    source, target = mlp(np.float32, np.random.default_rng(0)), mlp(np.float32, np.random.default_rng(1))
    sd = source.state_dict(); edit(sd)
    before = snapshot(target)
    with pytest.raises(RuntimeError, match=message):
        target.load_state_dict(sd)
    for a, b in zip(before, snapshot(target)): np.testing.assert_array_equal(a, b)


def test_non_strict_load_reports_keys_but_shape_errors_stay_errors():
    source, target = mlp(np.float32, np.random.default_rng(0)), mlp(np.float32, np.random.default_rng(1))
    sd = source.state_dict(); sd.pop("0.bias"); sd["extra"] = np.zeros(2)
    result = target.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["0.bias"] and result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(target[0].weight.data, source[0].weight.data)
    assert not np.array_equal(target[0].bias.data, source[0].bias.data)
    sd["0.weight"] = np.zeros((2, 2))
    with pytest.raises(RuntimeError, match="size mismatch"): target.load_state_dict(sd, strict=False)


# ---------------------------------------------------------------- Module mechanics

def test_parameter_protocol():
    p = Parameter(np.zeros(3, dtype=np.float32))
    assert isinstance(p, Tensor) and p.requires_grad and isinstance(p.data, np.ndarray) and p.grad is None
    assert Parameter.__hash__ is object.__hash__ and Parameter.__eq__ is object.__eq__  # optimizers key state by it
    with pytest.raises(TypeError, match="floating point.*int64"): Parameter(np.arange(3))


def test_attribute_registration():
    m = Module()
    m.w = Parameter(np.ones(2)); m.child = Linear(2, 2); m.plain = np.ones(2)
    assert list(m._parameters) == ["w"] and list(m._modules) == ["child"]
    with pytest.raises(TypeError, match="cannot assign ndarray as parameter 'w'"): m.w = np.zeros(2)
    with pytest.raises(TypeError, match="as child module 'child'"): m.child = 3
    m.w = None
    assert [n for n, _ in m.named_parameters()] == ["child.weight", "child.bias"] and m.w is None
    del m.child
    assert list(m.parameters()) == [] and not hasattr(m, "child")


def test_assigning_before_init_is_an_error():
    class Forgot(Module):
        def __init__(self): self.w = Parameter(np.ones(2))
    with pytest.raises(AttributeError, match=r"before Module.__init__\(\) call"): Forgot()


def test_call_runs_forward_and_a_missing_forward_is_reported():
    with pytest.raises(NotImplementedError, match="forward"): Module()(1)
    layer = Linear(2, 2)
    x = Tensor(np.ones((1, 2), dtype=np.float32))
    np.testing.assert_array_equal(layer(x).data, layer.forward(x).data)


def test_train_and_eval_reach_every_module():
    model = mlp(np.float32)
    assert model.eval() is model and not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="boolean"): model.train("no")


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    model = mlp(np.float32)
    model(Tensor(np.ones((2, 4), dtype=np.float32))).sum().backward()
    grads = [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=set_to_none)
    for p, g in zip(model.parameters(), grads):
        if set_to_none: assert p.grad is None
        else: assert p.grad is g and not g.any()  # zeroed in place


def test_sequential_container():
    layers = [Linear(2, 3), ReLU(), Linear(3, 1)]
    model = Sequential(*layers)
    assert len(model) == 3 and list(model) == layers and model[0] is layers[0] and model[-1] is layers[2]
    head = model[1:]
    assert isinstance(head, Sequential) and list(head) == layers[1:]
    assert [n for n, _ in head.named_parameters()] == ["2.weight", "2.bias"]  # torch keeps the original names
    with pytest.raises(IndexError, match="out of range"): model[3]
    with pytest.raises(TypeError, match="Sequential takes Modules"): Sequential(Linear(2, 2), np.tanh)
    named = Sequential(OrderedDict(hidden=Linear(2, 3), act=Tanh()))
    assert [n for n, _ in named.named_parameters()] == ["hidden.weight", "hidden.bias"]
    x = Tensor(np.ones((4, 2), dtype=np.float32))
    np.testing.assert_array_equal(model(x).data, layers[2](layers[1](layers[0](x))).data)


def test_sequential_repr_matches_torch(torch):
    nn = torch.nn
    mine = Sequential(Linear(2, 3), ReLU(), Sequential(Linear(3, 3, bias=False), Tanh()), Sigmoid())
    ref = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 3, bias=False), nn.Tanh()), nn.Sigmoid())
    assert repr(mine) == repr(ref)
