"""minima.data: datasets, batching, reproducible shuffling, and resuming a loader mid-epoch."""
import json
import numpy as np
import pytest
from minima.data import Dataset, TensorDataset, DataLoader, default_collate


def make_ds(n=10):
    return TensorDataset(np.arange(n), np.arange(n) * 10.0)


def epoch(loader):
    return [xb for xb, _ in loader]


def test_tensor_dataset_items_and_length():
    X, y = np.random.default_rng(0).standard_normal((7, 3)), np.arange(7)
    ds = TensorDataset(X, y)
    assert len(ds) == 7
    x, t = ds[4]
    assert np.array_equal(x, X[4]) and t == 4


def test_tensor_dataset_refuses_mismatched_lengths_naming_them():
    with pytest.raises(ValueError, match=r"\[5, 4\]"): TensorDataset(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError): TensorDataset()
    with pytest.raises(ValueError): TensorDataset(np.float64(1.0))


def test_abstract_dataset_raises():
    with pytest.raises(NotImplementedError): len(Dataset())
    with pytest.raises(NotImplementedError): Dataset()[0]


@pytest.mark.parametrize("n,bs,drop_last", [(10, 3, False), (10, 3, True), (10, 5, False), (10, 5, True), (3, 8, False), (3, 8, True)])
def test_batches_cover_the_data_once_and_len_matches(n, bs, drop_last):
    loader = DataLoader(make_ds(n), batch_size=bs, shuffle=True, drop_last=drop_last, seed=0)
    batches = epoch(loader)
    assert len(batches) == len(loader) == (n // bs if drop_last else -(-n // bs))
    seen = np.concatenate(batches) if batches else np.array([], dtype=int)
    assert len(set(seen.tolist())) == len(seen)          # no example twice
    if not drop_last: assert sorted(seen.tolist()) == list(range(n))
    assert all(len(b) == bs for b in (batches if drop_last else batches[:-1]))


def test_no_shuffle_keeps_the_order():
    assert np.array_equal(np.concatenate(epoch(DataLoader(make_ds(), batch_size=4))), np.arange(10))


def test_inputs_and_targets_stay_aligned():
    for xb, yb in DataLoader(make_ds(), batch_size=3, shuffle=True, seed=1):
        assert np.array_equal(yb, xb * 10.0)


def test_shuffle_is_reproducible_and_differs_between_epochs():
    a, b = (DataLoader(make_ds(50), batch_size=8, shuffle=True, seed=3) for _ in range(2))
    ea = [np.concatenate(epoch(a)) for _ in range(3)]
    eb = [np.concatenate(epoch(b)) for _ in range(3)]
    assert all(np.array_equal(u, v) for u, v in zip(ea, eb))
    assert not np.array_equal(ea[0], ea[1]) and not np.array_equal(ea[1], ea[2])
    c = DataLoader(make_ds(50), batch_size=8, shuffle=True, seed=4)
    assert not np.array_equal(np.concatenate(epoch(c)), ea[0])


def test_generator_argument():
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    a = DataLoader(make_ds(), batch_size=4, shuffle=True, generator=g1)
    b = DataLoader(make_ds(), batch_size=4, shuffle=True, generator=g2)
    assert all(np.array_equal(u, v) for u, v in zip(epoch(a), epoch(b)))
    with pytest.raises(ValueError): DataLoader(make_ds(), seed=1, generator=np.random.default_rng(1))
    with pytest.raises(TypeError): DataLoader(make_ds(), generator=np.random.RandomState(1))


class ListDataset(Dataset):
    "A dataset that is not a TensorDataset: goes through the generic, item-by-item path."
    def __init__(self, X, y): self.X, self.y = X, y
    def __len__(self): return len(self.X)
    def __getitem__(self, i): return self.X[i], int(self.y[i])


def test_generic_path_equals_fast_path():
    X, y = np.random.default_rng(0).standard_normal((11, 2, 3)), np.arange(11) % 4
    fast = DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True, seed=2)
    slow = DataLoader(ListDataset(X, y), batch_size=4, shuffle=True, seed=2)
    for _ in range(2):
        for (xf, yf), (xs, ys) in zip(fast, slow, strict=True):
            assert np.array_equal(xf, xs) and np.array_equal(yf, ys) and xs.shape[1:] == (2, 3)


def test_default_collate_structures():
    t = default_collate([(np.ones(2), 1), (np.zeros(2), 2)])
    assert isinstance(t, tuple) and t[0].shape == (2, 2) and np.array_equal(t[1], [1, 2])
    d = default_collate([{"a": np.ones(3)}, {"a": np.zeros(3)}])
    assert d["a"].shape == (2, 3)


def test_collate_fn_is_used():
    loader = DataLoader(ListDataset(np.arange(6.0), np.arange(6)), batch_size=3, collate_fn=lambda items: len(items))
    assert list(loader) == [3, 3]


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, None, "4"])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size should be a positive integer value"):
        DataLoader(make_ds(), batch_size=bad)


def test_bad_flags():
    with pytest.raises(TypeError, match="shuffle"): DataLoader(make_ds(), shuffle="yes")
    with pytest.raises(TypeError, match="drop_last"): DataLoader(make_ds(), drop_last=1)


@pytest.mark.parametrize("stop_after", [0, 1, 3])
def test_resume_mid_epoch_through_json(stop_after):
    "The saved state goes through JSON (as in a checkpoint) and a fresh loader continues the same sequence."
    a = DataLoader(make_ds(23), batch_size=4, shuffle=True, seed=11)
    epoch(a)                                              # one full epoch first: state after epoch 1
    it = iter(a)
    for _ in range(stop_after): next(it)
    saved = json.loads(json.dumps(a.state_dict()))
    rest_a = [xb for xb, _ in it] + epoch(a) + epoch(a)
    b = DataLoader(make_ds(23), batch_size=4, shuffle=True, seed=999)
    b.load_state_dict(saved)
    rest_b = epoch(b) + epoch(b) + epoch(b)
    assert len(rest_a) == len(rest_b)
    assert all(np.array_equal(u, v) for u, v in zip(rest_a, rest_b))


def test_state_after_a_full_epoch_is_the_next_epochs_start():
    a = DataLoader(make_ds(), batch_size=3, shuffle=True, seed=0)
    epoch(a)
    saved = a.state_dict()
    assert saved["batches_done"] == 0
    nxt = epoch(a)
    b = DataLoader(make_ds(), batch_size=3, shuffle=True, seed=1)
    b.load_state_dict(saved)
    assert all(np.array_equal(u, v) for u, v in zip(nxt, epoch(b), strict=True))


def test_load_state_dict_validates_before_changing_anything():
    a = DataLoader(make_ds(), batch_size=3, shuffle=True, seed=0)
    before = a.generator.bit_generator.state
    good = a.state_dict()
    for bad in ({}, {**good, "batches_done": 4}, {**good, "batches_done": -1},
                {**good, "generator": {"bit_generator": "MT19937"}}, {**good, "extra": 1}):
        with pytest.raises(ValueError): a.load_state_dict(bad)
    assert a.generator.bit_generator.state == before
