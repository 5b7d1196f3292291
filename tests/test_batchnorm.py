"""minima.nn.BatchNorm1d and Module buffers against torch.nn: outputs, gradients, running statistics, state_dict,
repr and errors."""
import copy
import re
import numpy as np
import pytest
from parity import assert_close
from minima.tensor import Tensor
from minima.nn import BatchNorm1d, Linear, Module, Sequential, ReLU

DTYPES = [np.float32, np.float64]
OPTIONS = [{}, {"momentum": None}, {"momentum": 0.3, "affine": False}, {"track_running_stats": False},
           {"bias": False}, {"eps": 1e-2, "momentum": 1.0}, {"affine": False, "track_running_stats": False}]


def twins(torch, c, dtype, seed=0, **kwargs):
    "A minima and a torch BatchNorm1d with the same (random, not ones/zeros) weights."
    mine = BatchNorm1d(c, dtype=dtype, **kwargs)
    theirs = torch.nn.BatchNorm1d(c, **kwargs).to(torch.float64 if dtype == np.float64 else torch.float32)
    rng = np.random.default_rng(seed)
    for p, tp in zip(mine.parameters(), theirs.parameters(), strict=True):
        p.data[...] = rng.standard_normal(p.shape)
        tp.data.copy_(torch.from_numpy(p.data))
    return mine, theirs


def assert_same_buffers(mine, theirs, dtype):
    names = [n for n, _ in mine.named_buffers()]
    assert names == [n for n, _ in theirs.named_buffers()]
    for (name, b), tb in zip(mine.named_buffers(), theirs.buffers()):
        tb = tb.numpy()
        if name == "num_batches_tracked":
            assert b.data.dtype == tb.dtype == np.int64 and b.data.shape == () and b.data == tb
        else:
            assert_close(b.data, tb, dtype, name)


def step_both(torch, mine, theirs, x, up, dtype):
    xm, xt = Tensor(x.copy(), requires_grad=True), torch.tensor(x, requires_grad=True)
    mine.zero_grad(); theirs.zero_grad()
    ym, yt = mine(xm), theirs(xt)
    assert_close(ym.data, yt.detach().numpy(), dtype, "output")
    ym.backward(up); yt.backward(torch.from_numpy(up))
    assert_close(xm.grad, xt.grad.numpy(), dtype, "input gradient")
    for (name, p), tp in zip(mine.named_parameters(), theirs.parameters(), strict=True):
        assert_close(p.grad, tp.grad.numpy(), dtype, f"gradient of {name}")
    assert_same_buffers(mine, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 3), (2, 3), (5, 4, 6), (1, 4, 2)])
@pytest.mark.parametrize("kwargs", OPTIONS, ids=str)
def test_forward_backward_and_running_stats_match_torch(torch, dtype, shape, kwargs):
    mine, theirs = twins(torch, shape[1], dtype, **kwargs)
    rng = np.random.default_rng(1)
    for mode in ["train"] * 4 + ["eval", "train", "eval"]:
        mine.train(mode == "train"); theirs.train(mode == "train")
        x = rng.normal(3.0, 2.0, shape).astype(dtype)
        step_both(torch, mine, theirs, x, rng.standard_normal(shape).astype(dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_mode_takes_one_sample_and_leaves_the_buffers(torch, dtype):
    mine, theirs = twins(torch, 3, dtype)
    rng = np.random.default_rng(2)
    step_both(torch, mine, theirs, rng.standard_normal((6, 3)).astype(dtype), np.ones((6, 3), dtype), dtype)
    before = copy.deepcopy(mine.state_dict())
    mine.eval(); theirs.eval()
    x = rng.standard_normal((1, 3)).astype(dtype)
    step_both(torch, mine, theirs, x, np.ones((1, 3), dtype), dtype)
    for k, v in mine.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_momentum_none_is_the_plain_average_of_the_batches():
    bn = BatchNorm1d(2, momentum=None, dtype=np.float64)
    rng = np.random.default_rng(3)
    batches = [rng.normal(i, 1 + i, (5 + i, 2)) for i in range(6)]
    for x in batches:
        bn(x)
    np.testing.assert_allclose(bn.running_mean.data, np.mean([x.mean(0) for x in batches], axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.data, np.mean([x.var(0, ddof=1) for x in batches], axis=0),
                               rtol=1e-12)
    assert bn.num_batches_tracked.data == len(batches)


def test_the_output_is_standardized_with_the_biased_variance():
    bn = BatchNorm1d(3, affine=False, eps=0.0, dtype=np.float64)
    x = np.random.default_rng(4).normal(2.0, 5.0, (7, 3, 4))
    y = bn(x).data
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2)), 1, rtol=1e-12)   # ddof=0: the biased variance
    np.testing.assert_allclose(bn.running_var.data, 0.9 + 0.1 * x.transpose(1, 0, 2).reshape(3, -1).var(1, ddof=1),
                               rtol=1e-12)


def test_reset_running_stats_and_parameters(torch):
    mine, theirs = twins(torch, 3, np.float64)
    x = np.random.default_rng(5).standard_normal((4, 3))
    mine(x); theirs(torch.from_numpy(x))
    mine.reset_running_stats(); theirs.reset_running_stats()
    assert_same_buffers(mine, theirs, np.float64)
    mine.reset_parameters(); theirs.reset_parameters()
    for p, tp in zip(mine.parameters(), theirs.parameters()):
        np.testing.assert_array_equal(p.data, tp.detach().numpy())
    BatchNorm1d(3, track_running_stats=False).reset_running_stats()   # nothing to reset: no error


@pytest.mark.parametrize("kwargs", OPTIONS, ids=str)
def test_repr_state_dict_and_buffers_are_torchs(torch, kwargs):
    mine, theirs = twins(torch, 4, np.float32, **kwargs)
    assert repr(mine) == repr(theirs)
    assert list(mine.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in mine.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    x = np.random.default_rng(6).standard_normal((5, 4)).astype(np.float32)
    mine(x)
    fresh = torch.nn.BatchNorm1d(4, **kwargs)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in mine.state_dict().items()})   # minima -> torch
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in mine.state_dict().items()})
    back = BatchNorm1d(4, **kwargs)
    back.load_state_dict(fresh.state_dict())                                                # torch -> minima
    for (k, v), (tk, tv) in zip(back.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert k == tk and v.dtype == tv.numpy().dtype
        np.testing.assert_array_equal(v, tv.numpy())


def test_a_model_with_batch_norm_matches_torch(torch):
    mine = Sequential(Linear(4, 6, rng=np.random.default_rng(0)), BatchNorm1d(6), ReLU(), Linear(6, 2),
                      BatchNorm1d(2, momentum=None))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                                 torch.nn.Linear(6, 2), torch.nn.BatchNorm1d(2, momentum=None))
    assert list(mine.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in mine.state_dict().items()})
    rng = np.random.default_rng(1)
    for mode in ("train", "train", "eval"):
        mine.train(mode == "train"); theirs.train(mode == "train")
        step_both(torch, mine, theirs, rng.standard_normal((10, 4)).astype(np.float32),
                  rng.standard_normal((10, 2)).astype(np.float32), np.float32)


def _torch_message(e):
    return re.sub(r"torch\.Size\(\[([^\]]*)\]\)", lambda m: repr(tuple(int(v) for v in m[1].split(", "))), str(e))


@pytest.mark.parametrize("kwargs", [{}, {"track_running_stats": False}, {"affine": False},
                                    {"affine": False, "track_running_stats": False}], ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 5), (1, 3), (3,), (1, 3, 1), (2, 3, 4, 5), (2, 4, 2)])
def test_errors_are_torchs_and_change_nothing(torch, kwargs, mode, shape):
    mine, theirs = BatchNorm1d(3, **kwargs), torch.nn.BatchNorm1d(3, **kwargs)
    mine.train(mode == "train"); theirs.train(mode == "train")
    x = np.ones(shape, np.float32)
    try:
        theirs(torch.from_numpy(x))
    except (ValueError, RuntimeError) as e:
        expected = e
    else:
        expected = None
    before = copy.deepcopy(mine.state_dict())
    if expected is None:
        mine(x)
        return
    with pytest.raises(type(expected), match=re.escape(_torch_message(expected))):
        mine(x)
    for k, v in mine.state_dict().items():   # torch counts the batch before it raises; minima does not
        np.testing.assert_array_equal(v, before[k])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_features must be non-negative"):
        BatchNorm1d(-1)
    with pytest.raises(TypeError, match="num_features must be an int"):
        BatchNorm1d(2.0)
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        BatchNorm1d(2, dtype=np.int64)


# ---------------------------------------------------------------- buffers in Module

class WithBuffers(Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", Tensor(np.array(3)))
        self.lin = Linear(2, 2)
        self.register_buffer("scratch", Tensor(np.zeros(2)), persistent=False)
        self.register_buffer("empty", None)


class TorchWithBuffers:
    "The same module in torch, built on demand."
    def __new__(cls, torch):
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.register_buffer("count", torch.tensor(3))
                self.lin = torch.nn.Linear(2, 2)
                self.register_buffer("scratch", torch.zeros(2), persistent=False)
                self.register_buffer("empty", None)
        return M()


def test_buffers_are_named_saved_and_replaced_as_torchs(torch):
    mine, theirs = WithBuffers(), TorchWithBuffers(torch)
    outer_mine, outer_theirs = Sequential(mine, mine), torch.nn.Sequential(theirs, theirs)
    assert [n for n, _ in outer_mine.named_buffers()] == [n for n, _ in outer_theirs.named_buffers()]
    assert [n for n, _ in mine.named_buffers(recurse=False)] == ["count", "scratch"]
    assert sorted(outer_mine.state_dict()) == sorted(outer_theirs.state_dict())   # shared: under each name
    assert "scratch" not in mine.state_dict()                                      # not persistent
    assert len(list(mine.buffers())) == 2 and all(isinstance(b, Tensor) for b in mine.buffers())
    new = Tensor(np.array(7))
    mine.count = new                                  # assigning a Tensor replaces the buffer
    assert mine._buffers["count"] is new and mine.state_dict()["count"] == 7
    mine.load_state_dict({"count": np.array(9), "lin.weight": np.eye(2), "lin.bias": np.zeros(2)})
    assert new.data == 9                              # in place
    mine.count = None
    assert "count" not in mine.state_dict() and mine.count is None
    del mine.scratch
    assert "scratch" not in dict(mine.named_buffers())


def test_buffer_errors_have_torchs_types(torch):
    cases = [(lambda m, T: m.register_buffer(1, T), TypeError),
             (lambda m, T: m.register_buffer("a.b", T), KeyError),
             (lambda m, T: m.register_buffer("", T), KeyError),
             (lambda m, T: m.register_buffer("lin", T), KeyError),
             (lambda m, T: m.register_buffer("x", np.zeros(2)), TypeError),
             (lambda m, T: setattr(m, "count", np.zeros(2)), TypeError)]
    for bad, error in cases:
        with pytest.raises(error):
            bad(TorchWithBuffers(torch), torch.zeros(1))
        with pytest.raises(error):
            bad(WithBuffers(), Tensor(np.zeros(1)))

    class Early(Module):
        def __init__(self):
            self.register_buffer("x", Tensor(np.zeros(1)))
    with pytest.raises(AttributeError, match="cannot assign buffer before Module.__init__"):
        Early()


def test_deepcopy_keeps_buffers_apart():
    bn = BatchNorm1d(2)
    twin = copy.deepcopy(bn)
    bn(np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32))
    assert twin.num_batches_tracked.data == 0 and bn.num_batches_tracked.data == 1
    assert twin._buffers["running_mean"] is twin.running_mean
