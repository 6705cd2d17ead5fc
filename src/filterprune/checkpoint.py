"""Checkpoint files: safetensors tensors plus one JSON metadata record. Nothing here unpickles.

A file is a plain ``.safetensors``; the metadata lives in its header under the key ``"filterprune"``
(architecture, config, metrics, code version...). Writes are atomic: a temp file in the same folder,
then ``os.replace``, so a killed process never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .types import PathLike
from .utils.io import atomic_path

META_KEY = "filterprune"


def save_checkpoint(path: PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Path:
    """Write ``tensors`` and the JSON-able ``meta`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage: give it plain copies on the CPU.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:  # files 0644 under umask 022 (safetensors alone writes 0600)
        save_file(plain, str(tmp), metadata={META_KEY: json.dumps(meta or {})})
    return path


def read_checkpoint(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, meta)``.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or not one of ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
        meta = json.loads(header.get(META_KEY, "{}"))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})") from None
    return tensors, meta
