"""Validation of a model checkpoint's JSON metadata against its tensors, before anything is changed.

Written here rather than with a JSON-schema library because most of the checks are not about the
JSON alone: an attribute is legitimate only if it is a channel attribute of *that* layer of the
model, and a width only if it implies the shapes of the tensors stored next to it. Every failure is
one :class:`~filterprune.errors.CheckpointError` line that starts with the file and names the layer,
the attribute or the key.

Bounds:

* architecture arguments (``arch``) are JSON scalars (numbers finite, at most 1e6 in magnitude,
  strings at most 256 characters); the model they describe is first built on the ``meta`` device
  (no memory) and refused if its unpruned tensors would take more than
  ``max(256 MiB, 1024 x the tensor bytes in the file)`` (1024x covers pruning away ~97% of channels);
* a channel attribute is an integer in [1, the largest dimension of any tensor in the file];
* recorded input shapes: at most 8 inputs of at most 8 dims and 2**22 values each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .ops import channel_attrs, expected_shapes

MIN_BYTES_BOUND = 256 * 2**20
BYTES_FACTOR = 1024
_MAX_ARG = 1e6
_MAX_INPUT_VALUES = 2**22


def _fail(path: Path, msg: str) -> CheckpointError:
    return CheckpointError(f"{path}: {msg}")


def _is_int(v: Any) -> bool:
    return type(v) is int


def _check_scalar(path: Path, key: str, v: Any) -> None:
    if v is None or isinstance(v, bool):
        return
    if isinstance(v, (int, float)):
        if not math.isfinite(v) or abs(v) > _MAX_ARG:
            raise _fail(path, f"architecture argument {key}={v!r} is out of range (|value| <= {_MAX_ARG:g})")
        return
    if isinstance(v, str):
        if len(v) > 256:
            raise _fail(path, f"architecture argument {key!r} is a string of {len(v)} characters (at most 256)")
        return
    raise _fail(path, f"architecture argument {key!r} is a JSON {type(v).__name__}; only numbers, strings, "
                      "booleans and null are accepted")


def validated_record(path: Path, meta: dict[str, Any], readable: tuple[str, ...]) -> dict[str, Any]:
    """The ``format``/``arch``/``modules``/``inputs`` fields of ``meta``, type- and range-checked."""
    fmt = meta.get("format")
    if fmt not in readable:
        raise _fail(path, f"not a filterprune model checkpoint (format {fmt!r}; readable: {', '.join(readable)})")
    for key, kind in (("arch", dict), ("modules", dict)):
        if key not in meta:
            raise _fail(path, f"metadata has no {key!r}")
        if not isinstance(meta[key], kind):
            raise _fail(path, f"metadata {key!r} is a JSON {type(meta[key]).__name__}, expected an object")
    arch = meta["arch"]
    if len(arch) > 64:
        raise _fail(path, f"metadata 'arch' has {len(arch)} keys (at most 64)")
    for k, v in arch.items():
        _check_scalar(path, k, v)
    for k in ("name", "class"):
        if k in arch and not isinstance(arch[k], str):
            raise _fail(path, f"architecture {k!r} must be a string, got {arch[k]!r}")
    if "name" not in arch and "class" not in arch:
        raise _fail(path, "metadata 'arch' names neither a registered model ('name') nor a class ('class')")
    record = {"arch": arch, "modules": meta["modules"]}
    if "inputs" in meta:
        record["inputs"] = _validated_inputs(path, meta["inputs"])
    return record


def _validated_inputs(path: Path, inputs: Any) -> list[list[int]]:
    ok = isinstance(inputs, list) and 1 <= len(inputs) <= 8 and all(
        isinstance(s, list) and len(s) <= 8 and all(_is_int(d) and d >= 1 for d in s) for s in inputs)
    if not ok:
        raise _fail(path, f"metadata 'inputs' must be 1 to 8 shapes (lists of positive integers), got {inputs!r:.80}")
    for s in inputs:
        if math.prod(s) > _MAX_INPUT_VALUES:
            raise _fail(path, f"metadata 'inputs' shape {s} has more than {_MAX_INPUT_VALUES} values")
    return inputs


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def check_arch_size(path: Path, probe: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Refuse an architecture (built on ``meta``) far larger than the tensor bytes in the file."""
    need, have = _nbytes(probe.state_dict().values()), _nbytes(state.values())
    bound = max(MIN_BYTES_BOUND, BYTES_FACTOR * have)
    if need > bound:
        cfg = getattr(probe, "filterprune_cfg", {})
        raise _fail(path, f"architecture {cfg} would take {need / 2**20:,.0f} MiB unpruned, but the file holds "
                          f"{have / 2**10:,.1f} KiB of tensors (limit {bound / 2**20:,.0f} MiB): refused")


def _check_value(path: Path, name: str, attr: str, value: Any, max_dim: int) -> None:
    values = value if attr == "normalized_shape" and isinstance(value, list) else [value]
    if not values or not all(_is_int(v) and 1 <= v <= max_dim for v in values):
        raise _fail(path, f"layer {name}: {attr}={value!r:.40} is not a width (integers in [1, {max_dim}], the "
                          "largest tensor dimension in the file)")


def _structure(name: str, m: nn.Module, attrs: Mapping[str, Any]) -> str | None:
    if isinstance(m, nn.modules.conv._ConvNd):
        g = attrs["groups"]
        if attrs["in_channels"] % g or attrs["out_channels"] % g:
            return (f"layer {name}: groups={g} does not divide in_channels={attrs['in_channels']} and "
                    f"out_channels={attrs['out_channels']}")
    if isinstance(m, nn.GroupNorm) and attrs["num_channels"] % attrs["num_groups"]:
        return f"layer {name}: num_groups={attrs['num_groups']} does not divide num_channels={attrs['num_channels']}"
    return None


def validated_widths(path: Path, model: nn.Module, state: Mapping[str, Tensor],
                     modules: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The channel attributes to set on ``model``, after checking each against the stored tensors.

    Pure: ``model`` is only read (it may live on the ``meta`` device).
    """
    max_dim = max((max(t.shape, default=1) for t in state.values()), default=1)
    named = dict(model.named_modules())
    cls = type(model).__name__
    widths: dict[str, dict[str, Any]] = {}
    for name, entry in modules.items():
        if name not in named:
            raise _fail(path, f"layer {name!r} of the checkpoint is not in {cls}")
        m = named[name]
        allowed = tuple(channel_attrs(m) or ())
        if not isinstance(entry, dict):
            raise _fail(path, f"modules[{name!r}] is a JSON {type(entry).__name__}, expected an object")
        if entry.get("type") != type(m).__name__:
            raise _fail(path, f"layer {name} is a {type(m).__name__} in {cls}, the checkpoint says {entry.get('type')!r}")
        for attr, value in entry.items():
            if attr == "type":
                continue
            if attr not in allowed:
                raise _fail(path, f"layer {name} ({type(m).__name__}): {attr!r} is not a channel attribute "
                                  f"(accepted: {', '.join(allowed) or 'none'}); refused")
            _check_value(path, name, attr, value, max_dim)
        widths[name] = {a: v for a, v in entry.items() if a != "type"}

    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = "; ".join(part for part in (
            f"missing tensors {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected tensors {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}" if extra else "") if part)
        raise _fail(path, f"tensors do not match {cls}: {what}")

    for name, m in named.items():
        current = channel_attrs(m)
        if current is None:
            continue
        names, attrs = tuple(current), current | widths.get(name, {})
        problem = _structure(name, m, attrs)
        if problem:
            raise _fail(path, problem)
        for leaf, shape in expected_shapes(m, attrs).items():
            key = f"{name}.{leaf}" if name else leaf
            if key in state and tuple(state[key].shape) != tuple(shape):
                said = ", ".join(f"{a}={attrs[a]}" for a in names)
                raise _fail(path, f"layer {name} ({said}) implies {key} of shape {tuple(shape)}, the file holds "
                                  f"{tuple(state[key].shape)}")
    return widths


def check_inputs_run(path: Path, model: nn.Module, inputs: list[list[int]]) -> None:
    """Run ``model`` once on zeros of the recorded per-sample shapes; refuse if its widths disagree."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype, device = (param.dtype, param.device) if param is not None else (torch.float32, "cpu")
    xs = [torch.zeros(1, *s, dtype=dtype, device=device) for s in inputs]
    try:
        with torch.no_grad():
            model(*xs)
    except Exception as e:  # noqa: BLE001 - whatever the forward raises means the widths disagree
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise _fail(path, f"the loaded model fails on its recorded input shapes {inputs} ({reason}); "
                          "its layer widths disagree") from None
