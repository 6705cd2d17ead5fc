"""One training and evaluation loop for training, fine-tuning and training-time methods (hooks)."""

from .hooks import TrainHook
from .loop import evaluate, fit
from .optim import build_optimizer, lr_at

__all__ = ["TrainHook", "evaluate", "fit", "build_optimizer", "lr_at"]
