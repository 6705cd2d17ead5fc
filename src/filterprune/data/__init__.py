"""Datasets as uint8 tensors, seeded splits, and a fast on-device batch loader.

>>> from filterprune.data import load_data, BatchLoader
>>> splits = load_data("digits")
>>> x, y = next(iter(BatchLoader(splits.train, 32, train=True)))
>>> tuple(x.shape), x.dtype, y.dtype
((32, 1, 8, 8), torch.float32, torch.int64)

Modules: ``dataset`` (ArrayDataset, DataSplits, splits), ``load`` (``load_data`` and the dataset
registry), ``cifar`` (official python batches, download), ``image_folder`` (folders / tarballs of
images, decoded once and cached), ``idx`` (MNIST-format files), ``loader`` (BatchLoader),
``synthetic`` (random data for tests).
"""

from .cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, download_cifar10
from .dataset import ArrayDataset, DataSplits, channel_stats, split_train_val, stratified_split
from .load import build_splits, data_roots, list_datasets, load_data, register_dataset
from .loader import BatchLoader, EpochPlan, crop_flip
from .synthetic import synthetic_dataset

__all__ = [
    "ArrayDataset",
    "DataSplits",
    "load_data",
    "split_train_val",
    "BatchLoader",
    "EpochPlan",
    "crop_flip",
    "synthetic_dataset",
    "stratified_split",
    "channel_stats",
    "build_splits",
    "register_dataset",
    "list_datasets",
    "data_roots",
    "download_cifar10",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
]
