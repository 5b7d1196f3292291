"Test functions: exact gradients (finite differences and torch autograd), minima, vectorisation, noise; viz helpers."
import numpy as np
import pytest
from minima.book.objectives import (Quadratic, NoisyQuadratic, paraboloid, stretched_paraboloid, rosenbrock, beale,
                              himmelblau, noisy_quadratic, numerical_grad)
from minima.book.pictures import COLORS, color_for, trajectory, steps_to_reach

DETERMINISTIC = [paraboloid, stretched_paraboloid, rosenbrock, beale, himmelblau]
ALL = DETERMINISTIC + [noisy_quadratic]


def exact_grad(f, x):
    return f.exact_grad(x) if isinstance(f, NoisyQuadratic) else f.grad(x)


def points_in(f, n=200, seed=0):
    rng = np.random.default_rng(seed)
    (a, b), (c, d) = f.domain
    return np.stack([rng.uniform(a, b, n), rng.uniform(c, d, n)], axis=-1)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.name)
def test_gradient_matches_finite_differences(f):
    x = points_in(f)
    g = exact_grad(f, x)
    np.testing.assert_allclose(g, numerical_grad(f, x), rtol=1e-6, atol=1e-6 * max(1.0, np.abs(g).max()))


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.name)
def test_gradient_matches_torch_autograd(torch, f):
    x = points_in(f, seed=1)
    tx = torch.tensor(x, requires_grad=True)
    t1, t2 = tx[:, 0], tx[:, 1]
    formulas = {
        "paraboloid": lambda: 0.2 * t1**2 + 0.2 * t2**2 - 5,
        "stretched paraboloid": lambda: 0.2 * t1**2 + 2 * t2**2 - 5,
        "noisy quadratic": lambda: 0.2 * t1**2 + 2 * t2**2 - 5,
        "Rosenbrock": lambda: (1 - t1)**2 + 100 * (t2 - t1**2)**2,
        "Beale": lambda: (1.5 - t1 + t1 * t2)**2 + (2.25 - t1 + t1 * t2**2)**2 + (2.625 - t1 + t1 * t2**3)**2,
        "Himmelblau": lambda: (t1**2 + t2 - 11)**2 + (t1 + t2**2 - 7)**2,
    }
    value = formulas[f.name]()
    value.sum().backward()
    np.testing.assert_allclose(f(x), value.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(exact_grad(f, x), tx.grad.numpy(), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.name)
def test_minima_are_stationary_with_the_stated_value(f):
    assert f.minimum.shape == (2,) and f.minima.shape[1] == 2
    np.testing.assert_allclose(exact_grad(f, f.minima), 0, atol=1e-10)
    np.testing.assert_allclose(f(f.minima), f.min_value, atol=1e-12)
    # and they are minima: nearby points are higher
    rng = np.random.default_rng(0)
    for m in f.minima:
        assert np.all(f(m + 1e-3 * rng.standard_normal((50, 2))) > f.min_value)


def test_known_minima():
    assert np.array_equal(rosenbrock.minimum, [1, 1]) and rosenbrock.min_value == 0
    assert np.array_equal(beale.minimum, [3, 0.5]) and beale.min_value == 0
    assert len(himmelblau.minima) == 4 and np.array_equal(himmelblau.minimum, [3, 2])
    assert len({tuple(np.round(m, 6)) for m in himmelblau.minima}) == 4
    assert paraboloid.min_value == stretched_paraboloid.min_value == -5
    np.testing.assert_array_equal(stretched_paraboloid.curvatures, [0.4, 4.0])


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.name)
def test_vectorised_shapes(f):
    x = np.zeros((3, 4, 2)) + 0.5
    assert f(x).shape == (3, 4) and f.grad(x).shape == (3, 4, 2)
    assert np.ndim(f([0.5, 0.5])) == 0 and f.grad([0.5, 0.5]).shape == (2,)
    np.testing.assert_allclose(f(x)[1, 2], f(x[1, 2]))


def test_noisy_quadratic_is_reproducible_and_unbiased():
    f = NoisyQuadratic(noise=2.0, seed=5)
    a = [f.grad([1.0, -1.0]) for _ in range(4)]
    f.reset()
    b = [f.grad([1.0, -1.0]) for _ in range(4)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[0], a[1])
    f.reset(6)
    assert not np.array_equal(f.grad([1.0, -1.0]), a[0])
    many = f.grad(np.tile([1.0, -1.0], (40000, 1)))
    np.testing.assert_allclose(many.mean(0), f.exact_grad([1.0, -1.0]), atol=0.05)
    np.testing.assert_allclose(many.std(0), 2.0, rtol=0.03)
    assert f([1.0, -1.0]) == Quadratic(0.2, 2.0, -5.0)([1.0, -1.0])


def test_color_for():
    assert color_for("Adam") == COLORS["Adam"] and color_for("AdamW lr=1e-3") == COLORS["AdamW"]
    assert color_for("Adam lr=0.1") == COLORS["Adam"] and color_for("NAdam") == COLORS["NAdam"]
    other = color_for("something new")
    assert other not in COLORS.values() and color_for("something new") == other


def test_trajectory_follows_gradient_descent_closed_form():
    class Plain:
        def __init__(self, ps, lr): self.ps, self.lr = ps, lr
        def step(self, closure=None):
            if closure is not None: closure()
            for p in self.ps: p.data -= self.lr * p.grad
    for closure in (False, True):
        points, values = trajectory(lambda ps: Plain(ps, 0.1), stretched_paraboloid, [2.0, 1.0], 20, closure=closure)
        expected = np.array([2.0, 1.0]) * (1 - 0.1 * stretched_paraboloid.curvatures) ** np.arange(21)[:, None]
        np.testing.assert_allclose(points, expected, rtol=1e-12)
        np.testing.assert_allclose(values, stretched_paraboloid(expected), rtol=1e-12)


def test_steps_to_reach():
    assert steps_to_reach([5.0, 1.0, 0.1, 0.001], 1e-2) == 3
    assert steps_to_reach([5.0, 1.0], 1e-2) is None
    assert steps_to_reach([-4.0, -4.999], 1e-2, min_value=-5.0) == 1


def test_plots_return_axes():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from minima.book.pictures import plot_trajectories, plot_losses
    points, values = trajectory(lambda ps: __import__("minima.optim.sgd", fromlist=["GD"]).GD(ps, lr=0.1),
                                rosenbrock, [-1.5, 2.0], 5)
    ax = plot_trajectories(rosenbrock, {"GD": points}, title="t")
    assert ax.get_xlabel() == "$x_1$" and ax.get_ylabel() == "$x_2$" and ax.get_legend() is not None
    ax = plot_losses({"GD": values})
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "step"
    plt.close("all")


def test_minima_does_not_import_matplotlib_or_torch():
    import subprocess, sys
    code = ("import sys, minima.book.objectives, minima.book.pictures, minima.optim; "
            "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
