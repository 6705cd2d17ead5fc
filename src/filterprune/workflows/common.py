"""Loading a model the way a user names it: a registered name, plus optional weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import ArrayDataset
from ..errors import CheckpointError
from ..models import create_model


def model_kwargs_for(name: str, ds: ArrayDataset | None) -> dict[str, Any]:
    if ds is None:
        return {}
    kwargs: dict[str, Any] = {"num_classes": ds.num_classes, "in_chans": ds.in_chans}
    if name == "convnet_small":
        kwargs["image_size"] = ds.image_size
    return kwargs


def resolve_model(model: str | None, weights: str | None, ds: ArrayDataset | None = None) -> nn.Module:
    """The model a command names: a registered name and/or weights (not :func:`filterprune.load`).

    Our ``.safetensors`` files describe their own (possibly pruned) architecture, so ``model`` may be
    omitted; foreign ``.th``/``.pt`` files need ``model``. ``weights="auto"`` takes the known checkpoint.
    """
    if weights and Path(weights).suffix == ".safetensors":
        from ..api import load

        net = load(weights)
        arch = getattr(net, "filterprune_cfg", {}) or {}
        if model and arch.get("name") not in (None, model):
            raise CheckpointError(f"{weights}: holds a {arch.get('name')}, not a {model}")
        if ds is not None:  # before any long work: a checkpoint for other images or classes
            from ..inputs import check_fits, dataset_spec, model_spec

            check_fits(model_spec(net), dataset_spec(ds), weights, f"the data ({ds.name or 'loaded'})")
        return net
    if not model:
        raise ValueError("--model is required unless --weights is a filterprune .safetensors checkpoint")
    pretrained: bool | str = True if weights == "auto" else (weights or False)
    return create_model(model, pretrained=pretrained, **model_kwargs_for(model, ds))


def example_input(ds: ArrayDataset, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, ds.in_chans, ds.image_size, ds.image_size)
