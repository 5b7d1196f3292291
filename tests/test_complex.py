"""Complex parameters, optimized as PyTorch optimizes them: as pairs of reals.

PyTorch's kernels view a complex parameter, its gradient and its state with `torch.view_as_real`; minima's base class
does the same once, in `_step_tensors`, for every kernel. Held to torch 2.13 (complex128 to 1e-12 relative,
complex64 to 1e-5): every elementwise optimizer on its full option grid (`test_fast.OPTIONS`), two groups, a real
parameter among the complex ones, a parameter that never has a gradient and others that miss steps; the fast paths
(`foreach`, `fused`, on flat buffers and on each tensor's pieces) bit for bit against the reference and close to
torch; LBFGS, which flattens with `view_as_real`. Adafactor refuses complex parameters with torch's error; the
optimizers from outside torch either refuse them (schedule-free, Prodigy) or follow the same convention (Lion,
Lookahead), which is checked against the same optimizer on the pairs of reals as real parameters."""
import copy
import numpy as np
import pytest
from conftest import require_torch
from parity import Param
import test_fast
from test_fast import OPTIONS, ELEMENTWISE, enter_mode, case_id, TENSOR_PIECE_RUNS
from minima.optim.optimizer import view_as_real, view_as_complex
from minima.optim.lbfgs import LBFGS
from minima.optim.adafactor import Adafactor
from minima.optim.lion import Lion
from minima.optim.lookahead import Lookahead
from minima.optim.adam import Adam
from minima.optim.schedule_free import SGDScheduleFree, AdamWScheduleFree
from minima.optim.prodigy import Prodigy

COMPLEX = [np.complex128, np.complex64]
TOL = {np.complex128: 1e-12, np.complex64: 1e-5}
REAL = {np.complex128: np.float64, np.complex64: np.float32}
SHAPES = [(3, 4), (5,), (2, 3, 2), (1,), (4,), (6,)]
NEVER_GRAD = 1   # never has a gradient
REAL_PARAM = 4   # a real parameter (of the complex dtype's real type) among the complex ones
STEPS = 20
FIRST_AND_LAST = [(cls, OPTIONS[cls][i]) for cls in ELEMENTWISE for i in (0, -1)]
CASES = [(cls, kw) for cls in ELEMENTWISE for kw in OPTIONS[cls]]


def dtype_id(d): return np.dtype(d).name


def initial_arrays(dtype, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, s in enumerate(SHAPES):
        z = rng.standard_normal(s) + 1j * rng.standard_normal(s)
        out.append(z.real.astype(REAL[dtype]) if i == REAL_PARAM else z.astype(dtype))
    return out


def make_grads(arrays, step, rng):
    "The gradient of a quadratic (so a wrong step feeds back) plus complex noise; some missing."
    grads = []
    for i, p in enumerate(arrays):
        if i == NEVER_GRAD or (step + i) % 5 == 0:
            grads.append(None)
            continue
        noise = rng.standard_normal(p.shape) + 1j * rng.standard_normal(p.shape)
        g = (0.5 + 0.3j) * p + noise
        grads.append((g.real if i == REAL_PARAM else g).astype(p.dtype))
    return grads


def groups_of(params, kw):
    "Two groups: the second with half the learning rate."
    return [{"params": params[0::2]}, {"params": params[1::2], "lr": kw["lr"] / 2}]


def assert_close(mine, ref, dtype, what):
    mine, ref = np.asarray(mine), np.asarray(ref)
    assert mine.dtype == ref.dtype, f"{what}: dtype {mine.dtype} != torch's {ref.dtype}"
    tol = TOL[dtype]
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    np.testing.assert_allclose(mine, ref, rtol=tol, atol=tol * scale, err_msg=what)


def torch_class(torch, cls):
    return getattr(torch.optim, cls.__name__)


def run_complex(cls, kw, dtype, *, torch=None, extra=None, steps=STEPS, seed=0):
    "`steps` steps of the minima optimizer (and of torch's, checked after each) on the complex problem."
    rng = np.random.default_rng(seed + 1)
    arrays = initial_arrays(dtype, seed)
    mparams = [Param(a.copy()) for a in arrays]
    mopt = cls(groups_of(mparams, kw), **kw, **(extra or {}))
    if torch is not None:
        tparams = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
        topt = torch_class(torch, cls)(groups_of(tparams, kw), **kw, foreach=False)
    for step in range(steps):
        grads = make_grads([m.data for m in mparams], step, rng)
        for i, g in enumerate(grads):
            mparams[i].grad = None if g is None else g.copy()
            if torch is not None:
                tparams[i].grad = None if g is None else torch.from_numpy(g.copy())
        mopt.step()
        if torch is not None:
            topt.step()
            for i, (m, t) in enumerate(zip(mparams, tparams)):
                assert_close(m.data, t.detach().numpy(), dtype, f"param {i} after step {step}")
    if torch is not None:
        check_state_like_torch(mopt, topt, dtype)
    return mparams, mopt


def check_state_like_torch(mopt, topt, dtype):
    "The same state keys as torch's, state arrays complex like their parameter, values close."
    mine, ref = mopt.state_dict()["state"], topt.state_dict()["state"]
    assert sorted(mine) == sorted(ref)
    for idx, tstate in ref.items():
        assert set(mine[idx]) == set(tstate), idx
        for k, tv in tstate.items():
            tv = tv.detach().numpy() if hasattr(tv, "detach") else np.asarray(tv)
            if k == "step":
                assert float(mine[idx][k]) == float(tv)
            else:
                assert_close(mine[idx][k], tv, dtype, f"state[{idx}][{k!r}]")


# ---------------------------------------------------------------------------------------------------------------
# The view

@pytest.mark.parametrize("dtype", COMPLEX, ids=dtype_id)
def test_view_as_real_is_torchs_layout_and_shares_memory(dtype):
    torch = require_torch()
    z = (np.arange(24) + 1j * np.arange(24)[::-1]).astype(dtype).reshape(2, 3, 4)
    for a in (z, z.transpose(2, 0, 1), z[:, ::2, 1:], z[0, 0, 0:1], np.asarray(z[1, 2, 3])):
        r = view_as_real(a)
        assert r.dtype == REAL[dtype] and r.shape == a.shape + (2,)
        assert np.array_equal(r, torch.view_as_real(torch.from_numpy(a.copy())).numpy())
        assert np.shares_memory(r, a)
        back = view_as_complex(r, a)
        assert back.dtype == a.dtype and np.array_equal(back, a)
    x = np.ones(3)
    assert view_as_real(x) is x and view_as_real(None) is None
    assert view_as_complex(x, np.ones(3, dtype)) is x   # not shaped like the pairs: as it is


# ---------------------------------------------------------------------------------------------------------------
# Every elementwise optimizer and option set, the reference path, against torch

@pytest.mark.parametrize("dtype", COMPLEX, ids=dtype_id)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_complex_matches_torch(case, dtype):
    cls, kw = case
    run_complex(cls, kw, dtype, torch=require_torch(), extra=dict(foreach=False))


@pytest.mark.parametrize("dtype", COMPLEX, ids=dtype_id)
@pytest.mark.parametrize("cls", ELEMENTWISE, ids=lambda c: c.__name__)
def test_complex_state_is_complex_like_torchs(cls, dtype):
    "State created at a parameter's first step (SGD's momentum buffer included) is complex like the parameter."
    kw = OPTIONS[cls][-1]
    params, opt = run_complex(cls, kw, dtype, extra=dict(foreach=False), steps=3)
    for i, p in enumerate(params):
        for k, v in opt.state.get(p, {}).items():
            if isinstance(v, np.ndarray) and v.shape == p.data.shape and k != "step":
                assert v.dtype == p.data.dtype, (i, k, v.dtype)


# ---------------------------------------------------------------------------------------------------------------
# The fast paths: bit for bit the reference, and torch's numbers

@pytest.mark.parametrize("dtype", COMPLEX, ids=dtype_id)
@pytest.mark.parametrize("mode", test_fast.FAST_MODES)
@pytest.mark.parametrize("case", FIRST_AND_LAST, ids=case_id)
def test_fast_paths_on_complex(case, mode, dtype, monkeypatch):
    cls, kw = case
    ref_params, ref_opt = run_complex(cls, kw, dtype, extra=dict(foreach=False))
    extra = enter_mode(monkeypatch, mode)
    params, opt = run_complex(cls, kw, dtype, extra=extra)   # the reference is held to torch above
    for i, (p, r) in enumerate(zip(params, ref_params)):
        assert np.array_equal(p.data, r.data), f"param {i}: {mode} differs from the reference"
        for k, v in ref_opt.state.get(r, {}).items():
            assert np.array_equal(np.asarray(opt.state[p][k]), np.asarray(v)), f"state {i} {k!r}"
    if mode == "foreach-tensors":   # the complex tensors went through the pieces, not around them
        assert any(TENSOR_PIECE_RUNS)


# ---------------------------------------------------------------------------------------------------------------
# LBFGS: torch flattens parameters and gradients with view_as_real

def quadratic(seed=3):
    "A coupled quadratic of the pairs of reals: loss(x) = x.A.x/2 - b.x, gradient A x - b (as complex)."
    rng = np.random.default_rng(seed)
    n = sum(2 * int(np.prod(s)) if i != REAL_PARAM else int(np.prod(s)) for i, s in enumerate(SHAPES))
    m = rng.standard_normal((n, n))
    A, b = m @ m.T / n + np.eye(n), rng.standard_normal(n)

    def loss_and_grads(arrays):
        x = np.concatenate([view_as_real(a).reshape(-1).astype(np.float64) for a in arrays])
        g, grads, offset = A @ x - b, [], 0
        for a in arrays:
            r = view_as_real(np.zeros_like(a))
            r[...] = g[offset:offset + r.size].reshape(r.shape)
            offset += r.size
            grads.append(view_as_complex(r, a) if a.dtype.kind == "c" else r)
        return 0.5 * x @ A @ x - b @ x, grads
    return loss_and_grads


@pytest.mark.parametrize("dtype", COMPLEX, ids=dtype_id)
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_complex_matches_torch(line_search_fn, dtype):
    torch = require_torch()
    f = quadratic()
    arrays = [a * 0.5 for a in initial_arrays(dtype)]
    mparams = [Param(a.copy()) for a in arrays]
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    kw = dict(lr=0.5, max_iter=5, history_size=4, line_search_fn=line_search_fn)
    mopt, topt = LBFGS(mparams, **kw), torch.optim.LBFGS(tparams, **kw)

    def closure_of(params, read, write):
        def closure():
            loss, grads = f([read(p) for p in params])
            for p, g in zip(params, grads):
                write(p, g.astype(read(p).dtype))
            return float(loss)
        return closure

    mclosure = closure_of(mparams, lambda p: p.data, lambda p, g: setattr(p, "grad", g))
    tclosure = closure_of(tparams, lambda t: t.detach().numpy(),
                          lambda t, g: setattr(t, "grad", torch.from_numpy(g)))
    for step in range(4):
        assert_close(mopt.step(mclosure), topt.step(tclosure), dtype, f"loss at step {step}")
        for i, (m, t) in enumerate(zip(mparams, tparams)):
            assert_close(m.data, t.detach().numpy(), dtype, f"param {i} after step {step}")
    state, tstate = mopt.state[mparams[0]], topt.state[tparams[0]]
    assert state["func_evals"] == tstate["func_evals"] and state["n_iter"] == tstate["n_iter"]
    assert state["d"].dtype == REAL[dtype]   # the direction is a real vector, as torch's
    assert_close(state["d"], tstate["d"].numpy(), dtype, "direction")


# ---------------------------------------------------------------------------------------------------------------
# Adafactor refuses, as torch; schedule-free and Prodigy refuse; Lion and Lookahead follow the convention

def snapshot(params, opt):
    return [p.data.copy() for p in params], copy.deepcopy(opt.state_dict())


def assert_same(a, b, where="state_dict"):
    "Deep equality of nested dicts, lists and arrays (dtype included)."
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def assert_unchanged(before, params, opt):
    datas, sd = before
    for i, (d, p) in enumerate(zip(datas, params)):
        assert np.array_equal(d, p.data) and d.dtype == p.data.dtype, f"param {i} changed"
    assert_same(sd, copy.deepcopy(opt.state_dict()))


def test_adafactor_refuses_complex_like_torch():
    torch = require_torch()
    real, z = Param(np.ones((2, 3))), Param(np.ones((3, 2), np.complex128))
    tz = torch.ones((3, 2), dtype=torch.complex128, requires_grad=True)
    tz.grad = torch.ones_like(tz)
    with pytest.raises(RuntimeError) as ref:
        torch.optim.Adafactor([tz]).step()
    opt = Adafactor([{"params": [real]}, {"params": [z]}])
    real.grad = np.ones((2, 3))
    opt.step()
    z.grad = np.ones((3, 2), np.complex128)
    before = snapshot([real, z], opt)
    with pytest.raises(RuntimeError) as mine:
        opt.step()
    assert str(mine.value) == str(ref.value) == "Adafactor does not support complex parameters"
    assert_unchanged(before, [real, z], opt)   # group 0 was not stepped before group 1 refused


@pytest.mark.parametrize("make", [
    lambda ps: SGDScheduleFree(ps, lr=0.1), lambda ps: AdamWScheduleFree(ps, lr=0.01), lambda ps: Prodigy(ps)],
    ids=["SGDScheduleFree", "AdamWScheduleFree", "Prodigy"])
def test_optimizers_without_a_complex_rule_refuse_complex(make):
    real, z = Param(np.ones(3)), Param(np.ones(2, np.complex128))
    opt = make([real, z])
    if hasattr(opt, "train"):
        opt.train()
    real.grad = np.full(3, 0.5)
    opt.step()
    z.grad = np.ones(2, np.complex128)
    before = snapshot([real, z], opt)
    with pytest.raises(RuntimeError, match=f"^{type(opt).__name__} does not support complex parameters$"):
        opt.step()
    assert_unchanged(before, [real, z], opt)


@pytest.mark.parametrize("dtype", COMPLEX, ids=dtype_id)
@pytest.mark.parametrize("make", [
    lambda ps, **kw: Lion(ps, lr=0.01, weight_decay=0.1, **kw),
    lambda ps, **kw: Lookahead(Adam(ps, lr=0.01, amsgrad=True, **kw), k=3, alpha=0.5, pullback_momentum="none"),
    lambda ps, **kw: Lookahead(test_fast.SGD(ps, lr=0.01, momentum=0.9, **kw), k=2, pullback_momentum="pullback")],
    ids=["Lion", "Lookahead(Adam)", "Lookahead(SGD,pullback)"])
@pytest.mark.parametrize("fast", [dict(foreach=False), dict(foreach=True), dict(fused=True)], ids=str)
def test_complex_is_the_pairs_of_reals(make, fast, dtype):
    "Beyond torch: a complex parameter moves exactly as the real parameter of its pairs (torch's convention)."
    if fast.get("fused"):
        test_fast.require_numba()
    arrays = initial_arrays(dtype)
    zs = [Param(a.copy()) for a in arrays]
    pairs = [Param(view_as_real(a).copy()) for a in arrays]
    zopt, popt = make(zs, **fast), make(pairs, **fast)
    rng = np.random.default_rng(5)
    for step in range(12):
        grads = make_grads([z.data for z in zs], step, rng)
        for z, p, g in zip(zs, pairs, grads):
            z.grad = None if g is None else g.copy()
            p.grad = None if g is None else view_as_real(g).copy()
        zopt.step()
        popt.step()
        for i, (z, p) in enumerate(zip(zs, pairs)):
            assert np.array_equal(view_as_real(z.data), p.data), f"param {i} after step {step}"
