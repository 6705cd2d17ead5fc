"""ArrayDataset, the seeded stratified split, and the digits dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from filterprune.data import (
    ArrayDataset,
    DataSplits,
    channel_stats,
    load_data,
    split_train_val,
    stratified_split,
)
from filterprune.data.synthetic import synthetic_dataset
from filterprune.errors import DataError


def _labels(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_stratified_split_sizes_disjoint_and_per_class():
    labels = np.random.default_rng(0).permutation(_labels([5000] * 10))
    rest, held = stratified_split(labels, 0.1, seed=0)
    assert len(rest) == 45000 and len(held) == 5000
    assert np.intersect1d(rest, held).size == 0
    assert np.array_equal(np.sort(np.concatenate([rest, held])), np.arange(50000))
    assert np.bincount(labels[held], minlength=10).tolist() == [500] * 10
    assert np.all(np.diff(rest) > 0) and np.all(np.diff(held) > 0)  # sorted, original order kept


def test_stratified_split_uneven_classes_hits_total_and_stays_proportional():
    labels = _labels([7, 13, 1, 29])
    rest, held = stratified_split(labels, 0.25, seed=3)
    assert len(held) == round(0.25 * len(labels))
    per_class = np.bincount(labels[held], minlength=4)
    assert np.all(np.abs(per_class - 0.25 * np.array([7, 13, 1, 29])) < 1)


def test_stratified_split_is_deterministic_and_seed_dependent():
    labels = _labels([100] * 5)
    a = stratified_split(labels, 0.2, seed=7)[1]
    assert np.array_equal(a, stratified_split(labels, 0.2, seed=7)[1])
    assert not np.array_equal(a, stratified_split(labels, 0.2, seed=8)[1])


def test_stratified_split_matches_a_pinned_result():
    # Pins the documented recipe (PCG64 keys, smallest keys held out per class) ...
    keys = np.random.default_rng(0).random(10)
    labels = np.array([0, 1] * 5)
    expected = sorted([*np.flatnonzero(labels == 0)[np.argsort(keys[labels == 0])[:1]],
                       *np.flatnonzero(labels == 1)[np.argsort(keys[labels == 1])[:1]]])  # fmt: skip
    assert stratified_split(labels, 0.2, seed=0)[1].tolist() == expected
    # ... and the numbers themselves: if numpy ever changes the stream, every saved val split changes.
    assert stratified_split(np.arange(20) % 2, 0.2, seed=0)[1].tolist() == [2, 3, 11, 18]
    assert stratified_split(np.arange(20) % 2, 0.2, seed=12345)[1].tolist() == [0, 7, 10, 13]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_bad_fraction(fraction):
    with pytest.raises(DataError, match="val_fraction"):
        stratified_split(_labels([10, 10]), fraction, seed=0)


def test_split_train_val_returns_disjoint_subsets():
    ds = synthetic_dataset(60, num_classes=3, image_size=4)
    train, val = split_train_val(ds, 0.2, seed=1)
    assert (len(train), len(val)) == (48, 12)
    assert val.class_counts() == [4, 4, 4]
    # identify images by their pixels: every image lands in exactly one split
    key = {bytes(img.numpy().tobytes()) for img in ds.images}
    got = [bytes(img.numpy().tobytes()) for img in torch.cat([train.images, val.images])]
    assert len(got) == len(set(got)) == len(key) and set(got) == key
    assert train.mean == ds.mean and val.pad == ds.pad and val.classes == ds.classes


def test_array_dataset_properties_and_subset():
    ds = synthetic_dataset(12, num_classes=4, image_size=6, in_chans=2)
    assert (len(ds), ds.num_classes, ds.in_chans, ds.image_size) == (12, 4, 2, 6)
    sub = ds.subset(torch.tensor([3, 0]))
    assert torch.equal(sub.images[0], ds.images[3]) and sub.labels.tolist() == [3, 0]
    assert sub.images.is_contiguous()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images": torch.zeros(2, 1, 4, 4)}, "uint8"),
        ({"labels": torch.zeros(3, dtype=torch.int64)}, "labels"),
        ({"labels": torch.tensor([0, 5])}, r"\[0, 2\)"),
        ({"mean": (0.5, 0.5)}, "per channel"),
        ({"images": torch.zeros(2, 1, 4, 5, dtype=torch.uint8)}, "square"),
        ({"std": (0.0,)}, "positive"),
    ],
)
def test_array_dataset_rejects_bad_fields(kwargs, match):
    fields = dict(images=torch.zeros(2, 1, 4, 4, dtype=torch.uint8), labels=torch.tensor([0, 1]),
                  classes=["a", "b"], mean=(0.5,), std=(0.5,))  # fmt: skip
    fields.update(kwargs)
    with pytest.raises(DataError, match=match) as e:
        ArrayDataset(**fields)
    assert "\n" not in str(e.value)


def test_channel_stats_matches_numpy():
    x = torch.randint(0, 256, (50, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(x, chunk=7)
    ref = x.numpy().astype(np.float64) / 255
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3))) and np.allclose(std, ref.std(axis=(0, 2, 3)))


def test_digits_splits():
    s = load_data("digits")
    assert isinstance(s, DataSplits) and s.name == "digits"
    assert (len(s.train), len(s.val), len(s.test)) == (1294, 144, 359)
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert (s.train.in_chans, s.train.image_size, s.train.num_classes) == (1, 8, 10)
    assert (s.train.pad, s.train.flip) == (1, False)
    assert s.train.images.max() == 255  # 16 -> 255
    assert s.train.mean == s.val.mean == s.test.mean
    assert np.allclose(s.train.mean, channel_stats(s.train.images)[0])  # from the train split only
    assert s.describe() == "digits: train 1294, val 144, test 359 (10 classes, 1x8x8)"


def test_digits_test_split_fixed_val_split_seeded():
    a, b, c = load_data("digits", seed=0), load_data("digits", seed=0), load_data("digits", seed=1)
    assert torch.equal(a.test.images, c.test.images)  # test never depends on the seed
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert len(load_data("digits", val_fraction=0.25).val) == round(0.25 * 1438)


def test_digits_pixel_mapping():
    from sklearn.datasets import load_digits

    d = load_digits()
    s = load_data("digits")
    every = torch.cat([s.train.images, s.val.images, s.test.images]).flatten(1).numpy()
    expected = np.rint(d.data * 255 / 16).astype(np.uint8)
    as_set = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert as_set(every) == as_set(expected)


@pytest.mark.parametrize("spec", ["nope", "digits:x", "/no/such/path"])
def test_bad_specs_raise_one_line_data_error(spec):
    with pytest.raises(DataError) as e:
        load_data(spec)
    assert "\n" not in str(e.value) and "pass" in str(e.value)

def test_sample_is_seeded_distinct_and_drawn_from_the_whole_set():
    ds = synthetic_dataset(60, num_classes=3, image_size=4)
    a, b = ds.sample(15, seed=2), ds.sample(15, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, ds.sample(15, seed=3).images)
    rows = {bytes(img.numpy().tobytes()) for img in ds.images}
    got = [bytes(img.numpy().tobytes()) for img in a.images]
    assert len(a) == 15 and len(set(got)) == 15 and set(got) <= rows
    assert not torch.equal(a.images, ds.images[:15])  # not the first rows
    assert len(ds.sample(100, seed=0)) == 60
