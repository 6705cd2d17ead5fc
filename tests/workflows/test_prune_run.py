"""``run_prune``'s data plumbing: CAR scores on one fixed, class-mixed, un-augmented training subset."""

from __future__ import annotations

import torch

from filterprune.config import PruneConfig, PruneRunConfig
from filterprune.data import BatchLoader, load_data
from filterprune.workflows._scored import car_eval_loader as _car_eval_loader


def _images(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_car_eval_set_is_fixed_unaugmented_and_mixed():
    splits = load_data("digits", val_fraction=0.1, seed=0)
    cfg = PruneRunConfig(prune=PruneConfig(criterion="car", criterion_options="eval_images=200", seed=3))
    x1, y1 = _images(_car_eval_loader(splits, cfg, "cpu"))
    x2, y2 = _images(_car_eval_loader(splits, cfg, "cpu"))
    assert x1.shape[0] == 200 and torch.equal(x1, x2) and torch.equal(y1, y2)  # same images every step
    assert len(set(y1.tolist())) == 10  # a sample of every class, not the split's first rows
    every, _ = _images(BatchLoader(splits.train, 256, train=False))  # the training split as stored
    stored = {bytes(r.numpy()) for r in every.reshape(len(every), -1)}
    assert all(bytes(r.numpy()) in stored for r in x1.reshape(len(x1), -1))  # no crop or flip applied
