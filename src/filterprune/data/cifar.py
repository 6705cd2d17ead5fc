"""CIFAR-10 in the official python format (``cifar-10-batches-py/``), unpacked or as the ``.tar.gz``.

Each batch is a pickled dict: ``b"data"`` is a (10000, 3072) uint8 array whose rows hold the red plane,
then green, then blue, each 32x32 row-major; ``b"labels"`` is a list of ints. Batches are read with the
restricted unpickler (``_safe_pickle``) straight from the folder or the archive, never extracted.
Reference: A. Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*, 2009.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError
from ..types import PathLike
from ._archive import READ_ERRORS, TAR_SUFFIXES, iter_tar
from ._safe_pickle import safe_loads

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The statistics the pretrained CIFAR ResNets in shared/data/pretrained were trained with (ImageNet's).
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BYTES = 170498071
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"


@dataclass(frozen=True)
class OfficialSource:
    """The official batches: a ``cifar-10-batches-py`` folder (``kind="dir"``) or the archive (``"tar"``)."""

    kind: str
    path: Path


def _tar_is_official(path: Path) -> bool:
    if path.name == ARCHIVE_NAME:
        return True
    try:
        with tarfile.open(path, "r|*") as tf:
            for i, m in enumerate(tf):
                if FOLDER_NAME in PurePosixPath(m.name).parts:
                    return True
                if i >= 16:
                    return False
    except READ_ERRORS:  # damaged: the image-folder reader reads it in full and says what is wrong
        return False
    return False


def find_official_source(path: Path) -> OfficialSource | None:
    """The official-format data at ``path`` (the folder, its parent, the archive or its folder), else ``None``."""
    if path.is_file():
        is_tar = path.name.lower().endswith(TAR_SUFFIXES)
        return OfficialSource("tar", path) if is_tar and _tar_is_official(path) else None
    if not path.is_dir():
        return None
    if (path / FOLDER_NAME).is_dir():
        return OfficialSource("dir", path / FOLDER_NAME)
    if (path / TRAIN_BATCHES[0]).is_file() or path.name == FOLDER_NAME:
        return OfficialSource("dir", path)
    if (path / ARCHIVE_NAME).is_file():
        return OfficialSource("tar", path / ARCHIVE_NAME)
    return None


def _read_members(src: OfficialSource) -> dict[str, bytes]:
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    if src.kind == "dir":
        return {n: (src.path / n).read_bytes() for n in wanted if (src.path / n).is_file()}
    found: dict[str, bytes] = {}
    for m, data in iter_tar(src.path, lambda m: PurePosixPath(m.name).name in wanted):
        if data is not None:
            found[PurePosixPath(m.name).name] = data
    return found


def _parse_batch(payload: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    d = safe_loads(payload, where)
    d = d if isinstance(d, dict) else {}
    data = d.get(b"data", d.get("data"))  # bytes keys in the originals (Python 2), str if re-pickled
    labels = d.get(b"labels", d.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{where}: b'data' is not a (N, 3072) uint8 array; pass an unmodified CIFAR-10 python batch"
        )
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        y = np.zeros(0, np.int64)
    if y.shape != (data.shape[0],) or (y.size and (y.min() < 0 or y.max() >= len(CIFAR10_CLASSES))):
        raise DataError(
            f"{where}: b'labels' is not one class index in 0..9 per image; pass an unmodified CIFAR-10 batch"
        )
    return data.reshape(-1, 3, 32, 32), y  # rows are R, G, B planes of 32x32, row-major -> (N, C, H, W)


def read_official(src: OfficialSource) -> dict[str, np.ndarray]:
    """Read the five training batches and the test batch.

    Returns:
        ``train_images`` (50000, 3, 32, 32) and ``test_images`` uint8, ``train_labels`` and
        ``test_labels`` int64, ``classes`` (from ``batches.meta`` when present).

    Raises:
        DataError: a batch is missing, is not a CIFAR-10 batch, or holds anything but plain data.
    """
    members = _read_members(src)
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in members]
    if missing:
        raise DataError(
            f"{src.path}: missing {', '.join(missing)}; pass a complete {FOLDER_NAME} folder or {ARCHIVE_NAME}"
        )
    train = [_parse_batch(members[n], f"{src.path}:{n}") for n in TRAIN_BATCHES]
    test_x, test_y = _parse_batch(members[TEST_BATCH], f"{src.path}:{TEST_BATCH}")
    classes = list(CIFAR10_CLASSES)
    if META in members:
        meta = safe_loads(members[META], f"{src.path}:{META}")
        names = meta.get(b"label_names") if isinstance(meta, dict) else None
        if isinstance(names, list) and len(names) == len(classes):
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return {
        "train_images": np.concatenate([x for x, _ in train]),
        "train_labels": np.concatenate([y for _, y in train]),
        "test_images": test_x,
        "test_labels": test_y,
        "classes": np.array(classes, dtype=np.str_),
    }


def download_cifar10(root: PathLike, url: str | None = None) -> Path:
    """Download the official archive into ``root`` and check its md5; return its path.

    The file is streamed to a temporary name in ``root`` and renamed into place only once its md5
    matches, so ``root`` never holds a partial or corrupt ``cifar-10-python.tar.gz``.

    Args:
        root: destination folder (created if needed).
        url: where to fetch it from; the official address when not given.

    Raises:
        DataError: the download failed or its md5 does not match.
    """
    url = url or CIFAR10_URL
    root = Path(root).expanduser()
    dest = root / ARCHIVE_NAME
    if dest.is_file():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s (%.0f MB) to %s", url, CIFAR10_BYTES / 1e6, dest)
    md5 = hashlib.md5(usedforsecurity=False)
    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{ARCHIVE_NAME}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
        if md5.hexdigest() != CIFAR10_MD5:
            raise DataError(
                f"{url}: md5 {md5.hexdigest()} does not match {CIFAR10_MD5}; the download is corrupt, try again"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise DataError(
            f"could not download {url} ({e}); fetch {ARCHIVE_NAME} yourself and pass its folder"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest
