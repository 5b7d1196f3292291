"""minima.tensor: every operation's gradient against finite differences and against torch's autograd,
plus accumulation, no_grad, the graph walk and the errors."""
import subprocess, sys, warnings
import numpy as np
import pytest
from parity import assert_close
from minima.tensor import (Tensor, no_grad, is_grad_enabled, unbroadcast, matmul, exp, log, sqrt, relu, tanh,
                           sigmoid, log_softmax, numerical_grad, check_grad, draw_graph, _record)


class MinimaOps:
    "What the shared case functions need that is spelled differently in minima and torch."
    name = "minima"
    const = staticmethod(lambda a, like=None: a if like is None else a.astype(like.dtype))  # a plain array operand
    amax = staticmethod(lambda x, axis=None: x.max(axis=axis))
    permute = staticmethod(lambda x, axes: x.transpose(*axes))
    log_softmax = staticmethod(lambda x, axis: log_softmax(x, axis=axis))
    fns = dict(exp=exp, log=log, sqrt=sqrt, relu=relu, tanh=tanh, sigmoid=sigmoid)


def torch_ops(torch):
    class TorchOps:
        name = "torch"
        const = staticmethod(lambda a, like=None: torch.from_numpy(np.asarray(a) if like is None else a.astype(like.detach().numpy().dtype)))
        amax = staticmethod(lambda x, axis=None: x.amax() if axis is None else x.amax(dim=axis))
        permute = staticmethod(lambda x, axes: x.permute(*axes))
        log_softmax = staticmethod(lambda x, axis: torch.log_softmax(x, dim=axis))
        fns = dict(exp=torch.exp, log=torch.log, sqrt=torch.sqrt, relu=torch.relu, tanh=torch.tanh,
                   sigmoid=torch.sigmoid)
    return TorchOps


R = "real"       # standard normal entries
P = "positive"   # uniform in [0.5, 2]: the domain of log, sqrt, fractional powers, division
TIES = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, 0.0, 2.0, 2.0], [5.0, 4.0, 0.0, 5.0]])
PAIR_TIES = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, 0.0, 2.0, 1.0]])  # finite differences see a tied pair as g/2 each
MASK = np.array([True, False, True])
C34 = np.linspace(-1.0, 2.0, 12).reshape(3, 4)

# name -> (function of (ops, *tensors), [(shape, domain) or a fixed array, ...], check with finite differences)
CASES = {
    "add (3,1)+(1,4)": (lambda L, a, b: a + b, [((3, 1), R), ((1, 4), R)], True),
    "add (2,3)+(3,)": (lambda L, a, b: a + b, [((2, 3), R), ((3,), R)], True),
    "add 0-d tensor": (lambda L, a, b: a + b, [((2, 3), R), ((), R)], True),
    "radd, rsub python scalars": (lambda L, a, b: 1.5 - a + (2.0 + b), [((3, 4), R), ((4,), R)], True),
    "sub (3,1)-(1,4)": (lambda L, a, b: a - b, [((3, 1), R), ((1, 4), R)], True),
    "mul (2,3)*(3,)": (lambda L, a, b: a * b, [((2, 3), R), ((3,), R)], True),
    "mul (3,1)*(1,4) and rmul": (lambda L, a, b: 3.0 * (a * b) * 0.5, [((3, 1), R), ((1, 4), R)], True),
    "div (2,3)/(3,)": (lambda L, a, b: a / b, [((2, 3), R), ((3,), P)], True),
    "div (4,1)/(1,3)": (lambda L, a, b: a / b, [((4, 1), R), ((1, 3), P)], True),
    "rtruediv": (lambda L, a: 2.0 / a, [((2, 3), P)], True),
    "pow python exponent": (lambda L, a: a ** 3.0 + a ** 2, [((2, 3), R)], True),
    "pow fractional exponent": (lambda L, a: a ** 0.5, [((5,), P)], True),
    "pow tensor exponent (3,1)**(1,4)": (lambda L, a, b: a ** b, [((3, 1), P), ((1, 4), R)], True),
    "rpow": (lambda L, a: 2.0 ** a, [((2, 3), R)], True),
    "neg": (lambda L, a: -a, [((2, 3), R)], True),
    "abs": (lambda L, a: abs(a), [((2, 3), R)], True),
    "ndarray on the left": (lambda L, a: L.const(C34) + a * L.const(C34) - L.const(C34) / (a * a + 1.0),
                            [((3, 4), R)], True),
    "ndarray @ tensor": (lambda L, a: L.const(C34, like=a) @ a, [((4, 2), R)], True),
    "matmul 2-D": (lambda L, a, b: a @ b, [((2, 3), R), ((3, 4), R)], True),
    "matmul 1-D @ 2-D": (lambda L, a, b: a @ b, [((3,), R), ((3, 4), R)], True),
    "matmul 2-D @ 1-D": (lambda L, a, b: a @ b, [((2, 3), R), ((3,), R)], True),
    "matmul 1-D @ 1-D": (lambda L, a, b: a @ b, [((3,), R), ((3,), R)], True),
    "matmul batched @ 2-D": (lambda L, a, b: a @ b, [((2, 2, 3), R), ((3, 4), R)], True),
    "matmul broadcast batches": (lambda L, a, b: a @ b, [((2, 1, 2, 3), R), ((3, 3, 2), R)], True),
    "matmul 1-D @ batched": (lambda L, a, b: a @ b, [((3,), R), ((2, 3, 4), R)], True),
    "exp": (lambda L, a: L.fns["exp"](a), [((2, 3), R)], True),
    "log": (lambda L, a: L.fns["log"](a), [((2, 3), P)], True),
    "sqrt": (lambda L, a: L.fns["sqrt"](a), [((2, 3), P)], True),
    "relu": (lambda L, a: L.fns["relu"](a), [((3, 4), R)], True),
    "tanh": (lambda L, a: L.fns["tanh"](a), [((3, 4), R)], True),
    "sigmoid": (lambda L, a: L.fns["sigmoid"](a), [((3, 4), R)], True),
    "sigmoid of large inputs": (lambda L, a: L.fns["sigmoid"](a * 400.0), [((3, 4), R)], False),
    "methods exp log sqrt relu tanh sigmoid": (
        lambda L, a: a.exp() + a.log() * a.sqrt() - a.relu() + a.tanh() * a.sigmoid(), [((2, 3), P)], True),
    "sum all": (lambda L, a: a.sum(), [((3, 4), R)], True),
    "sum axis 0": (lambda L, a: a.sum(axis=0), [((3, 4), R)], True),
    "sum axis -1": (lambda L, a: a.sum(axis=-1), [((2, 3, 4), R)], True),
    "sum axes (0,2) keepdims": (lambda L, a: a.sum(axis=(0, 2), keepdims=True), [((2, 3, 4), R)], True),
    "mean all": (lambda L, a: a.mean(), [((3, 4), R)], True),
    "mean axis 1 keepdims": (lambda L, a: a.mean(axis=1, keepdims=True), [((3, 4), R)], True),
    "mean axes (0,1)": (lambda L, a: a.mean(axis=(0, 1)), [((2, 3, 4), R)], True),
    "max all": (lambda L, a: L.amax(a), [((3, 4), R)], True),
    "max axis 1": (lambda L, a: L.amax(a, axis=1), [((3, 4), R)], True),
    "max with tied pairs": (lambda L, a: L.amax(a, axis=1), [PAIR_TIES], True),
    # max is not differentiable at a tie; with three tied entries only torch's convention (equal split) applies
    "max with ties": (lambda L, a: L.amax(a, axis=1), [TIES], False),
    "max of all with ties": (lambda L, a: L.amax(a), [TIES], False),
    "reshape": (lambda L, a: a.reshape(4, 3) * a.reshape((4, 3)), [((3, 4), R)], True),
    ".T": (lambda L, a: a.T * L.const(C34.T), [((3, 4), R)], True),
    "transpose permutation": (lambda L, a: L.permute(a, (2, 0, 1)), [((2, 3, 4), R)], True),
    "getitem basic": (lambda L, a: a[1:, ::2] * a[0, :2], [((3, 4), R)], True),
    "getitem int": (lambda L, a: a[1] + a[-1], [((3, 4), R)], True),
    "getitem repeated indices": (lambda L, a: a[[0, 0, 2, 0]], [((3, 4), R)], True),
    "getitem repeated pairs": (lambda L, a: a[L.const(np.array([0, 0, 1])), L.const(np.array([1, 1, 3]))],
                               [((3, 4), R)], True),
    "getitem newaxis": (lambda L, a: a[:, None] * a[None], [((3, 2), R)], True),
    "getitem mask": (lambda L, a: a[L.const(MASK)], [((3, 4), R)], True),
    "log_softmax last axis": (lambda L, a: L.log_softmax(a, -1), [((3, 5), R)], True),
    "log_softmax axis 0": (lambda L, a: L.log_softmax(a, 0), [((3, 5), R)], True),
    "log_softmax large logits": (lambda L, a: L.log_softmax(a * 1e4, -1), [((3, 5), R)], False),
    "a reused (diamond)": (lambda L, a, b: (a * b + a).tanh() * a, [((3, 4), R), ((4,), R)], True),
}


def make_arrays(specs, dtype, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for spec in specs:
        if isinstance(spec, np.ndarray): out.append(spec.astype(dtype)); continue
        shape, domain = spec
        a = rng.standard_normal(shape) if domain == R else rng.uniform(0.5, 2.0, shape)
        out.append(np.asarray(a, dtype=dtype))
    return out


@pytest.mark.parametrize("name", [n for n, (_, _, fd) in CASES.items() if fd])
def test_gradient_matches_finite_differences(name):
    fn, specs, _ = CASES[name]
    assert check_grad(lambda *ts: fn(MinimaOps, *ts), *make_arrays(specs, np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_value_and_gradient_match_torch(torch, name, dtype):
    fn, specs, _ = CASES[name]
    arrays = make_arrays(specs, dtype)
    mine = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    ref = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or divide-by-zero warnings from NumPy either
        out = fn(MinimaOps, *mine)
        tout = fn(torch_ops(torch), *ref)
        assert_close(out.data, tout.detach().numpy(), dtype, f"{name}: value")
        upstream = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
        out.backward(upstream)
        tout.backward(torch.from_numpy(upstream))
    for i, (m, t) in enumerate(zip(mine, ref)):
        assert m.grad is not None and m.grad.shape == m.shape
        assert_close(m.grad, t.grad.numpy(), dtype, f"{name}: gradient of input {i}")


def test_pow_at_zero_matches_torch(torch):
    "0 ** b and a ** 0 have finite derivatives where the textbook formulas give inf or nan."
    base, exponent = np.array([0.0, 0.0, 2.0]), np.array([0.0, 2.0, 0.0])
    m = [Tensor(base.copy(), requires_grad=True), Tensor(exponent.copy(), requires_grad=True)]
    t = [torch.tensor(base, requires_grad=True), torch.tensor(exponent, requires_grad=True)]
    (m[0] ** m[1]).sum().backward(); (t[0] ** t[1]).sum().backward()
    for a, b in zip(m, t):
        assert np.all(np.isfinite(a.grad))
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-12)


def test_log_softmax_of_extreme_logits_is_finite_and_normalised():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1e300, 0.0, 1e300], [710.0, 710.0, 710.0]])
    x = Tensor(logits, requires_grad=True)
    out = log_softmax(x)
    out.sum().backward()
    assert np.all(np.isfinite(out.data)) and np.all(np.isfinite(x.grad))
    np.testing.assert_allclose(np.exp(out.data).sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(out.data[2], -np.log(3.0), rtol=1e-12)  # equal logits: uniform
    # d/dx sum(log_softmax) = 1 - C * softmax: closed form
    np.testing.assert_allclose(x.grad, 1 - 3 * np.exp(out.data), atol=1e-12)


# ---------------------------------------------------------------- broadcasting helper

@pytest.mark.parametrize("shape", [(3, 4), (4,), (1, 4), (3, 1), (1, 1), (), (2, 1, 4)])
def test_unbroadcast_sums_what_broadcasting_copied(shape):
    "The adjoint of broadcasting: <broadcast(x), g> == <x, unbroadcast(g)> for every x."
    rng = np.random.default_rng(0)
    out_shape = np.broadcast_shapes(shape, (2, 3, 4))
    x, g = rng.standard_normal(shape), rng.standard_normal(out_shape)
    reduced = unbroadcast(g, shape)
    assert reduced.shape == shape
    np.testing.assert_allclose(np.sum(np.broadcast_to(x, out_shape) * g), np.sum(x * reduced), rtol=1e-12)


# ---------------------------------------------------------------- the graph walk

def test_gradients_accumulate_across_backward_calls(torch):
    x0 = np.array([1.0, -2.0, 3.0])
    x, tx = Tensor(x0.copy(), requires_grad=True), torch.tensor(x0, requires_grad=True)
    for _ in range(2):
        (x * x).sum().backward(); (tx * tx).sum().backward()
    (x.tanh() * 3.0).sum().backward(); (tx.tanh() * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad, 4 * x0 + 3 * (1 - np.tanh(x0) ** 2), rtol=1e-12)


def test_first_gradient_is_a_fresh_writable_array():
    x = Tensor(np.ones(3), requires_grad=True)
    upstream = np.array([1.0, 2.0, 3.0])
    x.backward(upstream)  # a leaf: the gradient is the given array itself
    assert not np.shares_memory(x.grad, upstream)
    b = Tensor(np.ones((1, 3)), requires_grad=True)
    (b + np.zeros((4, 3))).sum().backward()  # the gradient starts as a read-only broadcast view
    b.grad += 1.0
    np.testing.assert_array_equal(b.grad, np.full((1, 3), 5.0))


def test_intermediate_used_twice_gets_the_sum_of_both_paths():
    x = Tensor(np.array([0.3, -1.2]), requires_grad=True)
    h = x * x          # used by both terms
    (h * 2.0 + h.exp()).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data * (2.0 + np.exp(x.data ** 2)), rtol=1e-12)


def test_deep_graph_does_not_hit_the_recursion_limit():
    depth = 4 * sys.getrecursionlimit()
    x = Tensor(1.0, requires_grad=True)
    y = x
    for _ in range(depth): y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(x.grad, 1.0001 ** depth, rtol=1e-9)


def test_only_leaves_keep_gradients():
    x = Tensor(np.ones(2), requires_grad=True)
    h = x * 2.0
    h.sum().backward()
    assert h.grad is None and not h.is_leaf and x.is_leaf and x.grad is not None


def test_inputs_without_requires_grad_get_no_gradient():
    x, c = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(2))
    (x * c).sum().backward()
    assert c.grad is None and x.grad is not None


def test_gradient_dtype_follows_each_leaf():
    a = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    b = Tensor(np.ones(3, dtype=np.float64), requires_grad=True)
    out = a * b
    assert out.dtype == np.float64
    out.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64


# ---------------------------------------------------------------- no_grad

def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2.0).exp().sum()
    assert is_grad_enabled()
    assert not y.requires_grad and y._parents == () and y.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"): y.backward()
    assert x.grad is None


def test_no_grad_as_decorator_and_restores_after_an_exception():
    @no_grad()
    def double(t): return t * 2.0
    x = Tensor(np.ones(2), requires_grad=True)
    assert not double(x).requires_grad and (x * 2.0).requires_grad
    with pytest.raises(ZeroDivisionError):
        with no_grad(): 1 / 0
    assert is_grad_enabled()
    with no_grad():
        with no_grad(): pass
        assert not is_grad_enabled()
    assert is_grad_enabled()


# ---------------------------------------------------------------- errors

def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="floating point.*int64"):
        Tensor(np.array([1, 2]), requires_grad=True)
    with pytest.raises(TypeError, match="floating point"):
        Tensor(np.array([1, 2])).requires_grad_()
    Tensor(np.array([1, 2]))  # without gradients integers are fine


def test_backward_of_a_non_scalar_needs_a_gradient():
    y = Tensor(np.ones(3), requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs"):
        y.backward()
    with pytest.raises(ValueError, match=r"gradient has shape \(2,\).*\(3,\)"):
        y.backward(np.ones(2))


def test_backward_on_a_tensor_without_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(1)).backward()


@pytest.mark.parametrize("sa, sb", [((2, 3), (4, 5)), ((3,), (4,)), ((2, 3), (2,)), ((2, 2, 3), (3, 3, 1))])
def test_matmul_shape_mismatch_names_both_shapes(sa, sb):
    with pytest.raises(ValueError, match=r"matmul.*" + r"\(.*\).*\(.*\)") as info:
        Tensor(np.ones(sa)) @ Tensor(np.ones(sb))
    assert str(sa) in str(info.value) and str(sb) in str(info.value)


def test_matmul_of_a_zero_dim_operand():
    with pytest.raises(ValueError, match="at least one dimension"):
        matmul(Tensor(2.0), Tensor(np.ones(3)))


def test_requires_grad_only_on_leaves():
    y = Tensor(np.ones(2), requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match="leaf"): y.requires_grad_(False)


# ---------------------------------------------------------------- the Tensor itself

def test_dtypes_follow_numpy_and_python_scalars_keep_float32():
    assert Tensor(1.5).dtype == np.float64 and Tensor([1.0, 2.0]).dtype == np.float64
    x = Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    assert (x * 0.5 + 1.0).dtype == np.float32 and (2.0 ** x).dtype == np.float32


def test_identity_hash_and_equality():
    a, b = Tensor(np.ones(2)), Tensor(np.ones(2))
    assert a != b and a == a and len({a, b, a}) == 2
    assert {a: 1, b: 2}[b] == 2
    assert Tensor.__eq__ is object.__eq__ and Tensor.__hash__ is object.__hash__


def test_ndarray_on_the_left_gives_a_tensor():
    x = Tensor(np.ones(3), requires_grad=True)
    for y in (np.ones(3) + x, np.ones(3) * x, np.ones(3) - x, np.ones(3) / x, np.ones((2, 3)) @ x):
        assert isinstance(y, Tensor) and y.requires_grad


def test_accessors():
    data = np.arange(6.0).reshape(2, 3)
    t = Tensor(data, requires_grad=True)
    assert t.data is data and t.numpy() is data and t.shape == (2, 3) and t.ndim == 2 and len(t) == 2
    d = t.detach()
    assert d.data is data and not d.requires_grad
    assert Tensor(np.array([2.5])).item() == 2.5 and isinstance(Tensor(3.0).item(), float)
    np.testing.assert_array_equal(t.T.data, data.T)
    np.testing.assert_array_equal(np.asarray(t), data)


def test_repr_is_readable():
    x = Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    assert repr(x) == "Tensor([1., 2.], dtype=float32, requires_grad=True)"
    assert "grad_fn=<mul>" in repr(x * 2.0)
    assert repr(Tensor(np.zeros((2, 2)))) == "Tensor([[0., 0.],\n        [0., 0.]])"


# ---------------------------------------------------------------- the checkers and the picture

def test_numerical_grad_matches_a_closed_form():
    a, b = np.array([1.0, -2.0, 0.5]), np.array([[3.0, 4.0]])
    ga, gb = numerical_grad(lambda a, b: (a ** 3).sum() + np.prod(b), a, b)
    np.testing.assert_allclose(ga, 3 * a ** 2, rtol=1e-8)
    np.testing.assert_allclose(gb, [[4.0, 3.0]], rtol=1e-8)


def test_check_grad_catches_a_wrong_gradient():
    def wrong_square(x): return _record(x.data ** 2, "wrong", (x, lambda g: g * x.data))  # should be 2x
    with pytest.raises(AssertionError, match="gradient of argument 0"):
        check_grad(wrong_square, np.array([1.0, 2.0]))
    assert check_grad(lambda x: x * x, np.array([1.0, 2.0]))


def test_draw_graph_draws_every_node():
    import matplotlib, matplotlib.text
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    w, b, x = Tensor(2.0, requires_grad=True), Tensor(0.5, requires_grad=True), Tensor(3.0)
    loss = (w * x + b - 4.0) ** 2
    loss.backward()
    ax = draw_graph(loss, {"w": w, "L": loss})
    labels = [t.get_text() for t in ax.texts if not isinstance(t, matplotlib.text.Annotation)]
    assert len(labels) == 7  # leaves w, x, b and the ops mul, add, sub, pow (the Python 4.0 is no node)
    assert any(label.startswith("w\n") and "grad 15" in label for label in labels)
    plt.close(ax.figure)


def test_importing_minima_pulls_in_neither_torch_nor_matplotlib():
    code = ("import sys, minima.tensor, minima.nn; "
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("conftest").ROOT))


def test_float_of_a_one_element_tensor(torch):
    from minima.tensor import Tensor
    x = np.array([[1.25]], dtype=np.float32)
    assert float(Tensor(x)) == float(torch.tensor(x)) == 1.25
    with pytest.raises(Exception) as ref: float(torch.tensor([1.0, 2.0]))
    with pytest.raises(ref.type): float(Tensor([1.0, 2.0]))
