"""Pruned checkpoints of any ``nn.Module`` without pickle: a ``.safetensors`` state dict plus JSON.

The metadata says how to give a freshly built, unpruned model the saved widths:

* ``arch``: how the model was built. For registry models, the ``create_model`` arguments (from the
  model's ``filterprune_cfg``), so ``load(path)`` rebuilds them; for any other model, its class
  (``{"class": "mypkg.nets.MyNet"}``), which is only compared, never imported: the caller builds the
  instance (``load(path, model=MyNet())``).
* ``modules``: the channel attributes of every layer the engine can resize
  (:func:`filterprune.graph.ops.channel_attrs`: conv in/out channels and groups, BatchNorm/InstanceNorm
  features, GroupNorm groups and channels, LayerNorm's normalized shape, Linear features, PReLU
  parameters, and what each layer operation registered with ``register_layer_op`` declares).
* ``inputs`` (optional): per-sample shapes of the example inputs; the loaded model is run once on
  zeros of these shapes, so widths that disagree between layers are refused at load, not later.

Loading validates all of it before anything is changed (``_validate.py``): only channel attributes
are applied (a BatchNorm ``eps`` in the JSON is refused, nothing else is ever ``setattr``), each one
must imply the stored tensor shapes, the tensor names must be exactly the model's, and a registry
architecture is first built on the ``meta`` device to bound its size by the bytes in the file. Then
the layers are resized and the state dict is loaded with ``strict=True``.

>>> import tempfile, os
>>> from filterprune.models import create_model
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> _ = save_model(create_model("convnet_small"), path)
>>> type(load_model(path)).__name__
'SmallConvNet'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import read_checkpoint, save_checkpoint
from .errors import CheckpointError
from .graph._validate import check_arch_size, check_inputs_run, validated_record, validated_widths
from .graph.ops import channel_attrs, set_channel_attrs
from .models import create_model, list_models
from .types import PathLike

logger = logging.getLogger(__name__)

FORMAT = "filterprune.model/2"
READABLE = ("filterprune.model/1", FORMAT)  # /1: registry models only, no ``inputs``
RESERVED = ("format", "arch", "modules", "code_version", "inputs")

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


def _input_shapes(example_inputs: Any) -> list[list[int]] | None:
    """Per-sample shapes of floating-point example inputs (a tensor or a tuple/list of them), else None."""
    items = [example_inputs] if isinstance(example_inputs, Tensor) else example_inputs
    if not isinstance(items, (tuple, list)) or not all(isinstance(t, Tensor) and t.is_floating_point() and t.dim() >= 1
                                                       for t in items):
        return None
    return [list(t.shape[1:]) for t in items]


def resize(model: nn.Module, widths: Mapping[str, Mapping[str, Any]], state: Mapping[str, Tensor]) -> None:
    """Set the (validated) channel attributes ``widths`` and give every tensor its stored shape.

    Tensor values are left unset (``load_state_dict`` fills them); registered buffers stay buffers.
    """
    for name, attrs in widths.items():
        set_channel_attrs(model.get_submodule(name), attrs)
    for key, stored in state.items():
        owner, _, leaf = key.rpartition(".")
        m = model.get_submodule(owner)
        current = getattr(m, leaf, None)
        if not isinstance(current, Tensor) or current.shape == stored.shape:
            continue
        fresh = torch.empty(stored.shape, dtype=current.dtype, device=current.device)
        if isinstance(current, nn.Parameter):
            setattr(m, leaf, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            setattr(m, leaf, fresh)  # a registered buffer stays registered


def save_model(model: nn.Module, path: PathLike, *, meta: dict[str, Any] | None = None,
               example_inputs: Tensor | Sequence[Tensor] | None = None) -> Path:
    """Write any ``model`` (pruned or not) to ``path`` as safetensors + JSON metadata, atomically.

    Args:
        model: any ``nn.Module``; registry models (with ``filterprune_cfg``) load back by name.
        path: destination, conventionally ``*.safetensors``.
        meta: extra JSON-able metadata (config, metrics, a pruning report); keys must not clash
            with ``format``, ``arch``, ``modules``, ``code_version``, ``inputs``.
        example_inputs: a batch the model accepts (floating-point tensors); its per-sample shapes are
            stored so that loading can run the model once and refuse widths that disagree.

    Raises:
        ValueError: ``meta`` uses a reserved key.
    """
    clash = sorted(set(meta or {}) & set(RESERVED))
    if clash:
        raise ValueError(f"meta keys {clash} are reserved")
    cfg = getattr(model, "filterprune_cfg", None)
    arch = dict(cfg) if isinstance(cfg, dict) and cfg else {}
    arch.setdefault("class", f"{type(model).__module__}.{type(model).__qualname__}")
    record: dict[str, Any] = {"format": FORMAT, "arch": arch, "modules": module_shapes(model),
                              "code_version": _code_version()}
    shapes = _input_shapes(example_inputs) if example_inputs is not None else None
    if shapes is not None:
        record["inputs"] = shapes
    return save_checkpoint(path, model.state_dict(), {**record, **(meta or {})})


def _build_registered(path: Path, arch: dict[str, Any], modules: dict[str, Any],
                      state: Mapping[str, Tensor]) -> nn.Module:
    """Build the registry model ``arch`` names, after checking it on the ``meta`` device (no memory)."""

    args = {k: v for k, v in arch.items() if k not in ("name", "class")}
    name = arch["name"]
    if name not in list_models():
        raise CheckpointError(f"{path}: model {name!r} is not registered in this process; import the module that "
                              "registers it (@filterprune.register_model), or pass model=YourModel() to load")
    try:
        with torch.device("meta"):
            probe = create_model(name, **args)
    except Exception as e:  # noqa: BLE001 - whatever the entrypoint raises on these arguments
        raise CheckpointError(f"{path}: cannot build {name} with {args} ({type(e).__name__}: {e})") from None
    check_arch_size(path, probe, state)
    validated_widths(path, probe, state, modules)
    return create_model(name, **args)


def load_model(path: PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load the model saved at ``path`` at its saved widths, in eval mode.

    Args:
        path: a file written by :func:`save_model` (or by an older filterprune, format /1).
        model: a freshly built, unpruned instance of the saved class; it is resized in place and
            returned. Leave it out for registry models (``arch`` names a registered model).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or fails its digest; its metadata is
            malformed, names attributes that are not channel attributes, widths that disagree with
            its tensors or an architecture far larger than the file; the tensors do not fit ``model``.
    """
    path = Path(path)
    state, meta = read_checkpoint(path)
    record = validated_record(path, meta, READABLE)
    arch = record["arch"]
    if model is None:
        if "name" not in arch:
            held = arch.get("class", "a model")
            raise CheckpointError(f"{path}: holds a {held}, not a registered model; load it with "
                                  f"filterprune.load(path, model=<a fresh {held.rsplit('.', 1)[-1]}>)")
        model = _build_registered(path, arch, record["modules"], state)
    elif "class" in arch and arch["class"].rsplit(".", 1)[-1] != type(model).__qualname__.rsplit(".", 1)[-1]:
        raise CheckpointError(f"{path}: holds a {arch['class']}, got a {type(model).__qualname__} to load it into")
    widths = validated_widths(path, model, state, record["modules"])
    resize(model, widths, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        reason = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: does not fit {type(model).__name__} ({reason})") from None
    model.eval()
    if "inputs" in record:
        check_inputs_run(path, model, record["inputs"])
    logger.debug("loaded %s (%s)", path, arch.get("name") or arch.get("class"))
    return model
