"""Fixtures for the data tests: tiny fake datasets written in the real on-disk formats."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def official_batch_bytes(images: np.ndarray, labels: list[int]) -> bytes:
    """A pickle shaped like an official CIFAR python batch: dict of bytes keys, ``data`` a (N, 3072) array.

    Rows are built plane by plane (R, then G, then B, each row-major) so the layout is spelled out here
    rather than borrowed from a reshape. Protocol 2 as in the originals; numpy 2's module name for
    ``_reconstruct`` is rewritten to the ``numpy.core.multiarray`` the originals name.
    """
    rows = np.stack([np.concatenate([img[0].ravel(), img[1].ravel(), img[2].ravel()]) for img in images])
    payload = {
        b"batch_label": b"fake batch",
        b"labels": list(labels),
        b"data": rows,
        b"filenames": [b"x.png"] * len(labels),
    }
    raw = pickle.dumps(payload, protocol=3)  # protocol 3: bytes as BINBYTES, no _codecs global
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def meta_bytes() -> bytes:
    return pickle.dumps({b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}, protocol=3)


def make_official(root: Path, per_batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``root/cifar-10-batches-py/`` with five small training batches and a test batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        (folder / name).write_bytes(official_batch_bytes(x, y))
        xs.append(x)
        ys.append(np.array(y, np.int64))
    (folder / "batches.meta").write_bytes(meta_bytes())
    return {
        "train_images": np.concatenate(xs[:5]), "train_labels": np.concatenate(ys[:5]),
        "test_images": xs[5], "test_labels": ys[5],
    }  # fmt: skip


def tar_folder(src: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=arcname)
    return dest


@pytest.fixture
def official_dir(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder holding a small ``cifar-10-batches-py/`` and the arrays written into it."""
    root = tmp_path / "cifar"
    return root, make_official(root)


def write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


@pytest.fixture
def png_folder(tmp_path: Path) -> tuple[Path, dict[str, dict[str, list[np.ndarray]]]]:
    """``root/{train,test}/<class>/NN.png`` with random 8x8 RGB pixels; returns root and the pixels (H, W, 3)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "shapes"
    written: dict[str, dict[str, list[np.ndarray]]] = {}
    for split, n in (("train", 10), ("test", 3)):
        written[split] = {}
        for cls in ("circle", "square", "triangle"):  # written out of order on purpose below
            written[split][cls] = []
            for i in range(n):
                px = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                write_png(root / split / cls / f"{i:02d}.png", px)
                written[split][cls].append(px)
    return root, written


class Fakes:
    """The writers above, handed to tests through the ``fakes`` fixture (tests never import conftest)."""

    classes = CIFAR_CLASSES
    batch_bytes = staticmethod(official_batch_bytes)
    make_official = staticmethod(make_official)
    tar_folder = staticmethod(tar_folder)
    write_png = staticmethod(write_png)


@pytest.fixture
def fakes() -> type[Fakes]:
    return Fakes


@pytest.fixture
def unknown_counts(monkeypatch):
    """The fakes here hold a handful of images: forget the published datasets' image counts meanwhile."""
    from filterprune.data import load

    monkeypatch.setattr(load, "EXPECTED_COUNTS", {})
