"""Property-based differential tests of LBFGS against torch.optim.LBFGS: random options (every option torch has),
random separable objectives, parameter lists of random shapes, runs of steps, learning-rate changes and
`state_dict` round trips. float64, as tests/test_lbfgs.py.

Both optimizers get the same closure values (loss and gradient computed once in NumPy from the current
parameters), so only the optimizers' arithmetic differs. How close two implementations of L-BFGS can be is set by
torch itself: a third run, torch's from a start one ulp away, measures how far rounding alone moves the result (a
fixed step of lr = 1 can be chaotic, see tests/test_lbfgs.py). minima must stay within 1e-10 relative plus 1000
times that spread; the counters (`func_evals`, `n_iter`) must be equal wherever torch's own two runs agree on them.
A run is compared until its gradient reaches the rounding floor (FLOOR below).
"""
import warnings
import numpy as np
from hypothesis import event, given, note, strategies as st

import hypothesis_profiles  # noqa: F401  (registers and loads the profiles)
from hypothesis_profiles import examples
import strategies as S
from conftest import require_torch
from parity import Param
from minima.optim.lbfgs import LBFGS

RTOL = 1e-10
SENSITIVITY = 1e3   # minima's roundings differ at every iteration, the perturbed run's only at the start

# Exact coincidences with the strong Wolfe bounds are avoided (rounding alone decides them, for torch too): on a
# quadratic with exact curvature a step scales x by 1 - t, and the line search tries t = lr * 10 ** k, so lr 0.1
# and 0.01 (which hypothesis favours) give 1 - t = 0.9, the curvature bound c2, exactly.
options = st.fixed_dictionaries(dict(
    lr=st.one_of(st.just(1.0), st.floats(0.01, 1.5).filter(lambda lr: lr not in (0.01, 0.1))),
    max_iter=st.integers(1, 12),
    max_eval=st.one_of(st.none(), st.integers(1, 30)),
    tolerance_grad=st.sampled_from([1e-7, 1e-5, 1e-3, 0.0]),
    tolerance_change=st.sampled_from([1e-9, 1e-6, 0.0]),
    history_size=st.integers(1, 12),
    line_search_fn=st.sampled_from([None, "strong_wolfe"])))

# f(x) = sum of a x^2 / 2 + b x + c x^4 / 4 per entry: smooth and convex, not a quadratic when c > 0 (so L-BFGS's
# curvature pairs matter). Coefficients per parameter; a = 10 ** u, u in (-1, 1), rather than a float of
# [0.1, 10], which hypothesis would often draw as 0.1 or 1.9: with a first step t = 1 they make 1 - t a = +-0.9.
coefficients = st.tuples(st.floats(-1.0, 1.0, exclude_min=True, exclude_max=True).map(lambda u: 10.0 ** u),
                         st.floats(-3.0, 3.0),
                         st.one_of(st.just(0.0), st.floats(0.0, 2.0)))
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)
run_events = st.lists(st.one_of(st.just(("step",)), st.just(("step",)), st.just(("roundtrip",)),
                                st.tuples(st.just("lr"), st.floats(0.01, 1.0))), max_size=5).map(
    lambda evs: [("step",)] + evs)   # a first step, so that every example compares something


def objective(coeffs):
    "f, which returns the loss, the gradients, and how far the gradient is above its rounding (see FLOOR)."
    def f(xs):
        loss, grads, terms = 0.0, [], 0.0
        for (a, b, c), x in zip(coeffs, xs):
            loss += float(np.sum(a * x * x / 2 + b * x + c * x ** 4 / 4))
            grads.append(np.asarray(a * x + b + c * x ** 3))   # a 0-d array stays an array
            terms = max(terms, float(np.max(np.abs(a * x) + abs(b) + np.abs(c * x ** 3), initial=0.0)))
        size = max(float(np.max(np.abs(g), initial=0.0)) for g in grads)
        return loss, grads, size / max(terms, 1e-300)
    return f


# A gradient below 1e-8 of its terms is mostly rounding: at that floor (a quadratic is minimized exactly in a few
# iterations), L-BFGS's curvature pairs are differences of noise and each implementation's noise is its own, so
# from then on two correct implementations (and torch with another summation order) go different ways. The
# comparison stops at the first step that reaches it; tests/test_lbfgs.py holds fixed runs to 1e-10 there.
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
        loss, grads, above_rounding = self.f([a.copy() for a in self.arrays()])
        self.lowest = min(self.lowest, above_rounding)
        for p, g in zip(self.params, grads): p.grad = g if self.lib == "minima" else self.torch.from_numpy(g)
        return loss if self.lib == "minima" else self.torch.tensor(loss, dtype=self.torch.float64)

    def step(self):
        self.lowest = np.inf
        return float(self.opt.step(self.closure))

    def at_floor(self): return self.lowest < FLOOR

    def counters(self):
        state = self.opt.state[self.params[0]]
        return state.get("func_evals"), state.get("n_iter")

    def set_lr(self, lr):
        self.opt.param_groups[0]["lr"] = lr

    def roundtrip(self):
        "minima: save, and load into a fresh LBFGS over fresh copies of the parameters."
        sd = self.opt.state_dict()
        self.params = [Param(p.data.copy()) for p in self.params]
        self.opt = LBFGS(self.params, **self.kwargs)
        self.opt.load_state_dict(sd)


def one_ulp_away(arrays):
    return [np.nextafter(a, np.inf) for a in arrays]


@examples(100)
@given(options, st.lists(st.tuples(shapes, coefficients), min_size=1, max_size=3), run_events,
       st.integers(0, 2**32 - 1))
def test_lbfgs_matches_torch(kwargs, params, events, seed):
    torch = require_torch()
    rng = np.random.default_rng(seed)
    start = [np.asarray(rng.standard_normal(shape) * 2) for shape, _ in params]
    f = objective([c for _, c in params])
    note(f"LBFGS({kwargs}); shapes and coefficients {params}; events {events}; start {start}")
    mine, ref, near = (Run("minima", start, kwargs, f, torch), Run("torch", start, kwargs, f, torch),
                       Run("torch", one_ulp_away(start), kwargs, f, torch))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps_compared = 0
        for n, ev in enumerate(events):
            if ev[0] == "lr":
                for run in (mine, ref, near): run.set_lr(ev[1])
                continue
            if ev[0] == "roundtrip":
                mine.roundtrip()
                continue
            losses = [run.step() for run in (mine, ref, near)]
            if mine.at_floor() or ref.at_floor():
                note(f"event {n}: the rounding floor; compared up to here")
                event("steps compared before the rounding floor", steps_compared)
                break
            steps_compared += 1
            spread = max(np.abs(r - q).max(initial=0.0) for r, q in zip(ref.arrays(), near.arrays()))
            for i, (m, r) in enumerate(zip(mine.arrays(), ref.arrays())):
                scale = max(1.0, float(np.abs(r).max(initial=0.0)))
                np.testing.assert_allclose(m, r, rtol=0, atol=RTOL * scale + SENSITIVITY * spread,
                                           err_msg=f"param {i} after event {n} (torch's own spread {spread:.2g})")
            np.testing.assert_allclose(losses[0], losses[1], rtol=RTOL, atol=RTOL + SENSITIVITY * abs(losses[1] - losses[2]),
                                       err_msg=f"the first closure value, returned by step {n}")
            if ref.counters() == near.counters():
                assert mine.counters() == ref.counters(), f"(func_evals, n_iter) after event {n}"
        else: event("steps compared (no floor)", steps_compared)
