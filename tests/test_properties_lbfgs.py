"""Property-based differential tests of LBFGS against torch.optim.LBFGS: random options (every option torch has),
random separable objectives, parameter lists of random shapes, runs of steps, learning-rate changes and
`state_dict` round trips. float64, as tests/test_lbfgs.py.

Both optimizers get the same closure values (loss and gradient computed once in NumPy from the current
parameters), so only the optimizers' arithmetic differs. How close two implementations of L-BFGS can be is set by
the problem: L-BFGS can amplify a rounding by 30 times per iteration for a while (a fixed step of lr = 1 can be
chaotic, see tests/test_lbfgs.py). Each side is run again from a start one ulp away; minima must stay within
1e-10 relative of torch plus 1000 times the larger of the two spreads (torch's from its twin, minima's from its
own), which a wrong formula would not explain: it moves minima from torch, not from minima's twin. The counters
(`func_evals`, `n_iter`) must be equal wherever both sides agree with their twins. A run is compared until its
gradient reaches the rounding floor (FLOOR below).
"""
import warnings
import numpy as np
from hypothesis import event, given, note, strategies as st

import hypothesis_profiles  # noqa: F401  (registers and loads the profiles)
from hypothesis_profiles import examples
from conftest import require_torch
from parity import Param
from minima.optim.lbfgs import LBFGS

RTOL = 1e-10
# The state holds gradient differences y = g_k+1 - g_k and ro = 1 / (y . s), which lose digits to cancellation as
# the run converges (y . s of 7e-10 from gradients of 1e-5 keeps 8 of 16 digits): compared to 1e-6, plus 1000
# times the twins' spread. Wrong keys, lengths or values show here; small differences also reach the parameters.
STATE_TOL = dict(rtol=1e-6, atol=1e-10)
SENSITIVITY = 1e3   # a twin's start differs once by one ulp; the two sides' roundings differ at every operation

# Exact coincidences with the strong Wolfe bounds are avoided (rounding alone decides them, for torch too): on a
# quadratic with exact curvature a step scales x by 1 - t, and the line search tries t = lr * 10 ** k, so lr 0.1
# and 0.01 (which hypothesis favours) give 1 - t = 0.9, the curvature bound c2, exactly. Without a line search
# lr stays at most 1: L-BFGS's step is scaled for lr = 1, and a larger fixed step overshoots and amplifies every
# rounding at each iteration (torch itself moves 100 times a one-ulp change of its start; see also the chaotic
# fixed-step Rosenbrock in tests/test_lbfgs.py).
@st.composite
def options(draw):
    line_search_fn = draw(st.sampled_from([None, "strong_wolfe"]))
    lrs = st.floats(0.01, 1.5 if line_search_fn else 1.0).filter(lambda lr: lr not in (0.01, 0.1))
    return dict(lr=draw(st.one_of(st.just(1.0), lrs)), max_iter=draw(st.integers(1, 12)),
                max_eval=draw(st.one_of(st.none(), st.integers(1, 30))),
                tolerance_grad=draw(st.sampled_from([1e-7, 1e-5, 1e-3, 0.0])),
                tolerance_change=draw(st.sampled_from([1e-9, 1e-6, 0.0])),
                history_size=draw(st.integers(1, 12)), line_search_fn=line_search_fn)


# f(x) = sum of a (x - m)^2 / 2 + c (x - m)^4 / 4 per entry: smooth and convex, not a quadratic when c > 0 (so
# L-BFGS's curvature pairs matter), and its minimum is 0. A minimum of 0 matters: with f* = -1.6 the losses a
# converging line search compares differ by 1e-12 and keep 4 digits, so its interpolated steps are rounding
# (two correct implementations differ by 1e-10 after three steps); near 0 they keep all their digits.
# Coefficients per parameter; a = 10 ** u, u in (-1, 1), rather than a float of [0.1, 10], which hypothesis would
# often draw as 0.1 or 1.9: with a first step t = 1 they make 1 - t a = +-0.9, the curvature bound, exactly.
coefficients = st.tuples(st.floats(-1.0, 1.0, exclude_min=True, exclude_max=True).map(lambda u: 10.0 ** u),
                         st.floats(-3.0, 3.0),
                         st.one_of(st.just(0.0), st.floats(0.0, 2.0)))
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)
run_events = st.lists(st.one_of(st.just(("step",)), st.just(("step",)), st.just(("roundtrip",)),
                                st.tuples(st.just("lr"), st.floats(0.01, 1.0))), max_size=5).map(
    lambda evs: [("step",)] + evs)   # a first step, so that every example compares something


def objective(coeffs):
    "f, which returns the loss, the gradients, and how far the parameters are from the minimum (see FLOOR)."
    def f(xs):
        loss, grads, distance = 0.0, [], np.inf
        for (a, m, c), x in zip(coeffs, xs):
            d = x - m   # exact near the minimum (Sterbenz)
            loss += float(np.sum(a * d * d / 2 + c * d ** 4 / 4))
            grads.append(np.asarray(a * d + c * d ** 3))   # a 0-d array stays an array
            distance = min(distance, float(np.max(np.abs(d))) / max(abs(m), 1.0))
        return loss, grads, distance
    return f


# Parameters within 1e-8 of the minimum (relative to it, or to 1, the scale of the start) are at the rounding
# floor: they got there by cancellation (x (1 - t H a) with t H a near 1), x - m keeps few digits, the gradient
# is mostly rounding, L-BFGS's curvature pairs are differences of noise and each implementation's noise is its
# own, so from then on two correct implementations go different ways (one reaches 0 exactly, one 1e-17). The
# comparison stops at the first step that reaches it (a quadratic is minimized exactly in a few iterations);
# tests/test_lbfgs.py holds fixed runs to 1e-10 there.
FLOOR = 1e-8


class Run:
    "One LBFGS (minima's or torch's) over its own copies of the start, fed by the objective."
    def __init__(self, lib, start, kwargs, f, torch):
        self.lib, self.kwargs, self.f, self.torch = lib, kwargs, f, torch
        if lib == "minima":
            self.params = [Param(a.copy()) for a in start]
            self.opt = LBFGS(self.params, **kwargs)
        else:
            self.params = [torch.tensor(a.copy(), requires_grad=True) for a in start]
            self.opt = torch.optim.LBFGS(self.params, **kwargs)

    def arrays(self):
        return [p.data if self.lib == "minima" else p.detach().numpy() for p in self.params]

    def closure(self):
        loss, grads, distance = self.f([a.copy() for a in self.arrays()])
        self.lowest = min(self.lowest, distance)
        for p, g in zip(self.params, grads): p.grad = g if self.lib == "minima" else self.torch.from_numpy(g)
        return loss if self.lib == "minima" else self.torch.tensor(loss, dtype=self.torch.float64)

    def step(self):
        self.lowest = np.inf
        return float(self.opt.step(self.closure))

    def at_floor(self): return self.lowest < FLOOR

    def counters(self):
        state = self.opt.state[self.params[0]]
        return state.get("func_evals"), state.get("n_iter")

    def state(self):
        "The state (all on the first parameter) as {key: list of float64 arrays or None}."
        def array(v):
            return None if v is None else np.asarray(v.detach().numpy() if hasattr(v, "detach") else v, np.float64)
        return {k: [array(x) for x in (v if isinstance(v, list) else [v])]
                for k, v in self.opt.state[self.params[0]].items()}

    def set_lr(self, lr):
        self.opt.param_groups[0]["lr"] = lr

    def roundtrip(self):
        "minima: save, and load into a fresh LBFGS over fresh copies of the parameters."
        sd = self.opt.state_dict()
        self.params = [Param(p.data.copy()) for p in self.params]
        self.opt = LBFGS(self.params, **self.kwargs)
        self.opt.load_state_dict(sd)


def spread(a, b):
    "The largest difference between two runs' values (None where they differ in shape: histories apart)."
    if a is None or b is None or np.shape(a) != np.shape(b): return None
    return float(np.abs(np.asarray(a) - np.asarray(b)).max(initial=0.0))


def assert_same_state(mine, ref, mine_near, ref_near, when):
    """Every state entry within STATE_TOL plus 1000 times the larger spread of the two sides from their twins, where
    both twins keep a history of the same length."""
    assert set(mine) == set(ref), f"state keys {when}: {sorted(mine)} vs torch's {sorted(ref)}"
    for key, values in ref.items():
        if not len(values) == len(ref_near.get(key, ())) == len(mine_near.get(key, ())): continue
        assert len(mine[key]) == len(values), f"state[{key!r}] {when}: {len(mine[key])} entries, torch {len(values)}"
        for i, (m, r) in enumerate(zip(mine[key], values)):
            assert (m is None) == (r is None), f"state[{key!r}][{i}] {when}"
            if r is None: continue
            if key == "al":   # the two-loop recursion's scratch, written before it is read at every iteration:
                assert m.shape == r.shape; continue   # its dot products cancel, and they never reach the result
            spreads = spread(r, ref_near[key][i]), spread(m, mine_near[key][i])
            if None in spreads: continue
            atol = STATE_TOL["atol"] + SENSITIVITY * max(spreads)
            np.testing.assert_allclose(m, r, rtol=STATE_TOL["rtol"], atol=atol,
                                       err_msg=f"state[{key!r}][{i}] {when} (spreads from the twins {spreads})")


def one_ulp_away(arrays):
    return [np.asarray(np.nextafter(a, np.inf)) for a in arrays]   # a 0-d array stays an array


@examples(100)
@given(options(), st.lists(st.tuples(shapes, coefficients), min_size=1, max_size=3), run_events,
       st.integers(0, 2**32 - 1))
def test_lbfgs_matches_torch(kwargs, params, events, seed):
    torch = require_torch()
    rng = np.random.default_rng(seed)
    start = [np.asarray(rng.standard_normal(shape) * 2) for shape, _ in params]
    f = objective([c for _, c in params])
    note(f"LBFGS({kwargs}); shapes and coefficients {params}; events {events}; start {start}")
    runs = [Run(lib, x, kwargs, f, torch) for x in (start, one_ulp_away(start)) for lib in ("minima", "torch")]
    mine, ref, mine_near, ref_near = runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps_compared = 0
        for n, ev in enumerate(events):
            if ev[0] == "lr":
                for run in runs: run.set_lr(ev[1])
                continue
            if ev[0] == "roundtrip":
                mine.roundtrip(); mine_near.roundtrip()
                continue
            losses = [run.step() for run in runs]
            if any(run.at_floor() for run in runs):
                note(f"event {n}: the rounding floor; compared up to here")
                event("steps compared before the rounding floor", steps_compared)
                break
            steps_compared += 1
            apart = max(max(spread(a, b) for a, b in zip(x.arrays(), y.arrays()))
                        for x, y in ((ref, ref_near), (mine, mine_near)))
            for i, (m, r) in enumerate(zip(mine.arrays(), ref.arrays())):
                scale = max(1.0, float(np.abs(r).max(initial=0.0)))
                np.testing.assert_allclose(m, r, rtol=0, atol=RTOL * scale + SENSITIVITY * apart,
                                           err_msg=f"param {i} after event {n} (spread from the twins {apart:.2g})")
            loss_apart = max(abs(losses[1] - losses[3]), abs(losses[0] - losses[2]))
            np.testing.assert_allclose(losses[0], losses[1], rtol=RTOL, atol=RTOL + SENSITIVITY * loss_apart,
                                       err_msg=f"the first closure value, returned by step {n}")
            if ref.counters() == ref_near.counters() and mine.counters() == mine_near.counters():
                assert mine.counters() == ref.counters(), f"(func_evals, n_iter) after event {n}"
            assert_same_state(mine.state(), ref.state(), mine_near.state(), ref_near.state(), f"after event {n}")
        else: event("steps compared (no floor)", steps_compared)
