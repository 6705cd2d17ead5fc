"""The model registry: ``create_model(name, **kwargs)`` and ``list_models(pattern)``, as in timm."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model entrypoint under its function name (``resnet20``, ``vgg16_bn``, or yours).

    ``create_model(name, **kwargs)`` then builds it and records ``{"name": name, **kwargs}`` on the
    model (``filterprune_cfg``), which :func:`filterprune.save` stores, so :func:`filterprune.load`
    rebuilds the model by name. The registry lives in the process: the module holding the decorator
    must be imported (e.g. by your script) before ``load`` in every process. The keyword arguments must
    be JSON scalars (numbers, strings, booleans). Without registration, ``load(path, model=MyNet())``
    loads into an instance you build.

    >>> import torch
    >>> @register_model
    ... def doc_tiny_net(num_classes: int = 10) -> nn.Module:
    ...     return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, num_classes))
    >>> create_model("doc_tiny_net", num_classes=3).filterprune_cfg
    {'name': 'doc_tiny_net', 'num_classes': 3}
    """
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
