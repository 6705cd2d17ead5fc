"""The real CIFAR-10 JPEG copy in ../shared/data/cifar10 (slow: decodes 60,000 JPEGs on first use)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from filterprune.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, BatchLoader, load_data

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cifar10"
TEST_TAR = SHARED / "cifar10_jpeg_q75_test.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(not TEST_TAR.is_file(), reason="shared/data/cifar10 JPEG copy not present")
def test_real_cifar10_jpeg_copy():
    s = load_data(str(SHARED))  # default cache: the first run decodes (~10 s), later runs read the .npz
    assert s.name == "cifar10" and tuple(s.train.classes) == CIFAR10_CLASSES
    assert (len(s.train), len(s.val), len(s.test)) == (45000, 5000, 10000)
    assert s.val.class_counts() == [500] * 10 and s.test.class_counts() == [1000] * 10
    assert (
        s.train.mean == CIFAR10_MEAN
        and s.train.std == CIFAR10_STD
        and (s.train.pad, s.train.flip) == (4, True)
    )
    # Official test image 0 is a cat, stored as test/cat/0000.jpg. The copy keeps only per-class ranks,
    # so the loaded order is class-major: the first cat is at index 3 * 1000, and it must be that file.
    with tarfile.open(TEST_TAR) as tf:
        raw = tf.extractfile("test/cat/0000.jpg").read()
    cat0 = torch.from_numpy(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).transpose(2, 0, 1).copy())
    first_cat = int((s.test.labels == CIFAR10_CLASSES.index("cat")).nonzero()[0])
    assert first_cat == 3000 and torch.equal(s.test.images[first_cat], cat0)
    x, y = next(iter(BatchLoader(s.train, 128, train=True)))
    assert x.shape == (128, 3, 32, 32) and abs(float(x.mean())) < 0.5
