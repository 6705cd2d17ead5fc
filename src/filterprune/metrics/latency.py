"""Inference latency: warm-up, then timed forwards under ``torch.inference_mode()``; median and IQR.

On CPU each forward is timed with ``time.perf_counter``; on CUDA with a pair of CUDA events around it
and a synchronize (so the time is the GPU's, not the launch's). Latency depends on the machine, the
thread count (reported) and what else runs on it: compare numbers from one machine and one run only.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..utils.modes import evaluating

logger = logging.getLogger(__name__)

__all__ = ["measure_latency", "measure_side_by_side"]


def _sample_shape(example: Tensor | Sequence[int]) -> tuple[int, ...]:
    shape = tuple(example.shape) if isinstance(example, Tensor) else tuple(int(s) for s in example)
    if len(shape) < 2:
        raise ValueError(f"need a batched input or shape (batch, ...), got {shape}")
    return shape[1:]


def _time_once(model: nn.Module, x: Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)  # ms
    t0 = time.perf_counter()
    model(x)
    return (time.perf_counter() - t0) * 1e3


def measure_latency(
    model: nn.Module,
    example_inputs_or_shape: Tensor | Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 10,
    repeats: int = 30,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Time one forward per repeat at each batch size.

    Args:
        model: the network; its train/eval flags are restored afterwards. It is timed in eval mode.
        example_inputs_or_shape: a batched tensor or a shape ``(batch, C, H, W)``; dim 0 is replaced by
            each of ``batch_sizes`` and inputs are seeded random normals of that shape.
        batch_sizes: batch sizes to time.
        warmup: untimed forwards before timing each batch size.
        repeats: timed forwards per batch size.
        device: where to time; ``None`` for the model's device. A different device times a copy.
        seed: seeds the random inputs.

    Returns:
        ``{str(batch_size): {"batch_size", "median_ms", "iqr_ms", "repeats", "threads", "device"}}``;
        string keys so the result is JSON as it is. ``iqr_ms`` is the 75th minus the 25th percentile.

    Raises:
        ValueError: a non-positive batch size or repeat count, or a negative warm-up.

    >>> r = measure_latency(nn.Linear(4, 2), (1, 4), batch_sizes=(1,), warmup=1, repeats=3)
    >>> sorted(r["1"])
    ['batch_size', 'device', 'iqr_ms', 'median_ms', 'repeats', 'threads']
    """
    if repeats < 1 or warmup < 0 or not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"need repeats >= 1, warmup >= 0, batch sizes >= 1 (got {repeats}, {warmup}, {batch_sizes})")
    shape = _sample_shape(example_inputs_or_shape)
    dtype = example_inputs_or_shape.dtype if isinstance(example_inputs_or_shape, Tensor) else torch.float32
    p = next(model.parameters(), None)
    model_device = p.device if p is not None else torch.device("cpu")
    dev = torch.device(device) if device is not None else model_device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    net = model if dev == model_device else copy.deepcopy(model).to(dev)
    gen = torch.Generator().manual_seed(seed)
    results: dict[str, dict[str, Any]] = {}
    with evaluating(net), torch.inference_mode():
        for bs in batch_sizes:
            x = torch.randn(bs, *shape, generator=gen).to(device=dev, dtype=dtype)
            for _ in range(warmup):
                net(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times = [_time_once(net, x, dev) for _ in range(repeats)]
            q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
            results[str(bs)] = {
                "batch_size": bs,
                "median_ms": statistics.median(times),
                "iqr_ms": q3 - q1,
                "repeats": repeats,
                "threads": torch.get_num_threads(),
                "device": str(dev),
            }
            logger.debug("latency b=%d: %.3f ms (IQR %.3f)", bs, results[str(bs)]["median_ms"], q3 - q1)
    return results


def measure_side_by_side(models: dict[str, nn.Module], example_inputs: Tensor, *, rounds: int = 15,
                         repeats: int = 10, warmup: int = 3,
                         timer: Callable[[nn.Module, Tensor], float] | None = None) -> dict[str, Any]:
    """Time several models in interleaved rounds so that machine noise hits them alike.

    Each round times every model (``repeats`` forwards after ``warmup``, median kept), in an order
    rotated by one model per round; the first model is the reference. Per model the result holds the
    round medians, their median, and the median over rounds of the per-round ratio to the reference
    (drift between rounds cancels in a ratio taken within one round).

    Args:
        models: ``{name: model}``, the reference first; each runs in eval mode (flags restored).
        example_inputs: the batch, on the models' device.
        rounds: interleaved rounds.
        repeats: timed forwards per model per round.
        warmup: untimed forwards per model per round.
        timer: ``timer(module, x) -> seconds`` of one forward (default: ``perf_counter``/CUDA events).

    Returns:
        ``{"rounds", "repeats", "threads", "device", "models": {name: {"round_ms", "median_ms",
        "ratio", "reduction"}}}`` where ``ratio`` is the median per-round time ratio to the reference and
        ``reduction = 1 - ratio``.

    Raises:
        ValueError: no model, or ``rounds``/``repeats`` < 1.

    >>> r = measure_side_by_side({"a": nn.Linear(4, 2), "b": nn.Linear(4, 1)}, torch.randn(2, 4), rounds=2, repeats=2)
    >>> sorted(r["models"]["b"])
    ['median_ms', 'ratio', 'reduction', 'round_ms']
    """
    from .latency_table import median_time

    if not models or rounds < 1 or repeats < 1:
        raise ValueError(f"need at least one model, rounds >= 1 and repeats >= 1 (got {len(models)}, {rounds}, {repeats})")
    names = list(models)
    per: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            per[n].append(1e3 * median_time(models[n], example_inputs, warmup=warmup, repeats=repeats, timer=timer))
    ref = per[names[0]]
    out: dict[str, Any] = {"rounds": rounds, "repeats": repeats, "threads": torch.get_num_threads(),
                           "device": str(example_inputs.device), "models": {}}
    for n in names:
        ratio = statistics.median(t / max(b, 1e-12) for t, b in zip(per[n], ref, strict=True))
        out["models"][n] = {"round_ms": per[n], "median_ms": statistics.median(per[n]), "ratio": ratio,
                            "reduction": 1 - ratio}
    return out
