"""Airbench-style batch loader: the whole dataset on the device, augmentation as batched tensor ops.

Design (after KellerJordan/cifar10-airbench's ``CifarLoader``; written from scratch here):
    * the dataset is one uint8 tensor on the device; a batch is one gather, then one ``take`` that
      does crop and flip for every image at once, then a fused normalisation to float;
    * every random number of an epoch comes from a CPU ``torch.Generator`` seeded by
      ``(seed, epoch)``, so the batches depend only on those two numbers (and the torch version):
      resuming at an epoch boundary needs no saved loader state, and CPU and GPU runs see the same
      images in the same order with the same crops;
    * padding is with zero *pixels* (black, before normalisation), as torchvision's
      ``RandomCrop(32, padding=4)`` did for the pretrained CIFAR ResNets.

The module name says ``loader`` rather than the layout proposal's ``gpu_loader``: the same code is
the CPU path too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .dataset import ArrayDataset

__all__ = ["BatchLoader", "EpochPlan", "crop_flip", "epoch_seed"]


class EpochPlan(NamedTuple):
    """Everything random about one epoch, indexed by position in the epoch.

    Attributes:
        order: dataset index of the image at each position, ``(N,)`` int64.
        dy: crop row offset in the padded image, in ``[0, 2 * pad]``, ``(N,)``; ``None`` without cropping.
        dx: crop column offset, like ``dy``.
        flip: whether to mirror horizontally, ``(N,)`` bool; ``None`` without flipping.
    """

    order: torch.Tensor
    dy: torch.Tensor | None
    dx: torch.Tensor | None
    flip: torch.Tensor | None


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed derived from ``(seed, epoch)`` with numpy's ``SeedSequence``."""
    if seed < 0 or epoch < 0:
        raise DataError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    lo, hi = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32).tolist()
    return ((hi << 32) | lo) & (2**63 - 1)


def crop_flip(
    images: torch.Tensor,
    pad: int,
    dy: torch.Tensor | None,
    dx: torch.Tensor | None,
    flip: torch.Tensor | None,
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """Zero-pad each image by ``pad``, crop the original size at ``(dy, dx)``, mirror where ``flip``.

    One ``torch.take`` with a per-sample index does all of it; there is no per-image loop.

    Args:
        images: ``(B, C, H, W)``, any dtype.
        pad: padding on every side.
        dy: per-image row offsets into the padded image, ``(B,)`` in ``[0, 2 * pad]``; ``None``: ``pad``.
        dx: per-image column offsets, like ``dy``.
        flip: per-image horizontal-mirror flags ``(B,)``; ``None``: no mirroring.
        channels_last: return the result in channels-last memory format.

    Returns:
        ``(B, C, H, W)``, same dtype as ``images``.

    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> crop_flip(x, 1, torch.tensor([0]), torch.tensor([1]), torch.tensor([True])).flatten().tolist()
    [0.0, 0.0, 1.0, 0.0]
    """
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images.contiguous()  # (B, C, H+2p, W+2p)
    hp, wp = h + 2 * pad, w + 2 * pad
    dy = torch.full((b,), pad, device=dev) if dy is None else dy.to(dev)
    dx = torch.full((b,), pad, device=dev) if dx is None else dx.to(dev)
    rows = dy[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=dev)  # (B, W)
    if flip is not None:
        cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)  # mirroring = reading columns backwards
    img_base = (torch.arange(b, device=dev) * (c * hp * wp))[:, None, None, None]
    chan = torch.arange(c, device=dev) * (hp * wp)
    if channels_last:  # index laid out (B, H, W, C), so the permuted view is channels-last contiguous
        idx = img_base + rows[:, :, None, None] * wp + cols[:, None, :, None] + chan[None, None, None, :]
        return padded.take(idx).permute(0, 3, 1, 2)
    idx = img_base + chan[None, :, None, None] + rows[:, None, :, None] * wp + cols[:, None, None, :]
    return padded.take(idx)


class BatchLoader:
    """Yields normalised ``(x, y)`` batches of an :class:`ArrayDataset` held on ``device``.

    With ``train=True`` each epoch is shuffled and augmented (random crop after zero-padding by
    ``ds.pad``, random horizontal flip if ``ds.flip``); with ``train=False`` the order is fixed, there
    is no augmentation and the last partial batch is kept. Iterating runs the epoch set by
    :meth:`set_epoch` and then moves on to the next, so a bare ``for`` loop sees epochs 0, 1, 2...

    Args:
        ds: the data; copied to ``device`` once.
        batch_size: images per batch.
        train: shuffle and augment.
        device: where the data and the batches live.
        seed: with the epoch number, determines the order and the augmentation.
        drop_last: drop the last partial batch; defaults to ``train``.
        channels_last: yield ``x`` in channels-last memory format.
        dtype: floating dtype of ``x``.
        shard: ``(rank, world)`` for data-parallel processes: ``batch_size`` stays the global batch
            and this process yields its contiguous share of every global batch (``tensor_split``
            sizes), so the processes together see exactly the batches of one process, every image
            once per epoch, and all take the same number of steps.

    >>> ds = ArrayDataset(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), torch.zeros(10, dtype=torch.int64),
    ...                   ["a"], (0.0,), (1.0,))
    >>> loader = BatchLoader(ds, 4, train=True)
    >>> len(loader), [tuple(x.shape) for x, _ in loader]
    (2, [(4, 1, 8, 8), (4, 1, 8, 8)])
    """

    def __init__(
        self,
        ds: ArrayDataset,
        batch_size: int,
        *,
        train: bool,
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        rank, world = shard
        if not 0 <= rank < world:
            raise DataError(f"shard rank must be in [0, {world}), got {rank}")
        if train and batch_size % world:
            raise DataError(f"the global batch {batch_size} must be a multiple of the {world} processes")
        self.shard = (rank, world)
        if not dtype.is_floating_point:
            raise DataError(f"dtype must be a floating dtype, got {dtype}")
        self.ds = ds
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.dtype = dtype
        self.pad = ds.pad if train else 0
        self.flip = ds.flip and train
        self.epoch = 0
        self.images = ds.images.to(self.device)  # (N, C, H, W) uint8
        self.labels = ds.labels.to(self.device)  # (N,)
        # (x / 255 - mean) / std  ==  (x - 255 mean) * (1 / (255 std))
        shape = (1, ds.in_chans, 1, 1)
        self._shift = (torch.tensor(ds.mean, dtype=torch.float32) * 255).view(shape).to(self.device)
        self._scale = (1 / (torch.tensor(ds.std, dtype=torch.float32) * 255)).view(shape).to(self.device)
        epoch_seed(seed, 0)  # validates the seed now rather than at the first epoch
        if len(self) == 0:
            raise DataError(
                f"{len(ds)} images make no full batch of {batch_size}; pass a smaller batch_size or drop_last=False"
            )

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run epoch ``epoch`` (its order and augmentation)."""
        epoch_seed(self.seed, epoch)
        self.epoch = epoch

    def plan(self, epoch: int) -> EpochPlan:
        """The order and augmentation parameters of ``epoch``, on the CPU."""
        n = len(self.ds)
        if not self.train:
            return EpochPlan(torch.arange(n), None, None, None)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=g)
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g) if self.pad else None
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g) if self.pad else None
        flip = torch.randint(0, 2, (n,), generator=g).bool() if self.flip else None
        return EpochPlan(order, dy, dx, flip)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).sub_(self._shift).mul_(self._scale)
        return x if self.dtype == torch.float32 else x.to(self.dtype)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        plan = EpochPlan(
            *(t.to(self.device, non_blocking=True) if t is not None else None for t in self.plan(epoch))
        )
        bs = self.batch_size
        augment = self.pad > 0 or self.flip
        rank, world = self.shard
        for i in range(len(self)):
            lo, hi = i * bs, min((i + 1) * bs, len(self.ds))
            q, rem = divmod(hi - lo, world)  # this process's part of the global batch (tensor_split sizes)
            lo += rank * q + min(rank, rem)
            sl = slice(lo, lo + q + (rank < rem))
            if sl.stop == sl.start:
                continue
            if self.train:
                idx = plan.order[sl]
                x, y = self.images[idx], self.labels[idx]
            else:
                x, y = self.images[sl], self.labels[sl]
            if augment:
                dy = plan.dy[sl] if plan.dy is not None else None
                dx = plan.dx[sl] if plan.dx is not None else None
                fl = plan.flip[sl] if plan.flip is not None else None
                x = crop_flip(x, self.pad, dy, dx, fl, channels_last=self.channels_last)
            elif self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield self._normalise(x), y
