"""Optimizer parameter groups and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, no_decay: set[str] | None = None) -> torch.optim.SGD:
    """SGD with momentum/Nesterov; no weight decay on BatchNorm parameters, biases or ``no_decay`` names."""
    no_decay = no_decay or set()
    decay, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (rest if p.ndim <= 1 or name in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at optimizer step ``step``: linear warm-up, then cosine, step or constant.

    Stateless, so a resumed run needs only the step count.

    >>> cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=1, schedule="cosine")
    >>> lr_at(cfg, 0, 100), lr_at(cfg, 100, 100), round(lr_at(cfg, 550, 100), 4)
    (0.001, 0.1, 0.05)
    """
    epoch = step / steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    total = cfg.epochs * steps_per_epoch - warmup_steps
    progress = (step - warmup_steps) / max(total, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
