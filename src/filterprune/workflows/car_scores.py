"""``filterprune car-scores``: CAR scores of every prunable filter of a saved model, sharded over processes.

Run under ``torchrun`` to shard (gloo on CPU, NCCL on GPU; :mod:`filterprune.distributed`), or plainly
for one process; every process computes the same scores, rank 0 writes them::

    torchrun --nproc_per_node 2 -m filterprune car-scores \\
        --weights benchmarks/weights/resnet20_cifar10jpeg_base.safetensors \\
        --data ../shared/data/cifar10 --eval-images 1000 --out car_scores.json
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..api import load, score
from ..config import parse_options
from ..data import BatchLoader, load_data
from ..distributed import init_distributed
from ..types import PathLike
from ..utils.io import atomic_write_json

logger = logging.getLogger(__name__)


def car_scores(weights: PathLike, data: str, out: PathLike, *, eval_images: int = 1000, batch_size: int = 500,
               seed: int = 0, criterion: str = "car", options: str = "") -> dict[str, Any]:
    """Score a saved model's filters with CAR on a seeded subset of the training split; rank 0 writes ``out``.

    Args:
        weights: a filterprune ``.safetensors`` checkpoint.
        data: a dataset spec for :func:`filterprune.data.load_data`.
        out: JSON file written by rank 0: ``world_size``, ``criterion``, ``options`` and, per group, the
            list of per-filter scores (higher = keep; accuracy drop in percentage points plus the loss
            tie-break, Abbasi-Asl & Yu, arXiv 1705.07356).
        eval_images: training images in the evaluation set (a seeded random subset).
        batch_size: evaluation batch size.
        seed: picks the evaluation images.
        criterion: ``"car"`` or ``"car-classwise"``.
        options: further criterion options, ``key=value,key=value``.

    Returns:
        What was written (also on ranks other than 0, which write nothing).

    Raises:
        CheckpointError, DataError: unreadable weights or data; ValueError: bad options.
    """
    rank, world = init_distributed()
    nccl = dist.is_initialized() and dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    model = load(weights).to(device).eval()
    train = load_data(data).train  # class-sorted: evaluate on a seeded random subset
    loader = BatchLoader(train.sample(eval_images, seed), batch_size, train=False, device=device)
    x = next(iter(loader))[0][:2]
    opts = {"eval_images": eval_images, **parse_options(options)}
    scores = score(model, x, criterion, loader, **opts)
    result = {"world_size": world, "criterion": criterion, "options": opts,
              "scores": {k: v.tolist() for k, v in scores.items()}}
    if rank == 0:
        atomic_write_json(Path(out), result, indent=1)
        logger.info("wrote %s (%d groups, %d processes)", out, len(scores), world)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return result
