"""``run_prune``: base model -> prune -> fine-tune, with every number written to ``summary.json``.

Accuracy is reported on validation (carved from the training split) and on test; nothing is chosen on
test. The output folder is assembled in a temporary sibling and renamed into place at the end, so a
failed or interrupted run leaves no half-written folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import PruneRunConfig, dump_yaml, to_dict
from ..data import BatchLoader, load_data
from ..metrics import count, measure_latency
from ..train import evaluate, fit
from ..train.run import loaders
from ..utils.env import environment
from ..utils.seed import pick_device, seed_everything
from .common import example_input, load_model

logger = logging.getLogger(__name__)


def _accuracies(model, val, test, device) -> dict[str, float]:
    out = {"val_acc": evaluate(model, val, device)["acc"]}
    if test is not None:
        out["test_acc"] = evaluate(model, test, device)["acc"]
    return out


def _car_eval_loader(splits, cfg: PruneRunConfig, device: str):
    """CAR's evaluation set: a fixed, seeded, class-mixed subset of the training split, not augmented.

    The fine-tune loader reshuffles and augments every pass, so each greedy step would otherwise score on
    different images; the split itself can be class-ordered, so its first images are not a sample either.
    """
    p, ft = cfg.prune, cfg.finetune
    n = p.criterion_kwargs().get("eval_images") or p.num_batches * ft.eval_batch_size
    return BatchLoader(splits.train.sample(int(n), p.seed), ft.eval_batch_size, train=False, device=pick_device(device))


def run_prune(cfg: PruneRunConfig, *, download: bool = False) -> dict[str, Any]:
    """Prune ``cfg.model`` as ``cfg.prune`` asks, fine-tune, write ``cfg.out``; return the summary."""
    from ..api import prune, save

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty; choose another --out")
    seed_everything(cfg.prune.seed)
    splits = load_data(cfg.data, val_fraction=cfg.val_fraction, download=download)
    model = load_model(cfg.model or None, cfg.weights or None, splits.train)
    device = pick_device(cfg.finetune.device)
    model.to(device)
    ft = cfg.finetune
    train, val, test = loaders(splits, ft.batch_size, ft.eval_batch_size, ft.device, ft.seed)
    x = example_input(splits.train).to(device)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        dump_yaml(cfg, work / "config.yaml")
        (work / "env.json").write_text(json.dumps(environment(), indent=2))
        base_macs, base_params = count(model, x)
        base = _accuracies(model, val, test, device)
        logger.info("base: %s, %.2fM MACs", base, base_macs / 1e6)
        latency_base = measure_latency(model, x[:1].shape, device=device)

        step_ft = None  # between steps (prune's steps, PLS+VIP's iterations)
        if cfg.prune.step_finetune_epochs > 0:
            step_cfg = replace(ft, epochs=cfg.prune.step_finetune_epochs)

            def step_ft(net, step: int) -> None:
                fit(net, train, val, step_cfg)

        p = cfg.prune
        iterations = None
        csgd = None
        if p.criterion == "csgd":  # a training-time method: the fine-tune epochs are its centripetal training
            from ..methods.csgd_run import csgd_prune_config

            csgd = csgd_prune_config(p, model, x, train, val, ft, work / "centripetal")
            report = csgd.report
        elif p.step_ratio is not None:  # PLS+VIP's schedule: fixed fraction per step (workflows/pls_iterate.py)
            from .pls_iterate import run_iterative

            report, iterations = run_iterative(cfg, model, x, splits, step_ft,
                                               lambda net: _accuracies(net, val, test, device))
        else:
            steps, extra = p.steps, {}
            if p.criterion.startswith("car"):  # accuracy drops share one unit: rank them unnormalised
                extra["normalize"] = "none"
                k = p.criterion_kwargs().get("k")
                if k and p.steps == 1:  # greedy CAR: about k filters per step (criteria/car_greedy.py)
                    from ..criteria.car_greedy import steps_for_k

                    steps = steps_for_k(model, x, k, target_macs=p.target_macs, target_params=p.target_params,
                                        ratio=p.ratio, min_channels=p.min_channels, round_to=p.round_to,
                                        global_ranking=p.global_ranking)
                    logger.info("CAR: k=%d filters per step -> %d steps", k, steps)
            data = _car_eval_loader(splits, cfg, ft.device) if p.criterion.startswith("car") else train
            report = prune(
                model, x, criterion=p.criterion, target_macs=p.target_macs, target_params=p.target_params,
                ratio=p.ratio, data=data, steps=steps, finetune=step_ft if p.steps > 1 else None, min_channels=p.min_channels,
                round_to=p.round_to, global_ranking=p.global_ranking, check=p.check,
                num_batches=p.num_batches, seed=p.seed, criterion_kwargs=p.criterion_kwargs() or None, **extra,
            )
        pruned = _accuracies(model, val, test, device)
        logger.info("after pruning: %s", pruned)
        if csgd is not None:  # trimmed after centripetal training: nothing to fine-tune
            history, final = csgd.history, pruned
        else:
            history = fit(model, train, val, ft, run_dir=work / "finetune") if ft.epochs > 0 else []
            final = _accuracies(model, val, test, device)
        macs, params = count(model, x)
        latency = measure_latency(model, x[:1].shape, device=device)
        summary = {
            "model": cfg.model or getattr(model, "filterprune_cfg", {}).get("name"),
            "criterion": p.criterion,
            "data": splits.describe(),
            "base": base,
            "pruned": pruned,
            "finetuned": final,
            "finetune_epochs": len(history),
            "macs": {"base": base_macs, "pruned": macs, "ratio": macs / base_macs},
            "params": {"base": base_params, "pruned": params, "ratio": params / base_params},
            "latency": {"base": latency_base, "pruned": latency},
            "report": report.to_dict(),
            "config": to_dict(cfg),
        }
        if iterations is not None:
            summary["iterations"] = iterations
        if csgd is not None:
            summary["csgd"] = csgd.summary()
        save(model, work / "model.safetensors", meta={"summary": {k: summary[k] for k in ("base", "pruned", "finetuned")}})
        (work / "summary.json").write_text(json.dumps(summary, indent=2))
        if out.exists():
            out.rmdir()  # empty, checked above
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    summary["table"] = report.table()
    return summary
