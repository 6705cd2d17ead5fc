"""Models by name: ``create_model("resnet56")``, ``list_models("resnet*")``."""

from . import cifar_resnet, imagenet_resnet, vgg  # noqa: F401  (registration)
from ._registry import create_model, list_models, register_model
from .weights import PRETRAINED, WeightsCfg

__all__ = ["create_model", "list_models", "register_model", "PRETRAINED", "WeightsCfg"]
