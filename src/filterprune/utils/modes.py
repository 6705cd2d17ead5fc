"""Train/eval flags: set them for a block of code, and put every module's flag back afterwards.

``model.train(was_training)`` is not a restore: it sets every submodule to the top module's flag,
and a model with a frozen (eval) submodule inside a training model would come back changed. These
helpers save the flag of each submodule and write each one back, also when the block raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Let the block change train/eval flags freely; every submodule's flag is restored on exit.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    >>> net[1].eval()
    Dropout(p=0.5, inplace=False)
    >>> with modes_kept(net):
    ...     _ = net.train()
    >>> net.training, net[1].training
    (True, False)
    """
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def evaluating(model: nn.Module, *, no_grad: bool = True) -> Iterator[None]:
    """Eval mode (and, unless ``no_grad=False``, no autograd) for the block; flags restored afterwards.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    >>> with evaluating(net):
    ...     net.training, torch.is_grad_enabled()
    (False, False)
    >>> net.training
    True
    """
    with modes_kept(model):
        model.eval()
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            yield


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """float32 convolutions and matmuls at full precision inside the block (TF32 off), flags restored.

    PyTorch lets cuDNN convolutions use TF32 by default on Ampere and later GPUs (10-bit mantissa), so
    two float32 forwards of differently shaped but equivalent models differ by ~1e-4 of the output
    scale: more than an exactness check allows. No effect on CPU.
    """
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
