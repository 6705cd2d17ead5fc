"""Looking at models and checkpoints: ``filterprune info`` and ``filterprune eval``."""

from __future__ import annotations

from typing import Any

import torch

from ..data import BatchLoader, load_data
from ..models import list_models
from ..train import evaluate
from ..utils.seed import pick_device
from .common import input_size_of, resolve_model

#: One line per built-in model, criterion and method: what it is and where it comes from. A name
#: registered by the user (``@fp.register_model``, ``@fp.register_criterion``) is described by the first
#: sentence of its docstring instead; a test keeps every built-in name in this table.
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "model": {
        "convnet_small": "a small ConvNet for 8 x 8 digits images, the demo's and tests' model (filterprune's own)",
        **{f"resnet{d}": f"CIFAR ResNet-{d}, 3 stages of {(d - 2) // 6} basic blocks, widths 16/32/64, option-A "
                         "shortcuts (He et al. 2016, arXiv 1512.03385, sec. 4.2)" for d in (20, 32, 44, 56, 110)},
        "resnet18": "ImageNet ResNet-18, 224 x 224 inputs, torchvision's module names (He et al. 2016, arXiv 1512.03385)",
        "resnet50": "ImageNet ResNet-50 v1.5, 224 x 224 inputs, torchvision's module names (He et al. 2016, "
                    "arXiv 1512.03385)",
        "vgg16_bn": "VGG-16 with BatchNorm, 13 convs, for CIFAR-sized inputs (Simonyan & Zisserman 2015, arXiv 1409.1556)",
    },
    "criterion": {
        "bn": "|gamma| of the channel's BatchNorm scale (network slimming: Liu et al. 2017, arXiv 1708.06519)",
        "car": "accuracy lost when the filter alone is removed; greedy with k=N, per layer with scope=layer "
               "(Abbasi-Asl & Yu 2017, arXiv 1705.07356)",
        "car-classwise": "the largest per-class accuracy lost when the filter alone is removed (Abbasi-Asl & Yu, "
                         "arXiv 1711.02329)",
        "l1": "sum of |w| over the filter's weights (Li et al. 2017, arXiv 1608.08710)",
        "l2": "l2 norm of the filter's weights (the l2 variant of Li et al. 2017, arXiv 1608.08710)",
        "pls-vip": "VIP of the filter's pooled output in a PLS model of the class (Jordao et al. 2018, arXiv 1810.07610)",
        "random": "seeded uniform random scores: the baseline every criterion has to beat",
        "taylor": "first-order Taylor estimate of the loss change when the channel goes (Molchanov et al. 2019, "
                  "arXiv 1906.10771)",
    },
    "method": {
        "csgd": "C-SGD, a training-time method: cluster filters, train each cluster to one filter, trim losslessly "
                "(Ding et al. 2019, arXiv 1904.03837); fp.csgd",
        "iterative": "--step-ratio P with any criterion: remove P of the remaining filters, fine-tune, repeat until "
                     "the target (Jordao et al.'s schedule, arXiv 1810.07610)",
        "scores": "the default for every criterion: score, select, remove; --steps K re-scores K times "
                  "(filterprune's engine)",
    },
}


def _first_sentence(obj: Any) -> str:
    import inspect

    doc = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
    return doc.split(". ")[0].rstrip(".") or "(undocumented)"


def describe(kind: str, name: str) -> str:
    """The one line ``info --list`` prints for the model, criterion or method ``name`` (``kind``)."""
    known = DESCRIPTIONS[kind].get(name)
    if known is not None:
        return known
    if kind == "model":
        from ..models._registry import MODELS

        return _first_sentence(MODELS.get(name))
    if kind == "criterion":
        from ..criteria import CRITERIA

        return _first_sentence(CRITERIA.get(name))
    from .methods import METHODS

    return METHODS.create(name).description or "(undocumented)"


def registered() -> str:
    """Every registered model, criterion and method, one line each with what it is and its source
    (``filterprune info --list``); every criterion and the ``csgd`` method are values of ``--criterion``."""
    from ..criteria import list_criteria
    from .methods import METHODS

    sections = [("models (filterprune info --model NAME: widths, MACs, params)", "model", list_models()),
                ("criteria (--criterion NAME; its options: filterprune info --criterion NAME)", "criterion",
                 list_criteria()),
                ("methods (csgd: --criterion csgd; iterative: --step-ratio; scores: every other criterion)",
                 "method", [n for n in METHODS.names() if n not in list_criteria()])]
    width = max(len(n) for _, _, names in sections for n in names)
    lines: list[str] = []
    for title, kind, names in sections:
        lines.append(title + ":")
        lines += [f"  {n:<{width}}  {describe(kind, n)}" for n in names]
    return "\n".join(lines)


def training_method_options() -> dict[str, type]:
    """Values of ``--criterion`` that are training-time methods, with the options dataclass of each (``csgd``)."""
    from ..methods.csgd_run import CSGDOptions

    return {"csgd": CSGDOptions}


def criterion_option_rows(name: str) -> list[dict[str, str]]:
    """The option keys ``--criterion-options`` takes for criterion or method ``name``: key, type, default
    and meaning, read from the criterion's constructor (or the method's options dataclass) and its docstring.

    Raises:
        ValueError: ``name`` is neither a criterion nor a method that takes options (the known ones listed).
    """
    import dataclasses
    import inspect

    from ..config import field_help
    from ..criteria import CRITERIA, list_criteria

    training_methods = training_method_options()

    def meaning(cls: type, key: str) -> str:
        return next((t for t in (field_help(c, key) for c in cls.__mro__) if t), "")

    if name in training_methods:
        cls = training_methods[name]
        params = [(f.name, f.type, f.default) for f in dataclasses.fields(cls)]
    elif name in list_criteria():
        cls = CRITERIA.get(name)
        params = [(p.name, p.annotation, p.default) for p in inspect.signature(cls).parameters.values()]
    else:
        known = [*list_criteria(), *training_methods]
        raise ValueError(f"{name!r} is not a criterion or method; known: {', '.join(sorted(known))}")
    return [{"key": key, "type": tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp)),
             "default": repr(default), "meaning": _plain(meaning(cls, key))} for key, tp, default in params]


def _plain(text: str) -> str:
    """Docstring markup made readable on a terminal: ``:func:`~a.b``` -> ``b``, double backticks dropped."""
    import re

    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1] if "~" in m.group(0) else m.group(1),
                  text)
    return text.replace("``", "")


def describe_criterion(name: str) -> str:
    """``filterprune info --criterion NAME``: what it is, its source, and one line per option key
    (``key: type = default  meaning``), with how to pass them."""
    kind = "method" if name in DESCRIPTIONS["method"] or name not in _criteria() else "criterion"
    rows = criterion_option_rows(name)
    lines = [f"{name}: {describe(kind, name)}",
             f"options (--criterion-options key=value,key=value; in Python fp.{'csgd' if kind == 'method' else 'prune'}"
             f"({'options=...' if kind == 'method' else 'criterion_kwargs={...}'})):" if rows else "options: none"]
    width = max((len(f"{r['key']}: {r['type']} = {r['default']}") for r in rows), default=0)
    for r in rows:
        lines.append(f"  {r['key'] + ': ' + r['type'] + ' = ' + r['default']:<{width}}  {r['meaning']}")
    return "\n".join(lines)


def _criteria() -> list[str]:
    from ..criteria import list_criteria

    return list_criteria()


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
