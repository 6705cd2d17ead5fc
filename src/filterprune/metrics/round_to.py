"""Which channel multiple suits this device's conv kernels: ``round_to`` chosen from measurements.

CPU (oneDNN) and GPU (cuDNN, tensor cores) conv kernels work on blocks of channels (8 floats in an AVX2
register, 16 in AVX-512; multiples of 8 for tensor cores). A width that is not a multiple of the block
runs a partly empty block, so its time per MAC is higher than that of the next multiple up. This module
measures that, on the device and batch of the example input, for the conv shapes that dominate the
model's latency, and picks the multiple that pays.

Method. For each of the ``top`` conv shapes with as many inputs as outputs (the bulk of a ResNet) that
take the most time in the latency table (summed over the layers of that shape), both widths are set to every ``w`` from half the full width to the full
width, and ``t(w)`` is timed (median of ``repeats``; an ascending and a descending sweep averaged so
that drift cancels). Time per MAC is ``t(w) / w^2`` (MACs of the layer are proportional to
``in x out``). For a multiple ``m``, every ``w`` that is not a multiple is paired with ``u = ceil(w/m)*m``
and::

    gain(m) = median over pairs of [ (t(w) / w^2) / (t(u) / u^2) ] - 1

``gain(m) > 0``: widths that are multiples of ``m`` get more MACs done per second than their
neighbours. The choice is the multiple with the largest gain among those at least ``threshold`` (5%),
taking the smallest multiple whose gain is within ``0.02`` of the best (coarser multiples cost
selection freedom); ``1`` if none reaches the threshold. Multiples above half the narrowest prunable
group are not considered (that group could then only stay whole or halve).
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any

import torch
from torch import Tensor, nn

from .latency_table import LatencyTable, Timer, _layer_inputs, _rebuilt, median_time

logger = logging.getLogger(__name__)

__all__ = ["choose_round_to", "multiple_gains"]


def multiple_gains(seconds: dict[int, float], candidates: tuple[int, ...]) -> dict[int, float]:
    """``gain(m)`` (module docstring) for each candidate from ``{width: seconds}`` of a square layer.

    >>> t = {w: 1.0 * (-(-w // 8) * 8) ** 2 for w in range(8, 17)}  # staircase: the time of the next multiple of 8
    >>> round(multiple_gains(t, (1, 8))[8], 3)
    0.778
    """
    out = {}
    for m in candidates:
        ratios = []
        for w, t in seconds.items():
            u = math.ceil(w / m) * m
            if u != w and u in seconds:
                ratios.append((t / w**2) / (seconds[u] / u**2))
        out[m] = statistics.median(ratios) - 1 if ratios else 0.0
    return out


def choose_round_to(table: LatencyTable, model: nn.Module, example_inputs: Tensor, *,
                    candidates: tuple[int, ...] = (1, 4, 8, 16), narrowest: int | None = None, top: int = 3,
                    repeats: int = 9, warmup: int = 2, threshold: float = 0.05,
                    timer: Timer | None = None) -> tuple[int, dict[str, Any]]:
    """Measure per-MAC speed at channel multiples and pick ``round_to`` (module docstring).

    Args:
        table: the model's latency table (ranks the conv shapes by time).
        model: the model the table was measured on.
        example_inputs: the batch (device, batch size) to time on.
        candidates: the multiples compared.
        narrowest: the narrowest prunable group's width; multiples above half of it are left out.
        top: how many conv shapes are timed.
        repeats: timed forwards per width.
        warmup: untimed forwards per width.
        threshold: the smallest gain that makes a multiple worth it.
        timer: ``timer(module, x) -> seconds`` (a mock in tests).

    Returns:
        ``(round_to, evidence)``; evidence holds per shape the timed widths and seconds, the pooled
        gains per multiple and the rule used.
    """
    inputs = _layer_inputs(model, example_inputs)
    weight: dict[str, float] = {}
    first: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
    for name, info in table.layers.items():
        m, shape = inputs.get(name, (None, ()))
        if (isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and m.groups == 1
                and info["in"] == info["out"] >= 4):
            key = f"{shape}|k{m.kernel_size}|s{m.stride}|p{m.padding}".replace(" ", "")
            weight[key] = weight.get(key, 0.0) + info["seconds"]
            first.setdefault(key, (m, shape))
    shapes = sorted(weight, key=weight.get, reverse=True)[:top]
    allowed = tuple(c for c in candidates if c == 1 or narrowest is None or c <= narrowest // 2)
    evidence: dict[str, Any] = {"candidates": list(candidates), "allowed": list(allowed), "threshold": threshold,
                                "shapes": {}, "rule": "largest median per-MAC gain of multiples over the widths "
                                "just below them, >= threshold; smallest multiple within 0.02 of the best"}
    pooled: dict[int, list[float]] = {c: [] for c in allowed}
    dev, dtype = example_inputs.device, example_inputs.dtype
    for key in shapes:
        m, shape = first[key]
        full = m.in_channels
        widths = list(range(max(1, full // 2), full + 1))
        sweeps: dict[int, list[float]] = {w: [] for w in widths}
        for order in (widths, widths[::-1]):
            for w in order:
                layer = _rebuilt(m, w, w).to(dev, dtype)
                x = torch.randn(shape[0], w, *shape[2:], device=dev, dtype=dtype)
                sweeps[w].append(median_time(layer, x, warmup=warmup, repeats=repeats, timer=timer))
        seconds = {w: statistics.fmean(v) for w, v in sweeps.items()}
        gains = multiple_gains(seconds, allowed)
        for c, g in gains.items():
            pooled[c].append(g)
        evidence["shapes"][key] = {"weight_seconds": weight[key], "seconds": {str(w): s for w, s in seconds.items()},
                                   "gain": {str(c): g for c, g in gains.items()}}
    gain = {c: (statistics.median(v) if v else 0.0) for c, v in pooled.items()}
    evidence["gain"] = {str(c): g for c, g in gain.items()}
    worth = {c: g for c, g in gain.items() if c > 1 and g >= threshold}
    choice = 1
    if worth:
        best = max(worth.values())
        choice = min(c for c, g in worth.items() if g >= best - 0.02)
    evidence["round_to"] = choice
    logger.info("round_to=%d from measured per-MAC gains %s", choice,
                ", ".join(f"x{c}: {100 * g:+.1f}%" for c, g in gain.items()))
    return choice, evidence
