"""Pruned checkpoints without pickle: a ``.safetensors`` state dict plus JSON metadata.

The metadata says how to rebuild the model: ``arch`` (``create_model`` arguments, from the model's
``filterprune_cfg``) and ``modules``, the channel attributes of every layer the engine can resize
(conv in/out channels and groups, BatchNorm features, Linear features, shortcut widths). Loading
builds the unpruned architecture, resizes those layers and every tensor whose stored shape differs,
then loads the state dict with ``strict=True``. Unpruned models round-trip the same way.

>>> import tempfile, os
>>> from filterprune.models import create_model
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> _ = save_model(create_model("convnet_small"), path)
>>> type(load_model(path)).__name__
'SmallConvNet'
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import read_checkpoint, save_checkpoint
from ..errors import CheckpointError
from ..types import PathLike
from .ops import channel_attrs, set_channel_attrs

logger = logging.getLogger(__name__)

FORMAT = "filterprune.model/1"
RESERVED = ("format", "arch", "modules", "code_version")


def _code_version() -> str:
    try:
        return metadata.version("filterprune")
    except metadata.PackageNotFoundError:
        return "unknown"


def module_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Channel attributes of every resizable layer: ``{name: {"type": ..., "out_channels": ...}}``."""
    shapes = {}
    for name, m in model.named_modules():
        attrs = channel_attrs(m)  # built-in layers and registered layer ops (graph/ops.py)
        if attrs is not None:
            shapes[name] = {"type": type(m).__name__, **attrs}
    return shapes


def resize(model: nn.Module, shapes: dict[str, dict[str, Any]], state: dict[str, torch.Tensor]) -> None:
    """Give ``model`` the layer widths ``shapes`` and tensors of the shapes in ``state`` (values unset).

    Raises:
        KeyError / TypeError: a layer is missing or of another type (the caller names the file).
    """
    for name, attrs in shapes.items():
        m = model.get_submodule(name)
        if type(m).__name__ != attrs.get("type"):
            raise TypeError(f"layer {name} is {type(m).__name__}, checkpoint says {attrs.get('type')}")
        set_channel_attrs(m, {k: v for k, v in attrs.items() if k != "type"})
    for key, stored in state.items():
        owner, _, leaf = key.rpartition(".")
        m = model.get_submodule(owner)
        current = getattr(m, leaf, None)
        if not isinstance(current, torch.Tensor) or current.shape == stored.shape:
            continue
        fresh = torch.empty(stored.shape, dtype=current.dtype, device=current.device)
        if isinstance(current, nn.Parameter):
            setattr(m, leaf, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            setattr(m, leaf, fresh)  # a registered buffer stays registered


def save_model(model: nn.Module, path: PathLike, *, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (pruned or not) to ``path`` as safetensors + JSON metadata, atomically.

    Args:
        model: built by ``create_model`` (it carries ``filterprune_cfg``), possibly pruned since.
        path: destination, conventionally ``*.safetensors``.
        meta: extra JSON-able metadata (config, metrics, a pruning report); keys must not clash
            with ``format``, ``arch``, ``modules``, ``code_version``.

    Raises:
        ValueError: the model has no ``filterprune_cfg`` or ``meta`` uses a reserved key.
    """
    arch = getattr(model, "filterprune_cfg", None)
    if not isinstance(arch, dict) or "name" not in arch:
        raise ValueError("model has no filterprune_cfg; build it with filterprune.models.create_model")
    clash = sorted(set(meta or {}) & set(RESERVED))
    if clash:
        raise ValueError(f"meta keys {clash} are reserved")
    record = {"format": FORMAT, "arch": dict(arch), "modules": module_shapes(model),
              "code_version": _code_version(), **(meta or {})}
    return save_checkpoint(path, model.state_dict(), record)


def load_model(path: PathLike) -> nn.Module:
    """Rebuild the model saved at ``path``, at its saved widths, in eval mode.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, not a filterprune model, or does not
            match the architecture it names.
    """
    from ..models import create_model

    state, meta = read_checkpoint(path)
    if meta.get("format") != FORMAT or "arch" not in meta:
        raise CheckpointError(f"{path}: not a filterprune model checkpoint (format {meta.get('format')!r})")
    arch = dict(meta["arch"])
    try:
        model = create_model(arch.pop("name"), **arch)
        resize(model, meta.get("modules", {}), state)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: does not match its architecture ({reason})") from None
    logger.debug("loaded %s (%s)", path, meta["arch"].get("name"))
    return model.eval()
