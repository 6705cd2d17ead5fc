"""Decoded-array cache: uint8 arrays in ``.npz`` files, keyed by the source files' path, size and mtime.

Files are written to a temporary name in the same folder and renamed into place, so a crash or a
concurrent reader never sees a partial file. They are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..types import PathLike

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the decoded layout or its verification changes (2: truncated tarballs refused)


def default_cache_dir() -> Path:
    """``$FILTERPRUNE_CACHE``, else ``~/.cache/filterprune``."""
    env = os.environ.get("FILTERPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "filterprune"


def source_key(files: Iterable[Path], tag: str) -> str:
    """Hex digest of ``tag`` and each file's absolute path, size and mtime (ns)."""
    parts: list[object] = [CACHE_VERSION, tag]
    for f in files:
        st = f.stat()
        parts.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def cache_path(cache_dir: PathLike | None, stem: str, key: str) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "decoded" / f"{stem}-{key}.npz"


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at ``path``, or ``None`` if it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # a damaged cache file is rebuilt, never fatal
        logger.warning("ignoring unreadable cache file %s (%s)", path, e)
        return None


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically; failures are logged, not raised (the cache is optional)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False
        ) as f:
            tmp = Path(f.name)
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o644)  # NamedTemporaryFile creates 0600; the cache is as readable as a normal file
        os.replace(tmp, path)
        tmp = None
        logger.info("cached decoded arrays at %s", path)
    except OSError as e:
        logger.warning("could not write cache file %s (%s)", path, e)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
