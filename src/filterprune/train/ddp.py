"""Data-parallel training over ``torch.distributed`` processes (``torchrun``): DDP, synchronised BatchNorm, reductions.

One process per device, started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``PORT``); :func:`filterprune.distributed.init_distributed` opens the process group
(NCCL on GPUs, gloo on CPU). Every process holds the whole model; each reads its share of every
global batch (``BatchLoader(shard=...)``), so with ``torch.nn.parallel.DistributedDataParallel``
averaging the gradients the processes together take the steps of one process with the global batch.
BatchNorm statistics are per process unless synchronised (``sync_bn``, :func:`synced_batchnorm`):
then every BN layer normalises with the statistics of the global batch and the run equals one
process exactly, up to float summation order.

Why our own synchronised BatchNorm: ``torch.nn.SyncBatchNorm`` refuses CPU tensors (gloo), and it
replaces the modules (new objects) where the pruning engine expects the user's layers. Here each
``BatchNorm{1,2,3}d`` keeps its object, parameters and buffers; only its class is switched, for the
duration of training, to a subclass whose training forward reduces the per-channel count and sum,
then the centred sum of squares (two passes, as one process's ``batch_norm``), over the processes with
an all-reduce whose backward is again an all-reduce: it sums the gradients of every process's loss,
as ``SyncBatchNorm``'s backward does (``torch.distributed.nn.functional.all_reduce`` did this but is
deprecated) (Ioffe & Szegedy 2015, eq. for the
batch statistics over the global mini-batch).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..distributed import broadcast_object, current_shard

logger = logging.getLogger(__name__)

__all__ = ["barrier", "broadcast_object", "broadcast_state", "is_main", "reduce_sums", "synced_batchnorm", "wrap_ddp"]


def is_main() -> bool:
    """True in the process that writes files (rank 0, or the only process)."""
    return current_shard()[0] == 0


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if current_shard()[1] > 1:
        dist.barrier()


def broadcast_state(model: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer with process ``src``'s (no-op in one process)."""
    if current_shard()[1] == 1:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=src)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of a sum is the sum of every process's gradient."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # noqa: D102
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _reduce(t: Tensor) -> Tensor:
    return _AllReduceSum.apply(t)


class _SyncedBN(nn.modules.batchnorm._BatchNorm):
    """Training forward with the statistics of the global batch (module docstring); eval as BatchNorm."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if not self.training or current_shard()[1] == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        totals = _reduce(torch.cat([x.sum(dims), count]))  # (C + 1,): global sums and count
        n = totals[-1]
        mean = totals[:-1] / n  # (C,)
        centred = x - mean.view(shape)
        var = _reduce((centred * centred).sum(dims)) / n  # biased, as batch_norm normalises
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)  # unbiased
        return out


class _SyncedBN1d(_SyncedBN, nn.BatchNorm1d):
    pass


class _SyncedBN2d(_SyncedBN, nn.BatchNorm2d):
    pass


class _SyncedBN3d(_SyncedBN, nn.BatchNorm3d):
    pass


_SYNCED = {nn.BatchNorm1d: _SyncedBN1d, nn.BatchNorm2d: _SyncedBN2d, nn.BatchNorm3d: _SyncedBN3d}


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every plain ``BatchNorm{1,2,3}d`` of ``model`` trains on global-batch statistics.

    The modules keep their identity, parameters and buffers; their class is restored on exit (also
    after an error). Subclasses of BatchNorm (user layers) are left alone. A no-op when ``enabled``
    is false or in one process.
    """
    swapped = []
    if enabled and current_shard()[1] > 1:
        for m in model.modules():
            synced = _SYNCED.get(type(m))
            if synced is not None:
                swapped.append((m, type(m)))
                m.__class__ = synced
    try:
        yield model
    finally:
        for m, cls in swapped:
            m.__class__ = cls


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` across the processes, or ``model`` itself in one process.

    Parameters and buffers are broadcast from rank 0 when wrapping, so every process starts equal.
    """
    if current_shard()[1] == 1:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def reduce_sums(*values: Tensor | float | int) -> list[float]:
    """Each value summed over the processes (as float64), in one all-reduce."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if current_shard()[1] > 1:
        backend_dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = t.to(backend_dev)
        dist.all_reduce(t)
    return t.cpu().tolist()
