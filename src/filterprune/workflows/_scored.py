"""The score -> select -> apply methods as runner stages: every criterion, CAR, and the iterative schedule.

Each step is three stages (``stepK.score``: the criterion's scores, stored as tensors; ``stepK.select``:
the plan; ``stepK.apply``: the checked removal, model snapshot), then ``stepK.recalibrate`` (BatchNorm
statistics re-estimated on ``--bn-recalibrate N`` training images, val accuracy before/after on every
``--eval-every``-th step and the last), plus ``stepK.finetune`` between steps when ``--steps K
--step-finetune-epochs E`` ask for it. The cumulative target after step i of k is
split geometrically, as :func:`filterprune.api.prune` does (same helpers, same numbers).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from ..api import (
    PruneReport,
    StepRecord,
    _criterion,
    _cumulative,
    _layer_plan,
    _score,
    car_layer_prune,
    conv_widths,
    default_normalize,
    greedy_steps,
)
from ..graph.check import apply_plan_checked
from ..graph.surgery import apply_plan
from ..graph.trace import trace_groups
from ..selection import SelectOptions, default_counter, select
from ._sensitivity import plan_summary, sensitivity_stage
from .methods import Method, MethodResult, PruneJob, register_method

logger = logging.getLogger(__name__)


def select_options(p, crit) -> SelectOptions | None:
    """The selection a prune config asks for (``None`` when only ``--layer-ratio`` groups are pruned), built
    as :func:`filterprune.api.prune` builds it from the same arguments (``--normalize`` unset: the
    criterion's own)."""
    layer_ratios = p.layer_ratios()
    targets = {"target_macs": p.target_macs, "target_params": p.target_params, "ratio": p.ratio,
               "target_latency": p.target_latency}
    if all(v is None for v in targets.values()) and layer_ratios:
        return None
    return SelectOptions(**targets, global_ranking=p.global_ranking, normalize=p.normalize or default_normalize(crit),
                         min_channels=p.min_channels, round_to=max(1, p.round_to), max_ratio=p.max_ratio,
                         ignored_layers=tuple(layer_ratios), allocation=p.allocation_mode())


def scored_steps(job: PruneJob, *, data: Any, steps: int | None = None,
                 extra: dict[str, Any] | None = None) -> PruneReport:
    """Prune ``job.model`` in ``steps`` score/select/apply steps (module docstring); return the report.

    ``--ignore``, ``--max-ratio``, ``--normalize``, ``--schedule``, ``--allocation`` and ``--layer-ratio``
    apply as in :func:`filterprune.api.prune`; a step with layer ratios first runs a ``stepK.layers``
    stage (score, remove the named layers' share, snapshot); ``--allocation sensitivity`` runs a
    ``stepK.sensitivity`` stage before ``stepK.select`` (:mod:`filterprune.workflows._sensitivity`) and
    adds its cost and threshold to ``extra["sensitivity"]``. With more than one step (``--steps``, CAR's
    ``k=``), ``--step-finetune-epochs`` fine-tunes after each (``stepK.finetune``).
    """
    p = job.cfg.prune
    steps = steps or p.steps
    crit = _criterion(p.criterion, p.criterion_kwargs() or None, data)
    layer_ratios = p.layer_ratios()
    ignored = list(p.ignore) or None
    options = select_options(p, crit)
    latency = None
    if p.target_latency is not None or p.round_to == 0:
        latency, options = _latency_target(job, options, ignored)
    name, value = options.target if options is not None else ("layer_ratios", 0.0)
    counter = default_counter()
    # after every step, whatever set their number (--steps, or CAR's k=), as fp.prune's finetune callback
    finetune = job.step_finetune() if steps > 1 else None
    records: list[StepRecord] = []
    for step in range(1, steps + 1):
        tag = f"step{step}"
        groups = trace_groups(job.model, job.x, ignored_layers=ignored, probe=step == 1)
        goal = _cumulative(value, step, steps, p.schedule)
        fixed: dict[str, Any] = {"removed": 0, "max_error": None}
        if layer_ratios:
            def layers(g=groups, st=step) -> dict[str, Any]:
                s = _score(job.model, job.x, g, crit, data, p.seed, p.num_batches)
                cumulative = functools.partial(_cumulative, step=st, steps=steps, schedule=p.schedule)
                pl = _layer_plan(g, s, layer_ratios, job.baseline, cumulative, p.min_channels)
                err = apply_plan_checked(job.model, g, pl, job.x) if p.check and pl.prune_idxs else None
                if not p.check:
                    apply_plan(job.model, g, pl)
                return {"removed": pl.num_removed(), "max_error": err}

            fixed = job.runner.stage(f"{tag}.layers", layers, snapshot=True)
            groups = trace_groups(job.model, job.x, ignored_layers=ignored, probe=False)
        if options is None:
            macs, params = counter(job.model, job.x)
            records.append(StepRecord(step, goal, fixed["removed"], int(macs), int(params), fixed["max_error"]))
            job.recalibrate(f"{tag}.recalibrate", report=job.evaluate_now(step, step == steps))
            if finetune is not None:
                finetune(f"{tag}.finetune")
            continue
        scores = job.runner.stage(f"{tag}.score", lambda g=groups: _score(job.model, job.x, g, crit, data, p.seed,
                                                                          p.num_batches))
        opts = dataclasses.replace(options, **{name: goal})
        curves = sensitivity_stage(job, groups, scores, step) if opts.mode == "sensitivity" else None
        if latency is not None and name == "target_latency":
            plan = job.runner.stage(f"{tag}.select", lambda g=groups, s=scores, o=opts, c=curves, st=step: latency.select(
                job.model, g, s, o, base=job.baseline, counter=counter, final=st == steps, curves=c))
        else:
            plan = job.runner.stage(f"{tag}.select", lambda g=groups, s=scores, o=opts, c=curves: select(
                job.model, job.x, g, s, o, base=job.baseline, counter=counter, curves=c))
        if curves is not None and extra is not None:
            extra.setdefault("sensitivity", []).append(plan_summary(curves, groups, plan, step))

        def apply(g=groups, pl=plan, st=step, gl=goal, fx=fixed) -> dict[str, Any]:
            err = apply_plan_checked(job.model, g, pl, job.x) if p.check else None
            if not p.check:
                apply_plan(job.model, g, pl)
            macs, params = counter(job.model, job.x)
            removed = pl.num_removed() + fx["removed"]
            logger.info("step %d/%d: %s %.4f, removed %d channels, MACs %d, params %d",
                        st, steps, name, gl, removed, macs, params)
            errs = [e for e in (err, fx["max_error"]) if e is not None]
            return dataclasses.asdict(StepRecord(st, gl, removed, int(macs), int(params), max(errs) if errs else None))

        records.append(StepRecord(**job.runner.stage(f"{tag}.apply", apply, snapshot=True)))
        job.recalibrate(f"{tag}.recalibrate", report=job.evaluate_now(step, step == steps))
        if finetune is not None:
            finetune(f"{tag}.finetune")
    errors = [r.max_error for r in records if r.max_error is not None]
    return PruneReport(
        criterion=getattr(crit, "name", None) or p.criterion, target_name=name, target=value,
        macs_before=job.baseline.macs, macs_after=records[-1].macs, params_before=job.baseline.params,
        params_after=records[-1].params, widths_before=job.widths_before, widths_after=conv_widths(job.model),
        steps=tuple(records), max_error=max(errors) if errors else None,
        latency=job.runner.stage("latency.record", latency.record) if latency is not None else None,
    )


def _latency_target(job: PruneJob, options: SelectOptions | None, ignored):
    """The run's :class:`~filterprune.latency_target.LatencyTarget` at ``--latency-batch`` on the run's
    device, its table cached in the run folder (``latency_table.json``, reused on resume), and the
    options with ``--round-to 0`` replaced by the measured choice (a stage: not re-measured on resume)."""
    import torch

    from ..latency_target import LatencyTarget

    p = job.cfg.prune
    gen = torch.Generator().manual_seed(p.seed)
    x = torch.randn(p.latency_batch, *job.x.shape[1:], generator=gen).to(job.x.device, job.x.dtype)
    groups = trace_groups(job.model, job.x, ignored_layers=ignored, probe=False)
    latency = LatencyTarget(job.model, x, p.target_latency, table_path=job.folder / "latency_table.json",
                            owned=True, groups=groups)
    if p.round_to == 0 and options is not None:
        chosen = job.runner.stage("latency.round_to", lambda: {
            "round_to": latency.choose_round_to(job.model, groups), "evidence": latency.round_to_evidence})
        latency.round_to_evidence = chosen["evidence"]
        options = dataclasses.replace(options, round_to=chosen["round_to"])
    return latency, options


def run_scores(job: PruneJob) -> MethodResult:
    """Any registered criterion, one or ``--steps`` steps, on the (augmented) training loader."""
    extra: dict[str, Any] = {}
    return MethodResult(scored_steps(job, data=job.train, extra=extra), extra)


def car_eval_loader(splits, cfg, device):
    """CAR's evaluation set: a fixed, seeded, class-mixed subset of the training split, not augmented.

    The fine-tune loader reshuffles and augments every pass, so each greedy step would otherwise score on
    different images; the split itself can be class-ordered, so its first images are not a sample either.
    """
    from ..data import BatchLoader
    from ..utils.seed import pick_device

    p, ft = cfg.prune, cfg.finetune
    n = p.criterion_kwargs().get("eval_images") or p.num_batches * ft.eval_batch_size
    return BatchLoader(splits.train.sample(int(n), p.seed), ft.eval_batch_size, train=False, device=pick_device(device))


def run_car(job: PruneJob) -> MethodResult:
    """CAR (Abbasi-Asl & Yu, arXiv 1705.07356) on a fixed evaluation subset: raw accuracy drops share one
    unit, so no normalisation (unless ``--normalize``); ``k=N`` makes it greedy, about N filters per step
    (:func:`~filterprune.api.greedy_steps`, as ``fp.prune`` does), with ``--step-finetune-epochs`` after
    each step. ``scope=layer``: greedy inside each ``--layer-ratio`` layer, k (default 1) filters per
    step, stages ``stepN.car_layer`` [-> ``stepN.finetune``] (:func:`~filterprune.api.car_layer_prune`)."""
    p = job.cfg.prune
    data = car_eval_loader(job.splits, job.cfg, job.cfg.finetune.device)
    crit = _criterion(p.criterion, p.criterion_kwargs() or None, data)
    if getattr(crit, "scope", None) == "layer":  # the paper's setting: greedy inside each --layer-ratio layer
        finetune = job.step_finetune()
        return MethodResult(car_layer_prune(
            job.model, job.x, crit, data, p.layer_ratios(),
            targets={"target_macs": p.target_macs, "target_params": p.target_params, "ratio": p.ratio,
                     "target_latency": p.target_latency},
            steps=p.steps, allocation=p.allocation_mode(),
            after_step=None if finetune is None else lambda st: finetune(f"step{st}.finetune"),
            stage=job.runner.stage, ignored_layers=list(p.ignore) or None, min_channels=p.min_channels,
            num_batches=p.num_batches, base=(job.baseline.macs, job.baseline.params, job.widths_before)))
    steps = p.steps
    if getattr(crit, "k", None) and p.steps == 1:
        steps = job.runner.stage("car.steps", lambda: greedy_steps(job.model, job.x, crit, p.steps,
                                                                   select_options(p, crit), list(p.ignore) or None))
        logger.info("CAR: k=%d filters per step -> %d steps", crit.k, steps)
    extra: dict[str, Any] = {}
    return MethodResult(scored_steps(job, data=data, steps=steps, extra=extra), extra)


def run_iterative(job: PruneJob) -> MethodResult:
    """``--step-ratio P``: PLS+VIP's schedule (:mod:`filterprune.workflows.pls_iterate`), one stage per
    score, select, apply and fine-tune of every iteration."""
    from .pls_iterate import run_iterative as iterate

    finetune = job.step_finetune()
    report, iterations = iterate(job.cfg, job.model, job.x, job.splits,
                                 None if finetune is None else lambda _net, it: finetune(f"iter{it}.finetune"),
                                 job.accuracies, stage=job.runner.stage,
                                 recalibrate=lambda _net, it, due: job.recalibrate(f"iter{it}.recalibrate", report=due))
    return MethodResult(report, {"iterations": iterations})


register_method(Method("scores", run_scores, description="score with the criterion, select, remove (per step)"))
register_method(Method("iterative", run_iterative, description="remove a fraction of the remaining filters per "
                                                               "iteration until the MACs target (PLS+VIP)"))
for _name in ("car", "car-classwise"):
    register_method(Method(_name, run_car, description="CAR: accuracy drop per removed filter, greedy with k=N"))
