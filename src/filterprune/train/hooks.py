"""Training-time methods change the loop through hooks, not by forking it.

The slot that matters is :meth:`TrainHook.after_backward`: called after ``loss.backward()`` (and after
grad-scaler unscaling under fp16) and before ``optimizer.step()``, e.g. to rewrite ``.grad`` as C-SGD does.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class TrainHook:
    """Base class with no-op callbacks; override the ones a method needs."""

    def no_weight_decay(self, model: nn.Module) -> set[str]:
        """Parameter names the optimizer must not decay (the hook applies its own decay)."""
        return set()

    def on_fit_start(self, model: nn.Module, optimizer: Any) -> None:
        """Once, before the first step (and again after a resume)."""

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Every step, between backward and the optimizer step."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """After each training epoch; returned values are logged to ``metrics.jsonl``."""
        return {}
