"""Pooled layer outputs as a design matrix: one row per image, one column per (layer, channel).

:func:`iter_pooled` runs the model (eval mode, no grad) over ``(x, y)`` batches with forward hooks
on the requested modules; each hook reduces its output to one number per image and channel (global
max or average over every spatial position) and writes it into one float32 ``(B, F)`` batch buffer
that is yielded; feature maps are never kept beyond the hook. The PLS+VIP criterion folds each batch
into float64 cross products (:mod:`._pls_kernel`), so its memory does not grow with N;
:func:`collect_pooled` stacks the batches into one ``(N, F)`` matrix (N x F x 4 bytes) for the
data-matrix reference path (:func:`._pls.pls2`).

Sampling. With ``samples=N`` the first images of each class in the data order are taken, N // K per
class (the first N % K classes one more), K being the number of classes; images past their class'
quota are dropped before the forward pass, and reading stops once N rows are filled. With
``samples=None`` every image of the iterable is used; the matrix is then sized from ``len(data)``
times the first batch's size, so the iterable must have a length.

A module called several times per forward pass (shared weights) gets the max (max pooling) or the
mean (average pooling) of its calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.modes import evaluating
from ..utils.progress import progress
from .base import ScoringError

logger = logging.getLogger(__name__)

POOLINGS = ("max", "avg")


@dataclass(frozen=True)
class Block:
    """Columns read from one module's output.

    Attributes:
        module: qualified module name.
        channels: channel of the module output read by each column.
        relu: apply ReLU before pooling.
    """

    module: str
    channels: tuple[int, ...]
    relu: bool = False


def _pool(out: Tensor, module: nn.Module, channels: Tensor, pooling: str, relu: bool) -> Tensor:
    """``out`` reduced to ``(B, len(channels))``: channel dim 1 (last for Linear), the rest pooled."""
    if isinstance(module, nn.Linear):
        out = out.movedim(-1, 1)  # (B, C, ...)
    if relu:
        out = F.relu(out)
    if out.dim() > 2:
        flat = out.flatten(2)  # (B, C, positions)
        out = flat.amax(2) if pooling == "max" else flat.mean(2)  # (B, C)
    return out.index_select(1, channels).float()  # pooled first: no copy of the feature map


def _quotas(samples: int, num_classes: int | None) -> tuple[Tensor | None, int]:
    if num_classes is None or num_classes < 1:
        return None, 0
    quota = torch.full((num_classes,), samples // num_classes, dtype=torch.long)
    quota[: samples % num_classes] += 1
    return quota, samples // num_classes + 1  # per-class quota; quota of labels >= num_classes


def _share(quota: Tensor, rank: int, world: int) -> Tensor:
    """Rank ``rank``'s part of the per-class ``quota`` over ``world`` ranks: ``quota // world`` each, and
    the leftovers (``quota % world`` per class, in class order) dealt out one per rank in turn from rank 0,
    so every rank's quotas add up to its share of the samples (``samples // world``, one more on the
    first ``samples % world`` ranks) and the ranks together take every class's quota."""
    extra = quota % world
    ends = torch.cumsum(extra, 0)
    starts = ends - extra
    # leftover units k in [start, end) of a class go to rank k % world: count those equal to ``rank``
    mine = (ends - 1 - rank).div(world, rounding_mode="floor") - (starts - 1 - rank).div(world, rounding_mode="floor")
    return quota // world + mine


def _capacity(data: Iterable, first: Tensor, samples: int | None) -> int:
    if samples is not None:
        return samples
    try:
        return len(data) * first.shape[0]  # type: ignore[arg-type]
    except TypeError:
        raise ScoringError("pls-vip: the data iterable has no len(); pass samples=N") from None


def iter_pooled(
    model: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    blocks: Sequence[Block],
    *,
    samples: int | None = None,
    pooling: str = "max",
    device: torch.device | str = "cpu",
    num_classes: int | None = None,
    shard: tuple[int, int] = (0, 1),
    interleave: bool = True,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Pooled outputs of ``blocks``, one batch at a time: yields ``(x, y)``, ``(b, F)`` float32 and ``(b,)`` int64.

    Only one batch of features lives at a time. Arguments as :func:`collect_pooled`, plus

    Args:
        shard: ``(rank, world)``: this process reads batches ``rank, rank + world, ...`` of ``data``
            (every image read by exactly one process) and takes its share of ``samples`` and of
            every class quota (``quota // world``, the first ``quota % world`` ranks one more).
        interleave: read only every ``world``-th batch; ``False`` when ``data`` already is this
            process's shard (a loader built with ``shard=``), so only the quotas are split.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    rank, world = shard
    offsets, start = [], 0
    for b in blocks:
        offsets.append(start)
        start += len(b.channels)
    width = start
    by_module: dict[str, list[int]] = {}
    for i, b in enumerate(blocks):
        by_module.setdefault(b.module, []).append(i)
    chan = [torch.tensor(b.channels, dtype=torch.long, device=device) for b in blocks]
    if samples is not None and world > 1:
        quota, other_quota = _quotas(samples, num_classes)
        quota = None if quota is None else _share(quota, rank, world)
        other_quota = -(-other_quota // world)
        samples = samples // world + (rank < samples % world)
    else:
        quota, other_quota = _quotas(samples, num_classes) if samples is not None else (None, 0)
    taken = torch.zeros(0 if quota is None else len(quota), dtype=torch.long)
    taken_other: dict[int, int] = {}
    state: dict = {"buf": None, "calls": {}}

    def hook_for(name: str):
        module = model.get_submodule(name)

        def hook(mod, inputs, out):
            calls = state["calls"]
            calls[name] = calls.get(name, 0) + 1
            for i in by_module[name]:
                block = blocks[i]
                pooled = _pool(out, module, chan[i], pooling, block.relu).cpu()  # (B, C_block)
                dst = state["buf"][:, offsets[i]:offsets[i] + len(block.channels)]
                if calls[name] == 1:
                    dst.copy_(pooled)
                elif pooling == "max":
                    torch.maximum(dst, pooled, out=dst)
                else:
                    dst.add_(pooled)  # divided by the call count after the forward pass
        return hook

    n = 0
    handles = [model.get_submodule(name).register_forward_hook(hook_for(name)) for name in by_module]
    try:
        with evaluating(model):  # eval mode, no grad, flags restored
            # reading stops early with ``samples``: no total, so no misleading ETA then
            total = None
            if samples is None:
                with suppress(TypeError):  # a DataLoader over an IterableDataset has __len__ but no length
                    total = len(data)  # type: ignore[arg-type]
            for index, (x, y) in enumerate(progress(data, total=total, desc="pls-vip features", unit="batch")):
                if interleave and index % world != rank:
                    continue
                y = y.detach().cpu().long()
                keep = _select(y, quota, other_quota, taken, taken_other, samples, n)
                if keep is not None and len(keep) == 0:
                    if samples is not None and n >= samples:
                        break
                    continue
                if keep is not None:
                    x, y = x[keep.to(x.device)], y[keep]
                state["buf"], state["calls"] = torch.empty(len(y), width, dtype=torch.float32), {}
                model(x.to(device))
                buf = state["buf"]
                if pooling == "avg":
                    for name, count in state["calls"].items():
                        if count > 1:
                            for i in by_module[name]:
                                buf[:, offsets[i]:offsets[i] + len(blocks[i].channels)].div_(count)
                state["buf"] = None
                n += len(y)
                yield buf, y
                if samples is not None and n >= samples:
                    break
    finally:
        for h in handles:
            h.remove()
    if samples is not None and n < samples:
        logger.info("pls-vip: data ran out after %d of %d requested images", n, samples)


def collect_pooled(
    model: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    blocks: Sequence[Block],
    *,
    samples: int | None = None,
    pooling: str = "max",
    device: torch.device | str = "cpu",
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Pooled outputs of ``blocks`` over the images of ``data``, as one matrix.

    Args:
        model: the network; run in eval mode under ``torch.no_grad``, its train/eval flags restored.
        data: ``(x, y)`` batches.
        blocks: the columns, in order.
        samples: number of images, class-stratified (module docstring); ``None`` for all.
        pooling: ``"max"`` or ``"avg"`` over spatial positions.
        device: where batches are moved for the forward pass.
        num_classes: classes to stratify over; ``None`` takes the first ``samples`` images.

    Returns:
        ``(X, y)``: ``X`` ``(n, F)`` float32 and ``y`` ``(n,)`` int64, both on the CPU, ``n`` being
        the images actually read (fewer than ``samples`` if the data ran out).

    Raises:
        ScoringError: no image was read, or ``samples=None`` with an iterable of unknown length.
    """
    x_mat: Tensor | None = None
    labels: Tensor | None = None
    n = 0
    batches = iter_pooled(model, data, blocks, samples=samples, pooling=pooling, device=device,
                          num_classes=num_classes)
    with closing(batches):  # the hooks go when we stop early
        for feats, y in batches:
            if x_mat is None:
                cap = _capacity(data, y, samples)
                x_mat = torch.empty(cap, feats.shape[1], dtype=torch.float32)  # the one design matrix
                labels = torch.empty(cap, dtype=torch.long)
            b = min(len(y), x_mat.shape[0] - n)
            if b < len(y):
                logger.warning("pls-vip: more images than len(data) promised; using the first %d", x_mat.shape[0])
            x_mat[n:n + b], labels[n:n + b] = feats[:b], y[:b]
            n += b
            if n >= x_mat.shape[0]:
                break
    if x_mat is None or n == 0:
        raise ScoringError("pls-vip: the data yielded no image")
    return x_mat[:n], labels[:n]


def _select(y: Tensor, quota: Tensor | None, other_quota: int, taken: Tensor, taken_other: dict[int, int],
            samples: int | None, n: int) -> Tensor | None:
    """Positions of the batch to keep (``None``: all), updating the per-class counts."""
    if samples is None:
        return None
    room = max(0, samples - n)
    if quota is None:
        return torch.arange(min(len(y), room))
    keep = []
    for i, label in enumerate(y.tolist()):
        if len(keep) >= room:
            break
        if 0 <= label < len(quota):
            if taken[label] < quota[label]:
                taken[label] += 1
                keep.append(i)
        elif taken_other.get(label, 0) < other_quota:  # a label the model has no output for
            taken_other[label] = taken_other.get(label, 0) + 1
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long)
