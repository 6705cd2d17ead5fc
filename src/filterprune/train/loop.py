"""``fit`` / ``evaluate``: the project's single training loop.

A run folder gets ``metrics.jsonl`` (one line per epoch) and ``checkpoints/epoch_NNN.safetensors``
(model, optimizer momentum and loop state, no pickle). ``resume=True`` continues after the newest
complete checkpoint; the learning rate is a pure function of the step and the data order a pure function
of (seed, epoch), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import read_checkpoint, save_checkpoint
from ..config import TrainConfig, to_dict
from ..distributed import current_shard
from ..errors import CheckpointError, FilterpruneError
from ..types import PathLike
from ..utils.io import atomic_write
from ..utils.killpoint import kill_point
from ..utils.modes import evaluating
from ..utils.progress import progress
from ..utils.seed import pick_device
from .hooks import TrainHook
from .optim import build_optimizer, lr_at

logger = logging.getLogger(__name__)


class TrainingError(FilterpruneError, FloatingPointError):
    """Training cannot go on (the loss became NaN/inf); the message says what is kept and what to change."""


def _autocast(device: torch.device, amp: str, cpu: bool = False) -> contextlib.AbstractContextManager:
    if device.type == "cpu" and cpu:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, device: str | torch.device | None = None, *, amp: str = "off",
    num_classes: int | None = None, desc: str = "evaluate",
) -> dict[str, Any]:
    """Top-1 accuracy (percent), mean cross-entropy and per-class accuracy over ``loader``.

    ``desc`` labels the progress bar (:mod:`filterprune.utils.progress`).

    The model is put in eval mode for the pass and every submodule's previous mode restored. A
    loader sharded over ``torch.distributed`` processes (``loader.shard[1] > 1``) has its sums
    reduced over them, so every process returns the figures of the whole set.
    """
    device = pick_device(device)
    loss_sum, correct, n = 0.0, 0, 0
    hits: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    with evaluating(model):  # every submodule's train/eval flag restored, also on errors
        for x, y in progress(loader, desc=desc, unit="batch"):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            pred = logits.argmax(1)
            correct += (pred == y).sum().item()
            n += y.numel()
            k = num_classes or logits.shape[1]
            if hits is None:
                hits, counts = torch.zeros(k), torch.zeros(k)
            hits += torch.bincount(y[pred == y].cpu(), minlength=k)[:k].float()
            counts += torch.bincount(y.cpu(), minlength=k)[:k].float()
    if getattr(loader, "shard", (0, 1))[1] > 1:
        from .ddp import reduce_sums

        if hits is None:
            raise ValueError("evaluate(): every process needs at least one batch of a sharded loader")
        loss_sum, correct, n, *rest = reduce_sums(loss_sum, correct, n, *hits.tolist(), *counts.tolist())
        k = len(hits)
        hits, counts = torch.tensor(rest[:k]), torch.tensor(rest[k:])
    if n == 0:
        raise ValueError("evaluate() got an empty loader")
    per_class = (100 * hits / counts.clamp(min=1)).tolist()
    return {"acc": 100.0 * correct / n, "loss": loss_sum / n, "n": n, "per_class_acc": per_class}


def _train_state(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"]):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"optim.{i}.momentum_buffer"] = buf
    return tensors


def _load_train_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"]):
        buf = tensors.get(f"optim.{i}.momentum_buffer")
        if buf is not None:
            optimizer.state[p]["momentum_buffer"] = buf.to(p.device, p.dtype).clone()


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    files = sorted(ckpt_dir.glob("epoch_*.safetensors"))
    return files[-1] if files else None


def fit(
    model: nn.Module,
    train_loader: Any,
    val_loader: Iterable | None,
    cfg: TrainConfig,
    *,
    run_dir: PathLike | None = None,
    hooks: Sequence[TrainHook] = (),
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Train ``model`` in place with ``cfg``; returns the per-epoch metrics records.

    Args:
        model: the network (moved to the configured device).
        train_loader: yields ``(x, y)`` batches; if it has ``set_epoch(epoch)`` it is called each epoch.
        val_loader: evaluated after every epoch (selection happens here, never on the test split).
        cfg: the recipe.
        run_dir: where ``metrics.jsonl`` and per-epoch checkpoints go; ``None`` writes nothing.
            Under ``torchrun`` only rank 0 writes; every rank reads the checkpoint to resume.
        hooks: training-time methods (see :class:`TrainHook`).
        resume: continue from the newest checkpoint in ``run_dir``.
    """
    device = pick_device(cfg.device)
    model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    no_decay = set().union(*(h.no_weight_decay(model) for h in hooks)) if hooks else set()
    optimizer = build_optimizer(model, cfg, no_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.amp == "fp16" else None
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt_dir = run_dir / "checkpoints" if run_dir else None
    history: list[dict[str, Any]] = []
    start_epoch = 0

    if resume:
        if ckpt_dir is None:
            raise ValueError("resume needs a run folder")
        latest = _latest_checkpoint(ckpt_dir)
        if latest is None:
            raise CheckpointError(f"{ckpt_dir}: nothing to resume from")
        tensors, meta = read_checkpoint(latest)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        _load_train_state(optimizer, tensors)
        start_epoch = meta["epoch"] + 1
        history = [r for r in _read_metrics(run_dir) if r["epoch"] < start_epoch]
        if current_shard()[0] == 0:  # under torchrun only rank 0 writes
            _write_metrics(run_dir, history)
        logger.info("resumed from %s at epoch %d", latest, start_epoch)

    for hook in hooks:
        hook.on_fit_start(model, optimizer)

    from .ddp import is_main, synced_batchnorm, wrap_ddp

    with synced_batchnorm(model, cfg.sync_bn):
        net = wrap_ddp(model, device)  # the model itself in one process; hooks always see ``model``
        history = _epochs(model, net, optimizer, scaler, train_loader, val_loader, cfg, hooks, device,
                          start_epoch, history, run_dir if is_main() else None, ckpt_dir)
    return history


def _epochs(model, net, optimizer, scaler, train_loader, val_loader, cfg, hooks, device, start_epoch,
            history, run_dir, ckpt_dir) -> list[dict[str, Any]]:
    from .ddp import barrier, reduce_sums

    steps_per_epoch = len(train_loader)
    for epoch in range(start_epoch, cfg.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # anything stochastic in the model (dropout)
        net.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        step = epoch * steps_per_epoch
        for x, y in progress(train_loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch"):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = lr_at(cfg, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with _autocast(device, cfg.amp, cpu=cfg.cpu_amp):
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            for hook in hooks:
                hook.after_backward(model, step)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            step += 1
        loss_total, correct_total, seen = reduce_sums(loss_sum, correct, seen)  # over the processes
        if not torch.isfinite(torch.tensor(loss_total)):
            kept = _latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
            where = f"; the last good checkpoint is {kept}" if kept else ""
            raise TrainingError(f"training diverged in epoch {epoch + 1} (loss is not finite); lower the lr "
                                f"(--lr; prune: --finetune-lr){where}")
        train_time = time.perf_counter() - t0
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr_at(cfg, step - 1, steps_per_epoch),
            "train_loss": loss_total / max(seen, 1),
            "train_acc": 100.0 * correct_total / max(seen, 1),
            "epoch_time_s": train_time,
            "train_images_per_s": seen / train_time,
        }
        for hook in hooks:
            record.update(hook.on_epoch_end(model, epoch))
        if val_loader is not None:
            val = evaluate(model, val_loader, device, amp=cfg.amp)
            record.update(val_acc=val["acc"], val_loss=val["loss"])
        history.append(record)
        logger.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                    " ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
        if run_dir is not None:
            _save_epoch(model, optimizer, cfg, ckpt_dir, epoch, step)
            _write_metrics(run_dir, history)
            kill_point(f"{run_dir.name}/epoch_{epoch:03d}")
        barrier()  # the checkpoint is on disk before any process goes on
    return history


def _save_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, ckpt_dir: Path,
                epoch: int, step: int) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(_train_state(optimizer))
    meta = {"arch": getattr(model, "filterprune_cfg", None), "epoch": epoch, "step": step, "train": to_dict(cfg)}
    save_checkpoint(ckpt_dir / f"epoch_{epoch:03d}.safetensors", tensors, meta)
    if cfg.keep_checkpoints > 0:
        for old in sorted(ckpt_dir.glob("epoch_*.safetensors"))[: -cfg.keep_checkpoints]:
            old.unlink()


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise CheckpointError(f"{path}: line {n} is not a metrics record; restore the file or start a new run")
        rows.append(row)
    return rows


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` whole and atomically (no torn last line after a kill)."""
    atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
