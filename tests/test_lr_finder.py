"The learning-rate finder (`minima.lr_finder`): restoration, the stopping rule, and a closed-form threshold."
import math, subprocess, sys
import numpy as np
import pytest
from minima import nn
from minima.optim import SGD
from minima.lr_finder import LRFinderResult, exponential_lrs, lr_find, smooth_losses


def regression_problem(seed=0, n=512, d=8, batch_size=32):
    "Mini-batches of a noisy linear regression and 2/L, the divergence threshold of gradient descent on it."
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.linspace(0.3, 1.5, d)
    y = (X @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n))[:, None]
    X_tilde = np.hstack([X, np.ones((n, 1))])
    L = np.linalg.eigvalsh(2 / n * X_tilde.T @ X_tilde).max()   # Hessian of nn.MSELoss for Linear with bias
    return [(X[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)], 2 / L, d


def mlp(seed=0, d=8):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(d, 16, dtype=np.float64, rng=rng), nn.Tanh(), nn.Linear(16, 1, dtype=np.float64, rng=rng))


def train_steps(model, opt, batches, steps):
    for i in range(steps):
        xb, yb = batches[i % len(batches)]
        opt.zero_grad(); nn.MSELoss()(model(xb), yb).backward(); opt.step()


@pytest.mark.parametrize("seed", range(4))
def test_suggestion_lies_below_the_closed_form_threshold_and_the_sweep_stops_past_it(seed):
    batches, threshold, d = regression_problem(seed)
    model = nn.Linear(d, 1, dtype=np.float64, rng=np.random.default_rng(seed))
    res = lr_find(model, nn.MSELoss(), batches, lambda ps: SGD(ps), start_lr=1e-4, end_lr=100)
    assert res.diverged and len(res.lrs) < 100
    assert res.suggestion < threshold < res.lrs[-1]
    assert res.smoothed[-1] > 4 * res.smoothed[:-1].min()


def test_weights_grads_and_a_fresh_optimizer_leave_no_trace():
    batches, _, d = regression_problem(1)
    model = mlp(0, d)
    train_steps(model, SGD(model.parameters(), lr=0.01), batches, 3)   # leaves gradients behind
    params = list(model.parameters())
    data_before, grads_before = [p.data.copy() for p in params], [p.grad.copy() for p in params]
    data_ids = [id(p.data) for p in params]
    made = []
    def make(ps):
        made.append(SGD(ps, momentum=0.9)); return made[-1]
    lr_find(model, nn.MSELoss(), batches, make, start_lr=1e-5, end_lr=100)
    assert len(made) == 1 and made[0].state, "the sweep should have used the optimizer"
    for p, d0, g0, i in zip(params, data_before, grads_before, data_ids):
        assert id(p.data) == i, "data must be restored in place, not rebound"
        np.testing.assert_array_equal(p.data, d0)
        np.testing.assert_array_equal(p.grad, g0)


def test_an_existing_optimizer_is_restored_and_training_continues_identically():
    batches, _, d = regression_problem(2)
    twins = []
    for _ in range(2):
        model = mlp(3, d)
        params = list(model.parameters())
        opt = SGD([{'params': params[:2], 'lr': 0.01}, {'params': params[2:], 'lr': 0.003}], momentum=0.9, weight_decay=1e-3)
        train_steps(model, opt, batches, 4)
        twins.append((model, opt))
    (model, opt), (ref_model, ref_opt) = twins
    state_before = opt.state_dict()
    res = lr_find(model, nn.MSELoss(), batches, opt, start_lr=1e-5, end_lr=100)
    assert len(res.lrs) > 10
    state_after = opt.state_dict()
    assert [g['lr'] for g in opt.param_groups] == [0.01, 0.003]
    assert state_after['param_groups'] == state_before['param_groups']
    assert sorted(state_after['state']) == sorted(state_before['state'])
    for k, s in state_before['state'].items():
        np.testing.assert_array_equal(state_after['state'][k]['momentum_buffer'], s['momentum_buffer'])
    train_steps(model, opt, batches, 5); train_steps(ref_model, ref_opt, batches, 5)
    for p, q in zip(model.parameters(), ref_model.parameters()): np.testing.assert_array_equal(p.data, q.data)


def test_restores_even_when_the_sweep_raises():
    batches, _, d = regression_problem(3)
    model = mlp(1, d)
    before = [p.data.copy() for p in model.parameters()]
    calls = []
    def failing_loss(out, y):
        calls.append(1)
        if len(calls) == 20: raise KeyError("boom")
        return nn.MSELoss()(out, y)
    with pytest.raises(KeyError): lr_find(model, failing_loss, batches, lambda ps: SGD(ps), start_lr=1e-3, end_lr=1)
    for p, b in zip(model.parameters(), before): np.testing.assert_array_equal(p.data, b)


class RecordingSGD(SGD):
    "SGD that remembers the learning rate of every step."
    def step(self, closure=None):
        self.seen = getattr(self, 'seen', []) + [[g['lr'] for g in self.param_groups]]
        return super().step(closure)


def test_the_schedule_is_exponential_and_losses_follow_their_step():
    lrs = exponential_lrs(1e-6, 1.0, 25)
    assert lrs[0] == 1e-6 and math.isclose(lrs[-1], 1.0, rel_tol=1e-12)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], 10 ** (6 / 24), rtol=1e-12)
    batches, _, d = regression_problem(4)
    model = nn.Linear(d, 1, dtype=np.float64, rng=np.random.default_rng(0))
    opts = []
    res = lr_find(model, nn.MSELoss(), batches, lambda ps: opts.append(RecordingSGD(ps)) or opts[-1],
                  start_lr=1e-6, end_lr=1e-3, num_iter=25)
    assert not res.diverged and len(res.lrs) == 25
    np.testing.assert_array_equal(res.lrs, exponential_lrs(1e-6, 1e-3, 25))
    assert [s[0] for s in opts[0].seen] == list(res.lrs)
    assert res.smoothed.shape == res.losses.shape == res.lrs.shape


def test_first_loss_measures_the_first_step():
    "losses[0] is the loss on the second batch after one step with start_lr (here from a known weight)."
    x = np.ones((4, 1)); y = np.zeros((4, 1))
    model = nn.Linear(1, 1, bias=False, dtype=np.float64)
    model.weight.data[...] = 1.0
    lr = 0.1
    res = lr_find(model, nn.MSELoss(), [(x, y)], lambda ps: SGD(ps), start_lr=lr, end_lr=1.0, num_iter=2)
    w1 = 1.0 - lr * 2.0   # gradient of mean((w x)^2) at w=1, x=1 is 2
    assert res.losses[0] == pytest.approx(w1 ** 2, rel=1e-12)
    assert model.weight.data[0, 0] == 1.0


def test_smoothing_is_a_bias_corrected_ema():
    np.testing.assert_allclose(smooth_losses([3.0] * 10, 0.9), 3.0, rtol=1e-12)   # bias correction keeps constants
    losses = np.random.default_rng(0).uniform(1, 2, 30)
    avg, expected = 0.0, []
    for i, l in enumerate(losses):
        avg = 0.7 * avg + 0.3 * l; expected.append(avg / (1 - 0.7 ** (i + 1)))
    np.testing.assert_allclose(smooth_losses(losses, 0.7), expected, rtol=1e-12)
    np.testing.assert_array_equal(smooth_losses(losses, 0.0), losses)


def test_suggestion_is_a_tenth_of_the_minimum_and_the_stop_rule_holds():
    batches, _, d = regression_problem(5)
    model = nn.Linear(d, 1, dtype=np.float64, rng=np.random.default_rng(5))
    res = lr_find(model, nn.MSELoss(), batches, lambda ps: SGD(ps), start_lr=1e-4, end_lr=100, beta=0.9, diverge_factor=3)
    np.testing.assert_array_equal(res.smoothed, smooth_losses(res.losses, 0.9))
    assert res.lr_at_min == res.lrs[np.argmin(res.smoothed)] and res.suggestion == res.lr_at_min / 10
    running_min = np.minimum.accumulate(res.smoothed)
    assert np.all(res.smoothed[:-1] <= 3 * running_min[:-1])
    assert res.smoothed[-1] > 3 * running_min[-1]


def test_a_nan_loss_stops_the_sweep_without_being_recorded():
    batches, _, d = regression_problem(6)
    model = nn.Linear(d, 1, dtype=np.float64, rng=np.random.default_rng(6))
    def loss_fn(out, y):   # the loss becomes nan once a weight is large
        loss = nn.MSELoss()(out, y)
        return loss * np.nan if np.abs(model.weight.data).max() > 1e3 else loss
    res = lr_find(model, loss_fn, batches, lambda ps: SGD(ps), start_lr=1e-3, end_lr=1e4, diverge_factor=1e30)
    assert res.diverged and len(res.lrs) < 100 and np.all(np.isfinite(res.losses))


def test_batches_are_cycled_and_a_used_up_iterator_is_refused():
    batches, _, d = regression_problem(7)
    model = nn.Linear(d, 1, dtype=np.float64, rng=np.random.default_rng(7))
    res = lr_find(model, nn.MSELoss(), batches[:3], lambda ps: SGD(ps), start_lr=1e-6, end_lr=1e-3, num_iter=30)
    assert len(res.lrs) == 30
    before = model.weight.data.copy()
    with pytest.raises(ValueError, match="batches"):
        lr_find(model, nn.MSELoss(), iter(batches[:3]), lambda ps: SGD(ps), num_iter=30)
    np.testing.assert_array_equal(model.weight.data, before)


@pytest.mark.parametrize("kwargs, match", [
    (dict(start_lr=0.0), "start_lr: 0.0"), (dict(start_lr=-1e-3), "start_lr"),
    (dict(start_lr=1.0, end_lr=0.5), "end_lr: 0.5"), (dict(num_iter=1), "num_iter: 1"), (dict(num_iter=10.5), "num_iter"),
    (dict(beta=1.0), "beta: 1.0"), (dict(beta=-0.1), "beta"), (dict(diverge_factor=1.0), "diverge_factor: 1.0")])
def test_bad_arguments_raise_before_anything_happens(kwargs, match):
    batches, _, d = regression_problem(8)
    model = nn.Linear(d, 1, dtype=np.float64, rng=np.random.default_rng(8))
    before = model.weight.data.copy()
    def never(ps): raise AssertionError("the optimizer must not be built")
    with pytest.raises(ValueError, match=match): lr_find(model, nn.MSELoss(), batches, never, **kwargs)
    np.testing.assert_array_equal(model.weight.data, before)


def test_plot_marks_the_suggestion_on_a_log_axis():
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    batches, _, d = regression_problem(9)
    res = lr_find(nn.Linear(d, 1, dtype=np.float64, rng=np.random.default_rng(9)), nn.MSELoss(), batches,
                  lambda ps: SGD(ps), start_lr=1e-4, end_lr=100)
    assert isinstance(res, LRFinderResult)
    ax = res.plot()
    assert ax.get_xscale() == 'log'
    xs = [line.get_xdata()[0] for line in ax.get_lines() if len(line.get_xdata()) == 2]   # vertical lines
    assert any(math.isclose(x, res.suggestion) for x in xs)
    plt.close(ax.figure)


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, minima.lr_finder; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
