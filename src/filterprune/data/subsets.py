"""Fixed, seeded subsets of the splits: quick runs (``--train-images N``, ``--eval-images N``).

A subset keeps every class in proportion (:func:`~filterprune.data.dataset.stratified_split`: the
per-class counts are apportioned by largest remainder, so a subset of N has exactly N images), and
depends only on the split, N and the seed: every run that asks for the same N sees the same images,
on every machine. The validation split is carved from the training data before any subset is taken,
so a training subset never overlaps it.

>>> import torch
>>> from filterprune.data import ArrayDataset
>>> ds = ArrayDataset(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.arange(100) % 4,
...                   ["a", "b", "c", "d"], (0.0,), (1.0,))
>>> part = fixed_subset(ds, 20, seed=0)
>>> len(part), part.class_counts()
(20, [5, 5, 5, 5])
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .dataset import DataSplits, stratified_split

__all__ = ["fixed_subset", "subset_splits"]

#: The seed of every quick-mode subset: fixed, not the run's ``--seed``, so that runs with different
#: seeds (or methods) are evaluated on the same images.
SUBSET_SEED = 0


def fixed_subset(ds: Any, n: int, seed: int = SUBSET_SEED) -> Any:
    """``n`` images of ``ds`` (an ``ArrayDataset`` or a streamed ``FolderDataset``), stratified by class,
    seeded, in the split's order; ``ds`` itself when ``n`` is 0 or not below ``len(ds)``.

    Raises:
        ValueError: ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"a subset size must be >= 0, got {n}")
    if n == 0 or n >= len(ds):
        return ds
    labels = np.asarray(ds.labels.cpu() if isinstance(ds.labels, torch.Tensor) else ds.labels)
    _, held = stratified_split(labels, n / len(ds), seed)
    return ds.subset(torch.from_numpy(held))


def subset_splits(splits: DataSplits, *, train_images: int = 0, eval_images: int = 0,
                  seed: int = SUBSET_SEED) -> DataSplits:
    """``splits`` with at most ``train_images`` training images and at most ``eval_images`` images in
    each of validation and test (0 keeps a split whole); see :func:`fixed_subset`."""
    test = fixed_subset(splits.test, eval_images, seed) if splits.test is not None else None
    return replace(splits, train=fixed_subset(splits.train, train_images, seed),
                   val=fixed_subset(splits.val, eval_images, seed), test=test)
