"""``run_prune``: base model -> the method's stages -> fine-tune, with every number written to ``summary.json``.

Accuracy is reported on validation (carved from the training split) and on test; nothing is chosen on
test. The run is a recorded sequence of stages (:mod:`filterprune.workflows.runner`): ``base`` (base
accuracy, MACs, latency), the method's own stages (:mod:`filterprune.workflows.methods`), ``pruned``,
``finetune`` (checkpointed every epoch) and ``final``. The output folder is claimed before the data is
loaded and written in place: after Ctrl-C, SIGTERM, SIGKILL, a crash or a refusal it keeps every stage
finished so far, and ``resume=True`` continues from there to the same final weights and metrics as an
uninterrupted run. A refusal before any stage changed the model leaves no folder behind.

Folder: ``config.yaml``, ``env.json``, ``run_state.json``, ``stages/`` (scores, plans, model snapshots,
step fine-tunes), ``finetune/`` or ``centripetal/`` (``metrics.jsonl``, checkpoints), ``model.safetensors``,
and the run records (:mod:`filterprune.workflows.records`): ``summary.json`` (versioned schema,
``docs/summary_schema.md``), ``metrics.jsonl`` (every evaluation, always), ``scores.csv`` (every filter's
score per step), ``report.md`` with its plots (:mod:`filterprune.workflows.report`).
With ``--allocation sensitivity`` also ``sensitivity.json`` (the curves) and ``sensitivity.png``;
with ``--target-latency`` (or ``--round-to 0``) ``latency_table.json``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from ..config import PruneRunConfig, to_dict
from ..errors import FilterpruneError
from ..utils.io import atomic_write, atomic_write_json, check_run_folder, open_run_folder
from ..utils.resume import check_resume, dump_yaml_text, saved_config
from .methods import COMMON_EXTENDS, COMMON_REOPENS, MethodResult, PruneJob, method_for
from .records import SCHEMA_VERSION, stage_timings, write_metrics, write_scores
from .report import REPORT_FILES, write_report
from .runner import Runner

logger = logging.getLogger(__name__)

#: What a prune run writes at the top of its folder (``--overwrite`` replaces only these).
PRUNE_FILES = ("config.yaml", "env.json", "run_state.json", "stages", "finetune", "centripetal",
               "model.safetensors", "summary.json", "metrics.jsonl", "scores.csv", *REPORT_FILES,
               "sensitivity*.json", "sensitivity*.png", "latency_table.json")


def example_batch(ds, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded random batch shaped like ``ds``'s images (tracing, counting, the check): the same in every
    process, whatever ran before."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, ds.in_chans, ds.image_size, ds.image_size, generator=gen)


def run_prune(cfg: PruneRunConfig, *, download: bool = False, resume: bool = False,
              overwrite: bool = False, command: str | None = None) -> dict[str, Any]:
    """Prune ``cfg.model`` as ``cfg.prune`` asks, fine-tune, write ``cfg.out``; return the summary.

    Args:
        cfg: the run; with ``resume`` it must equal the saved ``config.yaml`` except for changes the
            method declares as extensions (more fine-tune epochs...).
        download: allow downloading the dataset.
        resume: continue the run in ``cfg.out`` from its last finished stage.
        overwrite: replace an earlier prune run in ``cfg.out`` (only its own files).
        command: the command line that started the run, recorded in ``summary.json`` and ``report.md``
            (``None``: a Python call).

    Raises:
        RunFolderError: ``cfg.out`` is refused (one line, before any work).
        ResumeError: ``resume`` with a flag that differs from the saved run (named).
        PruningError, ValueError, TrainingError: the run stopped; the message says what is kept.
    """
    from ..train.ddp import barrier, is_main

    out = Path(cfg.out)
    method = method_for(cfg)
    if not is_main():  # under torchrun rank 0 owns the folder; the others compute along, writing nothing
        barrier()  # rank 0 has claimed the folder and written config.yaml (or failed: torchrun stops us)
        runner = Runner(out, seed=cfg.prune.seed, resume=resume)
        if resume:  # the stages rank 0 runs again, run again here too
            changes = check_resume(saved_config(PruneRunConfig, out), cfg, {**COMMON_EXTENDS, **method.extends})
            reopens = {**COMMON_REOPENS, **method.reopens}
            for key in changes:
                if key in reopens:
                    runner.reopen(reopens[key])
        return _run(cfg, runner, method, download, command)
    inputs = [cfg.weights] if cfg.weights not in ("", "auto") else []
    changes = {}
    if resume:  # refused before the folder is claimed: a refusal changes nothing in it
        check_run_folder(out, "prune", resume=True, overwrite=overwrite)
        changes = check_resume(saved_config(PruneRunConfig, out), cfg, {**COMMON_EXTENDS, **method.extends})
    with open_run_folder(out, "prune", resume=resume, overwrite=overwrite, owned=PRUNE_FILES, inputs=inputs) as run:
        atomic_write(out / "config.yaml", dump_yaml_text(cfg))
        runner = Runner(out, seed=cfg.prune.seed, resume=resume)
        barrier()
        reopens = {**COMMON_REOPENS, **method.reopens}
        for key in changes:
            if key in reopens:
                runner.reopen(reopens[key])
        try:
            summary = _run(cfg, runner, method, download, command)
        except BaseException as e:
            runner.fail(e)
            if isinstance(e, (FilterpruneError, ValueError, FileNotFoundError)):
                if run.fresh and not runner.changed_model():  # a refusal before any real work: leave nothing
                    run.release()
                    shutil.rmtree(out, ignore_errors=True)
                elif "--resume" not in str(e):
                    kept = runner.last_snapshot()
                    e.args = (f"{e}; the work done so far is kept in {out}" + (f" (model: {kept})" if kept else "")
                              + f"; continue with filterprune prune --resume --out {out}",)
            raise
    return summary


def _run(cfg: PruneRunConfig, runner: Runner, method, download: bool, command: str | None) -> dict[str, Any]:
    from ..api import conv_widths, save
    from ..data import load_data
    from ..graph.trace import trace_groups
    from ..metrics import count, measure_latency
    from ..selection import Baseline, baseline
    from ..utils.env import environment
    from ..utils.seed import pick_device, seed_everything
    from .common import resolve_model
    from .train_run import loaders

    out = runner.folder
    if runner.writer and not (out / "env.json").exists():
        atomic_write_json(out / "env.json", environment())
    seed_everything(cfg.prune.seed)
    splits = load_data(cfg.data, val_fraction=cfg.val_fraction, download=download)
    if cfg.train_images or cfg.eval_images:  # quick mode: fixed, seeded subsets (data/subsets.py)
        from ..data.subsets import subset_splits

        splits = subset_splits(splits, train_images=cfg.train_images, eval_images=cfg.eval_images)
        logger.info("quick mode: %s", splits.describe())
    model = resolve_model(cfg.model or None, cfg.weights or None, splits.train)
    device = pick_device(cfg.finetune.device)
    model.to(device)
    ft = cfg.finetune
    train, val, test = loaders(splits, ft.batch_size, ft.eval_batch_size, ft.device, ft.seed)
    x = example_batch(splits.train).to(device)

    def latency(net) -> dict[str, Any]:  # quick mode times fewer forwards: 40 at batch 64 cost more than its evals
        quick = {"warmup": 3, "repeats": 10} if cfg.eval_images else {}
        return measure_latency(net, x[:1].shape, device=device, **quick)

    def base_stage() -> dict[str, Any]:
        macs, params = count(model, x)
        job0 = PruneJob(cfg, runner, x, splits, train, val, test, device, Baseline(0, 0), {}, out)
        accs = job0.accuracies(model)
        b = baseline(model, x, trace_groups(model, x), lambda m, i: (macs, params))
        logger.info("base: %s, %.2fM MACs", accs, macs / 1e6)
        return {"accuracy": accs, "macs": int(macs), "params": int(params), "channels": b.channels,
                "widths": conv_widths(model), "latency": latency(model)}

    base = runner.stage("base", base_stage)
    model = runner.restore(model)
    job = PruneJob(cfg, runner, x, splits, train, val, test, device,
                   Baseline(base["macs"], base["params"], base["channels"]), base["widths"], out)
    result: MethodResult = method.run(job)
    pruned = runner.stage("pruned", job.accuracies)
    recal = job.recalibration_summary()
    if recal.get("val_acc_before") is not None:
        logger.info("after pruning: %s (val acc %.2f before BN re-calibration on %d images)", pruned,
                    recal["val_acc_before"], recal["images"])
    else:
        logger.info("after pruning: %s", pruned)
    history = result.history
    if not result.finetuned and ft.epochs > 0:
        history = runner.stage("finetune", lambda: job.fit("finetune", ft, run_dir=out / "finetune"), snapshot=True)
    final = pruned if result.finetuned or ft.epochs == 0 else runner.stage("final", job.accuracies)

    def final_counts() -> dict[str, Any]:
        macs, params = count(job.model, x)
        return {"macs": int(macs), "params": int(params),
                "latency": latency(job.model)}

    counts = runner.stage("counts", final_counts)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "kind": "prune",
        "command": command,
        "model": cfg.model or (getattr(job.model, "filterprune_cfg", None) or {}).get("name"),
        "criterion": cfg.prune.criterion,
        "method": method.name,
        "allocation": cfg.prune.allocation_mode(),
        "data": splits.describe(),
        "classes": [str(c) for c in splits.train.classes],
        "eval_images": {"val": len(splits.val), "test": len(splits.test) if splits.test is not None else 0,
                        "asked": cfg.eval_images},
        "train_images": {"train": len(splits.train), "asked": cfg.train_images},
        "bn_recalibration": job.recalibration_summary(),
        "base": base["accuracy"],
        "pruned": pruned,
        "finetuned": final,
        "finetune_epochs": len(history),
        "macs": {"base": base["macs"], "pruned": counts["macs"],
                 "removed_fraction": 1 - counts["macs"] / base["macs"]},
        "params": {"base": base["params"], "pruned": counts["params"],
                   "removed_fraction": 1 - counts["params"] / base["params"]},
        "latency": {"base": base["latency"], "pruned": counts["latency"]},
        "report": result.report.to_dict(),
        "config": to_dict(cfg),
        **result.summary,
        "timings_s": stage_timings(runner.state),
    }
    if runner.writer:
        save(job.model, out / "model.safetensors",
             meta={"summary": {k: summary[k] for k in ("base", "pruned", "finetuned")}}, example_inputs=x)
        write_metrics(out, _metric_lines(base["accuracy"], pruned, final, history, result))
        write_scores(out, runner.state)
        atomic_write_json(out / "summary.json", summary)
        write_report(out)
    runner.finish()
    from ..train.ddp import barrier

    barrier()  # the folder is complete before any process exits
    summary["table"] = result.report.table()
    return summary


def _metric_lines(base: dict, pruned: dict, final: dict, history: list, result: MethodResult) -> list[dict[str, Any]]:
    """``metrics.jsonl`` of a prune run: every evaluation in order (records module docstring)."""
    lines: list[dict[str, Any]] = [{"phase": "base", **base}]
    for it in result.summary.get("iterations") or []:
        if isinstance(it, dict):
            lines.append({"phase": "iteration", **it})
    if result.finetuned:  # C-SGD: centripetal training comes before the trim ("pruned")
        lines += [{"phase": "centripetal", **r} for r in history]
        lines.append({"phase": "pruned", **pruned})
    else:
        lines.append({"phase": "pruned", **pruned})
        lines += [{"phase": "finetune", **r} for r in history]
    lines.append({"phase": "final", **final})
    return lines
