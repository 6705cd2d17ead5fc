"""BatchNorm re-calibration: re-estimate every BatchNorm's running statistics after filters were removed.

Why. Removing filters changes what flows into every later BatchNorm (a residual sum loses addends, a
conv sees fewer input channels), while its ``running_mean``/``running_var`` still describe the
unpruned network: in eval mode the pruned model then normalises with wrong statistics, and accuracy
"right after pruning" can sit at chance although the weights are fine. Re-estimating the statistics
on a few hundred training images, without any gradient step, is the usual first aid (BN adaptation:
Li et al., "Revisiting Batch Normalization for Practical Domain Adaptation", arXiv 1603.04779; NNCF's
``BatchnormAdaptation`` and ModelOpt's calibration do the same; EagleEye, arXiv 2007.02491, sec. 3.2,
shows that it makes pruned candidates comparable).

What :func:`recalibrate_bn` computes. The model runs in train mode (each BatchNorm normalises a
batch with that batch's own statistics, as in training) under ``torch.no_grad()``; a forward
pre-hook on every BatchNorm accumulates, in float64, the count, sum and sum of squares of its input
per channel over all ``N`` images (and, for 2-d/3-d BatchNorm, every spatial position). Afterwards

    running_mean = sum / n                                  # n = N x H x W values per channel
    running_var  = (sumsq - n * mean^2) / (n - 1)           # unbiased, as BatchNorm stores it

i.e. the exact mean and variance of each BatchNorm's input over those N images. torch's
``momentum=None`` (a cumulative average, what ``torch.optim.swa_utils.update_bn`` uses) would give the
same mean for equal batches but the *average of per-batch variances*, which misses the spread between
batch means and weights a short last batch like a full one; pooling the sums has neither bias and
does not depend on the batch size. Weights, biases and every other buffer are left untouched (a test
compares them bit for bit), and each submodule's train/eval flag is restored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..utils.modes import modes_kept
from ..utils.progress import progress

logger = logging.getLogger(__name__)

__all__ = ["batchnorms", "recalibrate_bn"]


def batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BatchNorm layers of ``model`` that keep running statistics, ``(qualified name, module)``."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


class _Moments:
    """Per-channel count, sum and sum of squares (float64) of one BatchNorm's input."""

    def __init__(self, channels: int, device: torch.device) -> None:
        self.n = 0
        self.sum = torch.zeros(channels, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(channels, dtype=torch.float64, device=device)

    def add(self, x: Tensor) -> None:
        flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()  # (C, N*H*W)
        self.n += flat.shape[1]
        self.sum += flat.sum(1)
        self.sumsq += (flat * flat).sum(1)

    def mean_var(self) -> tuple[Tensor, Tensor]:
        mean = self.sum / self.n
        var = (self.sumsq - self.n * mean * mean) / max(self.n - 1, 1)  # unbiased, as BatchNorm stores it
        return mean, var.clamp_min(0)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Iterable[Any], images: int | None = None,
                   device: str | torch.device | None = None) -> dict[str, Any]:
    """Re-estimate the running statistics of every BatchNorm of ``model`` in place (module docstring).

    Args:
        model: the (pruned) network; only BatchNorm ``running_mean``, ``running_var`` and
            ``num_batches_tracked`` change.
        data: ``(x, y)`` batches (or bare ``x`` tensors); read until ``images`` images were seen.
        images: how many images to use (``None``: all of ``data``); a batch that crosses the count is cut.
        device: where to run (default: the device of the model's first parameter).

    Returns:
        ``{"images": images used, "layers": BatchNorms re-estimated}`` (``layers`` is 0, and nothing
        runs, for a model without BatchNorm).

    Raises:
        ValueError: ``images`` is not a positive integer, or ``data`` gives no image.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    >>> recalibrate_bn(net, [torch.randn(8, 1, 5, 5)])
    {'images': 8, 'layers': 1}
    """
    if images is not None and (not isinstance(images, int) or isinstance(images, bool) or images < 1):
        raise ValueError(f"images must be a positive integer or None, got {images!r}")
    bns = batchnorms(model)
    if not bns:
        return {"images": 0, "layers": 0}
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    moments = {m: _Moments(m.num_features, m.running_mean.device) for _, m in bns}
    handles = [m.register_forward_pre_hook(lambda mod, inp: moments[mod].add(inp[0])) for _, m in bns]
    seen = 0
    try:
        with modes_kept(model):
            model.train()  # each batch normalised by its own statistics, as in training
            for _, m in bns:
                m.reset_running_stats()
            for batch in progress(data, desc="BN re-calibration", unit="batch"):
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if images is not None:
                    x = x[: images - seen]
                if len(x) == 0:
                    break
                model(x.to(device))
                seen += len(x)
                if images is not None and seen >= images:
                    break
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("BN re-calibration got no image from its data")
    for _, m in bns:
        mean, var = moments[m].mean_var()
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    if images is not None and seen < images:
        logger.warning("BN re-calibration: asked for %d images, the data gave %d", images, seen)
    return {"images": seen, "layers": len(bns)}
