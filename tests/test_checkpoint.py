"""minima.checkpoint: pickle-free checkpoints, exact resumption in a fresh process, refusal of bad files
(leaving the model and optimizer untouched), and atomic writes."""
import json, os, subprocess, sys, textwrap, zipfile
from pathlib import Path
import numpy as np
import pytest
import minima.checkpoint as ckpt
from minima.checkpoint import save_checkpoint, load_checkpoint
from minima.optim.sgd import SGD
from minima.optim.adam import Adam
from minima.optim.lr_scheduler import OneCycleLR, LinearLR, CosineAnnealingLR, SequentialLR

ROOT = Path(__file__).resolve().parent.parent


class Param:
    def __init__(self, data): self.data, self.grad = data, None


class TwoLayer:
    "A stand-in model: two parameters, `state_dict` of copies, `load_state_dict` copying in place."
    def __init__(self, n_in=3, n_out=2, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        self.w = Param(rng.standard_normal((n_in, n_out)).astype(dtype))
        self.b = Param(rng.standard_normal(n_out).astype(dtype))
    def parameters(self): return [self.w, self.b]
    def state_dict(self): return {"w": self.w.data.copy(), "b": self.b.data.copy()}
    def load_state_dict(self, sd):
        self.w.data[...] = sd["w"]; self.b.data[...] = sd["b"]


def train_steps(model, opt, sched=None, steps=5, seed=1):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for p in model.parameters(): p.grad = rng.standard_normal(p.data.shape).astype(p.data.dtype)
        opt.step()
        if sched is not None: sched.step()


def snapshot(model, opt, sched=None):
    return (json.dumps({k: v.tolist() for k, v in model.state_dict().items()}),
            repr(opt.state_dict()), repr(sched.state_dict()) if sched else None)


@pytest.fixture
def trained(tmp_path):
    model = TwoLayer()
    opt = Adam(model.parameters(), lr=0.01, amsgrad=True)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=50)
    train_steps(model, opt, sched)
    path = tmp_path / "run.npz"
    save_checkpoint(path, model, opt, sched, extra={"step": 5, "note": "hello", "seeds": (1, 2)})
    return path, model, opt, sched


def fresh(amsgrad=True, n_in=3, lr=0.01):
    model = TwoLayer(n_in=n_in, seed=42)
    opt = Adam(model.parameters(), lr=lr, amsgrad=amsgrad)
    return model, opt, OneCycleLR(opt, max_lr=0.1, total_steps=50)


def test_roundtrip_restores_everything_exactly(trained):
    path, model, opt, sched = trained
    m2, o2, s2 = fresh()
    extra = load_checkpoint(path, m2, o2, s2)
    assert extra == {"step": 5, "note": "hello", "seeds": (1, 2)}
    assert snapshot(m2, o2, s2) == snapshot(model, opt, sched)
    assert o2.param_groups[0]["params"] == [m2.w, m2.b]           # the new parameters, not copies
    train_steps(model, opt, sched, seed=9); train_steps(m2, o2, s2, seed=9)
    assert np.array_equal(model.w.data, m2.w.data) and np.array_equal(model.b.data, m2.b.data)


def test_file_holds_no_pickle_and_loads_with_allow_pickle_false(trained):
    path = trained[0]
    with zipfile.ZipFile(path) as zf:
        assert all(n.endswith(".npy") for n in zf.namelist())
    with np.load(path, allow_pickle=False) as f:                  # every member loads without pickle
        for name in f.files: assert f[name].dtype != object
        meta = json.loads(f["__meta__"].tobytes())
    assert meta["format"] == "minima-checkpoint" and meta["optimizer"]["class"].endswith("Adam")


def test_numpy_scalars_and_tuples_keep_their_types(tmp_path):
    model = TwoLayer(); opt = SGD(model.parameters(), lr=0.1)
    extra = {"f32": np.float32(0.1), "i": np.int64(3), "t": (1, (2.5, "x")), 7: None, "__odd": [1]}
    save_checkpoint(tmp_path / "c.npz", model, opt, extra=extra)
    back = load_checkpoint(tmp_path / "c.npz", TwoLayer(), SGD(TwoLayer().parameters(), lr=0.1))
    assert back == extra and type(back["f32"]) is np.float32 and type(back["i"]) is np.int64


def test_unsavable_values_are_refused_naming_them(tmp_path):
    model = TwoLayer(); opt = SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="extra/fn"):
        save_checkpoint(tmp_path / "c.npz", model, opt, extra={"fn": lambda: 0})
    assert not (tmp_path / "c.npz").exists() and not list(tmp_path.iterdir())


def assert_refused(path, make, match):
    "Loading fails with a ValueError matching `match`, and changes nothing."
    model, opt, sched = make()
    before = snapshot(model, opt, sched)
    with pytest.raises(ValueError, match=match): load_checkpoint(path, model, opt, sched)
    assert snapshot(model, opt, sched) == before


def test_truncated_file_is_refused(trained, tmp_path):
    data = trained[0].read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        bad = tmp_path / f"cut{cut}.npz"; bad.write_bytes(data[:cut])
        assert_refused(bad, fresh, "not a readable minima checkpoint")


def load_or_refuse(path, make, reference):
    "A damaged file either loads exactly the saved content (the byte was in an unused zip header field) or is refused, changing nothing."
    model, opt, sched = make()
    before = snapshot(model, opt, sched)
    try: load_checkpoint(path, model, opt, sched)
    except ValueError:
        assert snapshot(model, opt, sched) == before
        return False
    assert snapshot(model, opt, sched) == reference
    return True


def test_flipped_bytes_never_load_silently_wrong(trained, tmp_path):
    path, model, opt, sched = trained
    reference, data = snapshot(model, opt, sched), path.read_bytes()
    rng = np.random.default_rng(0)
    loaded = 0
    for k, pos in enumerate(rng.choice(len(data), size=60, replace=False)):
        flipped = bytearray(data); flipped[pos] ^= 0xFF
        bad = tmp_path / f"flip{k}.npz"; bad.write_bytes(bytes(flipped))
        loaded += load_or_refuse(bad, fresh, reference)
    assert loaded < 30      # most bytes matter


def test_flipped_bytes_in_any_array_or_the_description_are_refused(trained, tmp_path):
    path, model, opt, sched = trained
    data = path.read_bytes()
    with np.load(path, allow_pickle=False) as f: payloads = {n: f[n].tobytes() for n in f.files}
    for name, payload in payloads.items():
        start = data.find(payload)
        assert start >= 0
        for pos in {start, start + len(payload) // 2, start + len(payload) - 1}:
            flipped = bytearray(data); flipped[pos] ^= 0x01
            bad = tmp_path / "flip.npz"; bad.write_bytes(bytes(flipped))
            assert_refused(bad, fresh, "not a readable minima checkpoint")


def test_tampered_array_with_valid_zip_is_caught_by_the_checksum(trained, tmp_path):
    "Rewrite one array with a consistent zip (valid CRC): only the SHA-256 can notice."
    src = trained[0]
    with np.load(src, allow_pickle=False) as f: members = {n: f[n] for n in f.files}
    members["model/w"] = members["model/w"] + 1
    bad = tmp_path / "tampered.npz"
    np.savez(bad, **members)
    assert_refused(bad, fresh, "checksum")


def test_other_files_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3)); np.savez(tmp_path / "b.npz", x=np.zeros(3))
    (tmp_path / "c.npz").write_text("not a zip")
    for name in ("a.npy", "b.npz", "c.npz"): assert_refused(tmp_path / name, fresh, "not a readable minima checkpoint")


def test_mismatched_model_is_refused(trained):
    assert_refused(trained[0], lambda: fresh(n_in=4), r"'w' has shape \(3, 2\) in the checkpoint, \(4, 2\)")

    class Renamed(TwoLayer):
        def state_dict(self): return {"weight": self.w.data.copy(), "b": self.b.data.copy()}
    def make():
        m = Renamed(); o = Adam(m.parameters(), lr=0.01, amsgrad=True)
        return m, o, OneCycleLR(o, max_lr=0.1, total_steps=50)
    assert_refused(trained[0], make, r"missing keys \['weight'\], unexpected keys \['w'\]")

    class Float64(TwoLayer):
        def __init__(self): super().__init__(dtype=np.float64)
    def make64():
        m = Float64(); o = Adam(m.parameters(), lr=0.01, amsgrad=True)
        return m, o, OneCycleLR(o, max_lr=0.1, total_steps=50)
    assert_refused(trained[0], make64, "dtype")


def test_mismatched_optimizer_is_refused(trained):
    def sgd():
        m = TwoLayer(); o = SGD(m.parameters(), lr=0.1, momentum=0.9)
        return m, o, OneCycleLR(o, max_lr=0.1, total_steps=50)
    assert_refused(trained[0], sgd, "Adam, not of a .*SGD")

    def two_groups():
        m = TwoLayer(); o = Adam([{"params": [m.w]}, {"params": [m.b]}], lr=0.01, amsgrad=True)
        return m, o, OneCycleLR(o, max_lr=0.1, total_steps=50)
    assert_refused(trained[0], two_groups, "1 parameter groups, the optimizer 2")

    def no_scheduler():
        m = TwoLayer(); o = Adam(m.parameters(), lr=0.01, amsgrad=True)
        return m, o, None
    assert_refused(trained[0], no_scheduler, "checkpoint has a scheduler state but no scheduler was given")


def test_other_hyper_parameter_layout_is_refused(tmp_path):
    "Saved without a scheduler; the live optimizer's groups carry OneCycleLR's extra keys (max_lr, ...)."
    model = TwoLayer(); opt = Adam(model.parameters(), lr=0.01)
    train_steps(model, opt)
    save_checkpoint(tmp_path / "plain.npz", model, opt)
    def with_schedule_keys():
        m = TwoLayer(); o = Adam(m.parameters(), lr=0.01)
        OneCycleLR(o, max_lr=0.1, total_steps=50)
        return m, o, None
    assert_refused(tmp_path / "plain.npz", with_schedule_keys, r"\[\] only in the checkpoint, \['base_momentum'")


def test_mismatched_scheduler_is_refused(trained):
    def linear():
        m = TwoLayer(); o = Adam(m.parameters(), lr=0.01, amsgrad=True)
        OneCycleLR(o, max_lr=0.1, total_steps=50)          # same group keys as the saved run
        return m, o, LinearLR(o)
    assert_refused(trained[0], linear, "OneCycleLR, not of a .*LinearLR")


def test_missing_member_is_refused(trained, tmp_path):
    src = trained[0]
    bad = tmp_path / "missing.npz"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            if item.filename != "optimizer/state/1/exp_avg.npy": zout.writestr(item, zin.read(item.filename))
    assert_refused(bad, fresh, r"missing members \['optimizer/state/1/exp_avg'\]")


def test_crash_mid_save_leaves_the_old_checkpoint(trained, monkeypatch):
    path, model, opt, sched = trained
    old = path.read_bytes()
    train_steps(model, opt, sched, steps=3, seed=5)
    calls = []
    real = ckpt._write_member
    def dying_writer(zf, name, array):
        calls.append(name)
        if len(calls) == 3: raise OSError("disk full (simulated)")
        real(zf, name, array)
    monkeypatch.setattr(ckpt, "_write_member", dying_writer)
    with pytest.raises(OSError, match="simulated"): save_checkpoint(path, model, opt, sched, extra={"step": 8})
    assert len(calls) == 3
    assert path.read_bytes() == old
    assert [p.name for p in path.parent.iterdir()] == [path.name]     # no temporary file left behind
    m2, o2, s2 = fresh()
    assert load_checkpoint(path, m2, o2, s2)["step"] == 5


def test_save_replaces_an_existing_checkpoint(trained):
    path, model, opt, sched = trained
    train_steps(model, opt, sched, steps=2, seed=3)
    save_checkpoint(path, model, opt, sched, extra={"step": 7})
    m2, o2, s2 = fresh()
    assert load_checkpoint(path, m2, o2, s2)["step"] == 7
    assert snapshot(m2, o2, s2) == snapshot(model, opt, sched)


# ---------------------------------------------------------------------------------------------
# Exact resumption in a fresh process: a real model, loader, optimizer and scheduler.

RUN = textwrap.dedent('''
    import sys, numpy as np
    from minima.tensor import Tensor
    from minima import nn
    from minima.data import TensorDataset, DataLoader
    from minima.optim.sgd import SGD
    from minima.optim.adam import Adam
    from minima.optim.lr_scheduler import OneCycleLR, LinearLR, CosineAnnealingLR, SequentialLR
    from minima.checkpoint import save_checkpoint, load_checkpoint

    config, mode, path, out, N, K = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64) + (X[:, 3] > 1)

    def build():
        nn.manual_seed(0) if hasattr(nn, "manual_seed") else None
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        params = list(model.parameters())
        if config == "sgd":
            opt = SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3); sched = None
        elif config == "adam":
            opt = Adam(params, lr=0.01, amsgrad=True, weight_decay=1e-2); sched = None
        elif config == "onecycle":
            opt = SGD(params, lr=0.05, momentum=0.9, nesterov=True)
            sched = OneCycleLR(opt, max_lr=0.2, total_steps=N)
        else:  # warm-up + cosine
            opt = Adam(params, lr=0.01)
            sched = SequentialLR(opt, [LinearLR(opt, start_factor=0.1, total_iters=5),
                                       CosineAnnealingLR(opt, T_max=N - 5)], milestones=[5])
        loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True, seed=3)
        return model, opt, sched, loader

    def batches(loader):
        while True: yield from loader

    def run(model, opt, sched, loader, steps, stream):
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(steps):
            xb, yb = next(stream)
            loss = loss_fn(model(Tensor(xb)), yb)
            opt.zero_grad(); loss.backward(); opt.step()
            if sched is not None: sched.step()

    def final(model): return {k: np.asarray(v) for k, v in model.state_dict().items()}

    if mode == "first":
        model, opt, sched, loader = build(); stream = batches(loader)
        run(model, opt, sched, loader, K, stream)
        save_checkpoint(path, model, opt, sched, extra={"step": K, "loader": loader.state_dict()})
        run(model, opt, sched, loader, N - K, stream)            # the same process carries on
        np.savez(out + "_continued.npz", **final(model))
        model, opt, sched, loader = build()                        # and an uninterrupted run
        run(model, opt, sched, loader, N, batches(loader))
        np.savez(out + "_uninterrupted.npz", **final(model))
    else:
        model, opt, sched, loader = build()
        extra = load_checkpoint(path, model, opt, sched)
        loader.load_state_dict(extra["loader"])
        run(model, opt, sched, loader, N - extra["step"], batches(loader))
        np.savez(out + "_resumed.npz", **final(model))
''')


@pytest.mark.parametrize("config", ["sgd", "adam", "onecycle", "warmup_cosine"])
def test_resume_in_a_fresh_process_is_bit_identical(config, tmp_path):
    script = tmp_path / "run.py"; script.write_text(RUN)
    N, K = 40, 13                                  # 90 examples in batches of 16: K falls mid-epoch
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = [config, None, str(tmp_path / "ckpt.npz"), str(tmp_path / "w"), str(N), str(K)]
    for mode in ("first", "resume"):
        args[1] = mode
        subprocess.run([sys.executable, str(script), *args], check=True, env=env, cwd=tmp_path)
    runs = {name: dict(np.load(tmp_path / f"w_{name}.npz")) for name in ("uninterrupted", "continued", "resumed")}
    ref = runs["uninterrupted"]
    assert ref and all(np.all(np.isfinite(a)) for a in ref.values())
    for name in ("continued", "resumed"):
        assert set(runs[name]) == set(ref)
        for k in ref: assert np.array_equal(runs[name][k], ref[k]), f"{name}: {k} differs from the uninterrupted run"
    start = dict(np.load(tmp_path / "ckpt.npz", allow_pickle=False))   # the run did move away from the checkpoint
    assert any(not np.array_equal(start[f"model/{k}"], ref[k]) for k in ref)


def test_a_failure_while_copying_puts_the_old_state_back(trained, monkeypatch):
    path = trained[0]
    model, opt, sched = fresh()
    train_steps(model, opt, sched, steps=2, seed=4)
    before = snapshot(model, opt, sched)
    real, calls = type(sched).load_state_dict, []
    def fails_once(self, state_dict):
        calls.append(1)
        if len(calls) == 1: raise RuntimeError("scheduler refused (simulated)")
        return real(self, state_dict)
    monkeypatch.setattr(type(sched), "load_state_dict", fails_once)
    with pytest.raises(RuntimeError, match="simulated"): load_checkpoint(path, model, opt, sched)
    assert snapshot(model, opt, sched) == before
    assert len(calls) == 2                                   # the failed load, then the restore
