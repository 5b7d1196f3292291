"""SOAP against pytorch-optimizer 4.1.0's SOAP: numbers, state, round trip, defaults, signature, validation.

Where the two cannot agree digit for digit, the tests say why (measured in the chapter, nbs/15e_soap.ipynb):
- each refresh of the eigenbasis is a QR decomposition computed in float32 (the reference casts to float32 even
  for float64 parameters); NumPy's float32 `qr` computes in float64 and rounds, torch's runs LAPACK's float32
  routine, so the two Q differ by about one float32 rounding (1e-7) and the parameters by about 1e-8: such runs
  are held to 1e-6 relative, runs without a refresh to 1e-10 (they agree to a few roundings);
- a factor of less than full rank (the first gradient of a matrix whose sizes differ by more than one, a vector
  with `precondition_1d`) has a null space of dimension >= 2, in which `eigh` may return any orthonormal basis:
  the choice follows the last bits of the factor, and Adam's second moment is not invariant under it. There
  minima is held to the reference from the reference's own state after its first step;
- `merge_dims` on a tensor of at most `max_precondition_dim` entries: the reference fails to reshape it
  (`merge_small_dims` returns [1]); minima keeps the one merged dimension, as the SOAP authors do, and is held to
  the reference run with that one function corrected.
"""
import copy, inspect
import numpy as np
import pytest
from conftest import require_torch, _missing
from parity import Param
from minima.optim.soap import (SOAP, NegativeLRError, merge_small_dims, eigenbasis, mode_gram, power_step,
                               rotate, accumulate)


def require_pytorch_optimizer():
    "pytorch-optimizer's SOAP (the oracle), skipping locally and failing under CI when it is missing."
    require_torch()
    try: from pytorch_optimizer import SOAP as Ref
    except ImportError: _missing("pytorch-optimizer", "install it with `pip install pytorch-optimizer==4.1.0`")
    return Ref


@pytest.fixture(scope="module")
def ref(): return require_pytorch_optimizer()


# Shapes whose factors have full rank, or a null space of dimension 1, after one gradient (see the docstring);
# with max_precondition_dim=8 the 12 of (2, 12) is not preconditioned. (5,) never gets a gradient.
SHAPES = [(4, 4), (5,), (2, 3, 4), (3, 4), (2, 12), (1,), (), (2,)]
NEVER = 1
GROUPS = ({}, {"lr": 3e-3, "weight_decay": 0.0}, {"betas": (0.9, 0.9)})
REFRESH_TOL, DETERMINISTIC_TOL = 1e-6, 1e-10


class Run:
    "minima's SOAP and the reference over the same parameters and groups, fed the same gradients."
    def __init__(self, ref_cls, kwargs, shapes=SHAPES, *, dtype=np.float64, groups=GROUPS, never=NEVER,
                 late=False, seed=0):
        self.torch = require_torch()
        self.dtype, self.kwargs, self.groups, self.never, self.late = dtype, kwargs, groups, never, late
        self.rng = np.random.default_rng(seed + 1)
        arrays = [np.asarray(np.random.default_rng(seed).standard_normal(s), dtype) for s in shapes]
        self.start = [a.copy() for a in arrays]
        self.mparams = [Param(a.copy()) for a in arrays]
        self.tparams = [self.torch.tensor(a.copy(), requires_grad=True) for a in arrays]
        self.mopt = SOAP(self.split(self.mparams), **kwargs)
        self.topt = ref_cls(self.split(self.tparams), **kwargs)
        self.steps = 0

    def split(self, params):
        n = len(self.groups)
        return [{"params": params[k::n], **ov} for k, ov in enumerate(self.groups)]

    def missing(self, i):
        "No gradient: never for `never`, else one step in five (from the first step when `late`)."
        return i == self.never or ((self.steps + i) % 5 == 0 and (self.late or self.steps > 0))

    def step(self):
        for i, (m, t) in enumerate(zip(self.mparams, self.tparams)):
            if self.missing(i): m.grad = t.grad = None; continue
            g = np.asarray((0.5 + 0.1 * i) * t.detach().numpy() + self.rng.standard_normal(t.shape), self.dtype)
            m.grad, t.grad = g.copy(), self.torch.from_numpy(g.copy())
        self.mopt.step(); self.topt.step()
        self.steps += 1

    def worst(self):
        "Largest difference of the parameters, relative to the largest entry (at least 1)."
        out = 0.0
        for m, t in zip(self.mparams, self.tparams):
            r = t.detach().numpy()
            assert m.data.dtype == r.dtype
            if r.size: out = max(out, float(np.max(np.abs(m.data - r)) / max(1.0, float(np.max(np.abs(r))))))
        return out

    def run(self, steps, tol):
        for _ in range(steps):
            self.step()
            assert self.worst() <= tol, f"step {self.steps}: {self.worst():.2e} > {tol:.0e}"

    def moved(self):
        "How far the parameters went: the check is not vacuous."
        return max(float(np.max(np.abs(m.data - s))) for m, s in zip(self.mparams, self.start) if s.size)

    def reload_minima(self):
        "Save minima's state, load it into fresh parameters and a fresh optimizer."
        sd = copy.deepcopy(self.mopt.state_dict())
        self.mparams = [Param(m.data.copy()) for m in self.mparams]
        self.mopt = SOAP(self.split(self.mparams), **self.kwargs)
        self.mopt.load_state_dict(sd)

    def adopt_reference_state(self):
        "Load the reference's state (its eigenbases included) into minima, as NumPy arrays."
        self.mopt.load_state_dict(reference_state_as_minima(self.topt.state_dict(), self.torch))


def reference_state_as_minima(sd, torch):
    "A reference state_dict with tensors as arrays and its empty lists (no factor) as None."
    def conv(v):
        if isinstance(v, torch.Tensor): return v.detach().numpy().copy()
        if isinstance(v, list): return None if v == [] else [conv(x) for x in v]
        return copy.deepcopy(v)
    state = {k: {name: conv(v) for name, v in s.items()} for k, s in sd["state"].items()}
    return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}


DETERMINISTIC = [
    dict(lr=1e-2),
    dict(lr=1e-2, weight_decay=0.1, shampoo_beta=0.8),
    dict(lr=1e-2, correct_bias=False, normalize_gradient=True, maximize=True, betas=(0.9, 0.99)),
    dict(lr=1e-2, precondition_1d=True, eps=1e-6),
    dict(lr=3e-2, shampoo_beta=0.0, weight_decay=0.5),
]


@pytest.mark.parametrize("kwargs", DETERMINISTIC)
def test_float64_without_refresh_is_deterministic(ref, kwargs):
    """No refresh in the run (precondition_frequency=1000): one `eigh` per parameter, then arithmetic in the
    reference's order. The eigenvectors of NumPy's and torch's `eigh` agree up to rounding and sign, and a sign
    changes nothing (V holds squares, the turn back undoes it): 1e-10 relative after every one of 60 steps."""
    run = Run(ref, {**kwargs, "max_precondition_dim": 8, "precondition_frequency": 1000})
    run.run(60, DETERMINISTIC_TOL)
    assert run.moved() > 0.1


@pytest.mark.parametrize("frequency", [1, 3, 10])
@pytest.mark.parametrize("kwargs", DETERMINISTIC[:4])
def test_float64_with_refresh(ref, kwargs, frequency):
    """Refreshes by a float32 QR (the reference's choice, even for float64): NumPy rounds a float64 QR to
    float32, torch computes in float32; the bases differ by about 1e-7 and the parameters by about 1e-8, so
    1e-6. Gradients miss steps from the first on, so some parameters get their first gradient late: their
    first update divides rounding noise by eps (the chapter measures it), another reason for 1e-6. Not with a
    refresh at every step: a late first gradient is then turned by a basis rounded to float32 at once, its
    off-diagonal entries are float32 noise (1e-8) divided by eps, and no two implementations agree there."""
    run = Run(ref, {**kwargs, "max_precondition_dim": 8, "precondition_frequency": frequency},
              late=frequency != 1)
    run.run(60, REFRESH_TOL)
    assert run.moved() > 0.1


def test_the_refresh_is_where_the_digits_go(ref):
    "Before the first refresh (step 11 with the default frequency) the runs agree to rounding; after it, not."
    run = Run(ref, dict(lr=1e-2, max_precondition_dim=8))
    run.run(10, 1e-13)
    run.run(50, REFRESH_TOL)
    assert run.worst() > 1e-13


@pytest.mark.parametrize("frequency", [1000, 10])
def test_float32(ref, frequency):
    "float32 to 1e-5 (measured: about 1e-7): eigh and QR in float32 in torch, rounded float64 ones in NumPy."
    run = Run(ref, dict(lr=1e-2, max_precondition_dim=8, precondition_frequency=frequency), dtype=np.float32)
    run.run(60, 1e-5)


def test_default_max_precondition_dim(ref):
    "Every dimension preconditioned (10000), the default options but a larger lr."
    shapes = [(4, 4), (5,), (2, 3, 4), (3, 4), (1,), ()]
    run = Run(ref, dict(lr=1e-2, precondition_frequency=1000), shapes)
    run.run(60, DETERMINISTIC_TOL)
    run = Run(ref, dict(lr=1e-2), shapes)
    run.run(60, REFRESH_TOL)


# merge_dims: shapes with more entries than max_precondition_dim=8 (there the reference works), merged to
# (6, 4, 5), (2, 5, 3, 4) in channels_last, (6, 12), (4, 5); a scalar and a one-entry vector.
MERGE_SHAPES = [(2, 3, 4, 5), (3, 2, 12), (1,), (4, 5), ()]


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("frequency, tol", [(1000, DETERMINISTIC_TOL), (4, REFRESH_TOL)])
def test_merge_dims(ref, data_format, frequency, tol):
    kwargs = dict(lr=1e-2, merge_dims=True, max_precondition_dim=8, data_format=data_format,
                  precondition_frequency=frequency)
    run = Run(ref, kwargs, MERGE_SHAPES, groups=({}, {"lr": 3e-3}), never=None)
    run.run(60, tol)
    assert [tuple(f.shape) if f is not None else None for f in run.mopt.state[run.mparams[0]]["GG"]] == (
        [(6, 6), (4, 4), (5, 5)] if data_format == "channels_first" else [(2, 2), (5, 5), (3, 3), (4, 4)])
    assert run.mopt.state[run.mparams[1]]["GG"][1] is None   # the merged 12 > 8


def test_merge_small_dims_is_the_reference_but_for_one_merged_dimension():
    from pytorch_optimizer.optimizer.utils.shape import merge_small_dims as theirs
    for shape, max_dim in [((1, 2, 512, 1, 2048, 1, 3, 4), 1024), ((1, 2, 768, 1, 2048), 1024),
                           ((2048, 4), 1024), ((2, 3, 4, 5), 8), ((3, 4), 5), ((5,), 3)]:
        assert list(merge_small_dims(shape, max_dim)) == theirs(shape, max_dim)
    assert theirs((3, 4), 10000) == [1] and merge_small_dims((3, 4), 10000) == (12,)
    assert theirs((), 8) == [1] and merge_small_dims((), 8) == (1,)


def corrected_reference(monkeypatch, ref):
    "The reference with its merge_small_dims keeping one merged dimension (the SOAP authors' behaviour)."
    import pytorch_optimizer.optimizer.soap as module
    monkeypatch.setattr(module, "merge_small_dims", lambda shape, max_dim: list(merge_small_dims(shape, max_dim)))
    return ref


def test_merge_dims_on_small_tensors_where_the_reference_fails(ref, monkeypatch):
    """The reference raises on a tensor of at most max_precondition_dim entries with merge_dims; minima merges
    it into one dimension, and follows the corrected reference. Such a merged factor has rank 1 after one
    gradient (degenerate), so minima starts from the reference's state after its first step; the first refresh
    comes when the 12x12 factor has full rank (a power step on a rank-deficient factor is as undetermined)."""
    torch = require_torch()
    t = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    opt = ref([t], merge_dims=True); t.grad = torch.ones(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"shape '\[1\]' is invalid"): opt.step()
    p = Param(np.zeros((3, 4))); p.grad = np.ones((3, 4))
    mine = SOAP([p], merge_dims=True)
    for _ in range(2): mine.step()
    assert [f.shape for f in mine.state[p]["GG"]] == [(12, 12)]
    fixed = corrected_reference(monkeypatch, ref)
    run = Run(fixed, dict(lr=1e-2, merge_dims=True, precondition_frequency=20), [(3, 4), (5,), (2, 3)],
              groups=({},), never=None)
    run.step(); run.adopt_reference_state()
    run.run(59, REFRESH_TOL)
    assert run.moved() > 0.1


DEGENERATE = [(3, 12), (2, 7), (6,), (4, 4)]   # null spaces of dimension 9, 5, 5 (precondition_1d); none


@pytest.mark.parametrize("frequency, tol", [(1000, DETERMINISTIC_TOL), (10, REFRESH_TOL)])
def test_rank_deficient_factors_follow_the_reference_from_its_basis(ref, frequency, tol):
    """After one gradient, R of a 3x12 matrix has a 9-dimensional null space: any orthonormal basis of it is an
    eigenbasis, which one `eigh` returns follows the last bits of R, and V is not invariant under the choice.
    Given the reference's state after its first step, minima follows it; without, the runs part (measured)."""
    kwargs = dict(lr=1e-2, precondition_1d=True, precondition_frequency=frequency)
    run = Run(ref, kwargs, DEGENERATE, groups=({},), never=None)
    run.step(); run.adopt_reference_state()
    run.run(59, tol)
    apart = Run(ref, kwargs, DEGENERATE, groups=({},), never=None)
    for _ in range(10): apart.step()
    assert apart.worst() > 1e-4   # the choice of basis matters: this is why the test above starts as it does
    for p in apart.mparams:   # minima's own choice is an eigenbasis all the same
        state = apart.mopt.state[p]
        for L in state["GG"]:
            Q = eigenbasis([L])[0]
            D = Q.T @ L @ Q
            assert np.max(np.abs(D - np.diag(np.diag(D)))) <= 1e-12 * np.max(np.abs(L))


@pytest.mark.parametrize("frequency, tol", [(1000, DETERMINISTIC_TOL), (7, REFRESH_TOL)])
def test_state_dict_roundtrip(ref, frequency, tol):
    "Saved at step 30 and loaded into fresh objects, minima continues as the uninterrupted reference."
    run = Run(ref, dict(lr=1e-2, max_precondition_dim=8, precondition_frequency=frequency, weight_decay=0.1))
    run.run(30, tol)
    check_state_matches_reference(run, tol)
    run.reload_minima()
    run.run(30, tol)
    check_state_matches_reference(run, tol)


def check_state_matches_reference(run, tol):
    "Same state keys, group keys and steps as the reference; the same factors, moments and eigenbases."
    mine, theirs = run.mopt.state_dict(), run.topt.state_dict()
    assert sorted(mine["state"]) == sorted(theirs["state"])
    assert [set(g) for g in mine["param_groups"]] == [set(g) for g in theirs["param_groups"]]
    assert [g["step"] for g in mine["param_groups"]] == [g["step"] for g in theirs["param_groups"]]
    assert [g["params"] for g in mine["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    for idx, t in theirs["state"].items():
        m = mine["state"][idx]
        assert set(m) == set(t)
        assert (m["precondition_frequency"], m["shampoo_beta"]) == (t["precondition_frequency"], t["shampoo_beta"])
        for key in ("exp_avg", "exp_avg_sq"):
            scale = max(1.0, float(t[key].abs().max())) if t[key].numel() else 1.0
            np.testing.assert_allclose(m[key], t[key].numpy(), rtol=0, atol=tol * scale * 100, err_msg=key)
        for L, Lt, Q, Qt in zip(m["GG"], t["GG"], m["Q"], t["Q"]):
            assert (L is None) == isinstance(Lt, list) == (Q is None)
            if L is None: continue
            np.testing.assert_allclose(L, Lt.numpy(), rtol=0, atol=tol * float(Lt.abs().max()))
            overlap = np.abs(Q.T @ Qt.numpy())   # the same columns up to sign
            np.testing.assert_allclose(overlap, np.eye(len(Q)), atol=1e-6)


def test_state_keys_and_no_state_without_gradient(ref):
    p, q, v = Param(np.ones((2, 3))), Param(np.ones(2)), Param(np.ones(4))
    opt = SOAP([p, q, v], precondition_1d=True, max_precondition_dim=2)
    p.grad, v.grad = np.ones((2, 3)), np.ones(4)
    opt.step()
    assert set(opt.state) == {p, v}
    assert set(opt.state[p]) == {"exp_avg", "exp_avg_sq", "GG", "Q", "precondition_frequency", "shampoo_beta"}
    assert [None if f is None else f.shape for f in opt.state[p]["GG"]] == [(2, 2), None]
    assert opt.state[v]["GG"] == [None] and opt.state[p]["shampoo_beta"] == 0.95
    np.testing.assert_array_equal(p.data, np.ones((2, 3)))   # the first step only builds state
    np.testing.assert_array_equal(q.data, np.ones(2))


def test_groups_count_steps_with_or_without_gradients(ref):
    "The reference counts every group's steps whether or not a parameter has a gradient."
    run = Run(ref, dict(lr=1e-2, max_precondition_dim=8), [(3, 4), (2,)], groups=({}, {}), never=1)
    run.run(12, REFRESH_TOL)
    assert [g["step"] for g in run.mopt.param_groups] == [g["step"] for g in run.topt.param_groups] == [12, 12]
    assert run.mparams[1] not in run.mopt.state


def test_defaults_and_signature(ref):
    torch = require_torch()
    mine, theirs = inspect.signature(SOAP).parameters, inspect.signature(ref).parameters
    assert list(mine) == list(theirs)
    for name, par in theirs.items():
        assert mine[name].default == par.default, name
        assert mine[name].kind == par.kind, name
    r = ref([torch.zeros(2, dtype=torch.float64, requires_grad=True)], data_format="channels_last", maximize=True)
    m = SOAP([Param(np.zeros(2))], data_format="channels_last", maximize=True)
    assert m.defaults == r.defaults
    assert set(m.param_groups[0]) == set(r.param_groups[0])
    assert (m.data_format, m.maximize) == (r.data_format, r.maximize)
    SOAP([Param(np.zeros(2))], unknown_option=1)   # **kwargs accepted and ignored, as the reference
    ref([torch.zeros(2, requires_grad=True)], unknown_option=1)


@pytest.mark.parametrize("kwargs", [
    dict(lr=-1e-3), dict(betas=(1.0, 0.9)), dict(betas=(0.9, -0.1)), dict(betas=(-0.1, 1.5)),
    dict(shampoo_beta=-0.5), dict(weight_decay=-1e-2), dict(precondition_frequency=0),
    dict(max_precondition_dim=-1), dict(eps=-1e-8), dict(lr=-1.0, eps=-1.0)])
def test_refuses_what_the_reference_refuses(ref, kwargs):
    "The reference's exception type (by name: its NegativeLRError is its own class) and message; nothing changes."
    torch = require_torch()
    with pytest.raises(Exception) as theirs:
        ref([torch.zeros(3, dtype=torch.float64, requires_grad=True)], **kwargs)
    p = Param(np.arange(3.0)); p.grad = np.ones(3)
    before = copy.deepcopy((p.data, p.grad))
    with pytest.raises(Exception) as mine:
        SOAP([p], **kwargs)
    assert type(mine.value).__name__ == type(theirs.value).__name__
    assert str(mine.value) == str(theirs.value)
    assert isinstance(mine.value, NegativeLRError) == (type(theirs.value).__name__ == "NegativeLRError")
    np.testing.assert_array_equal(p.data, before[0]); np.testing.assert_array_equal(p.grad, before[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(betas=(0.9,)), "betas must hold two numbers"),
    (dict(betas=(0.9, 0.95, 0.99)), "betas must hold two numbers"),
    (dict(shampoo_beta=1.5), "shampoo_beta must be in the range [0.0, 1.0]"),
    (dict(data_format="NHWC"), "data_format NHWC must be one of ('channels_first' or 'channels_last')")])
def test_refuses_what_the_reference_cannot_use(ref, kwargs, message):
    "minima's own checks, where the reference accepts a value it later fails on, ignores or misreads."
    p = Param(np.arange(3.0)); p.grad = np.ones(3)
    with pytest.raises(ValueError) as mine:
        SOAP([p], **kwargs)
    assert str(mine.value).startswith(message)
    np.testing.assert_array_equal(p.data, np.arange(3.0)); np.testing.assert_array_equal(p.grad, np.ones(3))


def test_gradients_are_never_modified(ref):
    "minima reads the gradients only, maximize included (the reference negates p.grad in place)."
    torch = require_torch()
    rng = np.random.default_rng(0)
    p = Param(np.zeros((3, 3)))
    opt = SOAP([p], maximize=True, precondition_frequency=1)
    t = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    topt = ref([t], maximize=True, precondition_frequency=1)
    for _ in range(3):   # new gradients: a repeated one is diagonal in its own eigenbasis (noise / eps)
        g = rng.standard_normal((3, 3))
        p.grad, t.grad = g.copy(), torch.from_numpy(g.copy())
        opt.step(); topt.step()
        np.testing.assert_array_equal(p.grad, g)
    np.testing.assert_array_equal(t.grad.numpy(), -g)   # the reference's side effect, documented
    np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=0, atol=REFRESH_TOL)


def test_step_returns_the_closure_loss():
    p = Param(np.ones((2, 2))); p.grad = np.ones((2, 2))
    assert SOAP([p]).step(lambda: 3.5) == 3.5


def test_kernel_pieces():
    "rotate is the product with each Q^T (and back), eigenbasis sorts eigenvalues down, power_step reorders V."
    rng = np.random.default_rng(0)
    g = rng.standard_normal((3, 4, 5))
    factors = [mode_gram(g, k) for k in range(3)]
    np.testing.assert_allclose(factors[1], np.einsum("iac,ibc->ab", g, g), rtol=1e-12)
    basis = eigenbasis(factors)
    for L, Q in zip(factors, basis):
        d = np.diag(Q.T @ L @ Q)
        assert np.all(np.diff(d) <= 1e-12)
    turned = rotate(g, basis)
    np.testing.assert_allclose(turned, np.einsum("ijk,ia,jb,kc->abc", g, *basis), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rotate(turned, basis, back=True), g, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rotate(g, [None, basis[1], None]), np.einsum("ijk,jb->ibk", g, basis[1]),
                               rtol=1e-10, atol=1e-12)
    swapped = [Q[:, ::-1] for Q in basis]    # an eigenbasis in the wrong order: power_step sorts it back
    V = rng.random((3, 4, 5))
    new, V_new = power_step(factors, swapped, V)
    np.testing.assert_array_equal(V_new, V[::-1, ::-1, ::-1])
    for L, Q in zip(factors, new):
        assert Q.dtype == np.float64 and np.all(np.diff(np.diag(Q.T @ L @ Q)) <= 1e-6 * np.abs(L).max())
    g2 = rng.standard_normal((3, 4, 5))
    accumulate(factors, g2, 0.75, merge_dims=False, max_dim=4, data_format="channels_first")
    np.testing.assert_allclose(factors[0], 0.75 * mode_gram(g, 0) + 0.25 * mode_gram(g2, 0), rtol=1e-12)
    np.testing.assert_allclose(factors[1], 0.75 * mode_gram(g, 1) + 0.25 * mode_gram(g2, 1), rtol=1e-12)
