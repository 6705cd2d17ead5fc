"""Sharded CAR scoring over processes with ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Every process holds the same model and evaluation set; request ``i`` (one masked channel) is evaluated
by rank ``i % world`` (interleaving balances the per-group costs), the other ranks leave its row at
zero, and one ``all_reduce(SUM)`` gathers the rows: adding zeros is exact, so every rank ends with the
same scores as a single process. The CAR criterion shards by itself when a process group is
initialised (option ``distributed``); ``filterprune car-scores`` is the ``torchrun`` entry point::

    torchrun --nproc_per_node 2 -m filterprune car-scores --weights base.safetensors \\
        --data ../shared/data/cifar10 --eval-images 1000 --out car_scores.json

A library module: it imports nothing of filterprune, so any layer may use it.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["all_reduce_max", "all_reduce_sum", "broadcast_object", "current_shard", "finish_distributed",
           "init_distributed"]


def current_shard() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise the default process group from ``torchrun``'s environment if not done yet.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; ``None`` picks NCCL when CUDA is available, else gloo.

    Returns:
        ``(rank, world size)``; ``(0, 1)`` outside ``torchrun`` (no ``WORLD_SIZE`` in the environment).
    """
    if dist.is_initialized() or "WORLD_SIZE" not in os.environ:
        return current_shard()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return current_shard()


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    if current_shard()[1] == 1:
        return t
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = t.to(device).clone()
    dist.all_reduce(buf, op=op)
    return buf.to(t.device)


def finish_distributed() -> None:
    """Close the default process group if one is open (every process, at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes (returns ``t`` itself when not distributed); result on ``t``'s device."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over all processes (``t`` itself when not distributed)."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def broadcast_object(obj, src: int = 0):
    """``obj`` of process ``src`` on every process (no-op in one process).

    It travels pickled (``torch.distributed.broadcast_object_list``), so use it only for objects
    this program made itself (a plan, clusters), never for anything read from a file.
    """
    if current_shard()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
