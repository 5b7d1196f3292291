"""Learning-rate schedulers against PyTorch's: the same lr (and momentum / beta1) after every step, for every
scheduler and option, across save/load, composition, manual lr changes, warnings and errors."""
import math, warnings
import numpy as np
import pytest
from parity import Param
from conftest import require_torch
import minima.optim.lr_scheduler as M
from minima.optim.sgd import SGD
from minima.optim.adam import Adam
from minima.optim.adagrad import Adagrad

RTOL = 1e-12
STEPS = 300
GROUPS = [dict(lr=0.1, momentum=0.9), dict(lr=0.03, momentum=0.8)]  # two groups, different lrs and momenta
BETA_GROUPS = [dict(lr=1e-3, betas=(0.9, 0.999)), dict(lr=3e-4, betas=(0.85, 0.99))]


# --- the two optimizers ------------------------------------------------------------------------------------
def minima_sgd(groups=GROUPS):
    return SGD([{"params": [Param(np.zeros(2))], **g} for g in groups], lr=0.1, momentum=0.9)

def minima_adam(groups=BETA_GROUPS):
    return Adam([{"params": [Param(np.zeros(2))], **g} for g in groups], lr=1e-3)

def torch_sgd(torch, groups=GROUPS):
    return torch.optim.SGD([{"params": [torch.zeros(2, dtype=torch.float64, requires_grad=True)], **g} for g in groups],
                           lr=0.1, momentum=0.9)

def torch_adam(torch, groups=BETA_GROUPS):
    return torch.optim.Adam([{"params": [torch.zeros(2, dtype=torch.float64, requires_grad=True)], **g} for g in groups],
                            lr=1e-3)


def build(lib, torch, kind="sgd"):
    "An optimizer of `lib` ('minima' or 'torch') with two groups."
    if lib == "minima": return minima_sgd() if kind == "sgd" else minima_adam()
    return torch_sgd(torch) if kind == "sgd" else torch_adam(torch)


def schedulers_module(lib, torch): return M if lib == "minima" else torch.optim.lr_scheduler


# --- configurations: (name, optimizer kind, factory(S, optimizer) -> scheduler) ---------------------------------
class Halving:
    "A callable object: its attributes are saved in the scheduler's state_dict (plain functions are not)."
    def __init__(self, every): self.every, self.calls = every, 0
    def __call__(self, epoch):
        self.calls += 1
        return 0.5 ** (epoch // self.every)

class MultiplyEvery:
    def __init__(self, every, by): self.every, self.by = every, by
    def __call__(self, epoch): return self.by if epoch % self.every == 0 else 1.0

CONFIGS = [
    ("LambdaLR-exp", "sgd", lambda S, o: S.LambdaLR(o, lambda e: 0.98 ** e)),
    ("LambdaLR-per-group", "sgd", lambda S, o: S.LambdaLR(o, [lambda e: 1 / (1 + 0.05 * e), lambda e: 1.0 if e < 100 else 0.3])),
    ("LambdaLR-object", "sgd", lambda S, o: S.LambdaLR(o, Halving(40))),
    ("MultiplicativeLR", "sgd", lambda S, o: S.MultiplicativeLR(o, lambda e: 0.99)),
    ("MultiplicativeLR-per-group", "sgd", lambda S, o: S.MultiplicativeLR(o, [MultiplyEvery(7, 0.8), lambda e: 1.001])),
    ("StepLR", "sgd", lambda S, o: S.StepLR(o, step_size=30)),
    ("StepLR-gamma", "sgd", lambda S, o: S.StepLR(o, step_size=7, gamma=0.9)),
    ("MultiStepLR", "sgd", lambda S, o: S.MultiStepLR(o, milestones=[30, 80, 150])),
    ("MultiStepLR-repeated", "sgd", lambda S, o: S.MultiStepLR(o, milestones=[5, 80, 80, 299], gamma=0.5)),
    ("ConstantLR", "sgd", lambda S, o: S.ConstantLR(o)),
    ("ConstantLR-long", "sgd", lambda S, o: S.ConstantLR(o, factor=0.25, total_iters=120)),
    ("LinearLR", "sgd", lambda S, o: S.LinearLR(o)),
    ("LinearLR-warmup", "sgd", lambda S, o: S.LinearLR(o, start_factor=0.01, total_iters=40)),
    ("LinearLR-decay", "sgd", lambda S, o: S.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=250)),
    ("LinearLR-to-zero", "sgd", lambda S, o: S.LinearLR(o, start_factor=0.5, end_factor=0.0, total_iters=100)),
    ("ExponentialLR", "sgd", lambda S, o: S.ExponentialLR(o, gamma=0.99)),
    ("ExponentialLR-fast", "sgd", lambda S, o: S.ExponentialLR(o, gamma=0.9)),
    ("PolynomialLR", "sgd", lambda S, o: S.PolynomialLR(o)),
    ("PolynomialLR-square", "sgd", lambda S, o: S.PolynomialLR(o, total_iters=200, power=2.0)),
    ("PolynomialLR-sqrt-long", "sgd", lambda S, o: S.PolynomialLR(o, total_iters=400, power=0.5)),
    ("CosineAnnealingLR", "sgd", lambda S, o: S.CosineAnnealingLR(o, T_max=300)),
    ("CosineAnnealingLR-eta_min", "sgd", lambda S, o: S.CosineAnnealingLR(o, T_max=100, eta_min=1e-3)),
    ("CosineAnnealingLR-short", "sgd", lambda S, o: S.CosineAnnealingLR(o, T_max=7, eta_min=0.01)),
    ("CosineAnnealingWarmRestarts", "sgd", lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=10)),
    ("CosineAnnealingWarmRestarts-mult", "sgd", lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2)),
    ("CosineAnnealingWarmRestarts-eta", "sgd", lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=7, T_mult=3, eta_min=1e-3)),
    ("CyclicLR", "sgd", lambda S, o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=20)),
    ("CyclicLR-triangular2", "sgd", lambda S, o: S.CyclicLR(o, 0.001, 0.1, step_size_up=15, step_size_down=25, mode="triangular2")),
    ("CyclicLR-exp_range", "sgd", lambda S, o: S.CyclicLR(o, 0.001, 0.1, step_size_up=12, mode="exp_range", gamma=0.995)),
    ("CyclicLR-per-group", "sgd", lambda S, o: S.CyclicLR(o, [0.01, 0.002], [0.1, 0.05], step_size_up=9,
                                                          base_momentum=[0.8, 0.7], max_momentum=[0.95, 0.9])),
    ("CyclicLR-scale_fn-cycle", "sgd", lambda S, o: S.CyclicLR(o, 0.01, 0.1, step_size_up=10, scale_fn=lambda x: 0.8 ** x)),
    ("CyclicLR-scale_fn-iterations", "sgd", lambda S, o: S.CyclicLR(o, 0.01, 0.1, step_size_up=10,
                                                                    scale_fn=lambda x: 1 / (1 + 0.01 * x), scale_mode="iterations")),
    ("CyclicLR-no-momentum", "sgd", lambda S, o: S.CyclicLR(o, 0.01, 0.1, step_size_up=20, cycle_momentum=False)),
    ("CyclicLR-betas", "adam", lambda S, o: S.CyclicLR(o, 1e-4, 1e-3, step_size_up=25, base_momentum=0.85, max_momentum=0.95)),
    ("OneCycleLR", "sgd", lambda S, o: S.OneCycleLR(o, max_lr=0.1, total_steps=STEPS)),
    ("OneCycleLR-linear-epochs", "sgd", lambda S, o: S.OneCycleLR(o, max_lr=[0.1, 0.05], epochs=10, steps_per_epoch=30,
                                                                  anneal_strategy="linear", pct_start=0.25)),
    ("OneCycleLR-three-phase", "sgd", lambda S, o: S.OneCycleLR(o, max_lr=0.2, total_steps=STEPS, three_phase=True,
                                                                div_factor=10.0, final_div_factor=100.0)),
    ("OneCycleLR-no-momentum", "sgd", lambda S, o: S.OneCycleLR(o, max_lr=0.1, total_steps=STEPS + 50, cycle_momentum=False)),
    ("OneCycleLR-momentum-per-group", "sgd", lambda S, o: S.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, pct_start=0.4,
                                                                       base_momentum=[0.8, 0.85], max_momentum=[0.9, 0.95])),
    ("OneCycleLR-betas", "adam", lambda S, o: S.OneCycleLR(o, max_lr=1e-2, total_steps=STEPS, three_phase=True)),
    ("SequentialLR-warmup-cosine", "sgd", lambda S, o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.01, total_iters=20), S.CosineAnnealingLR(o, T_max=280)], milestones=[20])),
    ("SequentialLR-three", "sgd", lambda S, o: S.SequentialLR(
        o, [S.ConstantLR(o, factor=0.1, total_iters=10), S.ExponentialLR(o, gamma=0.99), S.StepLR(o, 25)], milestones=[10, 100])),
    ("SequentialLR-nested", "sgd", lambda S, o: S.SequentialLR(
        o, [S.ChainedScheduler([S.ExponentialLR(o, gamma=0.995), S.CosineAnnealingLR(o, T_max=50)]),
            S.LinearLR(o, start_factor=0.1, total_iters=10)], milestones=[80])),
    ("ChainedScheduler", "sgd", lambda S, o: S.ChainedScheduler([S.ConstantLR(o, factor=0.1, total_iters=20),
                                                                 S.ExponentialLR(o, gamma=0.99)])),
    ("ChainedScheduler-step-cosine", "sgd", lambda S, o: S.ChainedScheduler([S.StepLR(o, 40, 0.5),
                                                                             S.CosineAnnealingLR(o, T_max=60)], optimizer=o)),
]
IDS = [c[0] for c in CONFIGS]


# --- running side by side ----------------------------------------------------------------------------------
def momentum_values(optimizer):
    return [g["betas"][0] if "betas" in g else g.get("momentum") for g in optimizer.param_groups]

def assert_same_values(mine, ref, what):
    assert len(mine) == len(ref), what
    for m, r in zip(mine, ref):
        if r is None: assert m is None, what; continue
        assert isinstance(m, float) or isinstance(m, int), f"{what}: {type(m)}"
        assert m == pytest.approx(float(r), rel=RTOL, abs=1e-300), f"{what}: {m} != torch's {float(r)}"

def assert_same_lrs(ms, mo, ts, to, what):
    assert_same_values(ms.get_last_lr(), ts.get_last_lr(), f"get_last_lr() {what}")
    assert_same_values([g["lr"] for g in mo.param_groups], [g["lr"] for g in to.param_groups], f"group lr {what}")
    assert_same_values(momentum_values(mo), momentum_values(to), f"momentum {what}")

class Pair:
    "A minima scheduler and a torch scheduler built the same way over twin optimizers."
    def __init__(self, torch, kind, factory):
        self.torch, self.kind, self.factory = torch, kind, factory
        self.mo, self.to = build("minima", torch, kind), build("torch", torch, kind)
        self.n = 0
        self.ms, self.ts = self.same_warnings(lambda: factory(M, self.mo), lambda: factory(torch.optim.lr_scheduler, self.to))
        self.check("after construction")

    def check(self, what=""): assert_same_lrs(self.ms, self.mo, self.ts, self.to, f"{what} (step {self.n})")

    def same_warnings(self, mine, ref):
        "Run both; they must warn alike (e.g. a scheduler built inside SequentialLR steps before the optimizer)."
        with warnings.catch_warnings(record=True) as wm:
            warnings.simplefilter("always"); m = mine()
        with warnings.catch_warnings(record=True) as wt:
            warnings.simplefilter("always"); t = ref()
        assert messages(wm) == messages(wt), f"step {self.n}"
        return m, t

    def step(self):
        self.mo.step(); self.to.step()
        self.same_warnings(self.ms.step, self.ts.step)
        self.n += 1
        self.check()

    def run(self, steps):
        for _ in range(steps): self.step()


@pytest.mark.parametrize("name,kind,factory", CONFIGS, ids=IDS)
def test_same_sequence_as_torch(torch, name, kind, factory):
    pair = Pair(torch, kind, factory)
    pair.run(STEPS)


def simple_values(state):
    "The numbers and strings of a state_dict (callables and nested scheduler states compared elsewhere)."
    return {k: v for k, v in state.items() if isinstance(v, (int, float, str, bool, type(None)))}

@pytest.mark.parametrize("name,kind,factory", CONFIGS, ids=IDS)
def test_state_dict_has_torchs_layout(torch, name, kind, factory):
    pair = Pair(torch, kind, factory)
    pair.run(37)
    mine, ref = pair.ms.state_dict(), pair.ts.state_dict()
    assert set(mine) == set(ref)
    for k, v in simple_values(ref).items():
        assert mine[k] == pytest.approx(v, rel=RTOL) if isinstance(v, float) else mine[k] == v, k


@pytest.mark.parametrize("name,kind,factory", CONFIGS, ids=IDS)
def test_state_dict_roundtrip_continues_torchs_run(torch, name, kind, factory):
    pair = Pair(torch, kind, factory)
    pair.run(STEPS // 2)
    opt_state, sched_state = pair.mo.state_dict(), pair.ms.state_dict()
    mo = build("minima", torch, kind)
    with warnings.catch_warnings():  # a scheduler built inside SequentialLR steps before the optimizer: it warns
        warnings.simplefilter("ignore")
        ms = factory(M, mo)           # build the scheduler first: it writes its initial lr into the groups...
    mo.load_state_dict(opt_state)  # ...which loading the optimizer's state then overwrites
    ms.load_state_dict(sched_state)
    pair.mo, pair.ms = mo, ms
    pair.run(STEPS - STEPS // 2)


def test_callable_object_state_is_saved_and_loaded():
    o = minima_sgd()
    s = M.LambdaLR(o, Halving(40))
    for _ in range(10): o.step(); s.step()
    state = s.state_dict()
    assert state["lr_lambdas"][0]["calls"] == s.lr_lambdas[0].calls
    fresh = M.LambdaLR(minima_sgd(), Halving(40))
    fresh.load_state_dict(state)
    assert fresh.lr_lambdas[0].calls == s.lr_lambdas[0].calls
    assert M.LambdaLR(minima_sgd(), lambda e: 1.0).state_dict()["lr_lambdas"] == [None, None]


# --- composition and manual changes -------------------------------------------------------------------------
STACKS = [
    ("Step+Exponential", lambda S, o: [S.StepLR(o, 30, 0.5), S.ExponentialLR(o, 0.995)]),
    ("Linear+Cosine", lambda S, o: [S.LinearLR(o, 0.1, total_iters=30), S.CosineAnnealingLR(o, T_max=150)]),
    ("Constant+MultiStep+Polynomial", lambda S, o: [S.ConstantLR(o, 0.5, 50), S.MultiStepLR(o, [60, 200]),
                                                    S.PolynomialLR(o, total_iters=250, power=1.5)]),
]

@pytest.mark.parametrize("name,factory", STACKS, ids=[s[0] for s in STACKS])
def test_stacked_schedulers_compose_as_torchs(torch, name, factory):
    mo, to = build("minima", torch), build("torch", torch)
    ms, ts = factory(M, mo), factory(torch.optim.lr_scheduler, to)
    for n in range(STEPS):
        mo.step(); to.step()
        for a, b in zip(ms, ts):
            a.step(); b.step()
            assert_same_lrs(a, mo, b, to, f"{name} step {n}")


MANUAL = ["StepLR-gamma", "MultiplicativeLR", "LinearLR-decay", "ExponentialLR", "PolynomialLR-square",
          "CosineAnnealingLR-eta_min", "CosineAnnealingWarmRestarts-mult", "CyclicLR", "OneCycleLR", "LambdaLR-exp",
          "SequentialLR-warmup-cosine", "ChainedScheduler"]

@pytest.mark.parametrize("name", MANUAL)
def test_manual_lr_change_is_treated_as_torch_does(torch, name):
    _, kind, factory = CONFIGS[IDS.index(name)]
    pair = Pair(torch, kind, factory)
    pair.run(100)
    for o in (pair.mo, pair.to):
        o.param_groups[0]["lr"] *= 0.5
        o.param_groups[1]["lr"] = 0.07
    pair.run(100)


# --- ReduceLROnPlateau ---------------------------------------------------------------------------------------
def metric_sequence(seed, n=STEPS, mode="min"):
    "A noisy loss that falls, stalls on plateaus and falls again (or its negative, for mode='max')."
    rng = np.random.default_rng(seed)
    trend = np.repeat(np.exp(-np.arange(n // 25)), 25)[:n]
    values = trend * (1 + 0.02 * rng.standard_normal(n)) + 0.1
    return (values if mode == "min" else -values).tolist()

PLATEAU = [
    dict(),
    dict(patience=3),
    dict(patience=2, factor=0.5, cooldown=4),
    dict(threshold=0.05, threshold_mode="rel", patience=1),
    dict(threshold=1e-3, threshold_mode="abs", patience=5, cooldown=2),
    dict(mode="max", patience=2),
    dict(mode="max", threshold_mode="abs", threshold=0.01, patience=0),
    dict(patience=0, factor=0.5, min_lr=[0.01, 0.02]),
    dict(patience=1, factor=0.9, min_lr=0.025, eps=1e-3),
]

@pytest.mark.parametrize("kwargs", PLATEAU, ids=[str(k) for k in PLATEAU])
@pytest.mark.parametrize("seed", [0, 1])
def test_reduce_on_plateau_reduces_when_torch_does(torch, kwargs, seed):
    mo, to = build("minima", torch), build("torch", torch)
    ms, ts = M.ReduceLROnPlateau(mo, **kwargs), torch.optim.lr_scheduler.ReduceLROnPlateau(to, **kwargs)
    metrics = metric_sequence(seed, mode=kwargs.get("mode", "min"))
    reductions = 0
    for n, value in enumerate(metrics):
        before = mo.param_groups[0]["lr"]
        mo.step(); to.step()
        ms.step(value); ts.step(value)
        assert_same_lrs(ms, mo, ts, to, f"step {n}")
        assert (ms.num_bad_epochs, ms.cooldown_counter, ms.best) == (ts.num_bad_epochs, ts.cooldown_counter, ts.best)
        reductions += mo.param_groups[0]["lr"] < before
        if n == STEPS // 2:  # save and load mid-run
            mo2 = build("minima", torch); ms2 = M.ReduceLROnPlateau(mo2, **kwargs)
            mo2.load_state_dict(mo.state_dict()); ms2.load_state_dict(ms.state_dict())
            mo, ms = mo2, ms2
    assert reductions > 0, "the metric sequence should trigger at least one reduction"


def test_reduce_on_plateau_accepts_metric_arrays(torch):
    o = minima_sgd()
    s = M.ReduceLROnPlateau(o, patience=0)
    s.step(np.float64(1.0)); s.step(np.array(2.0))
    assert o.param_groups[0]["lr"] == pytest.approx(0.01)


# --- closed forms ------------------------------------------------------------------------------------------
def lr_after(scheduler_factory, steps):
    o = minima_sgd()
    s = scheduler_factory(o)
    for _ in range(steps): o.step(); s.step()
    return [g["lr"] for g in o.param_groups], [g["initial_lr"] for g in o.param_groups]

def test_closed_forms():
    lrs, base = lr_after(lambda o: M.CosineAnnealingLR(o, T_max=50, eta_min=0.001), 25)
    assert lrs == pytest.approx([(b + 0.001) / 2 for b in base], rel=1e-12)
    lrs, base = lr_after(lambda o: M.StepLR(o, step_size=7, gamma=0.3), 21)
    assert lrs == pytest.approx([b * 0.3 ** 3 for b in base], rel=1e-12)
    lrs, base = lr_after(lambda o: M.ExponentialLR(o, gamma=0.97), 40)
    assert lrs == pytest.approx([b * 0.97 ** 40 for b in base], rel=1e-12)
    lrs, _ = lr_after(lambda o: M.OneCycleLR(o, max_lr=0.2, total_steps=100), 99)
    assert lrs == pytest.approx([0.2 / 25 / 1e4] * 2, rel=1e-9)


@pytest.mark.parametrize("name", ["StepLR-gamma", "MultiStepLR-repeated", "ConstantLR-long", "LinearLR-warmup",
                                  "ExponentialLR", "PolynomialLR-square", "CosineAnnealingLR-eta_min",
                                  "CosineAnnealingWarmRestarts-mult", "LambdaLR-exp"])
def test_step_with_epoch_uses_the_closed_form_as_torch(torch, name):
    _, kind, factory = CONFIGS[IDS.index(name)]
    pair = Pair(torch, kind, factory)
    for epoch in [3, 10, 57, 58, 120, 7, 250]:
        pair.mo.step(); pair.to.step()
        # the same warnings as torch: the deprecation, except from CosineAnnealingWarmRestarts (epochs are its API)
        assert warnings_of(lambda: pair.ms.step(epoch)) == warnings_of(lambda: pair.ts.step(epoch))
        pair.check(f"epoch={epoch}")


def test_step_with_epoch_warns():
    o = minima_sgd(); s = M.StepLR(o, 5)
    o.step()
    with pytest.warns(UserWarning, match="The epoch parameter in `scheduler.step\\(\\)` was not necessary"): s.step(3)


def test_warm_restarts_accept_fractional_epochs(torch):
    pair = Pair(torch, "sgd", lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2))
    for i in range(60):
        pair.mo.step(); pair.to.step()
        pair.ms.step(i / 4); pair.ts.step(i / 4)
        pair.check(f"epoch={i / 4}")


# --- resuming with last_epoch ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["StepLR-gamma", "ExponentialLR", "CosineAnnealingLR-eta_min", "PolynomialLR-square",
                                  "LinearLR-decay"])
def test_resume_with_last_epoch_as_torch(torch, name):
    import torch.optim.lr_scheduler as T
    _, kind, factory = CONFIGS[IDS.index(name)]
    pair = Pair(torch, kind, factory)
    pair.run(50)
    cls, kwargs = type(pair.ms), {k: getattr(pair.ms, k) for k in ("step_size", "gamma", "T_max", "eta_min", "total_iters",
                                                                     "power", "start_factor", "end_factor") if hasattr(pair.ms, k)}
    pair.ms = cls(pair.mo, last_epoch=50, **kwargs)
    pair.ts = getattr(T, cls.__name__)(pair.to, last_epoch=50, **kwargs)
    pair.check("rebuilt with last_epoch")
    pair.run(50)


# --- warnings --------------------------------------------------------------------------------------------------
def messages(record): return [str(w.message) for w in record]

def warnings_of(fn):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fn()
    return messages(record)

def test_stepping_the_scheduler_first_warns_as_torch(torch):
    def scenario(lib):
        o = build(lib, torch)
        s = schedulers_module(lib, torch).StepLR(o, 5)
        return warnings_of(lambda: (s.step(), o.step(), s.step()))
    assert scenario("minima") == scenario("torch")
    o = minima_sgd(); s = M.StepLR(o, 5)
    with pytest.warns(UserWarning, match="Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`"): s.step()

def test_right_order_does_not_warn(torch):
    o = minima_sgd(); s = M.ExponentialLR(o, 0.9)
    assert warnings_of(lambda: [(o.step(), s.step()) for _ in range(3)]) == []

def test_overridden_optimizer_step_warns_as_torch(torch):
    def scenario(lib):
        o = build(lib, torch)
        s = schedulers_module(lib, torch).StepLR(o, 5)
        o.step = lambda closure=None: None
        return warnings_of(lambda: (o.step(), s.step()))
    assert scenario("minima") == scenario("torch")
    assert "overridden" in scenario("minima")[0]

def test_optimizer_step_is_wrapped_once_and_still_works():
    o = minima_sgd()
    M.StepLR(o, 5); M.ExponentialLR(o, 0.9)
    assert o.step.__wrapped__ is type(o).step
    assert not getattr(o, "_opt_called", False)
    assert o.step(lambda: 3.0) == 3.0 and o._opt_called

def test_get_lr_outside_step_warns_as_torch(torch):
    def scenario(lib):
        o = build(lib, torch)
        s = schedulers_module(lib, torch).CosineAnnealingLR(o, 10)
        return warnings_of(s.get_lr)
    assert scenario("minima") == scenario("torch") != []

def test_plateau_epoch_argument_warns_as_torch(torch):
    def scenario(lib):
        o = build(lib, torch)
        s = schedulers_module(lib, torch).ReduceLROnPlateau(o)
        return warnings_of(lambda: s.step(1.0, epoch=3))
    assert scenario("minima") == scenario("torch") != []


# --- errors: the same type and message as torch --------------------------------------------------------------------
def error_of(fn):
    try: fn()
    except Exception as e: return type(e).__name__, str(e)
    return None

def no_momentum(lib, torch):
    "An optimizer whose groups have neither `momentum` nor `betas`."
    if lib == "minima": return Adagrad([Param(np.zeros(2))], lr=0.1)
    return torch.optim.Adagrad([torch.zeros(2, requires_grad=True)], lr=0.1)

def stepped_past_total(S, o):
    s = S.OneCycleLR(o, max_lr=0.1, total_steps=10)
    for _ in range(11): o.step(); s.step()

ERRORS = [
    ("OneCycleLR past total_steps", "Tried to step 11 times. The specified number of total steps is 10", stepped_past_total),
    ("SequentialLR milestones", "Sequential Schedulers expects number of schedulers provided to be one more",
     lambda S, o: S.SequentialLR(o, [S.StepLR(o, 3), S.StepLR(o, 4)], milestones=[2, 5])),
    ("SequentialLR empty", "expects at least one scheduler", lambda S, o: S.SequentialLR(o, [], [])),
    ("SequentialLR plateau", "does not support `ReduceLROnPlateau`",
     lambda S, o: S.SequentialLR(o, [S.StepLR(o, 3), S.ReduceLROnPlateau(o)], [5])),
    ("SequentialLR no optimizer", "at index 1 should have `optimizer`", lambda S, o: S.SequentialLR(o, [S.StepLR(o, 3), 3], [5])),
    ("ChainedScheduler empty", "expects at least one scheduler to be chained", lambda S, o: S.ChainedScheduler([])),
    ("ConstantLR factor", "Constant multiplicative factor expected to be between 0 and 1.", lambda S, o: S.ConstantLR(o, factor=1.5)),
    ("LinearLR start", "Starting multiplicative factor expected", lambda S, o: S.LinearLR(o, start_factor=0)),
    ("LinearLR end", "Ending multiplicative factor expected", lambda S, o: S.LinearLR(o, end_factor=1.5)),
    ("LambdaLR list", "Expected 2 lr_lambdas, but got 3", lambda S, o: S.LambdaLR(o, [lambda e: 1] * 3)),
    ("MultiplicativeLR not callable", "lr_lambda should be a function, but got float", lambda S, o: S.MultiplicativeLR(o, 0.9)),
    ("not an optimizer", "list is not an Optimizer", lambda S, o: S.StepLR([], 3)),
    ("plateau not an optimizer", "dict is not an Optimizer", lambda S, o: S.ReduceLROnPlateau({})),
    ("resume without initial_lr", "param 'initial_lr' is not specified in param_groups\\[0\\]",
     lambda S, o: S.StepLR(o, 3, last_epoch=4)),
    ("plateau factor", "Factor should be < 1.0.", lambda S, o: S.ReduceLROnPlateau(o, factor=1.0)),
    ("plateau mode", "mode up is unknown!", lambda S, o: S.ReduceLROnPlateau(o, mode="up")),
    ("plateau threshold_mode", "threshold mode pct is unknown!", lambda S, o: S.ReduceLROnPlateau(o, threshold_mode="pct")),
    ("plateau min_lr", "expected 2 min_lrs, got 3", lambda S, o: S.ReduceLROnPlateau(o, min_lr=[0, 0, 0])),
    ("warm restarts T_0", "Expected positive integer T_0, but got 0", lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=0)),
    ("warm restarts T_0 float", "Expected positive integer T_0, but got 2.5", lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=2.5)),
    ("warm restarts T_mult", "Expected integer T_mult >= 1, but got 0", lambda S, o: S.CosineAnnealingWarmRestarts(o, 5, T_mult=0)),
    ("warm restarts eta_min", "Expected float or int eta_min", lambda S, o: S.CosineAnnealingWarmRestarts(o, 5, eta_min="0")),
    ("warm restarts negative epoch", "Expected non-negative epoch, but got -1",
     lambda S, o: S.CosineAnnealingWarmRestarts(o, 5).step(-1)),
    ("one cycle total_steps", "Expected positive integer total_steps, but got 0", lambda S, o: S.OneCycleLR(o, 0.1, total_steps=0)),
    ("one cycle no length", "You must define either total_steps OR", lambda S, o: S.OneCycleLR(o, 0.1, epochs=3)),
    ("one cycle epochs", "Expected positive integer epochs, but got 0",
     lambda S, o: S.OneCycleLR(o, 0.1, epochs=0, steps_per_epoch=3)),
    ("one cycle steps_per_epoch", "Expected positive integer steps_per_epoch, but got 2.0",
     lambda S, o: S.OneCycleLR(o, 0.1, epochs=2, steps_per_epoch=2.0)),
    ("one cycle pct_start", "Expected float between 0 and 1 pct_start, but got 1",
     lambda S, o: S.OneCycleLR(o, 0.1, total_steps=10, pct_start=1)),
    ("one cycle anneal", "anneal_strategy must be one of 'cos' or 'linear', instead got exp",
     lambda S, o: S.OneCycleLR(o, 0.1, total_steps=10, anneal_strategy="exp")),
    ("one cycle max_lr list", "max_lr must have the same length as optimizer.param_groups. max_lr has 3 values",
     lambda S, o: S.OneCycleLR(o, [0.1] * 3, total_steps=10)),
    ("cyclic mode", "mode is invalid and scale_fn is None", lambda S, o: S.CyclicLR(o, 0.01, 0.1, mode="sine")),
    ("cyclic base_momentum list", "base_momentum must have the same length",
     lambda S, o: S.CyclicLR(o, 0.01, 0.1, base_momentum=[0.8])),
]

@pytest.mark.parametrize("name,match,fn", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_as_torch(torch, name, match, fn):
    mine = error_of(lambda: fn(M, minima_sgd()))
    ref = error_of(lambda: fn(torch.optim.lr_scheduler, torch_sgd(torch)))
    assert mine is not None and mine == ref, f"{mine} vs torch's {ref}"
    with pytest.raises(Exception, match=match): fn(M, minima_sgd())

@pytest.mark.parametrize("cls", ["CyclicLR", "OneCycleLR"])
def test_cycling_momentum_needs_a_momentum(torch, cls):
    args = dict(CyclicLR=dict(base_lr=0.01, max_lr=0.1), OneCycleLR=dict(max_lr=0.1, total_steps=10))[cls]
    mine = error_of(lambda: getattr(M, cls)(no_momentum("minima", torch), **args))
    ref = error_of(lambda: getattr(torch.optim.lr_scheduler, cls)(no_momentum("torch", torch), **args))
    assert mine == ref and "optimizer must support momentum or beta1" in mine[1]

def test_errors_leave_the_optimizer_untouched():
    o = minima_sgd()
    before = [dict(g, params=None) for g in o.param_groups]
    for fn in (lambda: M.ConstantLR(o, factor=2.0), lambda: M.OneCycleLR(o, 0.1, total_steps=0),
               lambda: M.LinearLR(o, start_factor=0), lambda: M.CosineAnnealingWarmRestarts(o, T_0=0)):
        with pytest.raises(ValueError): fn()
    assert [dict(g, params=None) for g in o.param_groups] == before


# --- plot_schedule ------------------------------------------------------------------------------------------------
def test_plot_schedule_draws_the_lr_each_step_uses():
    import matplotlib
    matplotlib.use("Agg")
    from minima.book.pictures import plot_schedule
    ax = plot_schedule(lambda o: M.StepLR(o, step_size=10, gamma=0.5), 35, momentum=True)
    lr = ax.lines[0].get_ydata()
    assert len(lr) == 35 and lr[0] == 0.1 and lr[9] == 0.1 and lr[10] == 0.05 and lr[34] == pytest.approx(0.0125)
    assert ax.get_title() == "StepLR"
    ax = plot_schedule(lambda o: M.OneCycleLR(o, max_lr=1.0, total_steps=100), 100, momentum=True, title="one cycle")
    momentum = ax.figure.axes[-1].lines[0].get_ydata()
    assert momentum[0] == pytest.approx(0.95) and min(momentum) == pytest.approx(0.85, abs=1e-3)
    assert ax.get_title() == "one cycle"


# --- OneCycleLR and a state dict written by an older torch (no `_anneal_func_type`, an `anneal_func` instead) ---
def older_torch_state(torch, sd, strategy):
    "What an older torch saved: its bound annealing function instead of the name, no `_is_initial`, a `verbose`."
    old = {k: v for k, v in sd.items() if k not in ("_anneal_func_type", "_is_initial")}
    annealing = torch.optim.lr_scheduler.OneCycleLR
    old["anneal_func"] = annealing._annealing_cos if strategy == "cos" else annealing._annealing_linear
    old["verbose"] = False
    return old


def one_cycle_pair(torch, strategy):
    o, to = minima_sgd(), torch_sgd(torch)
    kw = dict(max_lr=0.1, total_steps=40, anneal_strategy=strategy)
    return o, M.OneCycleLR(o, **kw), to, torch.optim.lr_scheduler.OneCycleLR(to, **kw)


def assert_one_cycle_steps_agree(o, s, to, ts, steps):
    for k in range(steps):
        o.step(); to.step(); s.step(); ts.step()
        np.testing.assert_allclose(s.get_last_lr(), ts.get_last_lr(), rtol=RTOL, err_msg=f"lr at step {k}")
        for g, tg in zip(o.param_groups, to.param_groups):
            np.testing.assert_allclose(g["momentum"], tg["momentum"], rtol=RTOL, err_msg=f"momentum at step {k}")


@pytest.mark.parametrize("saved,current", [("linear", "linear"), ("linear", "cos"), ("cos", "linear")])
def test_one_cycle_loads_an_older_torch_state_dict(torch, saved, current):
    "Loaded into a new scheduler the old dict keeps the new one's strategy, as torch's (its `_anneal_func_type`)."
    _, _, src_o, src = one_cycle_pair(torch, saved)
    for _ in range(7):
        src_o.step(); src.step()
    old = older_torch_state(torch, src.state_dict(), saved)
    o, s, to, ts = one_cycle_pair(torch, current)
    s.load_state_dict(dict(old)); ts.load_state_dict(dict(old))
    assert s.last_epoch == ts.last_epoch == 7
    assert_one_cycle_steps_agree(o, s, to, ts, 30)


@pytest.mark.parametrize("saved", ["linear", "cos"])
def test_one_cycle_without_anneal_func_type_uses_the_stored_function(torch, saved):
    "An older torch's scheduler object (no `_anneal_func_type` at all): torch falls back to `anneal_func`."
    _, _, src_o, src = one_cycle_pair(torch, saved)
    for _ in range(7):
        src_o.step(); src.step()
    old = older_torch_state(torch, src.state_dict(), saved)
    other = "cos" if saved == "linear" else "linear"
    o, s, to, ts = one_cycle_pair(torch, other)
    s.load_state_dict(dict(old)); ts.load_state_dict(dict(old))
    del s._anneal_func_type, ts._anneal_func_type
    assert_one_cycle_steps_agree(o, s, to, ts, 30)
    # and the stored function, not the constructor's strategy, made those numbers
    o2, s2, to2, ts2 = one_cycle_pair(torch, saved)
    s2.load_state_dict(dict(old))
    for _ in range(30):
        o2.step(); s2.step()
    assert s2.get_last_lr() == s.get_last_lr()


def test_one_cycle_unknown_anneal_func_type_raises_as_torch(torch):
    o, s, to, ts = one_cycle_pair(torch, "cos")
    sd = ts.state_dict()
    sd["_anneal_func_type"] = "exp"
    s.load_state_dict(dict(sd)); ts.load_state_dict(dict(sd))
    o.step(); to.step()
    with pytest.raises(ValueError) as theirs:
        ts.step()
    with pytest.raises(ValueError) as mine:
        s.step()
    assert str(mine.value) == str(theirs.value) == "Unknown _anneal_func_type: exp"
