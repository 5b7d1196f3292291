"""Run a minima optimizer and its PyTorch twin side by side on the same problem.

Both start from the same parameters and receive the same gradients every step: the gradient of a
quadratic (so a wrong step feeds back into later ones) plus noise, at a different scale per
parameter. One parameter never gets a gradient and the others miss one step in five, so the
"no gradient, no state, no decay" rule is exercised. Parameters are split into groups with
per-group overrides.
"""
import numpy as np
from conftest import require_torch

# Group keys that only PyTorch has (they select its CUDA-graph and autograd machinery).
TORCH_ONLY_GROUP_KEYS = {"capturable", "differentiable"}
# minima has `fused` (a compiled loop) for every elementwise optimizer, torch for four of them; reference packages
# beyond torch (lion-pytorch, ...) have neither `foreach` nor `fused`, which minima's groups carry. Muon's
# `ns_dtype` chooses the dtype of its Newton-Schulz iteration (torch's is always bfloat16).
BEYOND_TORCH_GROUP_KEYS = {"fused", "foreach", "ns_dtype"}


def expected_group_keys(mine, ref):
    "torch's group keys without its own, plus the keys minima adds beyond torch where it has them."
    return (set(ref) - TORCH_ONLY_GROUP_KEYS) | (set(mine) & BEYOND_TORCH_GROUP_KEYS)
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}
SHAPES = [(3, 4), (5,), (2, 3, 2), (1,), (4,), (6,)]
GRAD_SCALES = [1.0, 1.0, 1e-3, 10.0, 0.1, 1.0]
NEVER_GRAD = 1  # index of the parameter that never receives a gradient


class Param:
    "The smallest object that follows the parameter protocol."
    def __init__(self, data): self.data, self.grad = data, None
    def __repr__(self): return f"Param(shape={self.data.shape}, dtype={self.data.dtype})"


def initial_arrays(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def split_groups(params, group_overrides):
    "Group k holds the parameters whose index is k modulo the number of groups."
    n = len(group_overrides)
    return [{"params": params[k::n], **ov} for k, ov in enumerate(group_overrides)]


def state_index(param_index, n_groups):
    "The index a state_dict gives parameter `param_index` once `split_groups` has grouped the parameters."
    order = [i for k in range(n_groups) for i in range(len(SHAPES))[k::n_groups]]
    return order.index(param_index)


def make_grads(arrays, step, rng, dtype):
    grads = []
    for i, (p, scale) in enumerate(zip(arrays, GRAD_SCALES)):
        if i == NEVER_GRAD or (step + i) % 5 == 0:
            grads.append(None); continue
        g = (0.5 + 0.1 * i) * p + rng.standard_normal(p.shape)
        grads.append((scale * g).astype(dtype))
    return grads


def assert_close(mine, ref, dtype, what):
    tol = TOLERANCE[np.dtype(dtype).type]
    mine, ref = np.asarray(mine), np.asarray(ref)
    assert mine.dtype == ref.dtype, f"{what}: dtype {mine.dtype} != torch's {ref.dtype}"
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    np.testing.assert_allclose(mine, ref, rtol=tol, atol=tol * scale, err_msg=what)


class Twins:
    "A minima optimizer and a torch optimizer built over identical parameters."
    def __init__(self, minima_cls, torch_cls, kwargs, dtype, group_overrides=({},), seed=0):
        self.torch = require_torch()
        self.dtype, self.rng = dtype, np.random.default_rng(seed + 1)
        arrays = initial_arrays(dtype, seed)
        self.mparams = [Param(a.copy()) for a in arrays]
        self.tparams = [self.torch.tensor(a.copy(), requires_grad=True) for a in arrays]
        self.mopt = minima_cls(split_groups(self.mparams, group_overrides), **kwargs)
        self.topt = torch_cls(split_groups(self.tparams, group_overrides), **kwargs)
        self.kwargs, self.group_overrides, self.minima_cls = kwargs, group_overrides, minima_cls
        self.steps_done = 0

    def step(self):
        ref = [t.detach().numpy() for t in self.tparams]
        grads = make_grads(ref, self.steps_done, self.rng, self.dtype)
        for m, t, g in zip(self.mparams, self.tparams, grads):
            m.grad = None if g is None else g.copy()
            t.grad = None if g is None else self.torch.from_numpy(g.copy())
        self.mopt.step(); self.topt.step()
        self.steps_done += 1

    def check(self, what=""):
        for i, (m, t) in enumerate(zip(self.mparams, self.tparams)):
            assert_close(m.data, t.detach().numpy(), self.dtype, f"param {i} after step {self.steps_done} {what}")

    def run(self, steps):
        for _ in range(steps): self.step(); self.check()

    def reload_minima(self):
        "Replace the minima side by fresh parameters and a fresh optimizer loaded from a state_dict."
        sd = self.mopt.state_dict()
        self.mparams = [Param(m.data.copy()) for m in self.mparams]
        self.mopt = self.minima_cls(split_groups(self.mparams, self.group_overrides), **self.kwargs)
        self.mopt.load_state_dict(sd)


def run_parity(minima_cls, torch_cls, kwargs, *, dtype, steps=100, group_overrides=({},), seed=0):
    "`steps` steps of both optimizers agree after every step; returns the twins for further checks."
    twins = Twins(minima_cls, torch_cls, kwargs, dtype, group_overrides, seed)
    twins.run(steps)
    return twins


def check_state_dict_matches_torch(twins):
    "Same layout as torch's state_dict (indices, state keys, group keys) and the same state values."
    mine, ref = twins.mopt.state_dict(), twins.topt.state_dict()
    assert set(mine) == {"state", "param_groups"}
    assert sorted(mine["state"]) == sorted(ref["state"]), "parameters with state differ"
    never = state_index(NEVER_GRAD, len(twins.group_overrides))
    if never not in ref["state"]:  # torch keeps no state for it (Adagrad, which fills state eagerly, does)
        assert never not in mine["state"], "a parameter without gradients got state"
    for idx, tstate in ref["state"].items():
        mstate = mine["state"][idx]
        assert set(mstate) == set(tstate), f"state keys of param {idx}: {set(mstate)} vs {set(tstate)}"
        for k, tv in tstate.items():
            tv = tv.detach().numpy() if hasattr(tv, "detach") else np.asarray(tv)
            mv = np.asarray(mstate[k])
            if k == "step": np.testing.assert_equal(float(mv), float(tv), err_msg=f"step of param {idx}")
            else: assert_close(mv, tv, twins.dtype, f"state[{idx}][{k!r}]")
    assert len(mine["param_groups"]) == len(ref["param_groups"])
    for mg, tg in zip(mine["param_groups"], ref["param_groups"]):
        assert set(mg) == expected_group_keys(mg, tg), f"group keys: {set(mg) ^ expected_group_keys(mg, tg)}"
        assert mg["params"] == tg["params"]


def run_state_dict_roundtrip(minima_cls, torch_cls, kwargs, *, dtype, steps=60, split=30,
                             group_overrides=({},), seed=0):
    "Save minima's state mid-run, load it into fresh objects: the run continues as torch's uninterrupted one."
    twins = Twins(minima_cls, torch_cls, kwargs, dtype, group_overrides, seed)
    twins.run(split)
    check_state_dict_matches_torch(twins)
    twins.reload_minima()
    twins.run(steps - split)
    return twins


def assert_same_error(minima_cls, torch_cls, kwargs):
    "Both constructors reject `kwargs` with the same exception type and message, and minima modifies nothing."
    torch = require_torch()
    p = Param(np.arange(3.0)); p.grad = np.ones(3)
    try: minima_cls([p], **kwargs)
    except Exception as e: mine = e
    else: raise AssertionError(f"{minima_cls.__name__}({kwargs}) raised nothing")
    try: torch_cls([torch.zeros(3, dtype=torch.float64, requires_grad=True)], **kwargs)
    except Exception as e: ref = e
    else: raise AssertionError(f"torch's {torch_cls.__name__}({kwargs}) raised nothing")
    assert (type(mine), str(mine)) == (type(ref), str(ref))
    np.testing.assert_array_equal(p.data, np.arange(3.0))
    np.testing.assert_array_equal(p.grad, np.ones(3))
    return str(mine)
