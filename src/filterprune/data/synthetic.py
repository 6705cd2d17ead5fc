"""Tiny random datasets for tests, smoke runs and benchmarks (no files needed)."""

from __future__ import annotations

import torch

from .dataset import ArrayDataset


def synthetic_dataset(
    num_images: int,
    *,
    num_classes: int = 10,
    image_size: int = 32,
    in_chans: int = 3,
    seed: int = 0,
    name: str = "synthetic",
) -> ArrayDataset:
    """Uniform random uint8 images with balanced labels (``i % num_classes``).

    Args:
        num_images: dataset size.
        num_classes: number of classes, named ``"0"``, ``"1"``...
        image_size: side length in pixels.
        in_chans: channels.
        seed: seed of the pixels.
        name: dataset name.

    >>> ds = synthetic_dataset(20, num_classes=4, image_size=8)
    >>> tuple(ds.images.shape), ds.class_counts()
    ((20, 3, 8, 8), [5, 5, 5, 5])
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0, 256, (num_images, in_chans, image_size, image_size), generator=g, dtype=torch.uint8
    )
    labels = torch.arange(num_images) % num_classes
    return ArrayDataset(
        images, labels, [str(i) for i in range(num_classes)], (0.5,) * in_chans, (0.25,) * in_chans,
        pad=max(1, image_size // 8), flip=True, name=name,
    )  # fmt: skip
