"""``load_data(spec)``: a dataset name or a path in, train/val/test :class:`DataSplits` out.

Names are registered with :func:`register_dataset`; anything else is read as a path (official CIFAR
python batches, or an image folder / its tarballs). See ``docs`` of :func:`load_data` for the forms.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry
from ..types import PathLike
from .cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    download_cifar10,
    find_official_source,
    read_official,
)
from .dataset import ArrayDataset, DataSplits, channel_stats, split_train_val, stratified_split
from .idx import FASHION_MNIST_CLASSES, fashion_mnist_dir, read_fashion_mnist
from .image_folder import find_image_source, read_image_source

logger = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.1
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 1797  # fixed: the digits test split never depends on the caller's seed

# Image counts of the published datasets (balanced: the same number per class). A copy that holds
# another number is incomplete (a truncated download, a lost folder) or mixed with other images.
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "cifar10": {"train": 50_000, "test": 10_000},
    "fashion-mnist": {"train": 60_000, "test": 10_000},
}
PRETTY = {"cifar10": "CIFAR-10", "fashion-mnist": "Fashion-MNIST"}

DatasetFactory = Callable[..., DataSplits]
DATASETS: Registry[DataSplits] = Registry("dataset")


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Register ``factory(arg, *, val_fraction, seed, download, cache_dir) -> DataSplits`` as ``name``.

    ``arg`` is what follows ``name:`` in the spec (``None`` without a colon).
    """
    return DATASETS.register(name)


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching an fnmatch ``pattern``."""
    return DATASETS.names(pattern)


def data_roots() -> list[Path]:
    """Where named datasets are looked for: ``$FILTERPRUNE_DATA`` (if set), then ``~/.cache/filterprune/data``."""
    env = os.environ.get("FILTERPRUNE_DATA")
    return ([Path(env).expanduser()] if env else []) + [Path.home() / ".cache" / "filterprune" / "data"]


def build_splits(
    name: str,
    arrays: dict[str, np.ndarray],
    *,
    val_fraction: float,
    seed: int,
    pad: int,
    flip: bool,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DataSplits:
    """Wrap decoded arrays as :class:`DataSplits`, carving val from train.

    Args:
        name: dataset name.
        arrays: ``train_images``/``train_labels``, optionally ``test_images``/``test_labels``, and ``classes``.
        val_fraction: share of the training images held out for validation.
        seed: seed of the validation split.
        pad: crop padding for training augmentation.
        flip: horizontal flips for training augmentation.
        mean: normalisation mean; computed from the train split (after val is removed) when ``None``.
        std: normalisation std; computed with ``mean`` when ``None``.
    """
    classes = [str(c) for c in arrays["classes"]]
    chans = arrays["train_images"].shape[1]

    def wrap(split: str) -> ArrayDataset:
        images = torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_images"]))
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
        return ArrayDataset(
            images, labels, classes, (0.0,) * chans, (1.0,) * chans, pad=pad, flip=flip, name=name
        )

    train, val = split_train_val(wrap("train"), val_fraction, seed)
    if mean is None or std is None:
        mean, std = channel_stats(train.images)
    train, val = replace(train, mean=mean, std=std), replace(val, mean=mean, std=std)
    test = replace(wrap("test"), mean=mean, std=std) if "test_images" in arrays else None
    return DataSplits(train=train, val=val, test=test, name=name)


def check_counts(name: str, arrays: dict[str, np.ndarray], where: PathLike) -> None:
    """Refuse a copy of a known dataset (``EXPECTED_COUNTS``) whose splits hold the wrong number of images.

    Raises:
        DataError: one line naming the split, the count found, the count expected and the classes off.
    """
    expected = EXPECTED_COUNTS.get(name)
    if not expected:
        return
    n_classes = len(arrays["classes"])
    for split, want in expected.items():
        if f"{split}_labels" not in arrays:
            continue
        labels = arrays[f"{split}_labels"]
        if len(labels) == want:
            continue
        per_class = want // n_classes
        counts = np.bincount(labels, minlength=n_classes)
        off = [f"{arrays['classes'][i]} {c:,}" for i, c in enumerate(counts) if c != per_class][:4]
        raise DataError(
            f"{where}: the {split} split holds {len(labels):,} images, {PRETTY.get(name, name)} has {want:,} "
            f"({per_class:,} per class; {', '.join(off)}); the copy is incomplete or mixed, fetch it again"
        )


def _known_name(arrays: dict[str, np.ndarray]) -> str | None:
    classes = tuple(str(c) for c in arrays["classes"])
    if classes == CIFAR10_CLASSES and arrays["train_images"].shape[1:] == (3, 32, 32):
        return "cifar10"
    return None


def _verify_known(arrays: dict[str, np.ndarray], where: PathLike) -> None:
    name = _known_name(arrays)
    if name is not None:
        check_counts(name, arrays, where)


def _frac(val_fraction: float | None) -> float:
    return DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction


def _from_path(
    path: Path, *, val_fraction: float | None, seed: int, cache_dir: PathLike | None, stream: bool | None = None
) -> DataSplits:
    official = find_official_source(path)
    if official is not None:
        arrays = read_official(official)
        check_counts("cifar10", arrays, official.path)
    else:
        source = find_image_source(path)
        if stream is not False and source is not None and source.kind == "dir":  # big folders: read from disk
            from .stream import open_image_folder

            streamed = open_image_folder(path, val_fraction=_frac(val_fraction), seed=seed, stream=stream)
            if streamed is not None:
                return streamed
        elif stream:
            raise DataError(f"{path}: streaming reads an unpacked train/<class>/<image> folder; unpack it first")
        if source is None:
            raise DataError(
                f"{path}: no dataset found; pass a folder with cifar-10-batches-py/, cifar-10-python.tar.gz, "
                "train/<class>/<image> files or *_train.tar.gz of them"
            )
        arrays = read_image_source(source, cache_dir, verify=_verify_known)
    frac = _frac(val_fraction)
    if _known_name(arrays) == "cifar10":
        return build_splits(
            "cifar10",
            arrays,
            val_fraction=frac,
            seed=seed,
            pad=4,
            flip=True,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
        )
    side = arrays["train_images"].shape[-1]
    name = path.name.split(".")[0].removesuffix("_train") or "images"
    return build_splits(name, arrays, val_fraction=frac, seed=seed, pad=max(1, side // 8), flip=True)


@register_dataset("digits")
def _digits(arg: str | None, *, val_fraction: float | None, seed: int, **_) -> DataSplits:
    """scikit-learn's 8x8 handwritten digits: 1797 images; fixed 20% stratified test split."""
    if arg:
        raise DataError(f"digits takes no argument, got {arg!r}; pass 'digits'")
    from sklearn.datasets import load_digits  # heavy import, only when asked for

    d = load_digits()
    images = np.rint(d.images * (255 / 16)).clip(0, 255).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = d.target.astype(np.int64)
    rest, test = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    arrays = {
        "train_images": images[rest], "train_labels": labels[rest],
        "test_images": images[test], "test_labels": labels[test],
        "classes": np.array([str(i) for i in range(10)]),
    }  # fmt: skip
    return build_splits("digits", arrays, val_fraction=_frac(val_fraction), seed=seed, pad=1, flip=False)


@register_dataset("fashion-mnist")
def _fashion_mnist(arg: str | None, *, val_fraction: float | None, seed: int, **_) -> DataSplits:
    """Fashion-MNIST from its four IDX files (``fashion-mnist:/folder`` or the default locations)."""
    folder = fashion_mnist_dir(arg)
    arrays = read_fashion_mnist(folder)
    arrays["classes"] = np.array(FASHION_MNIST_CLASSES)
    check_counts("fashion-mnist", arrays, folder)
    frac = _frac(val_fraction)
    return build_splits("fashion-mnist", arrays, val_fraction=frac, seed=seed, pad=2, flip=False)


@register_dataset("cifar10")
def _cifar10(
    arg: str | None, *, val_fraction: float | None, seed: int, download: bool, cache_dir: PathLike | None
) -> DataSplits:
    """CIFAR-10 from ``cifar10:/path``, else from :func:`data_roots`, else downloaded (``download=True``)."""
    if arg:
        return _from_path(Path(arg).expanduser(), val_fraction=val_fraction, seed=seed, cache_dir=cache_dir)
    roots = data_roots()
    for root in roots:
        for cand in (root, root / "cifar10"):
            if cand.is_dir() and (find_official_source(cand) or find_image_source(cand)):
                return _from_path(cand, val_fraction=val_fraction, seed=seed, cache_dir=cache_dir)
    if not download:
        where = ", ".join(str(r) for r in roots)
        raise DataError(
            f"CIFAR-10 not found in {where}; pass its path, set $FILTERPRUNE_DATA, or pass download=True"
        )
    download_cifar10(roots[0])
    return _from_path(roots[0], val_fraction=val_fraction, seed=seed, cache_dir=cache_dir)


def load_data(
    spec: str,
    *,
    val_fraction: float | None = None,
    seed: int = 0,
    download: bool = False,
    cache_dir: PathLike | None = None,
    stream: bool | None = None,
) -> DataSplits:
    """Load a dataset as train / val / test splits of uint8 tensors (or of files, when streamed).

    ``spec`` is one of:
        * ``"digits"``: scikit-learn's 8x8 digits (embedded, always available);
        * ``"fashion-mnist"`` or ``"fashion-mnist:/folder"``: the four IDX files, gzipped or not;
        * ``"cifar10"`` (looked for in ``$FILTERPRUNE_DATA`` and ``~/.cache/filterprune/data``,
          downloaded with ``download=True``) or ``"cifar10:/path"``;
        * a path: a folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``, that folder
          or archive itself, an image folder (``train/<class>/*``, ``test/<class>/*``), or the
          ``*_train.tar.gz`` / ``*_test.tar.gz`` tarballs of one (or their folder).

    Args:
        spec: what to load (above).
        val_fraction: share of the training split held out (stratified) for validation; 0.1 when unset.
        seed: seed of the validation split; the same seed gives the same split on every machine.
        download: allow downloading the official CIFAR-10 archive when it is not found.
        cache_dir: where decoded image folders are cached; ``$FILTERPRUNE_CACHE`` or
            ``~/.cache/filterprune`` when unset.
        stream: for an unpacked image folder given by path: ``True`` reads it from disk batch by
            batch (:mod:`.stream`: splits of ``FolderDataset``, ImageNet transforms), ``False``
            decodes it into memory, ``None`` streams above ``stream.STREAM_THRESHOLD_BYTES`` decoded.

    Returns:
        The splits; ``test`` is ``None`` when the source has none.

    Raises:
        DataError: unknown spec, missing or damaged files, failed download.

    >>> load_data("digits").describe()
    'digits: train 1294, val 144, test 359 (10 classes, 1x8x8)'
    """
    name, colon, arg = spec.partition(":")
    if name in DATASETS:
        factory = DATASETS.get(name)
        splits = factory(
            arg if colon else None,
            val_fraction=val_fraction,
            seed=seed,
            download=download,
            cache_dir=cache_dir,
        )
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            known = ", ".join(list_datasets())
            raise DataError(
                f"unknown dataset {spec!r}: not a path that exists nor one of {known}; pass a name or a path"
            )
        splits = _from_path(path, val_fraction=val_fraction, seed=seed, cache_dir=cache_dir, stream=stream)
    logger.info("loaded %s", splits.describe())
    return splits
