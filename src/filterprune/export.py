"""ONNX export with a numerical check against PyTorch through onnxruntime.

The exporter is torch's TorchScript-based one (``dynamo=False``, opset 17). The default exporter of
torch >= 2.9 (``torch.export``-based) needs ``onnxscript``, which is not a dependency; the TorchScript
one needs only ``onnx`` and exports everything filterprune builds, including PadShortcut's
``index_copy`` (ResNet-20: max |onnx - torch| ~ 1e-5). Its DeprecationWarning is silenced here and
logged at debug level, as is its warning about boolean indexing (PadShortcut's channel mask) when the
onnxruntime check runs. The batch dimension is exported as dynamic. Tuple, list and dict outputs
are flattened (dict entries named by their keys); keyword inputs are exported under their names.

Needs the ``onnx`` extra: ``pip install filterprune[onnx]`` (onnx, onnxruntime).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import FilterpruneError
from .types import PathLike
from .utils.io import atomic_path
from .utils.modes import evaluating

logger = logging.getLogger(__name__)

__all__ = ["export_onnx"]

OPSET = 17
# Emitted for PadShortcut's 1-D boolean channel mask; numerically verified by the onnxruntime check.
_KNOWN_BOOL_INDEX = "Exporting aten::index operator with indices of type Byte"


def _flatten(out: Any, name: str = "output") -> list[tuple[str, Tensor]]:
    """``(name, tensor)`` for every tensor in a (nested) tuple / list / dict output, in forward order.

    A single tensor is ``output``; sequence items are ``output_0``, ``output_1``...; dict entries are
    named by their keys (``logits``, ``boxes``; nested: ``output_1_boxes``).
    """
    if isinstance(out, Tensor):
        return [(name, out)]
    if isinstance(out, dict):
        top = name == "output"
        return [pair for k, v in out.items() for pair in _flatten(v, _safe(str(k)) if top else f"{name}_{_safe(str(k))}")]
    if isinstance(out, (tuple, list)):
        return [pair for i, v in enumerate(out) for pair in _flatten(v, f"{name}_{i}")]
    raise FilterpruneError(f"ONNX export: the model returns a {type(out).__name__} under {name!r}; only tensors "
                           "and tuples, lists and dicts of tensors can be exported")


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key) or "output"


class _Flat(nn.Module):
    """The model with positional tensor inputs (keyword inputs by name) and a flat tuple of outputs."""

    def __init__(self, model: nn.Module, keys: list[str] | None) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        out = self.model(**dict(zip(self.keys, inputs, strict=True))) if self.keys else self.model(*inputs)
        return tuple(t for _, t in _flatten(out))


def export_onnx(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...] | dict[str, Tensor],
    path: PathLike,
    *,
    check: bool = True,
    atol: float = 1e-4,
) -> float:
    """Export ``model`` (in eval mode) to ONNX at ``path``, written atomically.

    Inputs are named ``input`` (``input_0``, ``input_1``... for several; a dict's keys for keyword
    inputs). Outputs may be a tensor or (nested) tuples, lists and dicts of tensors; they are flattened
    in forward order and named ``output``, ``output_0``, ``output_1``... or by their dict keys. Dim 0 of
    every input, and of every output whose dim 0 is the batch, is a dynamic ``batch`` axis. With
    ``check``, the exported file is run with onnxruntime (CPU) on ``example_inputs`` before it is moved
    into place, so a file that fails the check never appears at ``path``.

    Args:
        model: the network; its train/eval flags are restored afterwards.
        example_inputs: a batched input (a tensor, a tuple of positional inputs or a dict of keyword inputs).
        path: destination ``.onnx`` file; its folder is created.
        check: compare onnxruntime's outputs with the model's.
        atol: the largest max-abs difference accepted by the check.

    Returns:
        The max absolute difference between onnxruntime's and torch's outputs, or NaN without ``check``.

    Raises:
        FilterpruneError: the export failed, an output is not a tensor, or the difference exceeds ``atol``.
        ImportError: onnx or onnxruntime is not installed.

    >>> import tempfile, os
    >>> class TwoHeads(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = nn.Conv2d(3, 4, 3)
    ...     def forward(self, x):
    ...         f = self.conv(x)
    ...         return {"logits": f.mean((2, 3)), "map": f}
    >>> export_onnx(TwoHeads(), torch.randn(2, 3, 8, 8), os.path.join(tempfile.mkdtemp(), "m.onnx")) < 1e-4
    True
    """
    if isinstance(example_inputs, dict):
        keys: list[str] | None = list(example_inputs)
        inputs = tuple(example_inputs.values())
        input_names = [_safe(k) for k in keys]
    else:
        keys = None
        inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        input_names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    path = Path(path)
    flat = _Flat(model, keys)
    with evaluating(model, no_grad=False):
        with torch.no_grad():
            named = _flatten(model(**example_inputs) if keys else model(*inputs))
        output_names = [n for n, _ in named]
        outputs = [t for _, t in named]
        if len(set(output_names)) != len(output_names):
            output_names = [f"output_{i}" for i in range(len(outputs))]
        batch = inputs[0].shape[0] if inputs and inputs[0].dim() else None
        dynamic = {n: {0: "batch"} for n in input_names}
        dynamic.update({n: {0: "batch"} for n, t in zip(output_names, outputs, strict=True)
                        if t.dim() and t.shape[0] == batch})
        with atomic_path(path) as tmp:  # a file that fails the check never appears at ``path``
            _export(flat, model, inputs, tmp, input_names, output_names, dynamic, check)
            diff = _max_abs_diff(tmp, input_names, inputs, outputs) if check else float("nan")
            if check and not diff <= atol:
                raise FilterpruneError(f"ONNX check failed: max |onnxruntime - torch| = {diff:.3g} > {atol:g}")
    logger.info("exported %s (opset %d, max abs diff %.3g)", path, OPSET, diff)
    return diff


def _export(flat: nn.Module, model: nn.Module, inputs: tuple[Tensor, ...], tmp: Path, input_names: list[str],
            output_names: list[str], dynamic: dict[str, dict[int, str]], check: bool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        try:
            torch.onnx.export(flat, inputs, str(tmp), opset_version=OPSET, dynamo=False,
                              input_names=input_names, output_names=output_names, dynamic_axes=dynamic)
        except torch.onnx.OnnxExporterError as e:
            if "not installed" in str(e):  # "Module onnx is not installed!"
                raise ImportError(f"ONNX export needs the onnx extra (pip install onnx onnxruntime): {e}") from e
            raise FilterpruneError(f"ONNX export of {type(model).__name__} failed: {e}") from e
        except RuntimeError as e:  # unsupported operators and tracing failures
            raise FilterpruneError(f"ONNX export of {type(model).__name__} failed: {e}") from e
    for w in caught:
        if issubclass(w.category, DeprecationWarning) or (check and _KNOWN_BOOL_INDEX in str(w.message)):
            logger.debug("torch.onnx: %s", w.message)  # the exporter's deprecation; a case the check covers
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _max_abs_diff(path: Path, input_names: list[str], inputs: tuple[Any, ...], outputs: list[Tensor]) -> float:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: t.detach().cpu().numpy() for n, t in zip(input_names, inputs, strict=True)}
    got = session.run(None, feeds)
    if len(got) != len(outputs):
        raise FilterpruneError(f"ONNX model returns {len(got)} outputs, torch {len(outputs)}")
    return max(float(np.abs(g - o.detach().cpu().numpy()).max(initial=0.0)) for g, o in zip(got, outputs, strict=True))
