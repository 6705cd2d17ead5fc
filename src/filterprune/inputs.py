"""What a model expects and what data gives: input channels, image size, classes, checked in one line.

A CIFAR checkpoint fed the default digits data (1x8x8) used to fail deep inside a convolution; here the
mismatch is found from cheap facts before any long work: a filterprune checkpoint's JSON header (no
tensors read), a registered model built at its defaults, the known shapes of the named datasets
(``KNOWN_SHAPES``), or an already loaded dataset.

>>> check_fits(InputSpec(3, 32, 10), InputSpec(1, 8, 10), "model.safetensors", "--data digits")
Traceback (most recent call last):
...
filterprune.errors.DataError: model.safetensors expects 3x32x32 images and 10 classes but --data digits gives 1x8x8 images and 10 classes; pass data of that shape, or a model made for this data
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .errors import DataError

# (channels, image side, classes) of the named datasets, so a model can be checked against them unloaded.
KNOWN_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 10),
    "fashion-mnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
}
NOMINAL_SIDE = 32  # what the CIFAR models are made for when nothing in them fixes the size


@dataclass(frozen=True)
class InputSpec:
    """Input channels, image side and classes; ``fixed_size=False`` when any side works (global pooling)."""

    in_chans: int
    image_size: int
    num_classes: int | None
    fixed_size: bool = True

    def describe(self) -> str:
        """``"3x32x32 images and 10 classes"``: the spec in words, for error messages."""
        c, s = self.in_chans, self.image_size
        classes = f" and {self.num_classes} classes" if self.num_classes is not None else ""
        return f"{c}x{s}x{s} images{classes}"


def _fixed_side(net: nn.Module) -> int | None:
    """The image side a model is built for, if its constructor takes ``image_size`` (a flatten into a
    Linear fixes it); ``None`` for models that pool globally and take any size."""
    side = (getattr(net, "filterprune_cfg", None) or {}).get("image_size")
    if side is None:
        try:
            param = inspect.signature(type(net).__init__).parameters.get("image_size")
        except (TypeError, ValueError):
            param = None
        side = param.default if param is not None and isinstance(param.default, int) else None
    return int(side) if side is not None else None


def model_spec(net: nn.Module) -> InputSpec | None:
    """From a built model: the first conv's input channels, the last Linear's outputs, its image size."""
    convs = [m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs:
        return None
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    side = _fixed_side(net)
    return InputSpec(convs[0].in_channels, side or NOMINAL_SIDE, linears[-1].out_features if linears else None,
                     fixed_size=side is not None)


def checkpoint_spec(path: str | Path) -> InputSpec | None:
    """From a filterprune ``.safetensors`` header alone; ``None`` if it cannot tell (the loader reports why)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("filterprune", "{}"))
        modules = meta.get("modules") or {}
        arch = meta.get("arch") or {}
        convs = [m for m in modules.values() if "Conv" in str(m.get("type"))]
        linears = [m for m in modules.values() if m.get("type") == "Linear"]
        if not convs:
            return None
        side = arch.get("image_size")
        recorded = meta.get("inputs") or []  # example input shapes, when the checkpoint recorded them
        seen = int(recorded[0][-1]) if recorded and isinstance(recorded[0], list) and len(recorded[0]) == 3 else None
        return InputSpec(int(convs[0]["in_channels"]), int(side or seen or NOMINAL_SIDE),
                         int(linears[-1]["out_features"]) if linears else None, fixed_size=side is not None)
    except Exception:  # noqa: BLE001 - a malformed header is the checkpoint loader's one-line error
        return None


def state_spec(state: dict) -> InputSpec | None:
    """From a plain state dict (a foreign ``.th``/``.pt`` file): the first 4-D weight's input channels
    and the last 2-D weight's outputs, in the file's key order."""
    convs = [t for t in state.values() if getattr(t, "ndim", 0) == 4]
    linears = [t for t in state.values() if getattr(t, "ndim", 0) == 2]
    if not convs:
        return None
    return InputSpec(int(convs[0].shape[1]), NOMINAL_SIDE, int(linears[-1].shape[0]) if linears else None,
                     fixed_size=False)


def data_spec(spec: str) -> InputSpec | None:
    """For a named dataset (``digits``, ``fashion-mnist[:DIR]``, ``cifar10[:PATH]``), without loading it."""
    shape = KNOWN_SHAPES.get(spec.partition(":")[0])
    return InputSpec(*shape) if shape else None


def dataset_spec(ds) -> InputSpec:
    """For a loaded :class:`~filterprune.data.ArrayDataset`."""
    return InputSpec(ds.in_chans, ds.image_size, ds.num_classes)


def check_fits(expected: InputSpec | None, given: InputSpec | None, model_label: str, data_label: str) -> None:
    """Refuse data whose channels, classes or (for a model fixed to one size) image size the model cannot take.

    Raises:
        DataError: one line with both shapes and what to do.
    """
    if expected is None or given is None:
        return
    wrong = (expected.in_chans != given.in_chans
             or (expected.num_classes is not None and given.num_classes is not None
                 and expected.num_classes != given.num_classes)
             or (expected.fixed_size and expected.image_size != given.image_size))
    if wrong:
        raise DataError(f"{model_label} expects {expected.describe()} but {data_label} gives {given.describe()}; "
                        "pass data of that shape, or a model made for this data")


def check_input_size(net: nn.Module, input_size, model_label: str) -> None:
    """Refuse an ``--input-size C H W`` the model cannot take (channels, or the side of a fixed-size model)."""
    c, h, w = (int(v) for v in input_size)
    if min(c, h, w) < 1:
        raise DataError(f"--input-size {c} {h} {w}: every dimension must be >= 1")
    expected = model_spec(net)
    if expected is None:
        return
    if c != expected.in_chans or (expected.fixed_size and (h, w) != (expected.image_size,) * 2):
        shape = f"{expected.in_chans}x{expected.image_size}x{expected.image_size}" if expected.fixed_size else \
            f"{expected.in_chans} channels"
        raise DataError(f"--input-size {c} {h} {w}: {model_label} takes {shape}; pass --input-size "
                        f"{expected.in_chans} {expected.image_size} {expected.image_size}")
