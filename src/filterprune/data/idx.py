"""IDX files (the MNIST family's format) and Fashion-MNIST.

An IDX file is: two zero bytes, a type code (0x08 = uint8), the number of dimensions, one big-endian
int32 per dimension, then the row-major data. Files may be gzipped (detected by magic bytes); they are
streamed with a size cap, never inflated whole.
Fashion-MNIST: H. Xiao, K. Rasul, R. Vollgraf, arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ._archive import READ_ERRORS, open_decompressed, read_gzip_capped, reason

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


MAX_IDX_BYTES = 1 << 30  # data bytes one IDX file may declare; Fashion-MNIST's largest holds 47 MB
MAX_IDX_DIMS = 4


def read_idx(path: Path, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read a uint8 IDX file (optionally gzipped) into an array of its declared shape.

    The file is streamed: the header is read first, the declared size checked against ``max_bytes``,
    then exactly that many bytes are read, and one more read must find the end of the (gzip) stream,
    where gzip checks its CRC-32 and length. A gzip bomb (a tiny header, gigabytes of data) is refused
    after one byte too many, never inflated.

    Raises:
        DataError: the file is missing, truncated, longer than its header says, corrupt (gzip CRC),
            declares more than ``max_bytes``, or is not a uint8 IDX file.
    """
    try:
        with open(path, "rb") as f:
            stream = open_decompressed(f)
            head = stream.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08 or not 0 < head[3] <= MAX_IDX_DIMS:
                raise DataError(f"{path}: not a uint8 IDX file (bad magic bytes {head.hex() or 'none'}); pass the "
                                "MNIST-format *-ubyte files")
            ndim = head[3]
            dims = read_gzip_capped(path, stream, 4 * ndim, "IDX header")
            shape = tuple(int(d) for d in np.frombuffer(dims, ">i4"))
            size = int(np.prod(shape, dtype=np.int64))
            if min(shape) < 0 or size > max_bytes:
                raise DataError(f"{path}: IDX header declares shape {shape}, {size:,} bytes, over the "
                                f"{max_bytes:,}-byte limit; the file is damaged or not a dataset")
            raw = read_gzip_capped(path, stream, size, f"IDX data of shape {shape}")
            if stream.read(1):
                raise DataError(f"{path}: holds more data than its IDX header's shape {shape}; the file is "
                                "damaged, fetch it again")
    except DataError:
        raise
    except READ_ERRORS as e:
        raise DataError(f"{path}: {reason(e)}; fetch the file again") from None
    return np.frombuffer(raw, np.uint8).reshape(shape).copy()


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
