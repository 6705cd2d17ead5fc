"""Quick-mode subsets: exact size, class proportions, fixed by the seed, inside the split they come from."""

from __future__ import annotations

import pytest
import torch

from filterprune.data import ArrayDataset, DataSplits, load_data
from filterprune.data.subsets import fixed_subset, subset_splits


def _ds(labels) -> ArrayDataset:
    labels = torch.as_tensor(labels)
    images = torch.arange(len(labels), dtype=torch.int64).remainder(256).to(torch.uint8).view(-1, 1, 1, 1)
    return ArrayDataset(images.expand(-1, 1, 2, 2).contiguous(), labels, ["a", "b", "c"], (0.0,), (1.0,))


def test_size_and_class_proportions_are_exact():
    labels = [0] * 60 + [1] * 30 + [2] * 10  # class-ordered, unbalanced
    part = fixed_subset(_ds(labels), 20)
    assert len(part) == 20
    assert part.class_counts() == [12, 6, 2]  # 20 x (0.6, 0.3, 0.1)


def test_same_seed_same_images_other_seed_other_images():
    ds = _ds(torch.arange(300) % 3)
    a, b, c = fixed_subset(ds, 30), fixed_subset(ds, 30), fixed_subset(ds, 30, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_whole_split_when_n_is_zero_or_not_smaller():
    ds = _ds(torch.arange(9) % 3)
    assert fixed_subset(ds, 0) is ds and fixed_subset(ds, 9) is ds and fixed_subset(ds, 50) is ds
    with pytest.raises(ValueError, match=">= 0"):
        fixed_subset(ds, -1)


def test_subset_splits_on_digits_stays_inside_each_split():
    splits = load_data("digits")
    quick = subset_splits(splits, train_images=200, eval_images=50)
    assert (len(quick.train), len(quick.val), len(quick.test)) == (200, 50, 50)

    def rows(ds):
        return {tuple(img.flatten().tolist()) + (int(y),) for img, y in zip(ds.images, ds.labels, strict=True)}

    assert rows(quick.train) <= rows(splits.train) and rows(quick.val) <= rows(splits.val)
    assert rows(quick.test) <= rows(splits.test)
    assert subset_splits(splits, eval_images=50).train is splits.train  # 0: the whole split


def test_no_test_split():
    ds = _ds(torch.arange(30) % 3)
    quick = subset_splits(DataSplits(ds, ds, None, "x"), eval_images=6)
    assert quick.test is None and len(quick.val) == 6
