"""IDX files (the MNIST family's format) and Fashion-MNIST.

An IDX file is: two zero bytes, a type code (0x08 = uint8), the number of dimensions, one big-endian
int32 per dimension, then the row-major data. Files may be gzipped (detected by magic bytes).
Fashion-MNIST: H. Xiao, K. Rasul, R. Vollgraf, arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Where Debian's ``dataset-fashion-mnist`` package installs the files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read a uint8 IDX file (optionally gzipped) into an array of its declared shape.

    Raises:
        DataError: the file is missing, truncated, or not a uint8 IDX file.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] == 0:
        raise DataError(f"{path}: not a uint8 IDX file; pass the MNIST-format *-ubyte files")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(
            f"{path}: IDX data holds {len(raw) - header} bytes, header says {shape}; the file is damaged"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {stem}[.gz]; pass fashion-mnist:/folder/with/the/idx/files")


def fashion_mnist_dir(path: str | None = None) -> Path:
    """The folder to read: ``path``, else ``$FILTERPRUNE_DATA/fashion-mnist``, else Debian's location."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get("FILTERPRUNE_DATA")
    candidates = ([Path(env).expanduser() / "fashion-mnist"] if env else []) + [DEBIAN_FASHION_MNIST]
    for c in candidates:
        if c.is_dir():
            return c
    raise DataError(
        "Fashion-MNIST not found; pass fashion-mnist:/folder (or `apt-get install dataset-fashion-mnist`)"
    )


def read_fashion_mnist(folder: Path) -> dict[str, np.ndarray]:
    """Train and test images ``(N, 1, 28, 28)`` uint8 and labels int64 from the four IDX files."""
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.shape != (x.shape[0],) or (y.size and y.max() >= len(FASHION_MNIST_CLASSES)):
            raise DataError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match")
        arrays[f"{split}_images"] = x[:, None]  # (N, 1, H, W)
        arrays[f"{split}_labels"] = y.astype(np.int64)
    return arrays
