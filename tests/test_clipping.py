"Gradient clipping (`minima.nn.utils`) against `torch.nn.utils` 2.13 and closed forms."
import math, warnings
import numpy as np
import pytest
from parity import Param, assert_close
from minima.nn.utils import clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm

SHAPES = [(3, 4), (5,), (2, 3, 2), (1,)]
DTYPES = [np.float32, np.float64]
NORM_TYPES = [1, 2, 3.5, math.inf, 'inf']


def random_grads(dtype, seed, shapes=SHAPES, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(s)).astype(dtype) for s in shapes]


def twin_params(torch, grads):
    "minima and torch parameters holding copies of `grads` (None: no gradient)."
    mine, theirs = [], []
    for g in grads:
        shape, dtype = ((1,), np.float32) if g is None else (g.shape, g.dtype)
        mine.append(Param(np.zeros(shape, dtype)))
        t = torch.zeros(shape, dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True)
        if g is not None: mine[-1].grad, t.grad = g.copy(), torch.from_numpy(g.copy())
        theirs.append(t)
    return mine, theirs


def assert_grads_match(mine, theirs, dtype, what):
    for i, (m, t) in enumerate(zip(mine, theirs)):
        if t.grad is None: assert m.grad is None, f"{what}: param {i} got a gradient"
        else: assert_close(m.grad, t.grad.numpy(), dtype, f"{what}: grad {i}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("scale", [0.1, 1.0, 100.0])
def test_clip_grad_norm_matches_torch(torch, dtype, norm_type, scale):
    grads = random_grads(dtype, seed=NORM_TYPES.index(norm_type), scale=scale) + [None]
    for max_norm in [0.5, 1e4]:   # the first clips every case, the second none
        mine, theirs = twin_params(torch, grads)
        n_mine = clip_grad_norm_(mine, max_norm, norm_type)
        n_torch = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
        assert isinstance(n_mine, np.ndarray) and n_mine.shape == ()
        assert_close(n_mine, n_torch.numpy(), dtype, f"total norm, max_norm={max_norm}")
        assert_grads_match(mine, theirs, dtype, f"max_norm={max_norm}")
        if max_norm == 1e4:   # coefficient clamped to exactly 1: every bit kept
            assert all(np.array_equal(m.grad, g) for m, g in zip(mine, grads) if g is not None)


@pytest.mark.parametrize("norm_type", [0, -1, -math.inf, 0.5])
def test_unusual_norm_types_match_torch(torch, norm_type):
    grads = random_grads(np.float64, seed=3) + [np.zeros(3)]
    mine, theirs = twin_params(torch, grads)
    n_mine = clip_grad_norm_(mine, 0.7, norm_type)
    n_torch = torch.nn.utils.clip_grad_norm_(theirs, 0.7, norm_type)
    assert_close(n_mine, n_torch.numpy(), np.float64, f"norm_type={norm_type}")
    assert_grads_match(mine, theirs, np.float64, f"norm_type={norm_type}")


def test_norm_equal_to_max_norm_still_shrinks(torch):
    "PyTorch always multiplies: at norm == max_norm the coefficient is max_norm/(max_norm + 1e-6) < 1."
    for dtype in DTYPES:
        mine, theirs = twin_params(torch, [np.array([3.0, 4.0], dtype)])
        clip_grad_norm_(mine, 5.0); torch.nn.utils.clip_grad_norm_(theirs, 5.0)
        assert np.all(np.abs(mine[0].grad) < [3.0, 4.0])
        np.testing.assert_array_equal(mine[0].grad, theirs[0].grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("norm_type", [2, math.inf, 1])
def test_nonfinite_gradients_match_torch(torch, dtype, bad, norm_type):
    grads = random_grads(dtype, seed=5)
    grads[2].flat[4] = bad
    mine, theirs = twin_params(torch, grads)
    n_mine = clip_grad_norm_(mine, 1.0, norm_type)
    n_torch = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    assert_close(n_mine, n_torch.numpy(), dtype, "total norm")   # nan positions must agree too
    assert not np.isfinite(n_mine)
    assert_grads_match(mine, theirs, dtype, f"grad with {bad}")


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_error_if_nonfinite_raises_torchs_error_before_any_change(torch, bad):
    grads = random_grads(np.float32, seed=6)
    grads[0].flat[0] = bad
    mine, theirs = twin_params(torch, grads)
    with pytest.raises(RuntimeError) as mine_err:
        clip_grad_norm_(mine, 1.0, norm_type='inf', error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as torch_err:
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type='inf', error_if_nonfinite=True)
    assert str(mine_err.value) == str(torch_err.value)
    assert "order inf" in str(mine_err.value)
    for m, g in zip(mine, grads): np.testing.assert_array_equal(m.grad, g)
    with pytest.raises(RuntimeError, match="order 2.0"):
        get_total_norm([m.grad for m in mine], error_if_nonfinite=True)


def test_finite_norm_with_error_if_nonfinite_clips_normally():
    (p,) = [Param(np.zeros(2))]; p.grad = np.array([3.0, 4.0])
    assert clip_grad_norm_(p, 1.0, error_if_nonfinite=True) == 5.0
    np.testing.assert_allclose(np.linalg.norm(p.grad), 5 / (5 + 1e-6))


def test_single_parameter_list_and_generator_agree():
    grads = random_grads(np.float64, seed=7)
    results = []
    for wrap in [lambda ps: ps[0], lambda ps: ps[:1], lambda ps: (p for p in ps[:1]), lambda ps: tuple(ps[:1])]:
        p = Param(np.zeros_like(grads[0])); p.grad = grads[0].copy()
        results.append((clip_grad_norm_(wrap([p]), 0.3), p.grad))
    for norm, grad in results[1:]:
        assert norm == results[0][0]
        np.testing.assert_array_equal(grad, results[0][1])
    # the generator is consumed once, yet every gradient is clipped (the norm and the scaling see the same list)
    ps = [Param(np.zeros_like(g)) for g in grads]
    for p, g in zip(ps, grads): p.grad = g.copy()
    clip_grad_norm_((p for p in ps), 0.3)
    np.testing.assert_allclose(get_total_norm([p.grad for p in ps]), 0.3, rtol=1e-5)


def test_generator_for_clip_grad_value_():
    ps = [Param(np.zeros(3)) for _ in range(2)]
    for p in ps: p.grad = np.array([-5.0, 0.1, 5.0])
    clip_grad_value_((p for p in ps), 1.0)
    for p in ps: np.testing.assert_array_equal(p.grad, [-1.0, 0.1, 1.0])


def test_without_gradients_the_norm_is_a_float32_zero_like_torch(torch):
    ps = [Param(np.ones(3)), Param(np.ones(2))]
    for params in [ps, []]:
        norm = clip_grad_norm_(params, 1.0)
        ref = torch.nn.utils.clip_grad_norm_([torch.ones(3, requires_grad=True)] if params else [], 1.0)
        assert norm.shape == () and norm.dtype == ref.numpy().dtype == np.float32 and norm == 0.0
    assert all(p.grad is None for p in ps)
    assert get_total_norm([]).dtype == np.float32


def test_empty_generator_warns_like_torch():
    with pytest.warns(UserWarning, match="`parameters` is an empty generator, no gradient clipping will occur."):
        clip_grad_norm_((p for p in []), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip_grad_norm_([], 1.0)   # an empty list is not a generator: no warning


def test_mixed_dtypes_match_torch(torch):
    grads = random_grads(np.float32, seed=8)[:2] + random_grads(np.float64, seed=9)[2:]
    mine, theirs = twin_params(torch, grads)
    n_mine = clip_grad_norm_(mine, 0.5)
    n_torch = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert n_mine.dtype == n_torch.numpy().dtype == np.float64
    np.testing.assert_allclose(n_mine, n_torch.numpy(), rtol=1e-6)
    for m, t in zip(mine, theirs):
        assert m.grad.dtype == t.grad.numpy().dtype
        np.testing.assert_allclose(m.grad, t.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", [2, 'inf', 3.5])
def test_get_total_norm_and_clip_grads_with_norm_match_torch(torch, dtype, norm_type):
    grads = random_grads(dtype, seed=10, scale=3.0)
    mine, theirs = twin_params(torch, grads)
    n_mine = get_total_norm([m.grad for m in mine], norm_type)
    n_torch = torch.nn.utils.get_total_norm([t.grad for t in theirs], norm_type)
    assert_close(n_mine, n_torch.numpy(), dtype, "get_total_norm")
    assert_close(get_total_norm(mine[0].grad, norm_type), torch.nn.utils.get_total_norm(theirs[0].grad, norm_type).numpy(),
                 dtype, "get_total_norm of a single array")
    clip_grads_with_norm_(mine, 2.0, n_mine)
    torch.nn.utils.clip_grads_with_norm_(theirs, 2.0, n_torch)
    assert_grads_match(mine, theirs, dtype, "clip_grads_with_norm_")


def test_clip_grads_with_norm_accepts_a_python_float():
    p = Param(np.zeros(2)); p.grad = np.array([6.0, 8.0])
    clip_grads_with_norm_(p, 1.0, 10.0)
    np.testing.assert_allclose(p.grad, np.array([6.0, 8.0]) / (10 + 1e-6), rtol=1e-15)
    with pytest.raises(ValueError, match="total_norm"):
        clip_grads_with_norm_(p, 1.0, np.array([1.0, 2.0]))


def test_norm_of_norms_equals_norm_of_concatenation():
    grads = random_grads(np.float64, seed=11)
    flat = np.concatenate([g.ravel() for g in grads])
    for p in [1, 2, 3.5]:
        np.testing.assert_allclose(get_total_norm(grads, p), np.sum(np.abs(flat) ** p) ** (1 / p), rtol=1e-12)
    assert get_total_norm(grads, math.inf) == np.abs(flat).max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip_value", [0.5, 1.0, 10.0, 0.0, -1.0])
def test_clip_grad_value_matches_torch(torch, dtype, clip_value):
    "A negative clip_value is not rejected by PyTorch: every entry becomes clip_value. Same here."
    grads = random_grads(dtype, seed=12, scale=2.0) + [None]
    grads[0].flat[:3] = [np.nan, np.inf, -np.inf]
    mine, theirs = twin_params(torch, grads)
    assert clip_grad_value_(mine, clip_value) is None
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    for i, (m, t) in enumerate(zip(mine, theirs)):
        if t.grad is None: assert m.grad is None; continue
        # bit-identical, signed zeros included
        np.testing.assert_array_equal(m.grad, t.grad.numpy())
        np.testing.assert_array_equal(np.signbit(m.grad), np.signbit(t.grad.numpy()), err_msg=f"grad {i} signs")


def test_negative_max_norm_reverses_like_torch(torch):
    mine, theirs = twin_params(torch, [np.array([3.0, 4.0])])
    clip_grad_norm_(mine, -1.0); torch.nn.utils.clip_grad_norm_(theirs, -1.0)
    np.testing.assert_allclose(mine[0].grad, theirs[0].grad.numpy(), rtol=1e-15)
    assert np.all(mine[0].grad < 0)


def test_empty_gradient_arrays_match_torch(torch):
    grads = [np.zeros((0,)), np.array([1.0, -2.0])]
    mine, theirs = twin_params(torch, grads)
    assert_close(clip_grad_norm_(mine, 1.0), torch.nn.utils.clip_grad_norm_(theirs, 1.0).numpy(), np.float64, "norm")
    with pytest.raises(RuntimeError, match="empty tensor"): get_total_norm(grads, 'inf')
    with pytest.raises(RuntimeError, match="empty tensor"): torch.nn.utils.get_total_norm([torch.zeros(0)], 'inf')


def test_bad_arguments_raise_before_any_change():
    p = Param(np.zeros(2)); p.grad = np.array([3.0, 4.0])
    with pytest.raises(ValueError, match="norm_type"): clip_grad_norm_(p, 1.0, norm_type='fro')
    with pytest.raises(ValueError): clip_grad_norm_(p, 'big')
    with pytest.raises(ValueError): clip_grad_value_(p, 'x')
    with pytest.raises(TypeError, match="parameter"): clip_grad_norm_(5, 1.0)
    with pytest.raises(TypeError, match="numpy array"): clip_grad_norm_(np.ones(3), 1.0)
    with pytest.raises(TypeError, match=".grad"): clip_grad_value_([object()], 1.0)
    with pytest.raises(TypeError, match="numpy arrays"): get_total_norm([[1.0, 2.0]])
    np.testing.assert_array_equal(p.grad, [3.0, 4.0])


def test_foreach_is_accepted(torch):
    for foreach in [None, True, False]:
        mine, theirs = twin_params(torch, random_grads(np.float64, seed=13))
        n = clip_grad_norm_(mine, 0.5, foreach=foreach)
        assert_close(n, torch.nn.utils.clip_grad_norm_(theirs, 0.5, foreach=foreach).numpy(), np.float64, "norm")
        assert_grads_match(mine, theirs, np.float64, f"foreach={foreach}")
        clip_grad_value_(mine, 0.1, foreach=foreach); torch.nn.utils.clip_grad_value_(theirs, 0.1, foreach=foreach)
        assert_grads_match(mine, theirs, np.float64, f"value, foreach={foreach}")
