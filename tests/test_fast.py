"""The fast paths (minima.fast) held to the reference kernel (`foreach=False`), bit for bit.

Every elementwise optimizer, its full option grid, both dtypes, 30 steps, two groups, a parameter that never has a
gradient and others that miss some steps, fresh gradient arrays every step or gradients accumulated in place:
(a) `foreach=True` on a flat buffer in pieces of 7 elements (pieces straddle tensors), (b) `fused=True` on each
tensor in place, (c) `fused=True` on one flat buffer. The fast paths run the same rule with the same arithmetic, so
parameters and every state entry (0-d state too) must be equal, not merely close. Then: torch parity of both paths,
torch's error for `fused` with `foreach`, `fused` without numba, non-contiguous parameters, a subclass with its own
rule, and the memory a step allocates. numba is optional: the fused tests skip without it (and fail under CI)."""
import copy, functools, inspect, itertools, re, sys, tracemalloc
import numpy as np
import pytest
import parity
from conftest import IN_CI
from parity import Param, run_parity
from minima.fast import flat, fused
from minima.optim import SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, RAdam, Rprop, ASGD
from minima.optim.optimizer import _fast_step_for, elementwise, lerp
from minima.optim.adam import adam_constants

DTYPES = [np.float64, np.float32]
ELEMENTWISE = [SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, RAdam, Rprop, ASGD]
INSTALL = "pip install 'minima-optim[fast]'"


def require_numba():
    "numba for the fused paths: skip on a reader's machine without it, fail under CI."
    try: import numba  # noqa: F401
    except ImportError:
        msg = f"numba is not installed; the fused paths are optional: {INSTALL} (or pip install numba) to test them"
        if IN_CI: pytest.fail(f"CI=true requires it: {msg}", pytrace=False)
        pytest.skip(msg)


def grid(**options):
    "Every combination of `options` (each a list of values), as keyword-argument dicts."
    return [dict(zip(options, values)) for values in itertools.product(*options.values())]


OPTIONS = {  # class -> keyword arguments: every boolean option, and each numeric option at zero and nonzero
    SGD: [kw for kw in grid(lr=[0.05], momentum=[0.0, 0.9], dampening=[0.0, 0.3], weight_decay=[0.0, 0.1],
                            nesterov=[False, True], maximize=[False, True])
          if not (kw["nesterov"] and (kw["momentum"] == 0 or kw["dampening"] != 0))],   # torch rejects these
    Adagrad: grid(lr=[0.1], lr_decay=[0.0, 0.01], weight_decay=[0.0, 0.1], initial_accumulator_value=[0.0, 0.5],
                  maximize=[False, True]),
    RMSprop: grid(lr=[0.01], momentum=[0.0, 0.5], centered=[False, True], weight_decay=[0.0, 0.1],
                  maximize=[False, True]),
    Adadelta: grid(lr=[0.5], rho=[0.9, 0.5], weight_decay=[0.0, 0.1], maximize=[False, True]),
    Adam: [kw for kw in grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9)], amsgrad=[False, True],
                             weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True])
           if not (kw["decoupled_weight_decay"] and kw["weight_decay"] == 0)],
    AdamW: grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9)], amsgrad=[False, True], weight_decay=[0.0, 0.1],
                maximize=[False, True]),
    Adamax: grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9)], weight_decay=[0.0, 0.1], maximize=[False, True]),
    NAdam: [kw for kw in grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9)], momentum_decay=[4e-3, 0.1],
                              weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True])
            if not (kw["decoupled_weight_decay"] and kw["weight_decay"] == 0)],
    # betas[1] = 0.999 rectifies from step 6 on, 0.9 from step 3 on, and 0.5 never (rho_inf = 3 < 5)
    RAdam: [kw for kw in grid(lr=[0.01], betas=[(0.9, 0.999), (0.3, 0.9), (0.8, 0.5)], weight_decay=[0.0, 0.1],
                              decoupled_weight_decay=[False, True], maximize=[False, True])
            if not (kw["decoupled_weight_decay"] and kw["weight_decay"] == 0)],
    # tight step_sizes make the clip bind at both ends within 30 steps
    Rprop: grid(lr=[0.01], etas=[(0.5, 1.2), (0.3, 1.5)], step_sizes=[(1e-6, 50), (5e-3, 0.03)],
                maximize=[False, True]),
    ASGD: grid(lr=[0.01], lambd=[1e-4, 0.05], alpha=[0.75], t0=[1e6, 10], weight_decay=[0.0, 0.1],
               maximize=[False, True]),
}
CASES = [(cls, kw) for cls in ELEMENTWISE for kw in OPTIONS[cls]]
LAST = [(cls, OPTIONS[cls][-1]) for cls in ELEMENTWISE]   # the last case of each class turns most options on


def case_id(case):
    cls, kw = case
    return cls.__name__ + "(" + ",".join(f"{k}={v}" for k, v in kw.items()) + ")"


def dtype_id(d): return np.dtype(d).name


# ---------------------------------------------------------------------------------------------------------------
# The paths, and how a test knows which one ran

MODES = {  # name -> (constructor keywords, flat-module settings)
    "foreach": (dict(foreach=True), dict(PIECE=7)),   # pieces of 7 elements straddle the tensors
    "fused": (dict(fused=True), dict(FLAT_MIN_PARAMS=10 ** 9)),   # every tensor in place, one loop each
    "fused-flat": (dict(fused=True), dict(FLAT_MIN_PARAMS=1, SMALL_TENSOR=1 << 40)),   # one flat buffer
    # every tensor counts as large: pieces of 7 elements of each tensor's own arrays, no buffer
    "foreach-tensors": (dict(foreach=True), dict(PIECE=7, SMALL_TENSOR=0)),
}
TENSOR_PIECE_RUNS = []   # what each call of flat.step_tensor_pieces returned, under "foreach-tensors"
FAST_MODES = list(MODES)


def flat_buffers(opt):
    "The flat buffers minima.fast holds for `opt` (instances of minima.fast.flat.FlatBuffer only)."
    return [b for c in opt.__dict__.get("_flat_buffers", {}).values() for b in c.buffers
            if isinstance(b, flat.FlatBuffer)]


def used_flat(opt): return bool(flat_buffers(opt))


@pytest.fixture
def compiled_calls(monkeypatch):
    "Spy on the compiled loop the fused paths call: a list of (rule, param) per call."
    calls, original = [], flat.compiled
    def spy(rule, c, param, grad, *states):
        calls.append((rule, param))
        return original(rule, c, param, grad, *states)
    monkeypatch.setattr(flat, "compiled", spy)
    return calls


def enter_mode(monkeypatch, mode):
    "Constructor keywords for `mode`, after setting its flat-module thresholds for the test's duration."
    if mode.startswith("fused"): require_numba()
    kwargs, settings = MODES[mode]
    for name, value in settings.items(): monkeypatch.setattr(flat, name, value)
    if mode == "foreach-tensors":
        original = flat.step_tensor_pieces
        def spy(optimizer, group):
            TENSOR_PIECE_RUNS.append(original(optimizer, group)); return TENSOR_PIECE_RUNS[-1]
        monkeypatch.setattr(flat, "step_tensor_pieces", spy)
        TENSOR_PIECE_RUNS.clear()
    return kwargs


def check_path(opt, mode, calls, rules, k, first_step_per_tensor=False):
    """After step `k`: the path `mode` names ran. Groups 0 and 2 must be on minima.fast's flat buffers whenever they
    have gradients (in pieces of 7 for foreach, the compiled loop on the whole buffer for fused-flat); fused on each
    tensor makes no buffer and calls the compiled loop."""
    caches = opt.__dict__.get("_flat_buffers", {})
    def buffers_of(group):
        cache = caches.get(id(group))
        return [b for b in (cache.buffers if cache else []) if isinstance(b, flat.FlatBuffer)]
    if mode in ("fused", "foreach-tensors"):
        assert not any(buffers_of(g) for g in opt.param_groups), f"{mode} made a flat buffer"
    if mode == "foreach-tensors":
        if not (first_step_per_tensor and k == 0):
            assert any(TENSOR_PIECE_RUNS), f"no group ran in pieces of its own tensors at step {k}"
        TENSOR_PIECE_RUNS.clear()
        return
    for gi in ([] if first_step_per_tensor and k == 0 else expected_flat(k)):
        buffers = buffers_of(opt.param_groups[gi])
        if mode == "fused": continue
        assert buffers, f"group {gi} did not run on minima.fast's flat buffers at step {k}"
        if mode == "foreach": assert all(b.piece == 7 for b in buffers), "foreach=True did not run in pieces of 7"
        else: assert all(any(p is b.data for _, p in calls) for b in buffers), \
            f"fused=True did not run the compiled loop on group {gi}'s flat buffer at step {k}"
    if mode != "foreach":
        assert calls, f"fused=True ran no compiled loop at step {k}"
        rules.update(rule for rule, _ in calls)
    calls.clear()


# ---------------------------------------------------------------------------------------------------------------
# The run: two groups, a parameter without gradients, others that miss some steps, zeros in some gradients

SHAPES = [(4, 5), (3,), (2, 3, 2), (7,), (1,), (6,), (5, 2)]
GROUP_OF = [0, 0, 0, 1, 1, 2, 2]
LR_SCALE = [1.0, 2.0, 0.5]   # each group's learning rate, times the case's
NEVER = 1    # this parameter (in group 0) never has a gradient
STEPS = 30


def has_grad(i, k):
    """Parameter `i` has a gradient at step `k`. Group 0 always has the same set (it stays on its buffers); in group 1
    parameter 3 misses every seventh step (its step counter falls behind: the group leaves the flat path for the
    reference); group 2 misses every sixth step as a whole (its buffers are rebuilt, the 0-d state carried on)."""
    return i != NEVER and not (i == 3 and k % 7 == 3) and not (GROUP_OF[i] == 2 and k % 6 == 5)


def expected_flat(k):
    "The groups that must be on flat buffers after step `k` (the fast paths other than fused on each tensor)."
    return [0] + ([2] if k % 6 != 5 else [])


@functools.lru_cache(maxsize=None)
def start_and_grads(dtype, steps=STEPS):
    "Initial parameters and, per step, each parameter's gradient as the sum of two backward passes."
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    passes = []
    for k in range(steps):
        step = []
        for i, (s, a) in enumerate(zip(SHAPES, start)):
            g1 = (rng.standard_normal(s) + 0.3 * a).astype(dtype)
            g2 = (0.5 * rng.standard_normal(s)).astype(dtype)
            if k % 4 == 1: g1.flat[::3] = 0; g2.flat[::3] = 0   # exact zeros: Rprop's and Adagrad's edge cases
            step.append((g1, g2))
        passes.append(step)
    return start, passes


def make_params(dtype, start):
    return [Param(a.copy()) for a in start]


def groups_of(params, kw):
    "Three groups (`GROUP_OF`), each with its own learning rate."
    return [{"params": [p for p, g in zip(params, GROUP_OF) if g == gi], "lr": scale * kw["lr"]}
            for gi, scale in enumerate(LR_SCALE)]


def set_grads(params, k, passes, accumulate):
    for i, p in enumerate(params):
        if not has_grad(i, k): p.grad = None; continue
        g1, g2 = passes[k][i]
        if accumulate and p.grad is not None:   # zero_grad(set_to_none=False), then two backward passes
            p.grad[...] = 0; p.grad += g1; p.grad += g2
        else: p.grad = g1 + g2                  # a fresh array (the same numbers: 0 + g1 is g1)


def snapshot(params, opt):
    "The parameters' arrays and the state (deep copies), keyed by parameter index."
    index = {id(p): i for i, p in enumerate(params)}
    return ([p.data.copy() for p in params], {index[id(p)]: copy.deepcopy(dict(s)) for p, s in opt.state.items()})


def run(cls, kw, dtype, accumulate, extra, after_step=None, steps=STEPS):
    start, passes = start_and_grads(dtype, steps)
    params = make_params(dtype, start)
    opt = cls(groups_of(params, kw), **kw, **extra)
    for k in range(steps):
        set_grads(params, k, passes, accumulate)
        opt.step()
        if after_step is not None: after_step(opt, k)
    return snapshot(params, opt)


@functools.lru_cache(maxsize=None)
def reference(cls, kw_items, dtype, accumulate):
    "The reference run (foreach=False: the kernel on each tensor, NumPy), computed once per case."
    return run(cls, dict(kw_items), dtype, accumulate, dict(foreach=False))


def assert_bitwise(mine, ref, what):
    "Same type, dtype, shape and numbers: arrays (0-d too) equal element for element, other values equal."
    if isinstance(ref, np.ndarray) or isinstance(mine, np.ndarray):
        assert isinstance(mine, np.ndarray) and isinstance(ref, np.ndarray), f"{what}: {type(mine)} vs {type(ref)}"
        assert (mine.dtype, mine.shape) == (ref.dtype, ref.shape), \
            f"{what}: {mine.dtype}{mine.shape} vs the reference's {ref.dtype}{ref.shape}"
        assert np.array_equal(mine, ref), f"{what}: differs from the reference by up to {np.max(np.abs(mine - ref))}"
    else: assert type(mine) is type(ref) and mine == ref, f"{what}: {mine!r} vs the reference's {ref!r}"


def assert_same_run(mine, ref):
    (mparams, mstate), (rparams, rstate) = mine, ref
    for i, (m, r) in enumerate(zip(mparams, rparams)): assert_bitwise(m, r, f"param {i}")
    assert sorted(mstate) == sorted(rstate), "the parameters with state differ"
    for i, state in rstate.items():
        assert sorted(mstate[i]) == sorted(state), f"state keys of param {i}"
        for k, v in state.items(): assert_bitwise(mstate[i][k], v, f"state[{i}][{k!r}]")


# ---------------------------------------------------------------------------------------------------------------
# Registration

@pytest.mark.parametrize("cls", ELEMENTWISE, ids=lambda c: c.__name__)
def test_every_elementwise_optimizer_is_registered_with_the_fast_step(cls):
    "minima.fast registers the class (AdamW through Adam); `fused` is a keyword-only option defaulting to None."
    assert _fast_step_for(cls) is flat.step_group, f"{cls.__name__} has no fast step registered"
    param = inspect.signature(cls).parameters.get("fused")
    assert param is not None and param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is None
    p = Param(np.zeros(3))
    assert cls([p], lr=0.01).defaults["fused"] is None


# ---------------------------------------------------------------------------------------------------------------
# (a), (b), (c): every fast path equals the reference, bit for bit

@pytest.mark.parametrize("accumulate", [False, True], ids=["fresh", "accumulated"])
@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fast_path_equals_the_reference_bitwise(monkeypatch, compiled_calls, case, dtype, mode, accumulate):
    cls, kw = case
    extra = enter_mode(monkeypatch, mode)
    rules = set()
    # SGD's momentum buffers are created by its kernel at their first step (torch's state layout): per tensor then
    lazy = cls is SGD and kw.get("momentum", 0) != 0
    mine = run(cls, kw, dtype, accumulate, extra,
               lambda opt, k: check_path(opt, mode, compiled_calls, rules, k, first_step_per_tensor=lazy))
    assert_same_run(mine, reference(cls, tuple(kw.items()), dtype, accumulate))
    if mode.startswith("fused"): assert rules, "no compiled loop ran"


# ---------------------------------------------------------------------------------------------------------------
# Against torch

TORCH_CASES = [  # (minima class, keyword arguments): each option on in some case
    (SGD, dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.1)),
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
    (Adagrad, dict(lr=0.1, maximize=True)),
    (RMSprop, dict(lr=0.01)),
    (RMSprop, dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, maximize=True)),
    (Adadelta, dict(lr=0.5, weight_decay=0.1)),
    (Adadelta, dict(lr=0.5, rho=0.5, maximize=True)),
    (Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    (Adam, dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0.1, decoupled_weight_decay=True)),
    (AdamW, dict(lr=0.01, weight_decay=0.1)),
    (AdamW, dict(lr=0.01, amsgrad=True, maximize=True)),
    (Adamax, dict(lr=0.01, weight_decay=0.1)),
    (Adamax, dict(lr=0.01, betas=(0.3, 0.9), maximize=True)),
    (NAdam, dict(lr=0.01, weight_decay=0.1, momentum_decay=0.1)),
    (NAdam, dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    (RAdam, dict(lr=0.01, weight_decay=0.1)),
    (RAdam, dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    (RAdam, dict(lr=0.01, betas=(0.8, 0.5))),
    (Rprop, dict(lr=0.01)),
    (Rprop, dict(lr=0.01, etas=(0.3, 1.5), step_sizes=(5e-3, 0.03), maximize=True)),
    (ASGD, dict(lr=0.01, t0=10, lambd=0.05)),
    (ASGD, dict(lr=0.01, t0=10, weight_decay=0.1, maximize=True)),
]
TORCH_FUSED = {"SGD", "Adagrad", "Adam", "AdamW"}   # the optimizers torch gives `fused` (on CPU too)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_fused_parity_with_torch(torch, compiled_calls, case, dtype):
    """parity's run (two groups, a parameter that never gets a gradient, others missing one step in five) with
    fused=True: torch's fused kernel where torch has one, else its single-tensor kernel."""
    require_numba()
    cls, kw = case
    torch_cls = getattr(torch.optim, cls.__name__)
    # torch 2.13's fused SGD fails ("expected Tensor ... but got NoneType") when a parameter with momentum gets its
    # first gradient after the others (its buffer is still None): there its single-tensor kernel is the oracle
    torch_fused = cls.__name__ in TORCH_FUSED and not (cls is SGD and kw.get("momentum", 0) != 0)
    if torch_fused: twins = run_parity(cls, torch_cls, dict(kw, fused=True), dtype=dtype, steps=40,
                                                       group_overrides=({}, {"lr": 2 * kw["lr"]}))
    else: twins = run_parity(functools.partial(cls, fused=True), torch_cls, kw, dtype=dtype, steps=40,
                             group_overrides=({}, {"lr": 2 * kw["lr"]}))
    assert compiled_calls, "fused=True did not run the compiled loop"
    assert all(g["fused"] is True for g in twins.mopt.param_groups)
    parity.check_state_dict_matches_torch(twins)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_foreach_parity_with_torch(torch, monkeypatch, case, dtype):
    "The same run with foreach=True (minima only; torch's single-tensor kernel), in pieces of 7 elements."
    monkeypatch.setattr(flat, "PIECE", 7)
    cls, kw = case
    twins = run_parity(functools.partial(cls, foreach=True), getattr(torch.optim, cls.__name__), kw, dtype=dtype,
                       steps=40, group_overrides=({}, {"lr": 2 * kw["lr"]}))
    assert used_flat(twins.mopt)
    parity.check_state_dict_matches_torch(twins)


# ---------------------------------------------------------------------------------------------------------------
# Errors

FUSED_AND_FOREACH = "`fused` and `foreach` cannot be `True` together."


@pytest.mark.parametrize("cls", [c for c in ELEMENTWISE if c.__name__ in TORCH_FUSED], ids=lambda c: c.__name__)
def test_fused_with_foreach_raises_torchs_error(torch, cls):
    msg = parity.assert_same_error(cls, getattr(torch.optim, cls.__name__), dict(lr=0.01, fused=True, foreach=True))
    assert msg == FUSED_AND_FOREACH


@pytest.mark.parametrize("cls", [c for c in ELEMENTWISE if c.__name__ not in TORCH_FUSED], ids=lambda c: c.__name__)
def test_fused_with_foreach_raises_torchs_error_where_torch_has_no_fused(cls):
    p = Param(np.arange(3.0)); p.grad = np.ones(3)
    with pytest.raises(RuntimeError, match=re.escape(FUSED_AND_FOREACH)): cls([p], lr=0.01, fused=True, foreach=True)
    np.testing.assert_array_equal(p.data, np.arange(3.0)); np.testing.assert_array_equal(p.grad, np.ones(3))


def state_copy(opt):
    return {id(p): (list(s), copy.deepcopy(dict(s))) for p, s in opt.state.items()}


def assert_state_unchanged(before, after):
    assert sorted(before) == sorted(after), "parameters with state changed"
    for key, (keys, values) in before.items():
        assert after[key][0] == keys, "state keys changed"
        for k, v in values.items(): assert_bitwise(after[key][1][k], v, f"state {k!r}")


@pytest.mark.parametrize("flat_path", [False, True], ids=["per-tensor", "flat"])
@pytest.mark.parametrize("case", LAST, ids=case_id)
def test_fused_without_numba_raises_and_changes_nothing(monkeypatch, case, flat_path):
    "ImportError naming the extra to install; parameters, gradients, their arrays and the state stay as they were."
    cls, kw = case
    monkeypatch.setattr(flat, "FLAT_MIN_PARAMS", 1 if flat_path else 10 ** 9)
    monkeypatch.setattr(flat, "SMALL_TENSOR", 1 << 40)
    start, passes = start_and_grads(np.float64)
    params = make_params(np.float64, start)
    opt = cls(groups_of(params, kw), **kw, fused=True)
    try: import numba  # noqa: F401
    except ImportError: pass
    else:   # with numba: a few steps first, so that there is state (and flat buffers) to keep intact
        for k in range(3): set_grads(params, k, passes, False); opt.step()
    set_grads(params, 3, passes, False)
    monkeypatch.setitem(sys.modules, "numba", None)   # `import numba` now raises ImportError
    monkeypatch.setattr(fused, "_JITTED", {}); monkeypatch.setattr(fused, "_LOOPS", {})
    datas, grads = [p.data for p in params], [p.grad for p in params]
    values = [(d.copy(), None if g is None else g.copy()) for d, g in zip(datas, grads)]
    before = state_copy(opt)
    with pytest.raises(ImportError, match=re.escape(INSTALL)): opt.step()
    for p, d, g, (dv, gv) in zip(params, datas, grads, values):
        assert p.data is d and p.grad is g, "an array of a parameter was replaced"
        assert_bitwise(p.data, dv, "param")
        if g is not None: assert_bitwise(p.grad, gv, "grad")
    assert_state_unchanged(before, state_copy(opt))


# ---------------------------------------------------------------------------------------------------------------
# Non-contiguous parameters

def strided_params(dtype):
    rng = np.random.default_rng(4)
    a, b, c = rng.standard_normal((5, 4)), rng.standard_normal((3, 8)), rng.standard_normal(6)
    return [Param(a.astype(dtype).T), Param(b.astype(dtype)[:, ::2]), Param(c.astype(dtype))]


@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("case", LAST, ids=case_id)
def test_non_contiguous_parameters_get_the_references_numbers(monkeypatch, compiled_calls, case, mode):
    "A transposed view and a strided slice: compiled loops fall back to NumPy for them; flat buffers copy them."
    cls, kw = case
    extra = enter_mode(monkeypatch, mode)
    rng = np.random.default_rng(5)
    grads = [[rng.standard_normal(p.data.shape) for p in strided_params(np.float64)] for _ in range(12)]
    results = []
    for options in (dict(foreach=False), extra):
        params = strided_params(np.float64)
        assert not params[0].data.flags.c_contiguous and not params[1].data.flags.c_contiguous
        opt = cls(params, **kw, **options)
        for gs in grads:
            for p, g in zip(params, gs): p.grad = g.copy()
            opt.step()
        results.append(snapshot(params, opt))
    # foreach-tensors cannot cut a non-contiguous tensor in pieces without copying it: the reference runs instead
    assert used_flat(opt) == (mode in ("foreach", "fused-flat")), f"{mode} did not take its path"
    if mode == "foreach-tensors": assert TENSOR_PIECE_RUNS and not any(TENSOR_PIECE_RUNS)
    if mode.startswith("fused"): assert compiled_calls, "no compiled loop ran"
    assert_same_run(*results)


# ---------------------------------------------------------------------------------------------------------------
# A subclass with its own rule

def momentum_rule(c, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
    "Adam's first moment alone (a different rule in Adam's layout): p -= step_size * m."
    exp_avg = lerp(exp_avg, grad, c.beta1_weight, c.one)
    exp_avg_sq *= c.beta2
    param -= c.step_size * exp_avg
    return param, exp_avg, exp_avg_sq, max_exp_avg_sq


class MomentumAdam(Adam):
    "Adam's state and constants, its own rule: the fast paths must run this rule, not Adam's."
    def _update(self, group, params, grads, states, apply=elementwise):
        beta1, beta2 = group["betas"]
        for p, g, s in zip(params, grads, states):
            c = adam_constants(s["step"], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                               weight_decay=0.0, eps=group["eps"], maximize=False)
            apply(momentum_rule, c, p, g, s["exp_avg"], s["exp_avg_sq"], None)


@pytest.mark.parametrize("mode", FAST_MODES)
def test_a_subclass_runs_its_own_rule(monkeypatch, compiled_calls, mode):
    extra = enter_mode(monkeypatch, mode)
    kw = dict(lr=0.01)
    rules = set()
    check = lambda opt, k: check_path(opt, mode, compiled_calls, rules, k)   # noqa: E731
    mine = run(MomentumAdam, kw, np.float64, False, extra, check)
    ref = run(MomentumAdam, kw, np.float64, False, dict(foreach=False))
    assert_same_run(mine, ref)
    if mode.startswith("fused"): assert rules == {momentum_rule}, f"compiled rules: {rules}"
    adam_ref = run(Adam, kw, np.float64, False, dict(foreach=False))
    assert not np.array_equal(ref[0][0], adam_ref[0][0]), "the subclass's rule made no difference"


# ---------------------------------------------------------------------------------------------------------------
# Memory

def peak_of_one_step(opt, params, rng):
    for p in params: p.grad = rng.standard_normal(p.data.shape).astype(p.data.dtype)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]; opt.step()
        return tracemalloc.get_traced_memory()[1] - base
    finally: tracemalloc.stop()


def big_model(rng, sizes, dtype=np.float32):
    return [Param(rng.standard_normal(n).astype(dtype)) for n in sizes]


MODEL = [(1 << 21) - 3000, 1000, 2000]   # 2M elements, one large tensor


@pytest.mark.parametrize("sizes", [MODEL, [1 << 15] * 64], ids=["tensor-pieces", "flat"])
@pytest.mark.parametrize("case", LAST, ids=case_id)
def test_a_foreach_step_allocates_a_few_pieces(case, sizes):
    "foreach=True on a 2M-element model: temporaries of a few pieces at most; the reference allocates whole tensors."
    cls, kw = case
    rng = np.random.default_rng(0)
    bound, peaks = 8 * flat.PIECE * np.dtype(np.float32).itemsize, {}
    for foreach in (False, True):
        params = big_model(rng, sizes)
        opt = cls(params, **kw, foreach=foreach)
        for _ in range(2): peak_of_one_step(opt, params, rng)   # the state and the buffers exist
        peaks[foreach] = peak_of_one_step(opt, params, rng)
        assert used_flat(opt) == (foreach and len(sizes) == 64)
    assert peaks[True] <= bound, f"a foreach step of {cls.__name__} allocated {peaks[True]} bytes (bound {bound})"
    if sizes is MODEL:   # the measurement sees array allocations: the reference's whole-tensor temporaries show
        assert peaks[False] > bound, f"the reference was expected to allocate whole temporaries ({peaks[False]} bytes)"


@pytest.mark.parametrize("sizes", [MODEL, [1 << 15] * 64], ids=["per-tensor", "flat"])
@pytest.mark.parametrize("case", LAST, ids=case_id)
def test_a_fused_step_allocates_almost_nothing(compiled_calls, case, sizes):
    "fused=True on 2M elements, in one large tensor (in place) or in 64 small ones (one flat buffer): under 64 KB."
    require_numba()
    cls, kw = case
    rng = np.random.default_rng(0)
    params = big_model(rng, sizes)
    opt = cls(params, **kw, fused=True)
    for _ in range(2): peak_of_one_step(opt, params, rng)   # compiles (or finds) the loop, creates the state
    compiled_calls.clear()
    peak = peak_of_one_step(opt, params, rng)
    assert compiled_calls and used_flat(opt) == (len(sizes) == 64)
    assert peak < 64 * 1024, f"a fused step of {cls.__name__} allocated {peak} bytes"
