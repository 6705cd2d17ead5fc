"""The model registry: ``create_model(name, **kwargs)`` and ``list_models(pattern)``, as in timm."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model entrypoint under its function name (``resnet20``, ``vgg16_bn``...)."""
    return MODELS.register()(fn)


def create_model(name: str, *, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered name, e.g. ``"resnet20"``; see :func:`list_models`.
        pretrained: ``True`` loads the known checkpoint for ``name`` (see ``models.weights``); a path
            loads that file (``.th``/``.pt`` with ``weights_only=True``, or ``.safetensors``).
        **kwargs: passed to the entrypoint (``num_classes``, ``in_chans``, ``width_mult``...).

    >>> create_model("resnet20").linear.out_features
    10
    """
    model = MODELS.create(name, **kwargs)
    model.filterprune_cfg = {"name": name, **kwargs}  # how to rebuild it; saved in checkpoints
    if pretrained:
        from .weights import load_pretrained

        load_pretrained(model, name if pretrained is True else pretrained, arch=name)
    return model


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models matching an fnmatch ``pattern``."""
    return MODELS.names(pattern)
