"""Checkpoint files: safetensors tensors plus one JSON metadata record. Nothing here unpickles.

A file is a plain ``.safetensors``; the metadata lives in its header under the key ``"filterprune"``
(architecture, config, metrics, code version...). Writes are atomic: a temp file in the same folder,
then ``os.replace``, so a killed process never leaves a half-written checkpoint.

Integrity: the header also holds ``"filterprune.sha256"``, a sha256 over the tensors in name order
(for each: name, dtype, shape, then the raw bytes; :func:`tensor_digest`), checked on every read. It
catches corruption and edits of the tensor data; it is not a signature (whoever edits a file can
rewrite the digest too), so metadata is still validated where it is used (``serialize.py``).
Files written before the digest existed (e.g. ``benchmarks/weights/``) still
load: they are reported once per file as unverified, with a warning in the log.

Every problem with a file is one :class:`~filterprune.errors.CheckpointError` line that starts with
the path and names the problem. The header is parsed here (not only by safetensors) so that the
message can say *what* is wrong: too short, truncated, a pickle or ``torch.save`` file, a header that
is not JSON, metadata that is not a JSON object, tensors that fail their digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .types import PathLike
from .utils.io import atomic_path

logger = logging.getLogger(__name__)

META_KEY = "filterprune"
DIGEST_KEY = "filterprune.sha256"
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
_UNVERIFIED_SEEN: set[str] = set()


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) over ``tensors`` in name order: name, dtype, shape, raw bytes of each.

    Independent of the file layout, so the same tensors always give the same digest.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Path:
    """Write ``tensors`` and the JSON-able ``meta`` to ``path`` atomically, with the tensors' digest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage: give it plain copies on the CPU.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {META_KEY: json.dumps(meta or {}), DIGEST_KEY: tensor_digest(plain)}
    with atomic_path(path) as tmp:  # files 0644 under umask 022 (safetensors alone writes 0600)
        save_file(plain, str(tmp), metadata=header)
    return path


def _not_safetensors(path: Path, head: bytes) -> str:
    """Why a file that failed to parse is not a safetensors file, as precisely as its first bytes say."""
    if head.startswith(b"PK\x03\x04"):
        return ("a zip archive (torch.save format, which holds a pickle), not safetensors; filterprune never "
                "unpickles: pass such weights as a .pt/.th file with --model (read with torch.load(weights_only=True))")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return ("a Python pickle, not safetensors; filterprune never unpickles: pass such weights as a "
                ".pt/.th file with --model (read with torch.load(weights_only=True))")
    return "not a safetensors file"


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header and the size of the data section; checks sizes and offsets."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes, too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n > size - 8:
            why = _not_safetensors(path, head)
            if why == "not a safetensors file" and n <= MAX_HEADER_BYTES:
                why = f"truncated or not a safetensors file (header of {n} bytes, file of {size})"
            raise CheckpointError(f"{path}: {why}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except RecursionError:
        raise CheckpointError(f"{path}: safetensors header nested too deeply") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(f"{path}: {_not_safetensors(path, head)} (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is a JSON {type(header).__name__}, not an object")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise CheckpointError(f"{path}: tensor {key!r} has no valid data_offsets in the header")
        end = max(end, offsets[1])
    data = size - 8 - n
    if end > data:
        raise CheckpointError(f"{path}: truncated: the header needs {end} bytes of tensor data, the file has {data}")
    return header, data


def _parse_meta(path: Path, text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: metadata {META_KEY!r} is not a string")
    try:
        meta = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path}: metadata nested too deeply") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata is a JSON {type(meta).__name__}, expected an object")
    return meta


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, from its header alone (no tensor is read, no digest checked).

    Raises:
        CheckpointError: as :func:`read_checkpoint`, for the header.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    header, _ = _read_header(path)
    extra = header.get("__metadata__") or {}
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: safetensors __metadata__ is not an object")
    return _parse_meta(path, extra.get(META_KEY, "{}"))


def read_checkpoint(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, meta)``, digest checked.

    Raises:
        CheckpointError: the file is missing, not safetensors (a pickle, a zip), truncated, its header
            or metadata is malformed, or its tensors do not match their sha256.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        header, _ = _read_header(path)
        extra = header.get("__metadata__") or {}
        if not isinstance(extra, dict):
            raise CheckpointError(f"{path}: safetensors __metadata__ is not an object")
        meta = _parse_meta(path, extra.get(META_KEY, "{}"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})") from None
    digest = extra.get(DIGEST_KEY)
    if digest is None:
        if str(path) not in _UNVERIFIED_SEEN:
            _UNVERIFIED_SEEN.add(str(path))
            logger.warning("%s: written without a tensor digest (an older filterprune): loaded unverified", path)
    elif tensor_digest(tensors) != digest:
        raise CheckpointError(f"{path}: tensor data does not match its sha256 (the file is corrupted or was edited)")
    return tensors, meta
