"""Deterministic stand-ins for the latency timers: no test asserts on a real clock.

A layer's "time" is its MACs in nanoseconds (conv, Linear) or 0.1 ns per output element (BatchNorm), and
a whole forward is the sum over those layers plus a fixed ``REST`` (ops the table does not time). So the
truth is known in closed form: a conv's time is ``in x out x (rest)``, exactly separable, linear in each
width, which makes the table's prediction exact (with ``rest="fixed"``) between grid points.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from filterprune.metrics.latency_table import TABLED

REST = 2e-6  # seconds of untimed ops per forward


def layer_costs(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, float], float]:
    """``({layer: seconds}, total seconds)`` of one forward under the closed-form model above."""
    per: dict[str, float] = {}
    handles = []

    def hook(name):
        def record(m, inputs, y):
            if isinstance(m, nn.modules.conv._ConvNd):
                per[name] = per.get(name, 0.0) + y.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size) * 1e-9
            elif isinstance(m, nn.Linear):
                per[name] = per.get(name, 0.0) + y.numel() * m.in_features * 1e-9
            else:
                per[name] = per.get(name, 0.0) + y.numel() * 1e-10
        return record

    for n, m in model.named_modules():
        if isinstance(m, TABLED):
            handles.append(m.register_forward_hook(hook(n)))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return per, sum(per.values()) + REST


def profiler(model: nn.Module, x: torch.Tensor, names) -> tuple[dict[str, float], float]:
    """A :data:`~filterprune.metrics.latency_table.Profiler` under the closed-form model."""
    per, total = layer_costs(model, x)
    return {n: per.get(n, 0.0) for n in names}, total


def timer(module: nn.Module, x: torch.Tensor) -> float:
    """A :data:`~filterprune.metrics.latency_table.Timer` under the closed-form model."""
    return layer_costs(module, x)[1]


def net() -> nn.Sequential:
    """conv(3->8) bn relu conv(8->12) bn relu conv(12->4): two prunable groups ("0": 8, "3": 12)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.Conv2d(12, 4, 1)).eval()
