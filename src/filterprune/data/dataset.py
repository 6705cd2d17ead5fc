"""In-memory datasets: :class:`ArrayDataset`, :class:`DataSplits` and the seeded stratified split.

Every dataset the project reads ends up as one uint8 ``(N, C, H, W)`` tensor plus int64 labels, small
enough to hold in memory (CIFAR-10 is 180 MB) and to move to the accelerator in one copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import DataError

__all__ = ["ArrayDataset", "DataSplits", "split_train_val", "channel_stats", "stratified_split"]


@dataclass
class ArrayDataset:
    """Images and labels held as tensors, with the preprocessing that belongs to them.

    Attributes:
        images: uint8 pixels, ``(N, C, H, W)``, contiguous, square (``H == W``).
        labels: int64 class indices, ``(N,)``.
        classes: class names; ``labels`` index into it.
        mean: per-channel normalisation mean, in [0, 1] pixel units.
        std: per-channel normalisation std, in [0, 1] pixel units.
        pad: training augmentation: random crop of the original size after zero-padding by ``pad``.
        flip: training augmentation: random horizontal flip.
        name: short dataset name, e.g. ``"cifar10"``.

    >>> ds = ArrayDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]),
    ...                   ["a", "b"], (0.5,), (0.25,))
    >>> len(ds), ds.num_classes, ds.in_chans, ds.image_size, len(ds.subset(torch.tensor([0, 2])))
    (4, 2, 1, 8, 2)
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 4
    flip: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        im, lb = self.images, self.labels
        if not isinstance(im, torch.Tensor) or im.dtype != torch.uint8 or im.dim() != 4:
            raise DataError(f"{self.name or 'dataset'}: images must be a uint8 (N, C, H, W) tensor")
        if not isinstance(lb, torch.Tensor) or lb.dtype != torch.int64 or lb.shape != (im.shape[0],):
            raise DataError(
                f"{self.name or 'dataset'}: labels must be an int64 tensor of shape ({im.shape[0]},)"
            )
        if im.shape[2] != im.shape[3]:
            raise DataError(
                f"{self.name or 'dataset'}: images must be square, got {im.shape[2]}x{im.shape[3]}"
            )
        if len(self.mean) != im.shape[1] or len(self.std) != im.shape[1]:
            raise DataError(
                f"{self.name or 'dataset'}: pass one mean and one std per channel ({im.shape[1]})"
            )
        if any(s <= 0 for s in self.std):
            raise DataError(f"{self.name or 'dataset'}: std must be positive, got {self.std}")
        if self.pad < 0:
            raise DataError(f"{self.name or 'dataset'}: pad must be >= 0, got {self.pad}")
        if lb.numel() and (int(lb.min()) < 0 or int(lb.max()) >= len(self.classes)):
            raise DataError(f"{self.name or 'dataset'}: labels must lie in [0, {len(self.classes)})")
        self.images = im.contiguous()
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idxs: torch.Tensor) -> ArrayDataset:
        """The images at ``idxs`` (in that order), with the same classes and preprocessing."""
        idxs = torch.as_tensor(idxs, dtype=torch.int64)
        return replace(self, images=self.images[idxs].contiguous(), labels=self.labels[idxs].clone())

    def sample(self, n: int, seed: int) -> ArrayDataset:
        """``n`` images drawn at random without replacement (seeded; all of them, shuffled, if ``n`` is larger).

        Splits can be stored class by class, so their first rows are no sample; scoring sets use this.
        """
        return self.subset(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        """Image channels ``C`` of ``images`` ``(N, C, H, W)``."""
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Side length in pixels (images are square)."""
        return self.images.shape[2]

    def class_counts(self) -> list[int]:
        """Number of images per class, in class order."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


@dataclass
class DataSplits:
    """Train / validation / test splits of one dataset.

    Attributes:
        train: what the model is fitted on.
        val: held out from the training data; used for every selection decision.
        test: reported only, never selected on; ``None`` when the source has no test split.
        name: dataset name.
    """

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset | None = None
    name: str = field(default="")

    def describe(self) -> str:
        """One line: name, split sizes, classes and image shape."""
        t = self.train
        test = f", test {len(self.test)}" if self.test is not None else ", no test split"
        shape = f"{t.in_chans}x{t.image_size}x{t.image_size}"
        return f"{self.name or t.name}: train {len(t)}, val {len(self.val)}{test} ({t.num_classes} classes, {shape})"


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out), ``fraction`` of every class held out.

    Determinism across machines: the only randomness is ``np.random.default_rng(seed).random(N)``,
    numpy's PCG64 bit generator, whose stream does not depend on the platform (a test pins it, in
    case a numpy release ever changes it).
    Within each class the images with the smallest keys are held out. Per-class counts are
    ``fraction * n_class`` apportioned by largest remainder, so the total is ``round(fraction * N)``.

    Args:
        labels: int class index per item, ``(N,)``.
        fraction: share of the items to hold out, in (0, 1).
        seed: non-negative integer seed.

    Returns:
        Two sorted int64 index arrays, disjoint, covering ``range(N)``.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if not 0.0 < fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {fraction}")
    if seed < 0:
        raise DataError(f"seed must be >= 0, got {seed}")
    if n < 2:
        raise DataError(f"cannot split {n} images into train and val; pass a dataset with more images")
    keys = np.random.default_rng(seed).random(n)
    _, counts = np.unique(labels, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    short = int(round(fraction * n)) - int(take.sum())
    if short > 0:  # largest remainder; ties broken by class order (stable sort)
        take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    by_class = np.lexsort((keys, labels))  # grouped by class (sorted), smallest key first in each group
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - np.repeat(starts, counts)  # position of each sorted item within its class
    held_out = np.sort(by_class[rank < np.repeat(take, counts)])
    mask = np.ones(n, bool)
    mask[held_out] = False
    rest = np.flatnonzero(mask)
    if rest.size == 0 or held_out.size == 0:
        raise DataError(
            f"val_fraction {fraction} of {n} images leaves an empty split; pass a fraction in between"
        )
    return rest.astype(np.int64), held_out.astype(np.int64)


def split_train_val(
    ds: ArrayDataset, val_fraction: float, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Hold out a stratified, seeded validation subset of ``ds`` (see :func:`stratified_split`).

    Args:
        ds: the training data.
        val_fraction: share of ``ds`` to hold out, in (0, 1).
        seed: same seed, same split, on every machine.

    Returns:
        ``(train, val)``, disjoint, each in the original order of ``ds``.

    >>> ds = ArrayDataset(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10) % 2, ["a", "b"], (0.0,), (1.0,))
    >>> [len(s) for s in split_train_val(ds, 0.2)]
    [8, 2]
    """
    rest, held = stratified_split(ds.labels.numpy(), val_fraction, seed)
    return ds.subset(torch.from_numpy(rest)), ds.subset(torch.from_numpy(held))


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 ``images`` ``(N, C, H, W)``, in [0, 1] units."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = max(images.shape[0] * images.shape[2] * images.shape[3], 1)
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())
