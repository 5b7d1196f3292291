"""Property-based differential tests of the learning-rate schedulers: every scheduler of
`minima.optim.lr_scheduler` against `torch.optim.lr_scheduler`, random arguments, random interleavings of
optimizer.step / scheduler.step / state_dict round trips / get_last_lr; lrs (and momenta or betas) compared
after every event, errors compared by type and message."""
import math, warnings
import numpy as np
from hypothesis import given, note, strategies as st

import hypothesis_profiles  # noqa: F401  (registers and loads the profiles)
from hypothesis_profiles import examples
from conftest import require_torch
from parity import Param
import minima.optim as mo
import minima.optim.lr_scheduler as M

RTOL = 1e-12

# Functions of the epoch for LambdaLR and MultiplicativeLR (the same objects on both sides).
LAMBDAS = [lambda e: 0.95 ** e, lambda e: 1 / (1 + 0.1 * e), lambda e: (e % 3 + 1) / 3, lambda e: 1.0]
MULTIPLIERS = [lambda e: 0.9, lambda e: 1.0 if e % 2 else 0.5, lambda e: 1.05]

floats01 = st.floats(0.0, 1.0)
gammas = st.one_of(st.sampled_from([0.1, 0.5, 0.9, 1.0]), st.floats(0.01, 2.0))
iters = st.integers(0, 8)

SIMPLE = {   # name -> strategy of keyword arguments (plain data: the scheduler is rebuilt from it)
    "StepLR": st.fixed_dictionaries(dict(step_size=st.integers(1, 5), gamma=gammas)),
    "MultiStepLR": st.fixed_dictionaries(dict(milestones=st.lists(st.integers(0, 12), max_size=4).map(sorted),
                                              gamma=gammas)),
    "ConstantLR": st.fixed_dictionaries(dict(factor=floats01, total_iters=iters)),
    "LinearLR": st.fixed_dictionaries(dict(start_factor=st.floats(0.0, 1.0, exclude_min=True),
                                           end_factor=floats01, total_iters=iters)),
    "ExponentialLR": st.fixed_dictionaries(dict(gamma=gammas)),
    "PolynomialLR": st.fixed_dictionaries(dict(total_iters=iters, power=st.floats(0.0, 3.0))),
    "CosineAnnealingLR": st.fixed_dictionaries(dict(T_max=st.integers(1, 10),
                                                    eta_min=st.sampled_from([0.0, 1e-4, 0.01]))),
    "LambdaLR": st.fixed_dictionaries(dict(lr_lambda=st.integers(0, len(LAMBDAS) - 1))),
    "MultiplicativeLR": st.fixed_dictionaries(dict(lr_lambda=st.integers(0, len(MULTIPLIERS) - 1))),
}

def cyclic_args(n_groups):
    lrs = st.lists(st.floats(1e-4, 0.1), min_size=n_groups, max_size=n_groups)
    return st.fixed_dictionaries(dict(
        base_lr=st.one_of(st.floats(1e-4, 0.1), lrs), max_lr=st.one_of(st.floats(1e-4, 1.0), lrs),
        step_size_up=st.integers(1, 5), step_size_down=st.one_of(st.none(), st.integers(1, 5)),
        mode=st.sampled_from(["triangular", "triangular2", "exp_range"]), gamma=st.floats(0.5, 1.0),
        scale_mode=st.sampled_from(["cycle", "iterations"]), cycle_momentum=st.booleans(),
        base_momentum=st.floats(0.5, 0.85), max_momentum=st.floats(0.85, 0.99)))

ONE_CYCLE = st.fixed_dictionaries(dict(
    max_lr=st.floats(1e-3, 1.0), total_steps=st.integers(2, 20), pct_start=st.floats(0.05, 0.95),
    anneal_strategy=st.sampled_from(["cos", "linear"]), cycle_momentum=st.booleans(),
    base_momentum=st.floats(0.5, 0.85), max_momentum=st.floats(0.85, 0.99),
    div_factor=st.floats(1.0, 100.0), final_div_factor=st.floats(1.0, 1e4), three_phase=st.booleans()))

PLATEAU = st.fixed_dictionaries(dict(
    mode=st.sampled_from(["min", "max"]), factor=st.floats(0.05, 0.95), patience=st.integers(0, 3),
    threshold=st.sampled_from([0.0, 1e-4, 0.1]), threshold_mode=st.sampled_from(["rel", "abs"]),
    cooldown=st.integers(0, 2), min_lr=st.sampled_from([0.0, 1e-3]), eps=st.sampled_from([1e-8, 1e-3])))

WARM = st.fixed_dictionaries(dict(T_0=st.integers(1, 5), T_mult=st.integers(1, 3),
                                  eta_min=st.sampled_from([0.0, 1e-4])))

simple_specs = st.sampled_from(sorted(SIMPLE)).flatmap(lambda n: SIMPLE[n].map(lambda kw: (n, kw)))


@st.composite
def scheduler_specs(draw, n_groups):
    kind = draw(st.sampled_from(sorted(SIMPLE) + ["CyclicLR", "OneCycleLR", "ReduceLROnPlateau",
                                                   "CosineAnnealingWarmRestarts", "SequentialLR", "ChainedScheduler"]))
    if kind in SIMPLE: return kind, draw(SIMPLE[kind])
    if kind == "CyclicLR": return kind, draw(cyclic_args(n_groups))
    if kind == "OneCycleLR": return kind, draw(ONE_CYCLE)
    if kind == "ReduceLROnPlateau": return kind, draw(PLATEAU)
    if kind == "CosineAnnealingWarmRestarts": return kind, draw(WARM)
    parts = draw(st.lists(simple_specs, min_size=1, max_size=3))
    if kind == "ChainedScheduler": return kind, {"schedulers": parts}
    milestones = sorted(draw(st.lists(st.integers(1, 10), min_size=len(parts) - 1, max_size=len(parts) - 1,
                                      unique=True)))
    return kind, {"schedulers": parts, "milestones": milestones}


def build(S, opt, spec):
    kind, kw = spec
    if kind in ("SequentialLR", "ChainedScheduler"):
        parts = [build(S, opt, p) for p in kw["schedulers"]]
        if kind == "ChainedScheduler": return S.ChainedScheduler(parts, optimizer=opt)
        return S.SequentialLR(opt, parts, milestones=kw["milestones"])
    if kind == "LambdaLR": return S.LambdaLR(opt, LAMBDAS[kw["lr_lambda"]])
    if kind == "MultiplicativeLR": return S.MultiplicativeLR(opt, MULTIPLIERS[kw["lr_lambda"]])
    return getattr(S, kind)(opt, **kw)


class Side:
    "One library's optimizer and scheduler."
    def __init__(self, lib, opt_spec, spec):
        self.torch = require_torch()
        self.lib, self.opt_spec, self.spec = lib, opt_spec, spec
        self.S = M if lib == "minima" else self.torch.optim.lr_scheduler
        self.opt = self.new_optimizer()
        self.sched = build(self.S, self.opt, spec)

    def new_optimizer(self):
        name, groups = self.opt_spec
        if self.lib == "minima":
            params = [[Param(np.zeros(2))] for _ in groups]
            return getattr(mo, name)([{"params": p, **g} for p, g in zip(params, groups)])
        params = [[self.torch.zeros(2, dtype=self.torch.float64, requires_grad=True)] for _ in groups]
        return getattr(self.torch.optim, name)([{"params": p, **g} for p, g in zip(params, groups)])

    def apply(self, event):
        kind = event[0]
        if kind == "opt_step":
            for g in self.opt.param_groups:
                for p in g["params"]:
                    p.grad = np.ones(2) if self.lib == "minima" else self.torch.ones(2, dtype=self.torch.float64)
            self.opt.step()
        elif kind == "sched_step":
            if self.spec[0] == "ReduceLROnPlateau": self.sched.step(event[1])
            elif self.spec[0] == "CosineAnnealingWarmRestarts" and event[2] is not None: self.sched.step(event[2])
            else: self.sched.step()
        elif kind == "roundtrip":   # PyTorch's recipe: fresh optimizer, load its state, fresh scheduler, load
            osd, ssd = self.opt.state_dict(), self.sched.state_dict()
            self.opt = self.new_optimizer(); self.opt.load_state_dict(osd)
            self.sched = build(self.S, self.opt, self.spec); self.sched.load_state_dict(ssd)
        elif kind == "get_last_lr":
            return list(self.sched.get_last_lr())

    def observed(self):
        out = []
        for g in self.opt.param_groups:
            out.append(float(g["lr"]))
            if "momentum" in g: out.append(float(g["momentum"]))
            if "betas" in g: out.append(float(g["betas"][0]))
        return out + [float(getattr(self.sched, "last_epoch", 0))]


def outcome(side, event):
    try: return ("ok", side.apply(event))
    except Exception as e: return ("error", type(e).__name__, str(e))


def same(a, b):
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) or isinstance(b, float):
        a, b = float(a), float(b)
        return a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-300)
    return a == b


@st.composite
def scheduler_runs(draw):
    opt_name = draw(st.sampled_from(["SGD", "Adam"]))
    n = draw(st.integers(1, 3))
    if opt_name == "SGD":
        groups = [dict(lr=draw(st.floats(1e-3, 1.0)), momentum=draw(st.floats(0.0, 0.99))) for _ in range(n)]
    else:
        groups = [dict(lr=draw(st.floats(1e-4, 0.1)), betas=(draw(st.floats(0.5, 0.99)), 0.999)) for _ in range(n)]
    spec = draw(scheduler_specs(n))
    ev = st.one_of(st.just(("opt_step",)),
                   st.tuples(st.just("sched_step"), st.floats(-10.0, 10.0),
                             st.one_of(st.none(), st.none(), st.floats(0.0, 20.0), st.integers(0, 20))),
                   st.just(("roundtrip",)), st.just(("get_last_lr",)))
    return (opt_name, groups), spec, draw(st.lists(ev, min_size=1, max_size=30))


@examples(800)
@given(scheduler_runs())
def test_scheduler_matches_torch(run):
    opt_spec, spec, events = run
    note(f"{opt_spec} {spec} {events}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try: mine = ("ok", Side("minima", opt_spec, spec))
        except Exception as e: mine = ("error", type(e).__name__, str(e))
        try: ref = ("ok", Side("torch", opt_spec, spec))
        except Exception as e: ref = ("error", type(e).__name__, str(e))
        assert mine[0] == ref[0] and (mine[0] == "ok" or mine == ref), f"construction: {mine} vs torch's {ref}"
        if mine[0] == "error": return
        m, t = mine[1], ref[1]
        assert same(m.observed(), t.observed()), f"after construction: {m.observed()} vs {t.observed()}"
        for i, event in enumerate(events):
            a, b = outcome(m, event), outcome(t, event)
            assert same(a, b), f"event {i} {event}: {a} vs torch's {b}"
            assert same(m.observed(), t.observed()), f"after event {i} {event}: {m.observed()} vs {t.observed()}"
            assert same(list(m.sched.get_last_lr()), list(t.sched.get_last_lr())), f"get_last_lr after event {i}"
