"""Shared pieces of the C-SGD tests: a seeded random-data loader, a DataParallel-like wrapper, and a
plain-SGD recipe under which the clusters collapse in a few dozen steps."""

from __future__ import annotations

import torch
from torch import nn

from filterprune.config import TrainConfig


class RandomLoader:
    """``steps`` batches of seeded random images and labels (the same every epoch)."""

    def __init__(self, shape, steps: int, batch: int = 4, num_classes: int = 10, seed: int = 0) -> None:
        self.shape, self.steps, self.batch, self.num_classes, self.seed = tuple(shape), steps, batch, num_classes, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.steps):
            yield (torch.randn(self.batch, *self.shape, generator=g),
                   torch.randint(0, self.num_classes, (self.batch,), generator=g))


class Wrapper(nn.Module):
    """Like ``nn.DataParallel`` on one device: the model sits under ``module.``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, x):
        return self.module(x)


def plain_sgd(epochs: int = 1, lr: float = 0.01, weight_decay: float = 1e-4, momentum: float = 0.0) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, schedule="constant",
                       device="cpu", amp="off")


def fast_bn(model: nn.Module, momentum: float = 0.5) -> nn.Module:
    """Running statistics that forget the (randomised) start within a few dozen steps."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    return model
