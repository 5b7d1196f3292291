"""One check shared by optimizer test files: foreach=True and fused=True agree bit for bit with foreach=False,
on small tensors (one flat buffer) and a large one (pieces of its own arrays, or a compiled loop in place)."""
import numpy as np
import pytest
from parity import Param


FAST_SHAPES = [(3, 4), (5,), (2, 3, 2), (1,), (7,), (6,), (4, 4), (3,), (10,)]
BIG = 300_001


def fast_twins(cls, kwargs, dtype, steps=4):
    "Parameters and state of `cls` after `steps` steps with foreach=False, foreach=True and fused=True."
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(dtype) for s in FAST_SHAPES + [(BIG,)]]
    grads = [[rng.standard_normal(a.shape).astype(dtype) for a in start] for _ in range(steps)]
    runs = []
    for fast in (dict(foreach=False), dict(foreach=True), dict(fused=True)):
        params = [Param(a.copy()) for a in start] + [Param(np.ones(2, dtype))]   # the last gets no gradient
        opt = cls([{"params": params[:9]}, {"params": params[9:]}], **kwargs, **fast)
        for gs in grads:
            for p, g in zip(params, gs): p.grad = g.copy()
            opt.step()
        runs.append([(p.data, opt.state[p]) for p in params])
    return runs


def assert_fast_paths_agree_bitwise(cls, kwargs, dtype):
    pytest.importorskip("numba")
    reference, *fast = fast_twins(cls, kwargs, dtype)
    for run, name in zip(fast, ("foreach=True", "fused=True")):
        for i, ((data, state), (ref_data, ref_state)) in enumerate(zip(run, reference)):
            assert np.array_equal(data, ref_data), f"{name}: param {i} differs"
            assert set(state) == set(ref_state), f"{name}: state keys of param {i}"
            for k, v in ref_state.items():
                assert np.array_equal(state[k], v), f"{name}: state[{i}][{k!r}] differs"
