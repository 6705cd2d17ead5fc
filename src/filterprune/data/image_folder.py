"""Image-folder datasets: ``root/{train,test}/<class>/<image>``, unpacked or in tarballs.

Accepted sources:
    * a folder with ``train/<class>/*`` and optionally ``test/<class>/*``;
    * a folder holding a ``*train*.tar.gz`` tarball (and its ``test`` sibling), e.g. the JPEG copy of
      CIFAR-10 in ``shared/data/cifar10``;
    * such a tarball itself; its ``test`` sibling is picked up when present, and one tarball may also
      hold both splits.

Images are decoded once with Pillow, converted to RGB, and cached as uint8 ``.npz`` (see ``_cache``).
Classes are the sorted training folder names; within a class, images are in file-name order.

Nothing is cached unless the whole source is verified: every tarball read to its end (``_archive``:
truncation anywhere, CRC), every image decoded within Pillow's decompression-bomb limit
(``Image.MAX_IMAGE_PIXELS``; its warning is an error here), no empty class folder, the same classes in
train and test, one image size, and the caller's ``verify`` (e.g. CIFAR-10's known image counts).
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..types import PathLike
from ..utils.progress import progress
from . import _cache
from ._archive import TAR_SUFFIXES, iter_tar

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")
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


MAX_IMAGE_FILE_BYTES = 64 << 20  # one image file; a 32x32 JPEG is about 1 KB


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode one image file's bytes to an RGB uint8 ``(H, W, 3)`` array.

    Raises:
        DataError: not an image Pillow reads, or more pixels than Pillow's decompression-bomb limit
            ``PIL.Image.MAX_IMAGE_PIXELS`` (checked from the header, before anything is decoded).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(
            f"{name}: refused as a decompression bomb ({str(e).split(',')[0]}, Pillow's "
            "Image.MAX_IMAGE_PIXELS); remove the file or shrink the image"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{name}: not a readable image ({reason}); remove or replace it") from None


def _parse(member: str) -> tuple[str, str, str] | None:
    """``(split, class, file)`` for ``.../<split>/<class>/<file.jpg>``, else ``None``."""
    parts = PurePosixPath(member).parts
    if len(parts) < 3 or parts[-3] not in SPLITS or parts[-1].startswith("."):
        return None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-3], parts[-2], parts[-1]


def _class_dir(member: str) -> tuple[str, str] | None:
    """``(split, class)`` for a class folder ``.../<split>/<class>``, else ``None``."""
    parts = PurePosixPath(member).parts
    if len(parts) < 2 or parts[-2] not in SPLITS or parts[-1].startswith("."):
        return None
    return parts[-2], parts[-1]


@dataclass
class _Scan:
    """What a source holds: decoded images by (split, class, file) and every class folder seen."""

    where: Path
    images: dict[tuple[str, str, str], np.ndarray]
    folders: set[tuple[str, str]]

    def add(self, key: tuple[str, str, str], data: bytes, label: str) -> None:
        if key in self.images:
            raise DataError(f"{label}: appears twice; remove the duplicate")
        if len(data) > MAX_IMAGE_FILE_BYTES:
            raise DataError(f"{label}: {len(data):,} bytes, over the {MAX_IMAGE_FILE_BYTES:,}-byte limit for "
                            "one image; remove it")
        self.images[key] = decode_image(data, label)
        self.folders.add(key[:2])


def _scan_dir(root: Path, listed: list[tuple[str, str, Path]], folders: set[tuple[str, str]]) -> _Scan:
    scan = _Scan(root, {}, set(folders))
    for split, cls, path in progress(listed, desc=f"decode {root.name}", unit="image"):
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or type(e).__name__}); fix its permissions "
                            "or remove it") from None
        scan.add((split, cls, path.name), data, str(path))
    return scan


def _scan_tars(paths: tuple[Path, ...]) -> _Scan:
    scan = _Scan(paths[0], {}, set())
    for tar in paths:
        def wanted(m) -> bool:
            return _parse(m.name) is not None

        members = iter_tar(tar, wanted, max_member_bytes=MAX_IMAGE_FILE_BYTES)  # a tar has no count: no ETA
        for m, data in progress(members, desc=f"decode {tar.name}", unit="file"):
            if data is not None:
                scan.add(_parse(m.name), data, f"{tar}:{m.name}")  # type: ignore[arg-type]
            elif m.isdir() and _class_dir(m.name) is not None:
                scan.folders.add(_class_dir(m.name))  # type: ignore[arg-type]
    return scan


def _list_dir(root: Path) -> tuple[list[tuple[str, str, Path]], set[tuple[str, str]]]:
    """Image files ``(split, class, path)`` under ``root/{train,test}/<class>/`` and every class folder."""
    entries, folders = [], set()
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for cls_dir in (d for d in os.scandir(split_dir) if d.is_dir() and not d.name.startswith(".")):
            folders.add((split, cls_dir.name))
            for f in os.scandir(cls_dir.path):
                if f.is_file() and _parse(f"{split}/{cls_dir.name}/{f.name}"):
                    entries.append((split, cls_dir.name, Path(f.path)))
    return entries, folders


def _assemble(scan: _Scan) -> dict[str, np.ndarray]:
    """``{split}_images`` (N, 3, H, W), ``{split}_labels`` and ``classes`` from a verified scan.

    Raises:
        DataError: no training images, an empty class folder, train and test classes that differ, or
            images of different sizes.
    """
    where = scan.where
    have = {(s, c) for s, c, _ in scan.images}
    empty = sorted(scan.folders - have)
    if empty:
        names = ", ".join(f"{s}/{c}" for s, c in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise DataError(f"{where}: class folder(s) {names} hold no images; add the images or remove the folders")
    classes = sorted(c for s, c in have if s == "train")
    if not classes:
        raise DataError(f"{where}: no training images found; pass a folder with train/<class>/<image> files")
    test_classes = sorted(c for s, c in have if s == "test")
    if test_classes and test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DataError(
            f"{where}: train and test have different classes (only in train: {only_train}, only in test: "
            f"{only_test}); make the class folders match"
        )
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray] = {"classes": np.array(classes, dtype=np.str_)}
    shape = None
    for split in SPLITS:
        keys = sorted(k for k in scan.images if k[0] == split)
        if not keys:
            continue
        for k in keys:
            img = scan.images[k]
            shape = shape or img.shape
            if img.shape != shape:
                raise DataError(f"{where}:{'/'.join(k)}: size {img.shape[:2]} differs from {shape[:2]}; "
                                "resize the images first")
        images = np.stack([scan.images[k] for k in keys])  # (N, H, W, 3)
        out[f"{split}_images"] = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (N, 3, H, W)
        out[f"{split}_labels"] = np.array([index[k[1]] for k in keys], np.int64)
    return out


Verify = Callable[[dict[str, np.ndarray], str], None]


def read_image_source(src: ImageSource, cache_dir: PathLike | None = None, verify: Verify | None = None
                      ) -> dict[str, np.ndarray]:
    """Decoded arrays of ``src``, from the cache when its source files are unchanged.

    Args:
        src: the folder or tarballs.
        cache_dir: cache root (``_cache.default_cache_dir()`` when ``None``).
        verify: ``verify(arrays, where)`` raises ``DataError`` for data that must not be used (or
            cached), e.g. a known dataset with the wrong number of images; it also runs on cache hits.

    Returns:
        ``classes``, ``train_images``, ``train_labels`` and, if there is a test split, ``test_images``
        and ``test_labels``; images uint8 ``(N, 3, H, W)``.

    Raises:
        DataError: a truncated or damaged tarball, an unreadable image or one over Pillow's
            decompression-bomb limit, an empty class folder, train/test classes that differ, mixed image
            sizes, or what ``verify`` refuses. Nothing is written to the cache then.
    """
    where = src.paths[0]
    label = " + ".join(map(str, src.paths))  # both tarballs, when the test split has its own
    if src.kind == "dir":
        listed, folders = _list_dir(where)
        files = sorted(p for *_, p in listed)
        if not listed:
            raise DataError(
                f"{where}: no images under train/<class>/; pass a folder with train/<class>/<image> files"
            )
    else:
        listed, folders, files = [], set(), list(src.paths)
    path = _cache.cache_path(
        cache_dir, where.name.split(".")[0] or "images",
        _cache.source_key(files, f"{src.kind}:{sorted(folders)}"),  # an added empty folder is seen too
    )
    arrays = _cache.load_arrays(path)
    if arrays is not None:
        logger.info("loaded decoded images from cache %s", path)
        if verify is not None:
            verify(arrays, label)
        return arrays
    t0 = time.perf_counter()
    logger.info("decoding images from %s (once; cached afterwards)", where)
    scan = _scan_dir(where, listed, folders) if src.kind == "dir" else _scan_tars(src.paths)
    arrays = _assemble(scan)
    if verify is not None:
        verify(arrays, label)
    logger.info("decoded %d images in %.1f s", len(scan.images), time.perf_counter() - t0)
    _cache.save_arrays(path, arrays)
    return arrays
