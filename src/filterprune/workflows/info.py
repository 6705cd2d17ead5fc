"""Looking at models and checkpoints: ``filterprune info`` and ``filterprune eval``."""

from __future__ import annotations

from typing import Any

import torch

from ..data import BatchLoader, load_data
from ..models import list_models
from ..train import evaluate
from ..utils.seed import pick_device
from .common import input_size_of, resolve_model


def registered() -> str:
    """The registered model, criterion and training-time method names, three lines (``filterprune info
    --list``); every name on the last two is a value of ``--criterion``."""
    from ..criteria import list_criteria
    from .methods import method_names

    return ("models:    " + " ".join(list_models()) + "\ncriteria:  " + " ".join(list_criteria())
            + "\nmethods:   " + " ".join(method_names()))


def describe_model(model: str | None, weights: str | None, input_size: tuple[int, int, int] | None = None) -> str:
    """A per-layer table (type, in/out widths, MACs, params) with totals."""
    from ..metrics import count, layer_table

    net = resolve_model(model, weights)
    if input_size is not None:
        from ..inputs import check_input_size

        check_input_size(net, input_size, weights or model or "the model")
    if input_size is None:
        input_size = input_size_of(net, weights)
    x = torch.randn(1, *input_size)
    net.eval()
    macs, params = count(net, x)
    rows = layer_table(net, x)
    cfg = getattr(net, "filterprune_cfg", None) or {}
    name = cfg.get("name") or cfg.get("factory") or type(net).__name__
    lines = [f"{name}: {params:,} params, {macs / 1e6:.2f}M MACs (FLOPs = 2 x MACs) at input {tuple(input_size)}",
             f"{'layer':32s} {'type':12s} {'in':>5s} {'out':>5s} {'MACs':>12s} {'params':>9s}"]
    for r in rows:
        lines.append(f"{r['name']:32s} {r['type']:12s} {r['in']:>5} {r['out']:>5} {r['macs']:>12,} {r['params']:>9,}")
    return "\n".join(lines)


def evaluate_model(model: str | None, weights: str | None, data: str, *, split: str = "test", batch_size: int = 500,
                   device: str = "auto", download: bool = False) -> dict[str, Any]:
    """Accuracy (percent), mean loss and image count of a model on one split of ``data``, and the
    accuracy of each class by name (``per_class_acc``: ``{"airplane": 91.3, ...}``, in class order).

    Raises:
        ValueError: the data has no such split, or model/weights cannot be resolved.
        CheckpointError, DataError: unreadable weights or data.
    """
    splits = load_data(data, download=download)
    ds = getattr(splits, split)
    if ds is None:
        raise ValueError(f"{data} has no {split} split")
    net = resolve_model(model, weights, splits.train)
    dev = pick_device(device)
    result = evaluate(net.to(dev), BatchLoader(ds, batch_size, train=False, device=dev), dev)
    return {"data": data, "split": split, "acc": result["acc"], "loss": result["loss"], "n": result["n"],
            "per_class_acc": {str(c): round(a, 2) for c, a in zip(ds.classes, result["per_class_acc"], strict=True)}}


def export_model(model: str | None, weights: str | None, out: str, *, input_size: tuple[int, int, int] | None = None,
                 batch: int = 2, overwrite: bool = False, atol: float = 1e-4) -> dict[str, Any]:
    """``filterprune export``: load, export to ONNX at ``out`` (checked with onnxruntime), describe the result.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is not set (checked before the model is loaded).
        ValueError: a batch below 1, or an input size the model refuses.
    """
    from pathlib import Path

    from ..export import OPSET, export_onnx

    path = Path(out)
    if path.exists() and not (overwrite and path.is_file()):
        raise FileExistsError(f"--out {out} already exists; choose another file, or pass --overwrite to replace it"
                              if path.is_file() else f"--out {out} exists and is not a file")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    if not (model or weights):
        raise ValueError("--model or --weights is required")
    net = resolve_model(model, weights)
    if input_size is not None:
        from ..inputs import check_input_size

        check_input_size(net, input_size, weights or model or "the model")
    size = tuple(input_size) if input_size is not None else input_size_of(net, weights)
    x = torch.randn(batch, *size)
    diff = export_onnx(net.eval(), x, path, atol=atol)
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {"onnx": str(path), "opset": OPSET, "input": [batch, *size], "dynamic_batch": True,
            "outputs": [o.name for o in graph.output], "max_abs_diff_onnxruntime": diff}
