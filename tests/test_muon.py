"""Muon against torch.optim.Muon: the bfloat16 rounding against ml_dtypes and torch, the Newton-Schulz iteration
against torch's, whole runs in bfloat16 (to the rounding) and, with `ns_dtype=None`, against torch's own Muon made to
skip its bfloat16 cast (to the book's float64/float32 tolerances), state_dict, groups, validation, torch's optim_db."""
import contextlib, copy, inspect, re
import numpy as np
import pytest
import parity
from parity import Param, run_parity, run_state_dict_roundtrip, assert_same_error
from minima.optim.muon import Muon, muon, newton_schulz, bfloat16_round, adjust_lr

DTYPES = [np.float64, np.float32]
COEFFS = (3.4445, -4.7750, 2.0315)
# 2-d shapes only (Muon refuses others): square, wide, tall, a row, a column, one entry.
MATRIX_SHAPES = [(4, 4), (3, 7), (9, 2), (1, 6), (5, 1), (1, 1)]
SECOND_GROUP = ({}, {"lr": 0.02, "weight_decay": 0.0, "adjust_lr_fn": "match_rms_adamw"})


def ids(kw): return ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults"


@pytest.fixture
def matrices(monkeypatch):
    "parity's harness with 2-d parameters, and `ns_dtype` known as a group key beyond torch's."
    monkeypatch.setattr(parity, "SHAPES", MATRIX_SHAPES)
    monkeypatch.setattr(parity, "BEYOND_TORCH_GROUP_KEYS", parity.BEYOND_TORCH_GROUP_KEYS | {"ns_dtype"})


@contextlib.contextmanager
def without_bfloat16_cast(torch):
    "torch's Muon with its own Newton-Schulz function run on the input's dtype: `.bfloat16()` returns the input."
    import torch.optim._muon as torch_muon

    class NoCast(torch.Tensor):
        def bfloat16(self): return self.as_subclass(torch.Tensor).clone()

    original = torch_muon._zeropower_via_newtonschulz
    def zeropower(grad, *args): return original(grad.as_subclass(NoCast), *args)
    torch_muon._zeropower_via_newtonschulz = zeropower
    try: yield zeropower
    finally: torch_muon._zeropower_via_newtonschulz = original


@pytest.fixture
def torch_without_cast(torch):
    with without_bfloat16_cast(torch) as zeropower: yield zeropower


# ---- bfloat16 ----

def special_float32():
    "Ties, neighbours of ties, subnormals, the largest finite numbers, infinities, zeros, NaNs (quiet, signalling)."
    bits = []
    for hi in (0x3F80, 0x3F81, 0x0000, 0x0001, 0x007F, 0x7F7F, 0x7F7E, 0xFF7F, 0xBF80, 0x8000):
        for lo in (0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF):
            bits.append((hi << 16) | lo)
    bits += [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF]
    return np.array(bits, np.uint32).view(np.float32)


def test_bfloat16_round_matches_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * 10.0 ** rng.uniform(-45, 38, 200_000)).astype(np.float32)
    x = np.concatenate([x, rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        special_float32()])
    mine = bfloat16_round(x)
    with np.errstate(invalid="ignore"): ref = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert mine.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(mine), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert np.array_equal(mine[ok].view(np.uint32), ref[ok].view(np.uint32))   # bitwise, signed zeros included
    assert np.all(mine[ok].view(np.uint32) & 0xFFFF == 0)   # bfloat16 values


def test_bfloat16_round_of_float64_goes_through_float32_as_torch(torch):
    "torch converts float64 to bfloat16 via float32 (two roundings); ml_dtypes rounds float64 directly."
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200_000) * 10.0 ** rng.uniform(-40, 37, 200_000)
    ref = torch.from_numpy(x).bfloat16().float().numpy()
    np.testing.assert_array_equal(bfloat16_round(x), ref)
    # the double rounding matters: a float64 just above a bfloat16 tie that float32 rounds onto the tie
    tie = 1 + 2**-8   # halfway between 1 and 1 + 2**-7; ties to even: 1
    above = np.array([tie + 2**-40])
    assert bfloat16_round(above)[0] == torch.from_numpy(above).bfloat16().item() == 1.0


# ---- the iteration ----

def test_newton_schulz_bfloat16_agrees_with_torchs_to_the_rounding(torch):
    """Same input, same roundings: most results are identical to the bit; a float32 sum formed in another order
    than torch's can fall on the other side of a bfloat16 rounding boundary, and the flip spreads, by a few units."""
    from torch.optim._muon import _zeropower_via_newtonschulz
    rng = np.random.default_rng(2)
    identical, total, worst = 0, 0, 0.0
    for _ in range(120):
        m, n = rng.integers(1, 90, 2)
        dtype = rng.choice([np.float32, np.float64])
        G = (10.0 ** rng.uniform(-6, 4) * rng.standard_normal((m, n))).astype(dtype)
        ref = _zeropower_via_newtonschulz(torch.from_numpy(G), COEFFS, 5, 1e-7).float().numpy()
        mine = newton_schulz(G)
        assert mine.dtype == np.float32 and mine.shape == ref.shape
        assert np.array_equal(bfloat16_round(mine), mine)   # bfloat16 values
        identical += np.array_equal(mine, ref); total += 1
        worst = max(worst, np.abs(mine - ref).max() / np.abs(ref).max())
    assert identical >= total // 2, f"only {identical} of {total} identical"
    assert worst < 2**-4, worst   # measured: at most 7 bfloat16 units (2**-8) of the largest entry


def test_each_rounded_operation_matches_torchs_bfloat16_op(torch):
    "The three products of the iteration, each on the same bfloat16 inputs: at most one unit apart, and rarely."
    rng = np.random.default_rng(3)
    a, b, c = (np.float32(v) for v in COEFFS)
    flips, total = 0, 0
    for _ in range(30):
        m, n = rng.integers(2, 80, 2)
        X = bfloat16_round(rng.standard_normal((m, n)) / np.sqrt(m * n))
        tX = torch.from_numpy(X).bfloat16()
        A = (tX @ tX.T); mine_A = bfloat16_round(X @ X.T)
        An = A.float().numpy()
        B = torch.addmm(A, A, A, beta=float(b), alpha=float(c)); mine_B = bfloat16_round(b * An + c * (An @ An))
        Bn = B.float().numpy()
        Xn = torch.addmm(tX, B, tX, beta=float(a)); mine_X = bfloat16_round(a * X + Bn @ X)
        for ref, mine in [(A, mine_A), (B, mine_B), (Xn, mine_X)]:
            ref = ref.float().numpy()
            diff = ref != mine
            unit = 2.0 ** (np.floor(np.log2(np.maximum(np.maximum(np.abs(ref), np.abs(mine)), 1e-30))) - 7)
            assert np.all(np.abs(ref - mine)[diff] <= unit[diff])
            flips += diff.sum(); total += diff.size
    assert flips <= 1e-3 * total, (flips, total)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_newton_schulz_in_the_input_dtype_matches_torchs_without_the_cast(torch_without_cast, dtype, torch):
    rng = np.random.default_rng(4)
    for s in [(8, 8), (16, 48), (48, 16), (3, 100), (100, 3), (1, 5), (5, 1), (60, 45)]:
        G = rng.standard_normal(s).astype(dtype)
        ref = torch_without_cast(torch.from_numpy(G), COEFFS, 5, 1e-7).numpy()
        mine = newton_schulz(G, ns_dtype=None)
        assert mine.dtype == ref.dtype == dtype
        tol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(mine, ref, rtol=0, atol=tol * np.abs(ref).max())


def test_newton_schulz_float64_is_the_formula():
    "An independent transcription of the paper's iteration (no transpose trick: X X^T of the long side for tall)."
    rng = np.random.default_rng(5)
    a, b, c = COEFFS
    for s in [(6, 9), (9, 6), (1, 4), (4, 1)]:
        G = rng.standard_normal(s)
        X = G / np.linalg.norm(G)
        for _ in range(5):
            A = X.T @ X if s[0] > s[1] else X @ X.T
            X = a * X + (X @ (b * A + c * A @ A) if s[0] > s[1] else (b * A + c * A @ A) @ X)
        np.testing.assert_allclose(newton_schulz(G, ns_dtype="float64"), X, rtol=1e-12, atol=1e-13)


def test_newton_schulz_maps_singular_values_through_the_polynomial():
    "U diag(s) V^T goes to U diag(p^5(s)) V^T, p(s) = a s + b s^3 + c s^5 (after scaling to Frobenius norm 1)."
    rng = np.random.default_rng(6)
    U = np.linalg.qr(rng.standard_normal((7, 4)))[0]
    V = np.linalg.qr(rng.standard_normal((5, 4)))[0]
    s = np.array([0.7, 0.5, 0.3, 0.1]); s /= np.linalg.norm(s)
    p = lambda x: COEFFS[0] * x + COEFFS[1] * x**3 + COEFFS[2] * x**5
    expected = s.copy()
    for _ in range(5): expected = p(expected)
    np.testing.assert_allclose(newton_schulz(U @ np.diag(s) @ V.T, ns_dtype=None), U @ np.diag(expected) @ V.T,
                               atol=1e-13)


def test_newton_schulz_checks_are_torchs(torch):
    from torch.optim._muon import _zeropower_via_newtonschulz
    for args in [((3, 4, 5), COEFFS, 5), ((3, 4), COEFFS, 100), ((3, 4), (1.0, 2.0), 5)]:
        shape, coeffs, steps = args
        with pytest.raises(ValueError) as ref: _zeropower_via_newtonschulz(torch.ones(shape), coeffs, steps, 1e-7)
        with pytest.raises(ValueError) as mine: newton_schulz(np.ones(shape), coeffs, steps, 1e-7)
        assert str(mine.value) == str(ref.value)


def test_adjust_lr_matches_torchs(torch):
    from torch.optim._muon import _adjust_lr
    for shape in [(3, 7), (7, 3), (5, 5), (1, 9), (768, 3072)]:
        for fn in (None, "original", "match_rms_adamw"):
            assert adjust_lr(0.02, fn, shape) == _adjust_lr(0.02, fn, torch.Size(shape))


# ---- whole runs ----

OPTIONS = [{}, dict(lr=0.02), dict(lr=0.02, nesterov=False), dict(lr=0.02, adjust_lr_fn="original"),
           dict(lr=0.02, adjust_lr_fn="match_rms_adamw"), dict(lr=0.01, weight_decay=0.5),
           dict(lr=0.02, weight_decay=0.0, momentum=0.5, nesterov=True),
           dict(lr=0.01, momentum=0.3, nesterov=False, ns_steps=3, ns_coefficients=(3.4, -4.7, 2.0), eps=1e-3)]


def run_bfloat16(kwargs, dtype, shapes, steps=25, seed=0):
    "minima's and torch's Muon on the same gradients; the worst max|diff| / max|ref| and per-step movement ratio."
    from conftest import require_torch
    torch = require_torch()
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    mine = [Param(x.copy()) for x in xs]
    ref = [torch.tensor(x.copy(), requires_grad=True) for x in xs]
    opt_m, opt_t = Muon(mine, **kwargs), torch.optim.Muon(ref, **kwargs)
    worst, worst_per_step = 0.0, 0.0
    for step in range(1, steps + 1):
        for p, q in zip(mine, ref):
            g = (0.5 * q.detach().numpy() + rng.standard_normal(q.shape)).astype(dtype)
            p.grad, q.grad = g.copy(), torch.from_numpy(g.copy())
        opt_m.step(); opt_t.step()
        for p, q in zip(mine, ref):
            assert p.data.dtype == dtype
            r = q.detach().numpy()
            diff = np.abs(p.data - r).max()
            worst = max(worst, diff / np.abs(r).max())
            lr = adjust_lr(kwargs.get("lr", 1e-3), kwargs.get("adjust_lr_fn"), r.shape)
            worst_per_step = max(worst_per_step, diff / (step * lr))
    return worst, worst_per_step


BF16_SHAPES = [(8, 8), (16, 48), (48, 16), (64, 64), (3, 100), (100, 3), (1, 5), (5, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("kwargs", OPTIONS, ids=ids)
def test_bfloat16_runs_match_torch_to_the_rounding(torch, kwargs, dtype):
    """25 steps: parameters within 1e-3 of their size. And a bound that scales with the step: the difference after
    t steps is at most 2**-4 (the bound of the iteration's test above) of the t steps' largest movement."""
    worst, per_step = run_bfloat16(kwargs, dtype, BF16_SHAPES)
    assert worst < 1e-3, worst
    assert per_step < 2**-4, per_step


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("kwargs", OPTIONS, ids=ids)
def test_parity_with_torch_without_the_cast(torch, torch_without_cast, matrices, kwargs, dtype):
    "With `ns_dtype=None` and torch's iteration in the parameters' dtype: the book's tolerances, every option."
    mine = lambda params, **kw: Muon(params, ns_dtype=None, **kw)
    run_parity(mine, torch.optim.Muon, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)
    run_state_dict_roundtrip(mine, torch.optim.Muon, kwargs, dtype=dtype, group_overrides=SECOND_GROUP)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_state_dict_roundtrip_in_bfloat16(torch, matrices, monkeypatch, dtype):
    "Saved mid-run and reloaded into fresh objects, the bfloat16 run continues as torch's uninterrupted one."
    monkeypatch.setattr(parity, "TOLERANCE", {np.float64: 1e-3, np.float32: 1e-3})
    twins = run_state_dict_roundtrip(Muon, torch.optim.Muon, dict(lr=0.01), dtype=dtype, steps=25, split=12,
                                     group_overrides=SECOND_GROUP)
    sd = twins.mopt.state_dict()
    assert all(set(s) == {"momentum_buffer"} for s in sd["state"].values())
    assert all(g["ns_dtype"] == "bfloat16" for g in sd["param_groups"])
    assert parity.state_index(parity.NEVER_GRAD, 2) not in sd["state"]


def test_state_keys_group_keys_and_dtypes_are_torchs(torch):
    p, q = Param(np.ones((3, 4), np.float32)), torch.ones(3, 4, requires_grad=True)
    p.grad, q.grad = np.ones((3, 4), np.float32), torch.ones(3, 4)
    opt_m, opt_t = Muon([p]), torch.optim.Muon([q])
    opt_m.step(); opt_t.step()
    assert set(opt_m.state[p]) == set(opt_t.state[q]) == {"momentum_buffer"}
    assert opt_m.state[p]["momentum_buffer"].dtype == np.float32
    assert set(opt_m.param_groups[0]) == set(opt_t.param_groups[0]) | {"ns_dtype"}
    assert {k: v for k, v in opt_m.defaults.items() if k != "ns_dtype"} == opt_t.defaults


def test_params_without_grad_get_no_state_and_do_not_move():
    rng = np.random.default_rng(0)
    p, q = Param(rng.standard_normal((3, 4))), Param(rng.standard_normal((4, 2)))
    q0 = q.data.copy()
    opt = Muon([p, q], lr=0.1, weight_decay=0.5)
    p.grad = rng.standard_normal((3, 4))
    for _ in range(3): opt.step()
    assert q not in opt.state and np.array_equal(q.data, q0)


@pytest.mark.parametrize("ns_dtype", ["float32", "float64", None])
def test_ns_dtype_runs_the_iteration_in_that_dtype(ns_dtype):
    rng = np.random.default_rng(7)
    for dtype in DTYPES:
        G = rng.standard_normal((5, 8)).astype(dtype)
        out = newton_schulz(G, ns_dtype=ns_dtype)
        assert out.dtype == np.dtype(dtype if ns_dtype is None else ns_dtype)
        # float32: its rounding (6e-8) times the iteration's slope at 0, a**5 ~ 500, with room for the sums
        np.testing.assert_allclose(out, newton_schulz(G.astype(np.float64), ns_dtype="float64"),
                                   rtol=0, atol=1e-4 if out.dtype == np.float32 else 1e-12)


def test_grads_not_modified_and_closure_loss_returned():
    rng = np.random.default_rng(8)
    ps = [Param(rng.standard_normal(s)) for s in [(3, 4), (6, 2)]]
    grads = [rng.standard_normal(p.data.shape) for p in ps]
    for momentum in (0.95, 0.3):   # lerp weights above and below 1/2
        opt = Muon(ps, momentum=momentum, lr=0.05)
        for p, g in zip(ps, grads): p.grad = g.copy()
        for _ in range(4): assert opt.step(lambda: 2.5) == 2.5
        for p, g in zip(ps, grads): np.testing.assert_array_equal(p.grad, g)


def test_the_kernel_matches_the_class():
    rng = np.random.default_rng(9)
    x, g = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    p = Param(x.copy()); p.grad = g.copy()
    Muon([p], lr=0.1).step()
    y, buf = x.copy(), np.zeros_like(x)
    muon([y], [g], [buf], lr=0.1, weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients=COEFFS,
         ns_steps=5, eps=1e-7, adjust_lr_fn=None)
    np.testing.assert_array_equal(y, p.data)


# ---- signatures, validation ----

def test_signature_and_defaults_match_torch_plus_ns_dtype(torch):
    mine, ref = inspect.signature(Muon), inspect.signature(torch.optim.Muon)
    params = list(mine.parameters.values())
    assert [(p.name, p.kind, p.default) for p in params[:-1]] == \
           [(p.name, p.kind, p.default) for p in ref.parameters.values()]
    assert (params[-1].name, params[-1].kind, params[-1].default) == ("ns_dtype", params[-1].KEYWORD_ONLY, "bfloat16")


def test_kernel_layout_matches_torchs_functional_api(torch):
    "`muon(params, grads, muon_momentum_bufs, *, lr, ...)`: torch's keywords without `foreach` (it only raises)"
    from torch.optim._muon import muon as torch_muon
    kw_only = lambda f: [p.name for p in inspect.signature(f).parameters.values() if p.kind == p.KEYWORD_ONLY]
    positional = lambda f: [p.name for p in inspect.signature(f).parameters.values()
                            if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional(muon) == positional(torch_muon)
    assert kw_only(muon) == [k for k in kw_only(torch_muon) if k not in ("foreach", "has_complex")] + ["ns_dtype"]


BAD = [dict(lr=-1.0), dict(momentum=-0.1), dict(weight_decay=-0.5), dict(adjust_lr_fn="arbitrary"),
       dict(adjust_lr_fn="Original"), dict(lr=-1.0, momentum=-1.0), dict(weight_decay=-1.0, adjust_lr_fn="x")]


@pytest.mark.parametrize("kwargs", BAD, ids=ids)
def test_validation_errors_match_torch(torch, kwargs):
    p, q = Param(np.ones((2, 3))), torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(Exception) as mine: Muon([p], **kwargs)
    with pytest.raises(Exception) as ref: torch.optim.Muon([q], **kwargs)
    assert (type(mine.value), str(mine.value)) == (type(ref.value), str(ref.value))


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), ()])
def test_non_2d_parameters_are_refused_with_torchs_message(torch, shape):
    with pytest.raises(ValueError) as mine: Muon([Param(np.ones((2, 2))), Param(np.ones(shape))])
    with pytest.raises(ValueError) as ref: torch.optim.Muon([torch.ones(2, 2, requires_grad=True),
                                                             torch.ones(shape, requires_grad=True)])
    assert str(mine.value) == str(ref.value)


def test_bad_ns_dtype_is_refused():
    for bad in ("bf16", "float16", np.float32, 32):
        with pytest.raises(ValueError, match="ns_dtype should be"): Muon([Param(np.ones((2, 2)))], ns_dtype=bad)


def snapshot(opt, params):
    return [p.data.copy() for p in params], copy.deepcopy(opt.state_dict())


def assert_unchanged(opt, params, before):
    data, sd = before
    for p, d in zip(params, data): np.testing.assert_array_equal(p.data, d)
    after = opt.state_dict()
    assert after["param_groups"] == sd["param_groups"] and sorted(after["state"]) == sorted(sd["state"])
    for i, s in sd["state"].items():
        for k, v in s.items(): np.testing.assert_array_equal(after["state"][i][k], v)


def test_a_refused_construction_changes_nothing():
    p = Param(np.arange(6.0).reshape(2, 3)); p.grad = np.ones((2, 3))
    opt = Muon([p]); opt.step()
    before = snapshot(opt, [p])
    for kwargs in BAD:
        with pytest.raises(ValueError): Muon([p], **kwargs)
    with pytest.raises(ValueError): Muon([p, Param(np.ones(3))])
    assert_unchanged(opt, [p], before)


@pytest.mark.parametrize("change", [dict(ns_steps=100), dict(ns_coefficients=(1.0, 2.0))], ids=ids)
def test_step_errors_are_torchs_and_change_nothing(torch, change):
    "torch raises these when it steps (after moving earlier matrices); minima raises the same before anything moves."
    rng = np.random.default_rng(10)
    xs = [rng.standard_normal((3, 4)) for _ in range(2)]
    ps = [Param(x.copy()) for x in xs]
    qs = [torch.tensor(x.copy(), requires_grad=True) for x in xs]
    opt_m, opt_t = Muon(ps), torch.optim.Muon(qs)
    for p, q in zip(ps, qs): p.grad, q.grad = np.ones((3, 4)), torch.ones(3, 4, dtype=torch.float64)
    opt_m.step(); opt_t.step()
    opt_m.param_groups[0].update(change); opt_t.param_groups[0].update(change)
    before = snapshot(opt_m, ps)
    with pytest.raises(ValueError) as mine: opt_m.step()
    with pytest.raises(ValueError) as ref: opt_t.step()
    assert str(mine.value) == str(ref.value)
    assert_unchanged(opt_m, ps, before)


def test_a_1d_gradient_added_later_is_refused_at_step_as_torch(torch):
    "torch checks 2-d only in the constructor; a vector added by add_param_group is refused by the kernel."
    p, v = Param(np.ones((2, 3))), Param(np.ones(4))
    q, w = torch.ones(2, 3, requires_grad=True), torch.ones(4, requires_grad=True)
    opt_m, opt_t = Muon([p]), torch.optim.Muon([q])
    opt_m.add_param_group({"params": [v]}); opt_t.add_param_group({"params": [w]})
    p.grad, v.grad, q.grad, w.grad = np.ones((2, 3)), np.ones(4), torch.ones(2, 3), torch.ones(4)
    with pytest.raises(ValueError) as mine: opt_m.step()
    with pytest.raises(ValueError) as ref: opt_t.step()
    assert str(mine.value) == str(ref.value) == "Param gradient must be a 2D matrix"
    assert v not in opt_m.state and np.array_equal(v.data, np.ones(4))   # the refused group: nothing


def test_complex_parameters_are_refused_at_step_as_torch(torch):
    p = Param(np.ones((2, 3), np.complex128)); p.grad = np.ones((2, 3), np.complex128)
    q = torch.ones(2, 3, dtype=torch.complex128, requires_grad=True); q.grad = torch.ones_like(q)
    opt_m, opt_t = Muon([p]), torch.optim.Muon([q])
    with pytest.raises(RuntimeError) as mine: opt_m.step()
    with pytest.raises(RuntimeError) as ref: opt_t.step()
    assert str(mine.value) == str(ref.value)
    assert not opt_m.state and np.array_equal(p.data, np.ones((2, 3)))
    with pytest.raises(ValueError, match="Complex parameters are not supported"):
        muon([p.data], [p.grad], [np.zeros_like(p.data)], lr=0.1, weight_decay=0.0, momentum=0.9, nesterov=True,
             ns_coefficients=COEFFS, ns_steps=5, eps=1e-7, adjust_lr_fn=None)


def test_torch_has_no_maximize_and_neither_has_minima(torch):
    assert "maximize" not in inspect.signature(torch.optim.Muon).parameters
    assert "maximize" not in inspect.signature(Muon).parameters


# ---- torch's own test inputs for Muon (torch.testing._internal.common_optimizers.optim_db) ----

def optim_info():
    try:
        from torch.testing._internal.common_optimizers import optim_db
    except ImportError as e:
        pytest.skip(f"torch.testing._internal.common_optimizers does not import ({e}); "
                    "add `expecttest==0.3.0` to the dev extras to run torch's optim_db inputs")
    return next(info for info in optim_db if info.optim_cls.__name__ == "Muon")


def test_optim_db_inputs_match_torch(torch, torch_without_cast, matrices):
    "torch's inputs (a tensor lr, which minima has no use for, as its float) in float64 without the cast."
    info = optim_info()
    inputs = info.optim_inputs_func(device="cpu", dtype=torch.float64)
    assert {i.desc for i in inputs} >= {"default", "non-default lr", "passing alternative ns_coefficients"}
    for inp in inputs:
        assert inp.params is None
        kwargs = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in inp.kwargs.items()}
        for dtype in DTYPES:
            run_parity(lambda ps, **kw: Muon(ps, ns_dtype=None, **kw), torch.optim.Muon, kwargs, dtype=dtype,
                       steps=30, group_overrides=SECOND_GROUP)


MUON_ERROR_INPUTS = {"only support 2D parameters", "only support `original` and `match_rms_adamw`",
                     "does not support complex parameters"}


def test_optim_db_error_inputs_match_torch(torch):
    "torch's Muon error inputs: a 3-d parameter, an unknown adjust_lr_fn (construction), a complex one (step)."
    info = optim_info()
    checked = 0
    for err in info.optim_error_inputs_func(device="cpu", dtype=torch.float64):
        inp = err.optimizer_error_input
        if inp.desc not in MUON_ERROR_INPUTS: continue   # the others are about the base class's tensors
        mine = []
        for t in inp.params:
            p = Param(t.detach().numpy().copy()); p.grad = t.grad.numpy().copy(); mine.append(p)
        with pytest.raises(err.error_type) as raised:
            opt = Muon(mine, **inp.kwargs)
            opt.step()
        assert re.search(err.error_regex, str(raised.value)), (inp.desc, str(raised.value))
        checked += 1
    assert checked == 3
