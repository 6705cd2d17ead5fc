"""``pls_vip_iterate``: PLS+VIP's schedule: remove the lowest-scoring fraction p of the remaining filters,
refit, fine-tune, repeat until a MACs target or a number of iterations.

Provenance: A. Jordao et al., arXiv:1810.07610 (methods.md §2.1 steps 6-8); the released ResNet
models remove exactly 1 - 0.9^k of the filters after k iterations, i.e. p = 0.1 of the remaining ones
per iteration. No code adapted.

Iteration i (1, 2, ...):

1. trace the current model's groups and score them with the criterion (``pls-vip``: the PLS model is
   refit on the current, fine-tuned network);
2. one network-wide ranking of the raw scores (``normalize="none"``: VIPs are comparable across
   layers because PLS standardises every feature) removes the fraction ``p`` of the *current*
   prunable channels with the lowest scores; every group keeps at least ``min_channels``;
3. if ``target_macs`` is given and step 2 would reach it (within ``tolerance``), the iteration instead
   removes just enough of the same ranking to land on ``target_macs`` of the original MACs, and is
   the last one;
4. the channels are removed (checked against the masked model), MACs/params counted; then
   ``recalibrate(model, i, report)`` if given (``filterprune prune`` re-estimates the BatchNorm
   statistics there), and ``evaluate(model)`` recorded;
5. unless it was the last iteration: ``finetune(model, i)``, and ``evaluate`` again.

``eval_every=K`` evaluates (steps 4 and 5) only in every K-th iteration and the last one.

It stops after ``iterations`` iterations, at the MACs target, or when nothing more can be removed;
then ``final_finetune(model)`` runs (its ``evaluate`` lands in the last record's ``finetuned``).
Fine-tuning budget: (iterations - 1) x what ``finetune`` trains plus the final fine-tune.

Differences from the reference code: the paper removes every filter whose VIP is <= a threshold
chosen so that about p are removed (ties can remove more), and a layer that would lose all its
filters loses none; here exactly ``round(p x channels)`` lowest-score channels go (within the
selector's 1% tolerance) and a group keeps ``min_channels``. Residual groups are pruned too
(their score: see :mod:`filterprune.criteria.pls_vip`); the paper's ResNets prune only the first
conv of each block (pass ``ignored_layers`` to reproduce that).

CLI: ``filterprune prune --criterion pls-vip --criterion-options n_components=2,pooling=max
--target-macs 0.5 --step-ratio 0.1 --step-finetune-epochs 1 --finetune-epochs 4`` runs this through
:func:`run_iterative` (``--steps K`` caps the iterations; scoring reads the training split without
augmentation; ``samples=N`` in the criterion options subsamples it).

>>> import torch
>>> from filterprune.models import create_model
>>> model, x = create_model("resnet20"), torch.randn(2, 3, 32, 32)
>>> data = [(torch.randn(16, 3, 32, 32), torch.arange(16) % 10)]
>>> records = pls_vip_iterate(model, x, data, p=0.1, target_macs=0.3)
>>> abs(records[-1].macs_reduction - 0.3) <= 0.01
True
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..criteria import Criterion, ScoringContext, create_criterion
from ..graph.check import apply_plan_checked
from ..graph.groups import PrunePlan
from ..graph.surgery import apply_plan
from ..graph.trace import Inputs, trace_groups
from ..selection import Baseline, SelectOptions, baseline, default_counter, select

logger = logging.getLogger(__name__)

__all__ = ["IterationRecord", "pls_vip_iterate", "prune_report", "run_iterative"]

Metrics = dict[str, float]


@dataclass(frozen=True)
class IterationRecord:
    """One iteration: what was removed and where the model ended up.

    Attributes:
        iteration: 1-based.
        removed_channels: channels removed in this iteration.
        channels: prunable channels left afterwards.
        macs: MACs afterwards.
        params: parameters afterwards.
        macs_reduction: fraction of the original MACs removed so far.
        params_reduction: fraction of the original parameters removed so far.
        max_error: largest masked-vs-pruned output difference (``None`` without the check).
        score_seconds: wall time of scoring (for ``pls-vip``: feature collection and PLS fit).
        pruned: ``evaluate(model)`` right after the removal and re-calibration (empty without
            ``evaluate`` or in an iteration that ``eval_every`` skips).
        finetuned: ``evaluate(model)`` after the fine-tune that followed (empty if none ran or skipped).
        recalibration: what ``recalibrate`` returned (empty without it).
    """

    iteration: int
    removed_channels: int
    channels: int
    macs: int
    params: int
    macs_reduction: float
    params_reduction: float
    max_error: float | None
    score_seconds: float
    pruned: Metrics = field(default_factory=dict)
    finetuned: Metrics = field(default_factory=dict)
    recalibration: dict[str, Any] = field(default_factory=dict)


def _direct(name: str, fn: Callable[[], Any], snapshot: bool = False) -> Any:
    return fn()


def _validate(p: float, iterations: int | None, target_macs: float | None, tolerance: float,
              eval_every: int = 1) -> None:
    if not isinstance(eval_every, int) or isinstance(eval_every, bool) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    if not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ValueError(f"p must be a fraction in (0, 1), got {p!r}")
    if iterations is not None and (not isinstance(iterations, int) or iterations < 1):
        raise ValueError(f"iterations must be a positive integer or None, got {iterations!r}")
    if target_macs is not None and not 0.0 < target_macs < 1.0:
        raise ValueError(f"target_macs must be a fraction in (0, 1), got {target_macs!r}")
    if iterations is None and target_macs is None:
        raise ValueError("give iterations, target_macs or both: nothing would stop the iterations")
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")


def pls_vip_iterate(
    model: nn.Module,
    example_inputs: Inputs,
    data: Iterable,
    *,
    p: float = 0.1,
    iterations: int | None = None,
    target_macs: float | None = None,
    criterion: str | Criterion = "pls-vip",
    criterion_kwargs: dict[str, Any] | None = None,
    finetune: Callable[[nn.Module, int], Any] | None = None,
    final_finetune: Callable[[nn.Module], Any] | None = None,
    evaluate: Callable[[nn.Module], Metrics] | None = None,
    ignored_layers: Sequence[str | nn.Module] | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    global_ranking: bool = True,
    allocation: str = "global",
    normalize: str = "none",
    check: bool = True,
    seed: int = 0,
    tolerance: float = 0.01,
    stage: Callable[..., Any] | None = None,
    recalibrate: Callable[[nn.Module, int, bool], dict[str, Any]] | None = None,
    eval_every: int = 1,
) -> list[IterationRecord]:
    """Prune ``model`` in place by PLS+VIP iterations (module docstring); return one record per iteration.

    Args:
        model: the trained network; pruned in place.
        example_inputs: a batch the model accepts (tracing, counting, the check).
        data: ``(x, y)`` batches the criterion reads each iteration (unaugmented training images).
        p: fraction of the current prunable channels removed per iteration.
        iterations: at most this many iterations (``None``: until ``target_macs``).
        target_macs: stop once this fraction of the original MACs is removed; the last iteration
            removes fewer channels to land on it.
        criterion: a registered criterion name or object (any criterion works; the paper's is pls-vip).
        criterion_kwargs: options for a criterion given by name (``n_components``, ``samples``...).
        finetune: ``finetune(model, iteration)``, run after every iteration but the last.
        final_finetune: ``final_finetune(model)``, run once after the last iteration.
        evaluate: ``evaluate(model) -> {name: value}``, recorded after removal and after fine-tuning.
        ignored_layers: layers (modules or qualified names) whose output channels are kept.
        min_channels: every group keeps at least this many channels.
        round_to: kept channel counts are multiples of this.
        global_ranking: one ranking over all groups (the paper); ``False`` removes p of every group.
        allocation: global, uniform or cost (``SelectOptions.allocation``; cost charges MACs at every
            iteration). ``sensitivity`` is refused: the curves would be re-measured every iteration.
        normalize: per-group score normalisation before ranking; the paper ranks raw VIPs.
        check: compare masked and pruned outputs at each iteration.
        seed: passed to the criterion.
        tolerance: how close (absolute) the last iteration lands to ``target_macs``.
        stage: ``stage(name, fn, snapshot=False)`` runs each unit of work (``iterK.score``, ``.select``,
            ``.apply``, ``.evaluate``); ``filterprune prune`` passes its
            :meth:`~filterprune.workflows.runner.Runner.stage` so that a killed run resumes mid-schedule.
            Default: call ``fn``.
        recalibrate: ``recalibrate(model, iteration, report) -> dict`` right after each removal,
            before ``evaluate`` (``report``: this iteration is evaluated); the dict is recorded.
        eval_every: evaluate in every K-th iteration and the last one only.

    Raises:
        ValueError: bad arguments, or a data-driven criterion without data.
        PruningError: the model cannot be pruned safely or a selection is unreachable.
    """
    _validate(p, iterations, target_macs, tolerance, eval_every)
    if allocation == "sensitivity":
        raise ValueError("allocation='sensitivity' is not available with the iterative schedule: use global, "
                         "uniform or cost")
    crit = create_criterion(criterion, **(criterion_kwargs or {})) if isinstance(criterion, str) else criterion
    if criterion_kwargs and not isinstance(criterion, str):
        raise ValueError("criterion_kwargs apply only to a criterion given by name")
    counter = default_counter()
    groups = trace_groups(model, example_inputs, ignored_layers=ignored_layers)
    run = stage or _direct
    # the unpruned model's counts, recorded once (a resumed run's model is already pruned)
    base = Baseline(**run("iter0.baseline", lambda: dataclasses.asdict(baseline(model, example_inputs, groups, counter))))
    common = {"global_ranking": global_ranking, "normalize": normalize, "min_channels": min_channels,
              "round_to": round_to, "tolerance": tolerance, "allocation": allocation,
              "cost_of": "macs" if allocation == "cost" else None}
    records: list[IterationRecord] = []
    it = 0
    while iterations is None or it < iterations:
        it += 1
        tag = f"iter{it}"
        if it > 1:  # same topology, new widths: the probe already passed
            groups = trace_groups(model, example_inputs, ignored_layers=ignored_layers, probe=False)

        def score(g=groups) -> dict:
            start = time.perf_counter()
            scores = crit.score(ScoringContext(model, example_inputs, g, data=data, seed=seed))
            return {**scores, "__seconds__": torch.tensor(time.perf_counter() - start, dtype=torch.float64)}

        scores = dict(run(f"{tag}.score", score))
        score_seconds = float(scores.pop("__seconds__"))

        def choose(g=groups, s=scores, i=it) -> dict:
            plan = select(model, example_inputs, g, s, SelectOptions(ratio=p, **common), counter=counter)
            last = iterations is not None and i == iterations
            if target_macs is not None:
                trial = copy.deepcopy(model)
                apply_plan(trial, g, plan)
                if 1 - counter(trial, example_inputs)[0] / base.macs >= target_macs - tolerance:
                    plan = select(model, example_inputs, g, s,
                                  SelectOptions(target_macs=target_macs, **common), base=base, counter=counter)
                    last = True
                del trial
            return {"prune_idxs": plan.prune_idxs, "last": last}

        chosen = run(f"{tag}.select", choose)
        plan, last = PrunePlan({k: list(v) for k, v in chosen["prune_idxs"].items()}), chosen["last"]
        if plan.num_removed() == 0:
            logger.warning("iteration %d: nothing left to remove under the constraints; stopping", it)
            break

        def remove(g=groups, pl=plan, i=it, secs=score_seconds) -> dict:
            err = apply_plan_checked(model, g, pl, example_inputs) if check else None
            if not check:
                apply_plan(model, g, pl)
            macs, params = counter(model, example_inputs)
            left = sum(x.size for x in g if x.prunable) - pl.num_removed()
            record = IterationRecord(
                iteration=i, removed_channels=pl.num_removed(), channels=left, macs=int(macs), params=int(params),
                macs_reduction=1 - macs / base.macs, params_reduction=1 - params / base.params, max_error=err,
                score_seconds=secs,
            )
            logger.info("iteration %d: removed %d channels (%d left), MACs -%.1f%%, params -%.1f%%, scoring %.1fs",
                        i, record.removed_channels, left, 100 * record.macs_reduction,
                        100 * record.params_reduction, secs)
            return dataclasses.asdict(record)

        record = IterationRecord(**run(f"{tag}.apply", remove, snapshot=True))
        due = last or it % eval_every == 0
        if recalibrate is not None:
            record = dataclasses.replace(record, recalibration=dict(recalibrate(model, it, due)))
        if evaluate is not None and due:
            record = dataclasses.replace(record, pruned=run(f"{tag}.evaluate_pruned", lambda: dict(evaluate(model))))
            logger.info("iteration %d: %s", it, record.pruned)
        if not last and finetune is not None:
            finetune(model, it)
            if evaluate is not None and due:
                record = dataclasses.replace(record, finetuned=run(f"{tag}.evaluate", lambda: dict(evaluate(model))))
        records.append(record)
        if last:
            break
    if final_finetune is not None and records:
        final_finetune(model)
        records[-1] = dataclasses.replace(records[-1], finetuned=dict(evaluate(model)) if evaluate else {})
    return records


def prune_report(records: Sequence[IterationRecord], *, criterion: str, target: float | None, macs_before: int,
                 params_before: int, widths_before: dict[str, int], widths_after: dict[str, int]):
    """The iterations as an :class:`filterprune.api.PruneReport` (each step's ``target`` is the MACs
    reduction it reached; the report's is ``target`` if one was given, else the final reduction)."""
    from ..api import PruneReport, StepRecord

    steps = tuple(StepRecord(r.iteration, r.macs_reduction, r.removed_channels, r.macs, r.params, r.max_error)
                  for r in records)
    errors = [r.max_error for r in records if r.max_error is not None]
    last_macs = records[-1].macs if records else macs_before
    last_params = records[-1].params if records else params_before
    return PruneReport(
        criterion=criterion, target_name="target_macs",
        target=target if target is not None else 1 - last_macs / max(1, macs_before),
        macs_before=macs_before, macs_after=last_macs, params_before=params_before, params_after=last_params,
        widths_before=widths_before, widths_after=widths_after, steps=steps, max_error=max(errors) if errors else None,
    )


def run_iterative(cfg, model: nn.Module, x, splits, finetune: Callable[[nn.Module, int], Any] | None,
                  evaluate: Callable[[nn.Module], Metrics], stage: Callable[..., Any] | None = None,
                  recalibrate: Callable[[nn.Module, int, bool], dict[str, Any]] | None = None):
    """What ``filterprune prune --step-ratio P`` runs (called by ``run_prune``): returns
    ``(PruneReport, [record dicts])``. ``cfg`` is the :class:`~filterprune.config.PruneRunConfig`;
    ``finetune(model, iteration)`` runs between iterations, ``recalibrate`` after each removal;
    ``--eval-every`` applies."""
    from ..api import conv_widths
    from ..data import BatchLoader
    from ..utils.seed import pick_device

    pc, ft = cfg.prune, cfg.finetune
    if pc.ratio is not None or pc.target_params is not None:
        raise ValueError("--step-ratio stops at --target-macs or after --steps; --ratio/--target-params do not apply")
    if pc.steps > 1:
        iterations = pc.steps
    else:
        iterations = None if pc.target_macs is not None else 1
    features = BatchLoader(splits.train, ft.eval_batch_size, train=False, device=pick_device(ft.device))
    def before() -> dict:
        macs, params = default_counter()(model, x)
        return {"macs": int(macs), "params": int(params), "widths": conv_widths(model)}

    counts = (stage or _direct)("iter0.before", before)
    macs_before, params_before, widths_before = counts["macs"], counts["params"], counts["widths"]
    records = pls_vip_iterate(
        model, x, features, p=pc.step_ratio, iterations=iterations, target_macs=pc.target_macs,
        criterion=pc.criterion, criterion_kwargs=pc.criterion_kwargs() or None, finetune=finetune,
        evaluate=evaluate, min_channels=pc.min_channels, round_to=pc.round_to,
        global_ranking=pc.global_ranking, allocation=pc.allocation_mode(), normalize=pc.normalize or "none",
        check=pc.check, seed=pc.seed, stage=stage, recalibrate=recalibrate, eval_every=pc.eval_every,
    )
    report = prune_report(records, criterion=pc.criterion, target=pc.target_macs, macs_before=macs_before,
                          params_before=params_before, widths_before=widths_before, widths_after=conv_widths(model))
    return report, [dataclasses.asdict(r) for r in records]
