"""Sharded CAR scoring over processes with ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Every process holds the same model and evaluation set; request ``i`` (one masked channel) is evaluated
by rank ``i % world`` (interleaving balances the per-group costs), the other ranks leave its row at
zero, and one ``all_reduce(SUM)`` gathers the rows: adding zeros is exact, so every rank ends with the
same scores as a single process. The CAR criterion shards by itself when a process group is
initialised (option ``distributed``); :func:`main` is the ``torchrun`` entry point::

    torchrun --nproc_per_node 2 -m filterprune.distributed --weights benchmarks/weights/resnet20_cifar10jpeg_base.safetensors \\
        --data ../shared/data/cifar10 --eval-images 1000 --out car_scores.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["all_reduce_max", "all_reduce_sum", "current_shard", "init_distributed", "main"]


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


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes (returns ``t`` itself when not distributed); result on ``t``'s device."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over all processes (``t`` itself when not distributed)."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="filterprune.distributed", description="Sharded CAR scores (run under torchrun).")
    p.add_argument("--weights", required=True, help="a model saved by filterprune (safetensors)")
    p.add_argument("--data", required=True, help="dataset root or name for filterprune.data.load_data")
    p.add_argument("--eval-images", type=int, default=1000, help="training images in the evaluation set")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="picks the evaluation images (a random subset)")
    p.add_argument("--criterion", default="car", help="car or car-classwise")
    p.add_argument("--options", default="", help="criterion options, key=value,key=value")
    p.add_argument("--out", required=True, help="JSON file for the scores (written by rank 0)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Score every prunable filter of a saved model with CAR, sharded over the ``torchrun`` processes."""
    from .api import load, score
    from .config import parse_options
    from .data import BatchLoader, load_data

    args = _parse(argv)
    rank, world = init_distributed()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(message)s")
    device = torch.device("cuda", torch.cuda.current_device()) if dist.is_initialized() and \
        dist.get_backend() == "nccl" else torch.device("cpu")
    model = load(args.weights).to(device).eval()
    train = load_data(args.data).train  # class-sorted: evaluate on a seeded random subset
    loader = BatchLoader(train.sample(args.eval_images, args.seed), args.batch_size, train=False, device=device)
    x = next(iter(loader))[0][:2]
    opts = {"eval_images": args.eval_images, **parse_options(args.options)}
    scores = score(model, x, args.criterion, loader, **opts)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({"world_size": world, "criterion": args.criterion, "options": opts,
                       "scores": {k: v.tolist() for k, v in scores.items()}}, f, indent=1)
        logger.info("wrote %s (%d groups, %d processes)", args.out, len(scores), world)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
