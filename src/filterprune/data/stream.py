"""Streaming image folders: files listed once, decoded by DataLoader workers, for datasets too big for memory.

The in-memory path (:mod:`.image_folder` + :class:`.loader.BatchLoader`) decodes every image into one
uint8 tensor: right for CIFAR (180 MB), impossible for ImageNet (1.28M images of ~400x350 pixels).
Here the folder ``root/{train,test}/<class>/<image>`` is listed once (``os.scandir``, sorted, labels
from the sorted training class names, as :mod:`.image_folder`), and every batch is read from disk:

* :class:`FolderDataset` holds only the file paths and labels (``ArrayDataset``'s attributes and
  ``subset``/``sample``, so :class:`.DataSplits` and the workflows take it as it is);
* :class:`ShardSampler` orders an epoch and gives each ``torch.distributed`` process its share;
* ``torch.utils.data.DataLoader`` worker processes open each file with Pillow and apply the usual
  ImageNet transforms, returning uint8 ``(3, S, S)`` tensors (a quarter of the float bytes to pass
  between processes); :class:`StreamLoader` normalises each batch to float on the device, like
  ``BatchLoader``.

Transforms (Szegedy et al. 2015, "Going deeper with convolutions", section 6; the torchvision
reference recipe): training is a random-resized crop (area fraction U(0.08, 1), aspect ratio
log-uniform in [3/4, 4/3], 10 tries, then a centre crop clamped to that ratio) resized to S x S
bilinearly, and a horizontal flip with probability 1/2; evaluation resizes the shorter side to
``resize_size`` (S / 0.875: 256 for 224) and takes the centre S x S. The random parameters come from
a generator seeded by (seed, epoch, image index), so an epoch's batches do not depend on the number
of workers or processes. The pixel work is Pillow's (``Image.resize`` with a box, antialiased) or,
when torchvision imports, ``torchvision.transforms.functional`` with the same parameters.

Why our own sampler: ``torch.utils.data.DistributedSampler`` pads the shards with repeated images
when N is not a multiple of the world size, which biases evaluation metrics. Here evaluation shards
are ``order[rank::world]`` (every image exactly once over the processes); training shards are cut to
the same length ``N // world`` so every process takes the same number of steps (at most world - 1
images, different each epoch, wait for the next epoch, as with ``drop_last``).
"""

from __future__ import annotations

import logging
import math
import os
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .image_folder import IMAGE_SUFFIXES, SPLITS
from .loader import epoch_seed

logger = logging.getLogger(__name__)

__all__ = ["FolderDataset", "ShardSampler", "StreamLoader", "list_image_folder", "make_loader",
           "open_image_folder", "random_resized_crop_params", "STREAM_THRESHOLD_BYTES"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STREAM_THRESHOLD_BYTES = 4 << 30  # decoded uint8 size above which load_data streams (4 GiB)

try:  # the pixel work is torchvision's when it is installed; never required
    import torchvision.transforms.functional as _tvf
except ImportError:  # pragma: no cover - torchvision is not a dependency
    _tvf = None


def list_image_folder(root: Path) -> tuple[dict[str, tuple[list[str], list[int]]], list[str]]:
    """``{split: (paths, labels)}`` and the sorted training class names of ``root/{train,test}/<class>/*``.

    Raises:
        DataError: no training image, or a test class without training images.
    """
    found: dict[str, dict[str, list[str]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for cls in sorted(d.name for d in os.scandir(split_dir) if d.is_dir() and not d.name.startswith(".")):
            names = sorted(f.name for f in os.scandir(split_dir / cls)
                           if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(IMAGE_SUFFIXES))
            found.setdefault(split, {})[cls] = [str(split_dir / cls / n) for n in names]
    empty = [f"{split}/{c}" for split, by_class in found.items() for c, files in by_class.items() if not files]
    if empty:  # the same refusals as the in-memory reader (image_folder._assemble), in its words
        names = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise DataError(f"{root}: class folder(s) {names} hold no images; add the images or remove the folders")
    classes = sorted(found.get("train", {}))
    if not classes:
        raise DataError(f"{root}: no training images found; pass a folder with train/<class>/<image> files")
    index = {c: i for i, c in enumerate(classes)}
    test_classes = sorted(found.get("test", {}))
    if test_classes and test_classes != classes:
        raise DataError(
            f"{root}: train and test have different classes (only in train: {sorted(set(classes) - set(test_classes))}"
            f", only in test: {sorted(set(test_classes) - set(classes))}); make the class folders match"
        )
    out = {}
    for split, by_class in found.items():
        paths = [p for c in sorted(by_class) for p in by_class[c]]
        labels = [index[c] for c in sorted(by_class) for _ in by_class[c]]
        out[split] = (paths, labels)
    return out, classes


def random_resized_crop_params(width: int, height: int, rng: random.Random, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of an Inception-style random crop of a ``width`` x ``height`` image.

    Area fraction U(scale), aspect ratio w/h log-uniform in ``ratio``; after 10 misses the centre
    crop of the whole image clamped to ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resized_crop(img: Image.Image, top: int, left: int, h: int, w: int, size: int, flip: bool) -> Image.Image:
    if _tvf is not None:
        out = _tvf.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        return _tvf.hflip(out) if flip else out
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out


def _resize_centre_crop(img: Image.Image, resize: int, size: int) -> Image.Image:
    if _tvf is not None:
        return _tvf.center_crop(_tvf.resize(img, resize, antialias=True), [size, size])
    w, h = img.size
    ow, oh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)  # shorter side = resize
    img = img.resize((ow, oh), Image.BILINEAR)
    top, left = int(round((oh - size) / 2.0)), int(round((ow - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


@dataclass
class FolderDataset(torch.utils.data.Dataset):
    """Image files and labels; item ``(i, seed)`` is the decoded, transformed uint8 ``(3, S, S)`` image.

    Attributes:
        files: image paths.
        labels: int64 class indices ``(N,)``.
        classes: class names.
        mean, std: per-channel normalisation in [0, 1] units (ImageNet's by default).
        image_size: S, the side of the crops.
        resize_size: evaluation resize of the shorter side; ``None``: round(S / 0.875).
        train: random-resized crop + flip (else resize + centre crop); set by the loader.
        name: dataset name.
    """

    files: list[str]
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    image_size: int = 224
    resize_size: int | None = None
    train: bool = False
    name: str = ""

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        """Image channels: always 3 (images are decoded to RGB)."""
        return 3

    def class_counts(self) -> list[int]:
        """Number of images per class, in class order."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, idxs: torch.Tensor) -> FolderDataset:
        """The files at ``idxs`` (in that order), same classes and preprocessing."""
        idxs = torch.as_tensor(idxs, dtype=torch.int64)
        return replace(self, files=[self.files[i] for i in idxs.tolist()], labels=self.labels[idxs].clone())

    def sample(self, n: int, seed: int) -> FolderDataset:
        """``n`` files drawn at random without replacement (seeded), as ``ArrayDataset.sample``."""
        return self.subset(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n])

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        path = self.files[index]
        try:
            with warnings.catch_warnings():  # Pillow only warns between 1x and 2x its limit: refuse those too
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    img = im.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"{path}: decompression bomb ({e}); raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable image ({type(e).__name__}); remove or replace it") from None
        size = self.image_size
        if self.train:
            rng = random.Random(seed)
            top, left, h, w = random_resized_crop_params(*img.size, rng)
            img = _resized_crop(img, top, left, h, w, size, rng.random() < 0.5)
        else:
            img = _resize_centre_crop(img, self.resize_size or round(size / 0.875), size)
        pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())  # (S, S, 3)
        return pixels.permute(2, 0, 1).contiguous(), int(self.labels[index])  # (3, S, S)


class ShardSampler(torch.utils.data.Sampler):
    """``(index, seed)`` of this process's images for one epoch (module docstring for the sharding).

    Args:
        n: dataset size.
        shuffle: a new seeded permutation each epoch (else dataset order).
        seed: with the epoch, fixes the order and every per-image augmentation seed.
        rank, world: this process and the number of processes; from ``torch.distributed`` if ``None``.
        equal_shards: cut every shard to ``n // world`` (training), else ``order[rank::world]``.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, rank: int | None = None,
                 world: int | None = None, equal_shards: bool = False) -> None:
        if rank is None or world is None:
            from ..distributed import current_shard

            rank, world = current_shard()
        if not 0 <= rank < world:
            raise DataError(f"rank must be in [0, {world}), got {rank}")
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.equal_shards = equal_shards
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation and augmentation seeds of epoch ``epoch`` for the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world if self.equal_shards else len(range(self.rank, self.n, self.world))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)  # per image, whoever decodes it
        mine = order[self.rank::self.world][:len(self)]
        return iter(zip(mine.tolist(), seeds[mine].tolist(), strict=True))


class StreamLoader:
    """Normalised ``(x, y)`` batches of a :class:`FolderDataset`, decoded by ``num_workers`` processes.

    The interface of :class:`.loader.BatchLoader` (``len``, ``set_epoch``, a bare ``for`` loop runs
    epoch after epoch), with this process's shard only under ``torch.distributed``.

    Args:
        ds: the files.
        batch_size: images per batch and process.
        train: shuffle, random-resized crop and flip; else dataset order, resize + centre crop.
        device: where batches go.
        seed: fixes order and augmentation with the epoch.
        num_workers: decoding processes (0: in this process).
        drop_last: defaults to ``train``.
        channels_last: yield ``x`` in channels-last memory format.
        dtype: floating dtype of ``x``.
        shard: ``(rank, world)``; ``None`` reads ``torch.distributed``.
    """

    def __init__(self, ds: FolderDataset, batch_size: int, *, train: bool, device: str | torch.device = "cpu",
                 seed: int = 0, num_workers: int | None = None, drop_last: bool | None = None,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 shard: tuple[int, int] | None = None) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.ds = replace(ds, train=train)
        self.batch_size, self.train, self.device = batch_size, train, torch.device(device)
        self.channels_last, self.dtype, self.epoch = channels_last, dtype, 0
        rank, world = shard if shard is not None else (None, None)
        self.sampler = ShardSampler(len(ds), shuffle=train, seed=seed, rank=rank, world=world, equal_shards=train)
        workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.loader = torch.utils.data.DataLoader(
            self.ds, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            drop_last=train if drop_last is None else drop_last, pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
        shape = (1, 3, 1, 1)
        self._shift = (torch.tensor(ds.mean) * 255).view(shape).to(self.device)
        self._scale = (1 / (torch.tensor(ds.std) * 255)).view(shape).to(self.device)
        if len(self) == 0:
            raise DataError(f"{len(self.sampler)} images make no full batch of {batch_size}; pass a smaller batch_size")

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run epoch ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        self.sampler.set_epoch(epoch)
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x = x.to(torch.float32).sub_(self._shift).mul_(self._scale)  # (x - 255 mean) / (255 std)
            yield (x if self.dtype == torch.float32 else x.to(self.dtype)), y.to(self.device, non_blocking=True)


def make_loader(ds, batch_size: int, *, train: bool, device: str | torch.device = "cpu", seed: int = 0, **kwargs):
    """:class:`StreamLoader` for a :class:`FolderDataset`, else the in-memory ``BatchLoader``."""
    if isinstance(ds, FolderDataset):
        return StreamLoader(ds, batch_size, train=train, device=device, seed=seed, **kwargs)
    from .loader import BatchLoader

    kwargs.pop("num_workers", None)  # in memory: nothing to decode
    if kwargs.get("shard") is None:
        kwargs.pop("shard", None)
    return BatchLoader(ds, batch_size, train=train, device=device, seed=seed, **kwargs)


def decoded_bytes_estimate(files: list[str]) -> int:
    """Decoded uint8 size of ``files``, from the size of the first image (header only)."""
    if not files:
        return 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(files[0]) as im:
                w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return 0  # unreadable: the in-memory reader reports it in its words
    return len(files) * w * h * 3


def open_image_folder(root: Path, *, val_fraction: float, seed: int, image_size: int = 224,
                      mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                      stream: bool | None = True, threshold: int | None = None):
    """:class:`.DataSplits` of :class:`FolderDataset` for ``root``: val carved from train (stratified, seeded).

    Args:
        root: a folder ``train/<class>/<image>`` (and optionally ``test/...``).
        val_fraction, seed: the validation split, as ``load_data``.
        image_size: side S of the crops.
        mean, std: normalisation.
        stream: ``True``: always; ``None``: only when the decoded training images would take more
            than ``threshold`` bytes (``STREAM_THRESHOLD_BYTES``), judged from the first image's size.

    Returns:
        The splits, or ``None`` when ``stream`` is ``None`` and the folder is under the threshold
        (the caller then decodes it into memory).
    """
    from .dataset import DataSplits, stratified_split

    try:
        listed, classes = list_image_folder(root)  # the one listing
    except DataError:
        if stream is None:  # let the in-memory reader say what is wrong, in its words
            return None
        raise
    if stream is None:
        size = decoded_bytes_estimate(listed["train"][0])
        if size <= (STREAM_THRESHOLD_BYTES if threshold is None else threshold):
            return None
        logger.info("%s: about %.1f GB decoded; streaming it from disk", root, size / 1e9)
    name = root.name or "images"

    def make(paths, labels) -> FolderDataset:
        return FolderDataset(paths, torch.tensor(labels, dtype=torch.int64), classes, mean, std, image_size, name=name)

    train = make(*listed["train"])
    rest, held = stratified_split(train.labels.numpy(), val_fraction, seed)
    test = make(*listed["test"]) if "test" in listed else None
    return DataSplits(train=train.subset(torch.from_numpy(rest)), val=train.subset(torch.from_numpy(held)),
                      test=test, name=name)
