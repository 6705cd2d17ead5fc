"""Image-folder datasets: ``root/{train,test}/<class>/<image>``, unpacked or in tarballs.

Accepted sources:
    * a folder with ``train/<class>/*`` and optionally ``test/<class>/*``;
    * a folder holding a ``*train*.tar.gz`` tarball (and its ``test`` sibling), e.g. the JPEG copy of
      CIFAR-10 in ``shared/data/cifar10``;
    * such a tarball itself; its ``test`` sibling is picked up when present, and one tarball may also
      hold both splits.

Images are decoded once with Pillow, converted to RGB, and cached as uint8 ``.npz`` (see ``_cache``).
Classes are the sorted training folder names; within a class, images are in file-name order.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..types import PathLike
from . import _cache

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageSource:
    """Where an image-folder dataset lives: one folder, or one or two tarballs."""

    kind: str  # "dir" | "tar"
    paths: tuple[Path, ...]


def _is_tar(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(TAR_SUFFIXES)


def _with_test_sibling(tar: Path) -> ImageSource:
    sibling = tar.with_name(tar.name.replace("train", "test")) if "train" in tar.name else None
    paths = (tar, sibling) if sibling is not None and sibling != tar and sibling.is_file() else (tar,)
    return ImageSource("tar", paths)


def find_image_source(path: Path) -> ImageSource | None:
    """The image-folder layout at ``path``, or ``None`` if it is not one."""
    if _is_tar(path):
        return _with_test_sibling(path)
    if not path.is_dir():
        return None
    if (path / "train").is_dir():
        return ImageSource("dir", (path,))
    tars = sorted(p for p in path.iterdir() if _is_tar(p) and "train" in p.name)
    if len(tars) == 1:
        return _with_test_sibling(tars[0])
    if len(tars) > 1:
        raise DataError(
            f"{path}: several training tarballs ({', '.join(p.name for p in tars)}); pass one of them"
        )
    return None


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode one image file's bytes to an RGB uint8 ``(H, W, 3)`` array."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{name}: not a readable image ({type(e).__name__}); remove or replace it") from None


def _parse(member: str) -> tuple[str, str, str] | None:
    """``(split, class, file)`` for ``.../<split>/<class>/<file.jpg>``, else ``None``."""
    parts = PurePosixPath(member).parts
    if len(parts) < 3 or parts[-3] not in SPLITS or parts[-1].startswith("."):
        return None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-3], parts[-2], parts[-1]


def _list_dir(root: Path) -> list[tuple[str, str, Path]]:
    entries = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for cls_dir in (d for d in os.scandir(split_dir) if d.is_dir() and not d.name.startswith(".")):
            for f in os.scandir(cls_dir.path):
                if f.is_file() and _parse(f"{split}/{cls_dir.name}/{f.name}"):
                    entries.append((split, cls_dir.name, Path(f.path)))
    return entries


def _read_tars(paths: tuple[Path, ...]) -> list[tuple[str, str, str, bytes]]:
    entries = []
    for tar in paths:
        try:
            with tarfile.open(tar, "r|*") as tf:  # streaming: one pass over the compressed file
                for m in tf:
                    key = _parse(m.name) if m.isfile() else None
                    if key is not None:
                        fobj = tf.extractfile(m)
                        entries.append((*key, fobj.read() if fobj is not None else b""))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{tar}: not a readable tar archive ({type(e).__name__}: {e})") from None
    return entries


def _assemble(entries: list[tuple[str, str, str, bytes]], where: Path) -> dict[str, np.ndarray]:
    """Decode sorted entries into ``{split}_images`` (N, 3, H, W), ``{split}_labels`` and ``classes``."""
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    classes = sorted({cls for split, cls, _, _ in entries if split == "train"})
    if not classes:
        raise DataError(f"{where}: no training images found; pass a folder with train/<class>/<image> files")
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray] = {"classes": np.array(classes, dtype=np.str_)}
    shape = None
    for split in SPLITS:
        items = [e for e in entries if e[0] == split]
        if not items:
            continue
        unknown = sorted({cls for _, cls, _, _ in items} - index.keys())
        if unknown:
            raise DataError(
                f"{where}: {split} classes {unknown} have no training images; make the class folders match"
            )
        images = None
        for i, (_, cls, name, data) in enumerate(items):
            img = decode_image(data, f"{where}:{split}/{cls}/{name}")
            if images is None:
                shape = shape or img.shape
                images = np.empty((len(items), *shape), np.uint8)  # (N, H, W, 3)
            if img.shape != shape:
                raise DataError(
                    f"{split}/{cls}/{name}: size {img.shape[:2]} differs from {shape[:2]}; resize the images first"
                )
            images[i] = img
        out[f"{split}_images"] = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (N, 3, H, W)
        out[f"{split}_labels"] = np.array([index[cls] for _, cls, _, _ in items], np.int64)
    return out


def read_image_source(src: ImageSource, cache_dir: PathLike | None = None) -> dict[str, np.ndarray]:
    """Decoded arrays of ``src``, from the cache when its source files are unchanged.

    Returns:
        ``classes``, ``train_images``, ``train_labels`` and, if there is a test split, ``test_images``
        and ``test_labels``; images uint8 ``(N, 3, H, W)``.
    """
    where = src.paths[0]
    if src.kind == "dir":
        listed = _list_dir(where)
        files = sorted(p for *_, p in listed)
    else:
        listed, files = [], list(src.paths)
    if src.kind == "dir" and not listed:
        raise DataError(
            f"{where}: no images under train/<class>/; pass a folder with train/<class>/<image> files"
        )
    path = _cache.cache_path(
        cache_dir, where.name.split(".")[0] or "images", _cache.source_key(files, src.kind)
    )
    arrays = _cache.load_arrays(path)
    if arrays is not None:
        logger.info("loaded decoded images from cache %s", path)
        return arrays
    t0 = time.perf_counter()
    if src.kind == "dir":
        entries = [(s, c, p.name, p.read_bytes()) for s, c, p in listed]
    else:
        entries = _read_tars(src.paths)
    logger.info("decoding %d images from %s (once; cached afterwards)", len(entries), where)
    arrays = _assemble(entries, where)
    logger.info("decoded in %.1f s", time.perf_counter() - t0)
    _cache.save_arrays(path, arrays)
    return arrays
