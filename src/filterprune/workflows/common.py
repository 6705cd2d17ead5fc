"""Loading a model the way a user names it: a registered name or ``package.module:factory``, plus weights.

``--model package.module:factory`` imports ``package.module`` and calls ``factory`` to build the model:
this runs the user's own code, which is the user's choice (the same as ``python -c "import ..."``).
The name comes only from the command line, never from a checkpoint: a checkpoint records the factory
it was built with (``arch.factory``) only to say which ``--model`` to pass.

The factory is called with the keyword arguments it accepts among ``num_classes`` and ``in_chans``
(from the data, or from the checkpoint's record of them), so ``def my_net(num_classes=10)`` and
``def my_net()`` both work. A filterprune ``.safetensors`` then resizes the fresh model to its saved
widths (``filterprune.load(path, model=...)``); a ``.pt``/``.th`` state dict is loaded with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import ArrayDataset
from ..errors import CheckpointError
from ..models import create_model

FACTORY_KWARGS = ("num_classes", "in_chans")


def is_factory(model: str | None) -> bool:
    """``package.module:factory`` (a user's callable) rather than a registered model name."""
    return bool(model) and ":" in model


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable ``spec`` (``package.module:factory``, attribute paths allowed after the colon) names.

    Raises:
        ValueError: the module cannot be imported, has no such attribute, or it is not callable.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--model {spec}: expected package.module:factory")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--model {spec}: cannot import {module_name} ({e}); is its folder on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model {spec}: {module_name} has no {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--model {spec}: {attr} is not callable")
    return obj


def build_factory_model(spec: str, known: dict[str, Any] | None = None) -> nn.Module:
    """Call the factory ``spec`` with the arguments of ``known`` it accepts; tag the model with its origin."""
    factory = resolve_factory(spec)
    try:
        params = inspect.signature(factory).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):  # builtins without a signature
        params, takes_any = {}, False
    kwargs = {k: v for k, v in (known or {}).items() if k in FACTORY_KWARGS and (takes_any or k in params)}
    try:
        net = factory(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's code: whatever it raises becomes one line
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ValueError(f"--model {spec}: calling it with {kwargs or 'no arguments'} failed ({reason})") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"--model {spec}: returned a {type(net).__name__}, not an nn.Module")
    net.filterprune_cfg = {"factory": spec, **kwargs}
    return net


def model_kwargs_for(name: str, ds: ArrayDataset | None) -> dict[str, Any]:
    """Entrypoint keywords that fit a model to the data: ``num_classes``, ``in_chans`` (and
    ``image_size`` for ``convnet_small``); ``{}`` without data.
    """
    if ds is None:
        return {}
    kwargs: dict[str, Any] = {"num_classes": ds.num_classes, "in_chans": ds.in_chans}
    if name == "convnet_small":
        kwargs["image_size"] = ds.image_size
    return kwargs


def _check_fits(net: nn.Module, ds: ArrayDataset | None, label: str) -> None:
    if ds is not None:  # before any long work: a checkpoint for other images or classes
        from ..inputs import check_fits, dataset_spec, model_spec

        check_fits(model_spec(net), dataset_spec(ds), label, f"the data ({ds.name or 'loaded'})")


def _load_factory_model(spec: str, weights: str | None, ds: ArrayDataset | None) -> nn.Module:
    known = model_kwargs_for("", ds)
    if weights and Path(weights).suffix == ".safetensors":
        from ..api import load
        from ..checkpoint import read_metadata

        arch = read_metadata(weights).get("arch")
        if isinstance(arch, dict):  # the arguments it was built with win over the data's
            known.update({k: arch[k] for k in FACTORY_KWARGS if type(arch.get(k)) is int})
        net = build_factory_model(spec, known)
        cfg = net.filterprune_cfg
        net = load(weights, model=net)
        net.filterprune_cfg = cfg
        _check_fits(net, ds, weights)
        return net
    net = build_factory_model(spec, known)
    if weights:
        from ..models.weights import load_pretrained

        load_pretrained(net, weights, arch=spec)
    return net


def resolve_model(model: str | None, weights: str | None, ds: ArrayDataset | None = None) -> nn.Module:
    """The model a command names: a registered name or ``package.module:factory``, and/or weights
    (not :func:`filterprune.load`).

    Our ``.safetensors`` files describe their own (possibly pruned) architecture, so a registered
    ``model`` may be omitted; a user's model needs ``model`` (its factory), foreign ``.th``/``.pt``
    files too. ``weights="auto"`` takes the known checkpoint of a registered model.
    """
    if is_factory(model):
        return _load_factory_model(model, weights, ds)
    if weights and Path(weights).suffix == ".safetensors":
        from ..api import load
        from ..checkpoint import read_metadata

        arch = read_metadata(weights).get("arch")
        if isinstance(arch, dict) and "name" not in arch and isinstance(arch.get("factory"), str):
            raise CheckpointError(f"{weights}: holds a user model; pass --model {arch['factory']} "
                                  "(runs that factory, your own code)")
        net = load(weights)
        arch = getattr(net, "filterprune_cfg", {}) or {}
        if model and arch.get("name") not in (None, model):
            raise CheckpointError(f"{weights}: holds a {arch.get('name')}, not a {model}")
        _check_fits(net, ds, weights)
        return net
    if not model:
        raise ValueError("--model is required unless --weights is a filterprune .safetensors checkpoint")
    pretrained: bool | str = True if weights == "auto" else (weights or False)
    return create_model(model, pretrained=pretrained, **model_kwargs_for(model, ds))


def input_size_of(net: nn.Module, weights: str | None = None) -> tuple[int, ...]:
    """The per-sample input shape: recorded in the checkpoint, else (first conv's channels, side, side)
    with the side from ``filterprune_cfg`` (8 for ``convnet_small``, else 32)."""
    if weights and Path(weights).suffix == ".safetensors":
        from ..checkpoint import read_metadata

        inputs = read_metadata(weights).get("inputs")
        if isinstance(inputs, list) and len(inputs) == 1:  # validated when the model was loaded
            return tuple(int(d) for d in inputs[0])
    first = next(m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd))
    cfg = getattr(net, "filterprune_cfg", None) or {}
    side = cfg.get("image_size", 8 if type(net).__name__ == "SmallConvNet" else 32)
    return (first.in_channels, side, side)


def example_input(ds: ArrayDataset, batch: int = 2) -> torch.Tensor:
    """A random ``(batch, C, H, W)`` input shaped like the dataset's images, for tracing and counting."""
    return torch.randn(batch, ds.in_chans, ds.image_size, ds.image_size)
