"""``run_training``: a whole training run from a :class:`RunConfig`, as ``filterprune train`` does it.

With ``csgd.squeeze_to`` set, the run is C-SGD's "train wider, then squeeze" (:func:`squeeze_run`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from ..api import save
from ..config import RunConfig, parse_options, to_dict
from ..data import DataSplits, load_data
from ..errors import CheckpointError, DataError
from ..methods.csgd_run import CSGDOptions, CSGDResult, squeeze
from ..metrics import count
from ..models import create_model
from ..train.ddp import barrier, is_main
from ..train.loop import evaluate, fit
from ..types import PathLike
from ..utils.env import environment
from ..utils.io import atomic_write, atomic_write_json, check_run_folder, open_run_folder
from ..utils.resume import check_resume, dump_yaml_text, saved_config
from ..utils.seed import pick_device, seed_everything
from .common import example_input, resolve_model
from .records import SCHEMA_VERSION, write_metrics
from .report import REPORT_FILES, write_report

logger = logging.getLogger(__name__)


def build_model(cfg: RunConfig, splits: DataSplits) -> nn.Module:
    """The configured model, sized for the data, with its starting weights.

    ``cfg.model`` is a registered name or ``package.module:factory`` (a user's callable; see
    ``workflows/common.py``).
    """
    if ":" in cfg.model:
        return resolve_model(cfg.model, cfg.pretrained or None, splits.train)
    kwargs: dict[str, Any] = {"num_classes": splits.train.num_classes, "in_chans": splits.train.in_chans}
    if cfg.width_mult != 1.0:
        kwargs["width_mult"] = cfg.width_mult
    if cfg.model == "convnet_small":
        kwargs["image_size"] = splits.train.image_size
    pretrained: bool | str = {"": False, "auto": True}.get(cfg.pretrained, cfg.pretrained)
    return create_model(cfg.model, pretrained=pretrained, **kwargs)


def loaders(splits: DataSplits, batch_size: int, eval_batch_size: int, device: str, seed: int):
    """(train, val, test) batch loaders; test is ``None`` when the data has no test split.

    Under ``torchrun`` each process gets its share of every global batch (``batch_size`` stays the
    global batch) and of the evaluation sets; ``evaluate`` reduces over the processes. Streamed
    image folders (``data/stream.py``) get a :class:`~filterprune.data.stream.StreamLoader`.
    """
    from ..data.stream import make_loader
    from ..distributed import current_shard

    dev, shard = pick_device(device), current_shard()
    train = make_loader(splits.train, batch_size, train=True, device=dev, seed=seed, shard=shard)
    val = make_loader(splits.val, eval_batch_size, train=False, device=dev, shard=shard)
    test = make_loader(splits.test, eval_batch_size, train=False, device=dev, shard=shard) if splits.test is not None else None
    return train, val, test


#: What a train run writes at the top of its folder (``--overwrite`` replaces only these).
TRAIN_FILES = ("config.yaml", "env.json", "metrics.jsonl", "summary.json", "model.safetensors", "checkpoints",
               "clusters.json", *REPORT_FILES)
#: Flags a resumed train run may change: more epochs, how many checkpoints are kept.
TRAIN_EXTENDS = {"train.epochs": "increase", "train.keep_checkpoints": "any"}


def run_training(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
                 download: bool = False, command: str | None = None) -> dict[str, Any]:
    """Train (or fine-tune) ``cfg.model`` on ``cfg.data``; write the run folder; return the summary.

    The run folder holds ``config.yaml`` (resolved), ``env.json``, ``metrics.jsonl``, per-epoch
    checkpoints, the final ``model.safetensors``, ``summary.json`` (schema: ``docs/summary_schema.md``;
    ``command`` is recorded there) and ``report.md``; it is claimed before the data is
    loaded (:func:`filterprune.utils.io.open_run_folder`: an existing folder is refused unless
    ``resume`` or ``overwrite``). With ``resume=True`` training continues after the newest checkpoint
    (from the start if the run was killed before its first one); ``cfg`` must equal the saved config
    except for ``TRAIN_EXTENDS`` (more epochs).

    Raises:
        RunFolderError: the output folder is refused (one line).
        ResumeError: ``resume`` with a config that differs from the saved one (names the flag).
        TrainingError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    out = Path(cfg.out)
    if not is_main():  # under torchrun rank 0 owns the folder; the others only train
        barrier()  # rank 0 has claimed the folder (or failed, and torchrun stops everyone)
        return _train(cfg, out, resume, download, command)
    inputs = [cfg.pretrained] if cfg.pretrained not in ("", "auto") else []
    if resume:  # refused before the folder is claimed: a refusal changes nothing in it
        check_run_folder(out, "train", resume=True, overwrite=overwrite)
        check_resume(saved_config(RunConfig, out), cfg, TRAIN_EXTENDS)
    with open_run_folder(out, "train", resume=resume, overwrite=overwrite, owned=TRAIN_FILES, inputs=inputs) as run:
        atomic_write(out / "config.yaml", dump_yaml_text(cfg))
        barrier()
        try:
            return _train(cfg, out, resume, download, command)
        except (DataError, CheckpointError):  # bad data or weights, found while loading: before any epoch
            if run.fresh and not (out / "metrics.jsonl").exists():  # a refusal before any work: leave nothing
                run.release()
                shutil.rmtree(out, ignore_errors=True)
            raise


def _train(cfg: RunConfig, out: Path, resume: bool, download: bool, command: str | None) -> dict[str, Any]:
    seed_everything(cfg.train.seed)
    splits = load_data(cfg.data, val_fraction=cfg.val_fraction, seed=0, download=download)
    logger.info("data: %s", splits.describe())
    model = build_model(cfg, splits)
    train, val, test = loaders(splits, cfg.train.batch_size, cfg.train.eval_batch_size, cfg.train.device, cfg.train.seed)
    if is_main():
        atomic_write_json(out / "env.json", environment())
    resume = resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("epoch_*.safetensors"))

    device = pick_device(cfg.train.device)
    model.to(device)  # evaluated before fit() would move it: on CUDA the first pass met CPU weights
    start = evaluate(model, val, device)
    squeezed = None
    if cfg.csgd.squeeze_to > 0:  # C-SGD "train wider, then squeeze": centripetal training, then trim
        squeezed = squeeze_run(cfg, model, splits, train, val, out, resume=resume)
        history = squeezed.history
    else:
        history = fit(model, train, val, cfg.train, run_dir=out, resume=resume)
    final_val = evaluate(model, val, device)
    x = example_input(splits.train).to(device)
    macs, params = count(model, x)
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "train",
        "command": command,
        "model": cfg.model,
        "data": splits.describe(),
        "classes": [str(c) for c in splits.train.classes],
        "macs": int(macs),
        "params": int(params),
        "config": to_dict(cfg),
        "val_acc_start": start["acc"],
        "val_acc": final_val["acc"],
        "val_loss": final_val["loss"],
        "epochs": len(history),
        "epoch_time_s_median": sorted(r["epoch_time_s"] for r in history)[len(history) // 2] if history else None,
    }
    if squeezed is not None:
        summary["csgd"] = {**squeezed.summary(), "report": squeezed.report.to_dict()}
    if test is not None:  # reported only; nothing is chosen on it
        final_test = evaluate(model, test, device)
        summary.update(test_acc=final_test["acc"], test_loss=final_test["loss"],
                       test_per_class_acc=dict(zip(summary["classes"], final_test["per_class_acc"], strict=True)))
    if is_main():
        save(model, out / "model.safetensors", meta={"summary": {k: v for k, v in summary.items() if k != "config"}},
             example_inputs=x)
        if not (out / "metrics.jsonl").exists():  # always present, also when no epoch ran
            write_metrics(out, history)
        atomic_write_json(out / "summary.json", summary)
        write_report(out)
    barrier()
    return summary


def squeeze_run(run_cfg, model: nn.Module, splits, train_loader: Any, val_loader: Iterable | None,
                run_dir: PathLike, resume: bool = False) -> CSGDResult:
    """:func:`squeeze` for ``filterprune train`` (a :class:`~filterprune.config.RunConfig` with
    ``csgd.squeeze_to`` set): the reference is ``run_cfg.model`` at width ``squeeze_to``.

    Raises:
        ValueError: ``squeeze_to`` is not below ``width_mult``, or bad options.
    """
    target = run_cfg.csgd.squeeze_to
    if not 0 < target < run_cfg.width_mult:
        raise ValueError(f"csgd.squeeze_to ({target:g}) must lie between 0 and width_mult ({run_cfg.width_mult:g})")
    options = CSGDOptions.from_kwargs(parse_options(run_cfg.csgd.options))
    narrow = dataclasses.replace(run_cfg, width_mult=target, pretrained="", csgd=dataclasses.replace(run_cfg.csgd, squeeze_to=0.0))
    reference = build_model(narrow, splits)
    x = example_input(splits.train).to(next(model.parameters()).device)
    return squeeze(model, reference, x, train_loader, val_loader, run_cfg.train, seed=run_cfg.train.seed,
                   options=options, run_dir=run_dir, resume=resume)
