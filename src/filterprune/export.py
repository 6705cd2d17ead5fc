"""ONNX export with a numerical check against PyTorch through onnxruntime.

The exporter is torch's TorchScript-based one (``dynamo=False``, opset 17). The default exporter of
torch >= 2.9 (``torch.export``-based) needs ``onnxscript``, which is not a dependency; the TorchScript
one needs only ``onnx`` and exports everything filterprune builds, including PadShortcut's
``index_copy`` (ResNet-20: max |onnx - torch| ~ 1e-5). Its DeprecationWarning is silenced here and
logged at debug level, as is its warning about boolean indexing (PadShortcut's channel mask) when the
onnxruntime check runs. The batch dimension is exported as dynamic.

Needs the ``onnx`` extra: ``pip install filterprune[onnx]`` (onnx, onnxruntime).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import FilterpruneError
from .types import PathLike
from .utils.modes import evaluating

logger = logging.getLogger(__name__)

__all__ = ["export_onnx"]

OPSET = 17
# Emitted for PadShortcut's 1-D boolean channel mask; numerically verified by the onnxruntime check.
_KNOWN_BOOL_INDEX = "Exporting aten::index operator with indices of type Byte"


def export_onnx(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    path: PathLike,
    *,
    check: bool = True,
    atol: float = 1e-4,
) -> float:
    """Export ``model`` (in eval mode) to ONNX at ``path``, written atomically.

    Inputs are named ``input`` (``input_0``, ``input_1``... for several) and outputs ``output``; dim 0
    of each is a dynamic ``batch`` axis. With ``check``, the exported file is run with onnxruntime
    (CPU) on ``example_inputs`` before it is moved into place, so a file that fails the check never
    appears at ``path``.

    Args:
        model: the network; its train/eval flags are restored afterwards.
        example_inputs: a batched input (a tensor, or a tuple of positional inputs).
        path: destination ``.onnx`` file; its folder is created.
        check: compare onnxruntime's outputs with the model's.
        atol: the largest max-abs difference accepted by the check.

    Returns:
        The max absolute difference between onnxruntime's and torch's outputs, or NaN without ``check``.

    Raises:
        FilterpruneError: the export failed, or the difference exceeds ``atol``.
        ImportError: onnx or onnxruntime is not installed.
    """
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    input_names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with evaluating(model, no_grad=False):
            with torch.no_grad():
                reference = model(*inputs)
            outputs = [reference] if isinstance(reference, Tensor) else list(reference)
            output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DeprecationWarning)
                try:
                    torch.onnx.export(
                        model, inputs, str(tmp), opset_version=OPSET, dynamo=False,
                        input_names=input_names, output_names=output_names,
                        dynamic_axes={n: {0: "batch"} for n in input_names + output_names},
                    )
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
            diff = _max_abs_diff(tmp, input_names, inputs, outputs) if check else float("nan")
            if check and not diff <= atol:
                raise FilterpruneError(f"ONNX check failed: max |onnxruntime - torch| = {diff:.3g} > {atol:g}")
            os.replace(tmp, path)
            logger.info("exported %s (opset %d, max abs diff %.3g)", path, OPSET, diff)
            return diff
    finally:
        tmp.unlink(missing_ok=True)


def _max_abs_diff(path: Path, input_names: list[str], inputs: tuple[Any, ...], outputs: list[Tensor]) -> float:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: t.detach().cpu().numpy() for n, t in zip(input_names, inputs, strict=True)}
    got = session.run(None, feeds)
    if len(got) != len(outputs):
        raise FilterpruneError(f"ONNX model returns {len(got)} outputs, torch {len(outputs)}")
    return max(float(np.abs(g - o.detach().cpu().numpy()).max(initial=0.0)) for g, o in zip(got, outputs, strict=True))
