"""minima.training: the fit loop against the same loop in PyTorch (same initial weights, same batches),
and the invariants of History, evaluate, progress and plot_history."""
import math, subprocess, sys
import numpy as np
import pytest
from minima import nn
from minima.tensor import Tensor
from minima.data import TensorDataset, DataLoader
from minima.training import fit, evaluate, accuracy, History, plot_history
from minima.optim.sgd import SGD
from minima.optim.adam import Adam
from minima.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, LinearLR, CosineAnnealingLR, SequentialLR

N_IN, N_HIDDEN, N_OUT = 12, 24, 4


def make_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_IN)).astype(np.float32)
    W = rng.standard_normal((N_IN, N_OUT))
    y = np.argmax(X @ W + 0.5 * rng.standard_normal((n, N_OUT)), axis=1).astype(np.int64)
    return X, y


def make_model(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(N_IN, N_HIDDEN, rng=rng), nn.ReLU(), nn.Linear(N_HIDDEN, N_OUT, rng=rng))


def loaders(seed=3, batch_size=16):
    X, y = make_data()
    Xv, yv = make_data(n=64, seed=1)
    return (DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=True, seed=seed),
            DataLoader(TensorDataset(Xv, yv), batch_size=25))


# ------------------------------------------------------------------------------------------
# Parity with PyTorch: same initial weights, same batches in the same order.

def torch_twin(torch, model):
    twin = torch.nn.Sequential(torch.nn.Linear(N_IN, N_HIDDEN), torch.nn.ReLU(), torch.nn.Linear(N_HIDDEN, N_OUT))
    with torch.no_grad():
        for (name, p), (tname, tp) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
            assert name == tname and tuple(p.data.shape) == tuple(tp.shape)
            tp.copy_(torch.from_numpy(p.data.copy()))
    return twin


def torch_fit(torch, twin, opt, train, valid, epochs, sched=None, clip=None):
    "The loop `fit` documents, written with torch."
    out = {"loss": [], "lr": [], "grad_norm": [], "valid_loss": [], "valid_accuracy": []}
    F = torch.nn.functional
    for _ in range(epochs):
        twin.train()
        if hasattr(opt, "train"): opt.train()                  # schedulefree's modes
        for xb, yb in train:
            loss = F.cross_entropy(twin(torch.from_numpy(xb)), torch.from_numpy(yb))
            opt.zero_grad(); loss.backward()
            params = [p for p in twin.parameters() if p.grad is not None]
            if clip is not None: norm = torch.nn.utils.clip_grad_norm_(params, clip)
            else: norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            out["lr"].append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None and not isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau): sched.step()
            out["loss"].append(loss.item()); out["grad_norm"].append(float(norm))
        twin.eval()
        if hasattr(opt, "eval"): opt.eval()
        with torch.no_grad():
            n, total, correct = 0, 0.0, 0
            for xb, yb in valid:
                scores = twin(torch.from_numpy(xb))
                total += F.cross_entropy(scores, torch.from_numpy(yb), reduction="sum").item()
                correct += int((scores.argmax(1).numpy() == yb).sum()); n += len(yb)
        out["valid_loss"].append(total / n); out["valid_accuracy"].append(correct / n)
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau): sched.step(out["valid_loss"][-1])
    return out


def run_both(torch, make_opts, epochs=4, make_scheds=None, clip=None):
    model = make_model()
    twin = torch_twin(torch, model)
    mopt, topt = make_opts(list(model.parameters()), list(twin.parameters()))
    msched, tsched = make_scheds(mopt, topt) if make_scheds else (None, None)
    train, valid = loaders()
    h = fit(model, nn.CrossEntropyLoss(), mopt, train, valid, epochs=epochs, scheduler=msched, clip=clip, progress=False)
    train, valid = loaders()
    ref = torch_fit(torch, twin, topt, train, valid, epochs, tsched, clip)
    return h, ref, model, twin


def assert_rel(mine, ref, rtol, what):
    mine, ref = np.asarray(mine, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert mine.shape == ref.shape, f"{what}: {mine.shape} vs {ref.shape}"
    np.testing.assert_allclose(mine, ref, rtol=rtol, atol=0, err_msg=what)


def assert_same_run(h, ref, model, twin, rtol=1e-5):
    assert len(h.loss) == 4 * 13 == len(ref["loss"])          # 200 examples in batches of 16: 13 per epoch
    assert_rel(h.loss, ref["loss"], rtol, "per-step training loss")
    assert_rel(h.lr, ref["lr"], 1e-12, "per-step learning rate")
    assert_rel(h.grad_norm, ref["grad_norm"], rtol, "per-step gradient norm")
    assert_rel(h.valid_loss, ref["valid_loss"], rtol, "per-epoch validation loss")
    assert h.valid_accuracy == ref["valid_accuracy"]
    for (name, p), (_, tp) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_sgd_momentum_matches_torch(torch):
    h, ref, model, twin = run_both(torch, lambda m, t: (SGD(m, lr=0.1, momentum=0.9), torch.optim.SGD(t, lr=0.1, momentum=0.9)))
    assert_same_run(h, ref, model, twin)
    assert h.loss[-1] < h.loss[0]                               # it did learn


def test_adam_matches_torch(torch):
    h, ref, model, twin = run_both(torch, lambda m, t: (Adam(m, lr=1e-2), torch.optim.Adam(t, lr=1e-2)))
    assert_same_run(h, ref, model, twin)


def test_adam_with_one_cycle_and_clipping_matches_torch(torch):
    scheds = lambda m, t: (OneCycleLR(m, max_lr=0.05, total_steps=52), torch.optim.lr_scheduler.OneCycleLR(t, max_lr=0.05, total_steps=52))
    h, ref, model, twin = run_both(torch, lambda m, t: (Adam(m, lr=1e-2), torch.optim.Adam(t, lr=1e-2)), make_scheds=scheds, clip=0.3)
    assert_same_run(h, ref, model, twin)
    assert max(h.grad_norm) > 0.3                               # clipping did act: the recorded norm is before clipping
    assert len(set(h.lr)) > 40                                  # the lr changed every step


def test_warmup_cosine_schedule_matches_torch(torch):
    def scheds(m, t):
        ms = SequentialLR(m, [LinearLR(m, start_factor=0.1, total_iters=13), CosineAnnealingLR(m, T_max=39)], milestones=[13])
        TS = torch.optim.lr_scheduler
        ts = TS.SequentialLR(t, [TS.LinearLR(t, start_factor=0.1, total_iters=13), TS.CosineAnnealingLR(t, T_max=39)], milestones=[13])
        return ms, ts
    h, ref, model, twin = run_both(torch, lambda m, t: (SGD(m, lr=0.1, momentum=0.9, nesterov=True),
                                                       torch.optim.SGD(t, lr=0.1, momentum=0.9, nesterov=True)), make_scheds=scheds)
    assert_same_run(h, ref, model, twin)


def test_reduce_on_plateau_is_stepped_per_epoch_with_the_validation_loss(torch):
    scheds = lambda m, t: (ReduceLROnPlateau(m, factor=0.5, patience=0, threshold=0.5),
                           torch.optim.lr_scheduler.ReduceLROnPlateau(t, factor=0.5, patience=0, threshold=0.5))
    h, ref, model, twin = run_both(torch, lambda m, t: (SGD(m, lr=0.1), torch.optim.SGD(t, lr=0.1)), make_scheds=scheds)
    assert_same_run(h, ref, model, twin)
    per_epoch = np.array(h.lr).reshape(4, 13)
    assert np.all(per_epoch == per_epoch[:, :1])                # constant within each epoch
    assert per_epoch[-1, 0] < per_epoch[0, 0]                   # and it was reduced


# ------------------------------------------------------------------------------------------
# Invariants of the loop.

@pytest.mark.parametrize("which", ["AdamWScheduleFree", "SGDScheduleFree"])
def test_schedule_free_matches_schedulefree_evaluated_at_x(torch, which):
    "fit calls train() before the steps and eval() after: validation at x, as schedulefree's loop."
    schedulefree = pytest.importorskip("schedulefree")
    from minima.optim import schedule_free
    kwargs = dict(lr=3e-3, warmup_steps=5) if which == "AdamWScheduleFree" else dict(lr=0.3, warmup_steps=5)
    h, ref, model, twin = run_both(torch, lambda mp, tp: (getattr(schedule_free, which)(mp, **kwargs),
                                                          getattr(schedulefree, which)(tp, **kwargs)))
    assert_same_run(h, ref, model, twin)


def test_fit_leaves_a_schedule_free_optimizer_in_eval_mode_at_x():
    from minima.optim.schedule_free import AdamWScheduleFree
    model = make_model()
    opt = AdamWScheduleFree(model.parameters(), lr=3e-3)
    assert not opt.param_groups[0]["train_mode"]                # it starts in eval mode: step() would raise
    train, valid = loaders()
    h = fit(model, nn.CrossEntropyLoss(), opt, train, valid, epochs=2, progress=False)
    assert not opt.param_groups[0]["train_mode"]
    for p in model.parameters():
        assert np.array_equal(p.data, opt.state[p]["x"])        # the parameters hold the average x
    assert evaluate(model, nn.CrossEntropyLoss(), valid)["loss"] == h.valid_loss[-1]
    opt.train()                                                  # y differs from x: the modes matter
    assert evaluate(model, nn.CrossEntropyLoss(), valid)["loss"] != h.valid_loss[-1]


def test_fit_calls_optimizer_modes_around_every_epoch():
    calls = []
    class Moded(SGD):
        def train(self): calls.append("train")
        def eval(self): calls.append("eval")
        def step(self, closure=None):
            calls.append("step"); return super().step(closure)
    model = make_model()
    train, valid = loaders()
    fit(model, nn.CrossEntropyLoss(), Moded(model.parameters(), lr=0.1), train, valid, epochs=2, progress=False)
    assert calls == (["train"] + ["step"] * len(train) + ["eval"]) * 2


def test_history_shapes_and_epoch_means():
    train, valid = loaders()
    h = fit(make_model(), nn.CrossEntropyLoss(), SGD(make_model().parameters(), lr=0.1), train, valid, epochs=3, progress=False)
    assert isinstance(h, History)
    assert len(h.loss) == len(h.lr) == len(h.grad_norm) == 3 * len(train)
    assert len(h.train_loss) == len(h.valid_loss) == len(h.train_accuracy) == len(h.valid_accuracy) == len(h.epoch_time) == 3


def test_train_loss_is_the_example_weighted_mean_of_the_step_losses():
    X, y = make_data(n=50)
    train = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True, seed=0)      # batches 16, 16, 16, 2
    model = make_model()
    h = fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.05), train, epochs=2, progress=False)
    sizes = np.array([16, 16, 16, 2])
    for e in range(2):
        expected = np.sum(np.array(h.loss[4 * e:4 * e + 4]) * sizes) / 50
        assert math.isclose(h.train_loss[e], expected, rel_tol=1e-12)
    assert all(math.isnan(v) for v in h.valid_loss)                                 # no validation data


def test_evaluate_matches_a_direct_computation_and_changes_nothing():
    model = make_model()
    Xv, yv = make_data(n=64, seed=1)
    p0 = [p.data.copy() for p in model.parameters()]
    result = evaluate(model, nn.CrossEntropyLoss(), DataLoader(TensorDataset(Xv, yv), batch_size=10))
    scores = model(Tensor(Xv)).data
    z = scores - scores.max(1, keepdims=True)
    nll = -(z[np.arange(64), yv] - np.log(np.exp(z).sum(1)))
    assert math.isclose(result["loss"], float(nll.mean()), rel_tol=1e-5)
    assert result["accuracy"] == float(np.mean(scores.argmax(1) == yv))
    assert all(np.array_equal(a, p.data) for a, p in zip(p0, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_fit_evaluates_in_eval_mode_and_returns_to_train_mode():
    modes = []
    class Spy(nn.Module):
        def forward(self, x): modes.append(self.training); return x
    model = nn.Sequential(make_model(), Spy())
    train, valid = loaders()
    fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), train, valid, epochs=2, progress=False)
    assert modes == ([True] * len(train) + [False] * len(valid)) * 2
    assert model.training


def test_evaluation_does_not_record_a_graph():
    seen = []
    class Spy(nn.Module):
        def forward(self, x): seen.append(x.requires_grad); return x
    model = nn.Sequential(make_model(), Spy())
    train, valid = loaders()
    fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), train, valid, epochs=1, progress=False)
    assert seen == [True] * len(train) + [False] * len(valid)


def test_regression_has_no_accuracy_and_custom_metrics_are_used():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3)).astype(np.float32); Y = (X @ np.ones((3, 1))).astype(np.float32)
    loader = DataLoader(TensorDataset(X, Y), batch_size=8)
    model = nn.Linear(3, 1, rng=rng)
    h = fit(model, nn.MSELoss(), SGD(model.parameters(), lr=0.05), loader, loader, epochs=3, progress=False)
    assert h.valid_metrics == {} and h.train_accuracy == [] and h.valid_loss[-1] < h.valid_loss[0]
    mae = lambda out, target: float(np.mean(np.abs(out - target)))
    h = fit(model, nn.MSELoss(), SGD(model.parameters(), lr=0.05), loader, loader, epochs=2, progress=False, metrics={"mae": mae})
    assert len(h.valid_metrics["mae"]) == 2 and len(h.train_metrics["mae"]) == 2


def test_accuracy():
    assert accuracy(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([1, 1, 1])) == 2 / 3


def test_zero_epochs_changes_nothing():
    model = make_model(); p0 = [p.data.copy() for p in model.parameters()]
    train, valid = loaders()
    h = fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), train, valid, epochs=0, progress=False)
    assert h.loss == [] and h.train_loss == []
    assert all(np.array_equal(a, p.data) for a, p in zip(p0, model.parameters()))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(epochs=-1), ValueError, "epochs=-1"), (dict(epochs=1.5), ValueError, "epochs=1.5"),
    (dict(epochs=True), ValueError, "epochs=True"), (dict(clip=0), ValueError, "clip=0"),
    (dict(clip=-1.0), ValueError, "clip=-1.0"), (dict(metrics=[accuracy]), TypeError, "metrics")])
def test_bad_arguments_are_refused_before_training(kwargs, error, match):
    model = make_model(); p0 = [p.data.copy() for p in model.parameters()]
    train, _ = loaders()
    with pytest.raises(error, match=match):
        fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), train, **{"progress": False, **kwargs})
    assert all(np.array_equal(a, p.data) for a, p in zip(p0, model.parameters()))


def test_progress_off_is_silent_and_lines_without_tqdm(capsys, monkeypatch):
    train, valid = loaders()
    model = make_model()
    fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), train, valid, epochs=2, progress=False)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setitem(sys.modules, "tqdm", None)              # `import tqdm` now fails
    fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), train, valid, epochs=2, progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "valid_accuracy" in lines[1]


def test_progress_with_tqdm_shows_a_bar(capsys):
    pytest.importorskip("tqdm")
    train, valid = loaders()
    model = make_model()
    fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), train, valid, epochs=2, progress=True)
    out = capsys.readouterr().out
    assert "2/2" in out and "valid_loss" in out


def test_plot_history_draws_three_panels():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    train, valid = loaders()
    model = make_model()
    h = fit(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), train, valid, epochs=2, progress=False)
    axes = plot_history(h, label="SGD")
    assert len(axes) == 3 and axes[0].get_yscale() == "log"
    assert len(axes[2].lines[0].get_xdata()) == len(h.lr)
    plt.close("all")


def test_importing_training_does_not_import_matplotlib_or_torch():
    probe = "import sys, minima.training, minima.data, minima.checkpoint; print('matplotlib' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
