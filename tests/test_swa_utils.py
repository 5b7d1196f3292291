"""minima.optim.swa_utils against torch.optim.swa_utils: AveragedModel with every averaging function and
use_buffers, the avg fns themselves, SWALR's lrs alone and after other schedulers, its state_dict, update_bn, and
the errors (types, messages, nothing changed)."""
import copy, itertools, math, pickle, re, warnings
import numpy as np
import pytest
from parity import Param, assert_close
from minima.tensor import Tensor
from minima.nn import BatchNorm1d, Linear, Module, ReLU, Sequential
from minima.data import DataLoader, TensorDataset
from minima.optim.sgd import SGD
import minima.optim.lr_scheduler as M
import minima.optim.swa_utils as S
from minima.optim.swa_utils import (AveragedModel, SWALR, get_ema_avg_fn, get_ema_multi_avg_fn, get_swa_avg_fn,
                                    get_swa_multi_avg_fn, update_bn)

DTYPES = [np.float32, np.float64]
TORCH_DTYPE = {np.float32: "float32", np.float64: "float64"}


# ---------------------------------------------------------------- twins

def nets(torch, dtype, seed=0):
    "A minima network with two BatchNorm1d layers (one 3-D) and its torch twin, same weights."
    rng = np.random.default_rng(seed)
    mine = Sequential(Linear(3, 4, dtype=dtype, rng=rng), BatchNorm1d(4, momentum=0.3, dtype=dtype), ReLU(),
                      Linear(4, 2, dtype=dtype, rng=rng), BatchNorm1d(2, momentum=None, dtype=dtype))
    tnn = torch.nn
    theirs = tnn.Sequential(tnn.Linear(3, 4), tnn.BatchNorm1d(4, momentum=0.3), tnn.ReLU(), tnn.Linear(4, 2),
                            tnn.BatchNorm1d(2, momentum=None)).to(getattr(torch, TORCH_DTYPE[dtype]))
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in mine.state_dict().items()})
    return mine, theirs


def averaging_kwargs(lib, name):
    fns = {"default": lambda m: {},
           "swa multi": lambda m: {"multi_avg_fn": m.get_swa_multi_avg_fn()},
           "swa one": lambda m: {"avg_fn": m.get_swa_avg_fn()},
           "ema multi": lambda m: {"multi_avg_fn": m.get_ema_multi_avg_fn(0.9)},
           "ema multi 0.3": lambda m: {"multi_avg_fn": m.get_ema_multi_avg_fn(0.3)},   # lerp's other branch
           "ema one": lambda m: {"avg_fn": m.get_ema_avg_fn(0.9)},
           "ema multi 1": lambda m: {"multi_avg_fn": m.get_ema_multi_avg_fn(1.0)},
           "ema multi 0": lambda m: {"multi_avg_fn": m.get_ema_multi_avg_fn(0.0)},
           "custom": lambda m: {"avg_fn": lambda avg, cur, n: 0.25 * avg + 0.75 * cur + n}}
    return fns[name](lib)


AVERAGES = ["default", "swa multi", "swa one", "ema multi", "ema multi 0.3", "ema one", "ema multi 1",
            "ema multi 0", "custom"]


def assert_same_state(mine, theirs, dtype):
    ours, ref = mine.state_dict(), theirs.state_dict()
    assert list(ours) == list(ref)
    for k, v in ours.items():
        r = ref[k].numpy()
        if np.issubdtype(r.dtype, np.integer):
            assert v.dtype == r.dtype and np.array_equal(v, r), k
        else:
            assert_close(v, r, dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("use_buffers", [False, True])
def test_averaged_model_matches_torch_over_a_run(torch, dtype, average, use_buffers):
    mine, theirs = nets(torch, dtype)
    avg = AveragedModel(mine, use_buffers=use_buffers, **averaging_kwargs(S, average))
    tavg = torch.optim.swa_utils.AveragedModel(theirs, use_buffers=use_buffers,
                                               **averaging_kwargs(torch.optim.swa_utils, average))
    assert_same_state(avg, tavg, dtype)
    rng = np.random.default_rng(1)
    for step in range(12):
        for p, tp in zip(mine.parameters(), theirs.parameters()):
            p.data += rng.standard_normal(p.shape).astype(dtype)
            tp.data.copy_(torch.from_numpy(p.data))
        x = rng.normal(1.0, 2.0, (6, 3)).astype(dtype)
        mine(x); theirs(torch.from_numpy(x))                # moves the running stats
        if average == "swa multi" and use_buffers and step > 0:   # integer num_batches_tracked: torch's error
            with pytest.raises(RuntimeError) as theirs_error:
                tavg.update_parameters(theirs)
            with pytest.raises(RuntimeError, match=re.escape(str(theirs_error.value))):
                avg.update_parameters(mine)
            return
        avg.update_parameters(mine); tavg.update_parameters(theirs)
        assert_same_state(avg, tavg, dtype)
        y = rng.standard_normal((5, 3)).astype(dtype)
        avg.eval(); tavg.eval()                                # the forward pass goes through the copy
        assert_close(avg(y).data, tavg(torch.from_numpy(y)).detach().numpy(), dtype, "forward")
        avg.train(); tavg.train()


def test_averaged_model_takes_a_copy_and_counts(torch):
    model = Sequential(Linear(2, 2), BatchNorm1d(2))
    avg = AveragedModel(model)
    assert avg.module is not model and avg.module[0].weight is not model[0].weight
    np.testing.assert_array_equal(avg.module[0].weight.data, model[0].weight.data)
    assert avg.n_averaged.data.dtype == np.int64 and avg.n_averaged.data.shape == () and avg.n_averaged.data == 0
    assert [n for n, _ in avg.named_buffers()][0] == "n_averaged"
    tavg = torch.optim.swa_utils.AveragedModel(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    assert repr(avg) == repr(tavg)
    assert list(avg.state_dict()) == list(tavg.state_dict())
    for k in range(3):
        avg.update_parameters(model)
    assert avg.n_averaged.data == 3
    assert [n for n, _ in avg.named_parameters()] == [n for n, _ in tavg.named_parameters()]


def test_swa_is_the_mean_of_the_models_and_ema_the_closed_form():
    model = Sequential(Linear(3, 2, dtype=np.float64))
    swa, ema = AveragedModel(model), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8))
    rng, seen = np.random.default_rng(0), []
    for _ in range(30):
        for p in model.parameters():
            p.data[...] = rng.standard_normal(p.shape)
        seen.append([p.data.copy() for p in model.parameters()])
        swa.update_parameters(model); ema.update_parameters(model)
    for i, p in enumerate(swa.parameters()):
        np.testing.assert_allclose(p.data, np.mean([s[i] for s in seen], axis=0), rtol=1e-12, atol=1e-14)
    weights = [0.8 ** 29] + [0.2 * 0.8 ** (29 - k) for k in range(1, 30)]
    for i, p in enumerate(ema.parameters()):
        np.testing.assert_allclose(p.data, sum(w * s[i] for w, s in zip(weights, seen)), rtol=1e-12, atol=1e-14)


def test_averaged_model_state_dict_round_trip_and_pickle(torch):
    model = Sequential(Linear(2, 3), BatchNorm1d(3))
    a, b = AveragedModel(model), AveragedModel(model)
    rng = np.random.default_rng(0)
    for _ in range(5):
        for p in model.parameters():
            p.data += rng.standard_normal(p.shape).astype(p.dtype)
        a.update_parameters(model)
    b.load_state_dict(a.state_dict())
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    assert b.n_averaged.data == a.n_averaged.data == 5
    pickle.dumps(a)                                                  # the default avg fn is picklable
    tm = torch.optim.swa_utils.AveragedModel(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)))
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in a.state_dict().items()})   # and loads into torch's
    assert int(tm.n_averaged) == 5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["swa", "ema", "ema 0.2"])
def test_the_avg_fns_match_torchs_on_arrays(torch, dtype, name):
    rng = np.random.default_rng(2)
    fns = {"swa": ("get_swa_avg_fn", "get_swa_multi_avg_fn", ()), "ema": ("get_ema_avg_fn", "get_ema_multi_avg_fn", (0.9,)),
           "ema 0.2": ("get_ema_avg_fn", "get_ema_multi_avg_fn", (0.2,))}
    one, multi, args = fns[name]
    for n in (1, 2, 7, 100):
        avgs = [rng.standard_normal(s).astype(dtype) for s in [(3,), (2, 4), ()]]
        curs = [rng.standard_normal(a.shape).astype(dtype) for a in avgs]
        tavgs, tcurs = [torch.tensor(a) for a in avgs], [torch.tensor(c) for c in curs]
        tn = torch.tensor(n)
        for a, c, ta, tc in zip(avgs, curs, tavgs, tcurs):
            out, tout = getattr(S, one)(*args)(a, c, n), getattr(torch.optim.swa_utils, one)(*args)(ta, tc, tn)
            assert_close(out, tout.numpy(), dtype, f"{one} n={n}")
        mine = [a.copy() for a in avgs]
        getattr(S, multi)(*args)(mine, curs, n)
        getattr(torch.optim.swa_utils, multi)(*args)(tavgs, tcurs, tn)
        for a, ta in zip(mine, tavgs):
            assert_close(a, ta.numpy(), dtype, f"{multi} n={n}")


def test_swa_multi_weight_is_float32_as_torchs(torch):
    "torch's list form divides 1 by a 0-d integer tensor: a float32 weight, even for float64 weights."
    avg, cur = np.array([0.0]), np.array([1.0])
    get_swa_multi_avg_fn()([avg], [cur], 2)
    t = torch.tensor([0.0], dtype=torch.float64)
    torch.optim.swa_utils.get_swa_multi_avg_fn()([t], [torch.tensor([1.0], dtype=torch.float64)], torch.tensor(2))
    assert avg[0] == t.item() == float(np.float32(1) / np.float32(3)) != 1 / 3


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_bad_decay_is_torchs_error(torch, decay):
    for name in ("get_ema_avg_fn", "get_ema_multi_avg_fn"):
        with pytest.raises(ValueError) as ref:
            getattr(torch.optim.swa_utils, name)(decay)
        with pytest.raises(ValueError, match=re.escape(str(ref.value))):
            getattr(S, name)(decay)


def test_averaged_model_errors(torch):
    model = Sequential(Linear(2, 2))
    fn = get_swa_avg_fn()
    with pytest.raises(AssertionError) as ref:
        torch.optim.swa_utils.AveragedModel(torch.nn.Linear(2, 2), avg_fn=fn, multi_avg_fn=fn)
    with pytest.raises(AssertionError, match=re.escape(str(ref.value))):
        AveragedModel(model, avg_fn=fn, multi_avg_fn=fn)
    for device in (None, "cpu", torch.device("cpu")):
        AveragedModel(model, device=device)
    with pytest.raises(ValueError, match="minima runs on the CPU only"):
        AveragedModel(model, device="cuda")


# ---------------------------------------------------------------- update_bn

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batches", ["arrays", "tuples", "loader"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_update_bn_matches_torch(torch, dtype, batches, mode):
    mine, theirs = nets(torch, dtype)
    rng = np.random.default_rng(3)
    for _ in range(3):                                         # running stats far from what update_bn measures
        x = rng.normal(-4.0, 0.5, (7, 3)).astype(dtype)
        mine(x); theirs(torch.from_numpy(x))
    mine.train(mode == "train"); theirs.train(mode == "train")
    X = rng.normal(2.0, 3.0, (50, 3)).astype(dtype)
    Y = rng.standard_normal((50, 1)).astype(dtype)
    if batches == "loader":
        ours = DataLoader(TensorDataset(X, Y), batch_size=8)         # the last batch has 2 rows
        ref = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)),
                                          batch_size=8)
    else:
        chunks = [slice(i, i + 10) for i in range(0, 50, 10)]
        ours = [X[c] if batches == "arrays" else (X[c], Y[c]) for c in chunks]
        ref = [torch.from_numpy(X[c]) if batches == "arrays" else [torch.from_numpy(X[c]), torch.from_numpy(Y[c])]
               for c in chunks]
    update_bn(ours, mine)
    torch.optim.swa_utils.update_bn(ref, theirs, device=torch.device("cpu"))
    assert_same_state(mine, theirs, dtype)
    assert mine.training == theirs.training == (mode == "train")
    assert [m.momentum for m in mine if isinstance(m, BatchNorm1d)] == [0.3, None]


def test_update_bn_is_the_average_of_the_batch_statistics():
    bn = BatchNorm1d(3, dtype=np.float64)
    model = Sequential(bn)
    rng = np.random.default_rng(4)
    batches = [rng.normal(1.0, 2.0, (10, 3)) for _ in range(6)]
    update_bn(batches, model)
    np.testing.assert_allclose(bn.running_mean.data, np.concatenate(batches).mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.data, np.mean([b.var(0, ddof=1) for b in batches], axis=0), rtol=1e-12)
    assert bn.num_batches_tracked.data == 6 and bn.momentum == 0.1


def test_update_bn_through_an_averaged_model_and_without_batch_norm():
    model = Sequential(Linear(2, 3), BatchNorm1d(3))
    avg = AveragedModel(model)
    avg.update_parameters(model)
    update_bn([np.ones((4, 2), np.float32) * k for k in range(1, 4)], avg)
    assert avg.module[1].num_batches_tracked.data == 3 and model[1].num_batches_tracked.data == 0
    plain = Sequential(Linear(2, 2)).eval()
    update_bn([np.zeros((2, 2))], plain)                 # nothing to do: the mode is left alone
    assert not plain.training


def test_update_bn_restores_the_model_when_a_batch_fails():
    model = Sequential(BatchNorm1d(2)).eval()
    with pytest.raises(ValueError):
        update_bn([np.ones((3, 2)), np.ones((3, 2, 2, 2))], model)
    assert model[0].momentum == 0.1 and not model.training


def test_update_bn_device_check():
    with pytest.raises(ValueError, match="minima runs on the CPU only"):
        update_bn([], Sequential(BatchNorm1d(2)), device="cuda")
    update_bn([], Sequential(BatchNorm1d(2)), device="cpu")


# ---------------------------------------------------------------- SWALR

GROUPS = [dict(lr=0.05), dict(lr=0.4)]


def optimizers(torch):
    mo = SGD([{"params": [Param(np.zeros(2))], **g} for g in GROUPS], lr=0.1)
    to = torch.optim.SGD([{"params": [torch.zeros(2, dtype=torch.float64, requires_grad=True)], **g} for g in GROUPS],
                         lr=0.1)
    return mo, to


def run_both(torch, make, steps=40, switch=None, before=None):
    """The lrs of every step of minima's and torch's runs; `before(lib, opt)` runs until `switch`, then SWALR."""
    mo, to = optimizers(torch)
    results = []
    for lib, opt, swa_mod in ((M, mo, S), (torch.optim.lr_scheduler, to, torch.optim.swa_utils)):
        first = before(lib, opt) if before else None
        swalr = make(swa_mod.SWALR, opt)
        lrs = []
        for step in range(steps):
            lrs.append([g["lr"] for g in opt.param_groups])
            opt.step()
            (swalr if switch is None or step >= switch else first).step()
        results.append((np.array(lrs), swalr))
    return results


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("anneal_epochs", [0, 1, 2, 5, 10, 37])
@pytest.mark.parametrize("swa_lr", [0.01, [0.01, 0.2]])
def test_swalr_alone_matches_torch(torch, strategy, anneal_epochs, swa_lr):
    (ours, ms), (ref, ts) = run_both(torch, lambda cls, o: cls(o, swa_lr=swa_lr, anneal_epochs=anneal_epochs,
                                                                anneal_strategy=strategy))
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    np.testing.assert_allclose(ms.get_last_lr(), ts.get_last_lr(), rtol=1e-12)
    swa_lrs = swa_lr if isinstance(swa_lr, list) else [swa_lr] * 2
    np.testing.assert_allclose(ours[max(anneal_epochs, 1):], np.broadcast_to(swa_lrs, ours[max(anneal_epochs, 1):].shape))


BEFORE = {
    "multiplicative": lambda lib, o: lib.MultiplicativeLR(o, lr_lambda=lambda e: 0.9),
    "cosine": lambda lib, o: lib.CosineAnnealingLR(o, T_max=12),
    "step": lambda lib, o: lib.StepLR(o, step_size=3, gamma=0.5),
}


@pytest.mark.parametrize("before", list(BEFORE))
@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("anneal_epochs", [1, 4, 5])
def test_swalr_after_another_scheduler_matches_torch(torch, before, strategy, anneal_epochs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (ours, _), (ref, _) = run_both(torch, lambda cls, o: cls(o, swa_lr=[0.01, 0.02], anneal_epochs=anneal_epochs,
                                                                  anneal_strategy=strategy),
                                       switch=5, before=BEFORE[before])
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


@pytest.mark.parametrize("strategy,anneal", [("cos", lambda t: (1 + math.cos(math.pi * t)) / 2),
                                             ("linear", lambda t: 1 - t)])
def test_swalr_closed_form_after_multiplicative(strategy, anneal):
    "torch's test: after MultiplicativeLR, SWALR interpolates from the last lr to swa_lr."
    epochs, swa_start, swa_lr, anneal_epochs, factor = 15, 5, 0.01, 5, 0.9
    opt = SGD([{"params": [Param(np.zeros(2))], **g} for g in GROUPS], lr=0.1)
    first = M.MultiplicativeLR(opt, lr_lambda=lambda e: factor)
    swalr = SWALR(opt, swa_lr=swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=strategy)

    def coef(t):
        return 0.0 if t + 1 >= anneal_epochs else anneal((t + 1) / anneal_epochs)

    targets = []
    for lr0 in (0.05, 0.4):
        before = [lr0 * factor ** i for i in range(swa_start + 1)]
        targets.append(before + [before[-1] * coef(t) + swa_lr * (1 - coef(t)) for t in range(epochs - swa_start - 1)])
    for epoch in range(epochs):
        for group, target in zip(opt.param_groups, targets):
            assert group["lr"] == pytest.approx(target[epoch], abs=1e-12)
        opt.step()
        (swalr if epoch >= swa_start else first).step()


def test_swalr_state_dict_is_torchs_and_round_trips(torch):
    (_, ms), (_, ts) = run_both(torch, lambda cls, o: cls(o, swa_lr=0.5, anneal_epochs=3), steps=10)
    ours, ref = ms.state_dict(), ts.state_dict()
    assert list(ours) == list(ref) and "anneal_func" not in ours
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, rel=1e-12) if isinstance(v, float) else ours[k] == pytest.approx(v), k
    mo, _ = optimizers(torch)
    other = SWALR(mo, swa_lr=5.0, anneal_epochs=10, anneal_strategy="linear")
    other.load_state_dict(ours)
    assert other.anneal_func(0.25) == ms.anneal_func(0.25) != 0.25   # the cosine again, not the linear
    for k, v in ms.__dict__.items():
        if k != "optimizer":
            assert other.__dict__[k] == v, k
    assert other.get_last_lr() == ms.get_last_lr()


def test_swalr_resumes_from_last_epoch(torch):
    mo, to = optimizers(torch)
    for g in mo.param_groups: g["initial_lr"] = g["lr"]
    for g in to.param_groups: g["initial_lr"] = g["lr"]
    ms = SWALR(mo, swa_lr=0.01, anneal_epochs=4, last_epoch=3)
    ts = torch.optim.swa_utils.SWALR(to, swa_lr=0.01, anneal_epochs=4, last_epoch=3)
    for _ in range(6):
        assert [g["lr"] for g in mo.param_groups] == pytest.approx([g["lr"] for g in to.param_groups], rel=1e-12)
        mo.step(); to.step(); ms.step(); ts.step()


def test_swalr_get_lr_outside_step_warns_as_torch(torch):
    mo, to = optimizers(torch)
    ms, ts = SWALR(mo, swa_lr=0.01), torch.optim.swa_utils.SWALR(to, swa_lr=0.01)
    with pytest.warns(UserWarning, match=re.escape("please use `get_last_lr()`")):
        ts.get_lr()
    with pytest.warns(UserWarning, match=re.escape("please use `get_last_lr()`")):
        ms.get_lr()


@pytest.mark.parametrize("kwargs", [dict(anneal_strategy="exponential", swa_lr=1.0), dict(anneal_epochs=-1, swa_lr=1.0),
                                    dict(anneal_epochs=1.7, swa_lr=1.0), dict(swa_lr=[1.0, 0.1, 0.01]),
                                    dict(swa_lr=[1.0]), dict(anneal_strategy="lin", anneal_epochs=-2, swa_lr=0.1)],
                         ids=str)
def test_swalr_errors_are_torchs_and_change_nothing(torch, kwargs):
    mo, to = optimizers(torch)
    with pytest.raises(ValueError) as ref:
        torch.optim.swa_utils.SWALR(to, **kwargs)
    before = copy.deepcopy(mo.param_groups)
    with pytest.raises(ValueError, match=re.escape(str(ref.value))):
        SWALR(mo, **kwargs)
    assert [{k: v for k, v in g.items() if k != "params"} for g in mo.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in before]          # no swa_lr written (torch writes it)
