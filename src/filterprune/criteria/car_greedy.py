"""Greedy CAR pruning: remove the k lowest-CAR filters, re-score the rest, repeat.

Provenance: Abbasi-Asl & Yu, arXiv 1705.07356 ("iteratively pruned based on the CAR index"; the
paper prunes half the filters of AlexNet's conv1 or conv2). One filter per iteration (k=1) is the
paper as a third-party summary describes it [V-3p]; k > 1 trades exactness for time [I].

* :func:`car_prune_layer`: one layer (one channel group), as in the paper. During the loop the chosen
  filters are hidden with reversible masks and the evaluation set's activations entering the layer's
  consumers are computed once and reused by every step (masks of this group change nothing upstream);
  at the end the plan is applied by surgery (checked against the masked model).
* :func:`car_prune_layers`: the per-layer greedy reachable from ``prune``: ``fp.prune(model, x, "car",
  layer_ratios={"features.0": 0.5}, criterion_kwargs={"scope": "layer", "k": 1}, data=...)`` or
  ``filterprune prune --criterion car --criterion-options scope=layer,k=1 --layer-ratio features.0=0.5``.
  Each greedy step is one :func:`car_prune_layer` call that removes k filters by surgery, so a
  fine-tune (``finetune=`` / ``--step-finetune-epochs``) can run between steps; without one the
  result equals a single :func:`car_prune_layer` call with the same k (a test checks this).
* :func:`steps_for_k`: network-wide greedy goes through the engine, ``prune(model, x, "car",
  target_macs=..., steps=steps_for_k(model, x, k, target_macs=...))``, which re-traces and re-scores
  every step (the CLI does this for ``--criterion-options k=8``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graph.check import apply_plan_checked
from ..graph.groups import ChannelGroup, PrunePlan
from ..graph.masking import Mask, mask
from ..graph.trace import Inputs, trace_groups
from ..utils.modes import evaluating
from ._car_fast import CarEngine
from .base import ScoringContext, create_criterion
from .car import METRICS, collect_eval_set, stats_to_result

logger = logging.getLogger(__name__)

__all__ = ["LayerPruneResult", "car_prune_layer", "car_prune_layers", "check_layer_scope", "find_group", "steps_for_k"]


@dataclass
class LayerPruneResult:
    """What :func:`car_prune_layer` removed.

    Attributes:
        group: id of the pruned group.
        removed: channels in the order they were removed (indices of the original layer).
        plan: the plan (applied to the model unless ``apply=False``).
        history: per greedy step: the base metric, the removed channels and their CAR (or RAR).
        fast: whether the suffix-replay path scored.
    """

    group: str
    removed: list[int]
    plan: PrunePlan
    history: list[dict[str, Any]] = field(default_factory=list)
    fast: bool = True


def find_group(groups: Iterable[ChannelGroup], layer: str) -> ChannelGroup:
    """The group whose id is ``layer``, else the one ``layer`` produces channels for.

    Raises:
        ValueError: no group, or the group is not prunable.
    """
    groups = list(groups)
    found = next((g for g in groups if g.id == layer), None) or next(
        (g for g in groups if any(m.module == layer and m.kind == "out" for m in g.members)), None)
    if found is None:
        raise ValueError(f"no channel group for layer {layer!r}; groups: {', '.join(g.id for g in groups)}")
    if not found.prunable:
        raise ValueError(f"group {found.id} is not prunable: {found.reason}")
    return found


def car_prune_layer(
    model: nn.Module,
    example_inputs: Inputs,
    data: Iterable[tuple[Tensor, Tensor]],
    layer: str,
    n_remove: int,
    k: int = 1,
    *,
    eval_images: int | None = None,
    num_batches: int = 16,
    metric: str = "accuracy",
    fast: bool = True,
    max_rows: int = 2048,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    apply: bool = True,
) -> LayerPruneResult:
    """Remove ``n_remove`` filters of ``layer`` greedily by CAR, ``k`` per step (k=1: the paper).

    Each step scores the remaining filters of the group (the already chosen ones masked) and removes
    the k with the lowest CAR, ties broken by the smaller loss increase, then the lower index.

    Args:
        model: the network; pruned in place when ``apply``.
        example_inputs: a batch the model accepts (tracing and the surgery check).
        data: ``(x, y)`` training batches; the evaluation set is taken from them once.
        layer: the group id (its root conv, e.g. ``"layer1.0.conv1"``; ``"conv1"`` for a ResNet stem,
            which is tied to the whole first stage) or any conv of the group.
        n_remove: filters to remove.
        k: filters removed per step.
        eval_images: evaluation-set size; ``None``: ``num_batches`` batches.
        num_batches: batches of ``data`` when ``eval_images`` is ``None``.
        metric: ``"accuracy"`` (CAR), ``"r2"`` or ``"neg_mse"`` (RAR).
        fast: score by suffix replay (identical results to full evaluations).
        max_rows: samples per batched suffix forward.
        loss_fn: mean loss for the tie-break.
        apply: remove the filters physically at the end (else only return the plan).

    Raises:
        ValueError: unknown layer, ``n_remove`` out of ``[1, size)``, bad ``k`` or ``metric``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    groups = trace_groups(model, example_inputs)
    group = find_group(groups, layer)
    if not 1 <= n_remove < group.size:
        raise ValueError(f"n_remove must be in [1, {group.size}) for group {group.id}, got {n_remove}")
    ctx = ScoringContext(model, example_inputs, groups, data=data, num_batches=num_batches, loss_fn=loss_fn)
    batches = collect_eval_set(ctx, eval_images)
    task = "classification" if metric == "accuracy" else "regression"
    removed: list[int] = []
    history: list[dict[str, Any]] = []
    handle = Mask()
    with evaluating(model):
        engine = CarEngine(model, groups, batches, task=task, loss_fn=loss_fn, fast=fast, max_rows=max_rows)
        try:
            while len(removed) < n_remove:
                remaining = [c for c in range(group.size) if c not in set(removed)]
                stats = engine.evaluate([(group, c) for c in remaining], cache=True,
                                        desc=f"CAR {group.id} step {len(history) + 1}")
                res = stats_to_result(metric, [group.id], [len(remaining)], batches, stats, engine.fast)
                drop = res.drop[group.id]
                tie = res.delta_loss[group.id] if res.delta_loss is not None else torch.zeros_like(drop)
                order = sorted(range(len(remaining)), key=lambda i: (float(drop[i]), float(tie[i]), remaining[i]))
                take = order[: min(k, n_remove - len(removed))]
                chosen = [remaining[i] for i in take]
                mask(model, group, chosen, into=handle)
                removed += chosen
                history.append({"step": len(history) + 1, "base": res.base, "removed": chosen,
                                "drop": [float(drop[i]) for i in take]})
                logger.info("CAR %s step %d: base %.4f, removed %s", group.id, len(history), res.base, chosen)
        finally:
            engine.release()
            handle.restore()
    plan = PrunePlan({group.id: sorted(removed)})
    if apply:
        apply_plan_checked(model, groups, plan, example_inputs)
    return LayerPruneResult(group.id, removed, plan, history, engine.fast)


def check_layer_scope(targets: dict[str, Any], layer_ratios: dict[str, float], steps: int,
                      allocation: str = "global") -> None:
    """Refuse a request CAR's ``scope=layer`` cannot serve: it prunes exactly the layers of
    ``layer_ratios`` (``--layer-ratio NAME=R``), in as many steps as ``k`` makes.

    Raises:
        ValueError: a network-wide target is given, an allocation other than ``"global"`` (the layer
            fractions are given, nothing is allocated), no layer ratio, or ``steps`` is not 1.
    """
    given = [k for k, v in targets.items() if v is not None]
    if given:
        raise ValueError(f"CAR scope=layer prunes only the --layer-ratio layers (layer_ratios); drop {given[0]}")
    if allocation != "global":
        raise ValueError(f"CAR scope=layer prunes each --layer-ratio layer by its own fraction: allocation "
                         f"{allocation!r} does not apply (drop --allocation)")
    if not layer_ratios:
        raise ValueError("CAR scope=layer needs the layers and fractions: --layer-ratio NAME=R (layer_ratios={NAME: R})")
    if steps != 1:
        raise ValueError("CAR scope=layer makes one step per k filters; leave steps at 1")


def car_prune_layers(
    model: nn.Module,
    example_inputs: Inputs,
    data: Iterable[tuple[Tensor, Tensor]],
    layer_ratios: dict[str, float],
    *,
    k: int = 1,
    min_channels: int = 1,
    after_step: Callable[[int], Any] | None = None,
    stage: Callable[..., Any] | None = None,
    ignored_layers: Any = None,
    **car_options: Any,
) -> list[dict[str, Any]]:
    """Per-layer greedy CAR (the paper's setting) for every group produced by a layer matching a key of
    ``layer_ratios``: remove ``round(R x C)`` of its C filters (keeping ``min_channels``), k per step,
    re-scoring the remaining filters of that layer after each removal.

    Args:
        model: the network; pruned in place.
        example_inputs: a batch the model accepts.
        data: ``(x, y)`` batches; every step takes its evaluation set from them (pass a fixed,
            un-augmented loader so that every step scores the same images).
        layer_ratios: ``{layer name or fnmatch pattern: R}``, R in [0, 1).
        k: filters removed per greedy step (1: the paper).
        min_channels: every group keeps at least this many channels.
        after_step: ``after_step(step)`` after each greedy step (1-based, over all layers): step fine-tuning.
        stage: ``stage(name, fn, snapshot=True)`` wraps each step (``stepN.car_layer``): a run's
            recorded, resumable stage; default: run it.
        ignored_layers: passed to the tracer.
        car_options: :func:`car_prune_layer` keywords (``eval_images``, ``num_batches``, ``metric``,
            ``fast``, ``max_rows``).

    Returns:
        One dict per greedy step: ``step``, ``group``, ``removed`` (indices in the layer as it was
        before that step), ``removed_channels``, ``macs``, ``params``, ``max_error`` (``None``: the
        surgery check of :func:`car_prune_layer` raises above its tolerance).

    Raises:
        ValueError: a pattern matches no prunable group, a ratio out of [0, 1), or bad ``k``.
    """
    import fnmatch

    from ..metrics import count

    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    groups = trace_groups(model, example_inputs, ignored_layers=ignored_layers)
    todo: list[tuple[str, int]] = []
    for pattern, ratio in layer_ratios.items():
        if not 0 <= ratio < 1:
            raise ValueError(f"layer_ratios[{pattern!r}] must be a fraction in [0, 1), got {ratio!r}")
        matched = [g for g in groups if g.prunable and any(m.kind == "out" and fnmatch.fnmatch(m.module, pattern)
                                                           for m in g.members)]
        if not matched:
            raise ValueError(f"layer_ratios: no prunable group is produced by a layer matching {pattern!r}; "
                             f"prunable groups: {', '.join(g.id for g in groups if g.prunable)}")
        todo += [(g.id, max(0, min(round(ratio * g.size), g.size - min_channels))) for g in matched
                 if g.id not in {t[0] for t in todo}]
    run = stage or (lambda name, fn, snapshot=False: fn())
    records: list[dict[str, Any]] = []
    for gid, n_remove in todo:
        done = 0
        while done < n_remove:
            take = min(k, n_remove - done)
            step = len(records) + 1

            def one(gid=gid, take=take, step=step) -> dict[str, Any]:
                res = car_prune_layer(model, example_inputs, data, gid, take, k=take, **car_options)
                macs, params = count(model, example_inputs)
                logger.info("CAR layer %s, step %d: removed %s", gid, step, res.removed)
                return {"step": step, "group": gid, "removed": res.removed, "removed_channels": take,
                        "macs": int(macs), "params": int(params), "max_error": None}

            records.append(run(f"step{step}.car_layer", one, snapshot=True))
            done += take
            if after_step is not None:
                after_step(step)
    return records


def steps_for_k(model: nn.Module, example_inputs: Inputs, k: int, *, options: Any = None,
                ignored_layers: Any = None, **select_options: Any) -> int:
    """Pruning steps that remove about ``k`` channels each for a target: ``options`` (a
    :class:`~filterprune.selection.SelectOptions`) or its keywords in ``select_options``.

    The channel count of the target is estimated with L1 scores (the count depends on which channels
    go, hence "about"); with ``allocation="sensitivity"`` it is estimated with ``"uniform"`` allocation,
    since the curves are measured at each step, after this count is needed. ``fp.prune(..., "car",
    criterion_kwargs={"k": N})`` and ``filterprune prune --criterion car --criterion-options k=N`` both
    call this with the run's selection options.

    >>> from filterprune.models import create_model
    >>> steps_for_k(create_model("resnet20"), torch.randn(2, 3, 32, 32), 64, ratio=0.5)
    4
    """
    from ..selection import SelectOptions, select

    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    options = options if options is not None else SelectOptions(**select_options)
    if options.mode == "sensitivity":  # the curves are measured per step, later: count with equal fractions
        options = dataclasses.replace(options, allocation="uniform")
    groups = trace_groups(model, example_inputs, ignored_layers=ignored_layers)
    scores = create_criterion("l1").score(ScoringContext(model, example_inputs, groups))
    plan = select(model, example_inputs, groups, scores, options)
    return max(1, math.ceil(plan.num_removed() / k))
