"""Probes for device handling that run on a CPU-only machine.

* :func:`tf32_enabled` / :func:`record_tf32`: turn TF32 on (PyTorch's GPU default) and record, per
  forward of a module, the two TF32 flags in effect, so a test can assert a comparison ran in full fp32
  and that the caller's flags came back.
* :func:`stop_at_first_evaluation`: swap a workflow module's training device for ``meta`` and stop at
  its first ``evaluate`` call, recording where the model's weights were and which device was asked
  for: a model left on the CPU while the run trains on another device shows as ``(cpu, meta)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def tf32_flags() -> tuple[bool, bool]:
    """(cuDNN convolutions, CUDA matmuls) TF32 flags."""
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@contextlib.contextmanager
def tf32_enabled() -> Iterator[None]:
    """Both TF32 flags on inside the block; the previous flags restored after."""
    before = tf32_flags()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def record_tf32(module: nn.Module) -> list[tuple[bool, bool]]:
    """A list that gets :func:`tf32_flags` appended at every forward of ``module``."""
    seen: list[tuple[bool, bool]] = []
    module.register_forward_pre_hook(lambda *_: seen.append(tf32_flags()))
    return seen


class StopRun(Exception):
    """Raised by the first evaluation under :func:`stop_at_first_evaluation`."""


def stop_at_first_evaluation(monkeypatch, module) -> list[tuple[torch.device, torch.device]]:
    """Patch ``module.pick_device`` to ``meta`` and ``module.evaluate`` to record
    ``(device of the model's weights, device asked for)`` and raise :class:`StopRun`."""
    seen: list[tuple[torch.device, torch.device]] = []

    def first_evaluation(model, loader, device, *args, **kwargs):
        seen.append((next(model.parameters()).device, torch.device(device)))
        raise StopRun

    monkeypatch.setattr(module, "pick_device", lambda _device: torch.device("meta"))
    monkeypatch.setattr(module, "evaluate", first_evaluation)
    return seen
