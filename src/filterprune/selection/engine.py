"""``select``: scores -> :class:`PrunePlan` meeting a target, under an allocation (package docstring)."""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from ..errors import PruningError
from ..graph.groups import ChannelGroup, PrunePlan
from ..graph.surgery import apply_plan
from ..graph.trace import Inputs, first_sample
from ..types import Scores
from .allocation import unit_key
from .cost import CostFn, CostModel, Counter, LatencyFn, _analytic_count, default_counter
from .family import _candidates, _Family
from .options import Baseline, SelectOptions

if TYPE_CHECKING:
    from .sensitivity import SensitivityCurves

logger = logging.getLogger(__name__)


def _limits(groups: Sequence[ChannelGroup], opts: SelectOptions, base: Baseline, best: float, target: float) -> str:
    """What keeps the target out of reach, for the error message: the constraints that bind, and the
    groups kept whole (with their reasons)."""
    parts = []
    if best + opts.tolerance < target:
        bound = [f"min_channels={opts.min_channels}"] if opts.min_channels > 1 else []
        bound += [f"max_ratio={opts.max_ratio:g}"] if opts.max_ratio < 1 else []
        bound += [f"round_to={opts.round_to}"] if opts.round_to > 1 else []
        bound += ["ignored_layers"] if opts.ignored_layers else []
        if bound:
            parts.append("under " + ", ".join(bound))
        whole = [f"{g.id} ({g.reason})" for g in groups
                 if not g.prunable and g.size > 1 and not g.reaches_output and "classifier" not in g.reason]
        if whole:
            parts.append(f"{len(whole)} group(s) kept whole: " + "; ".join(whole[:3]) + ("; ..." if len(whole) > 3 else ""))
    else:
        parts.append("no combination of whole channels lands within the tolerance; try a larger tolerance or "
                     "another target")
    return ("; " + ", ".join(parts)) if parts else ""


def select(
    model: nn.Module,
    example_inputs: Inputs,
    groups: Sequence[ChannelGroup],
    scores: Scores,
    options: SelectOptions,
    *,
    base: Baseline | None = None,
    counter: Counter | None = None,
    cost_fn: CostFn | None = None,
    curves: SensitivityCurves | None = None,
    latency: LatencyFn | None = None,
) -> PrunePlan:
    """Choose the channels to remove so that ``options``' target is met.

    Args:
        model: the model ``groups`` were traced from; not modified.
        example_inputs: a batch, for spatial sizes and for counting.
        groups: the model's channel groups (current shapes).
        scores: per prunable group, one score per channel; higher means keep.
        options: target and constraints.
        base: the model the target fractions refer to (default: this model as it is).
        counter: ``(model, inputs) -> (macs, params)``; default the metrics ``count``.
        cost_fn: ``allocation="cost"`` only: ``cost_fn(group, n_removed) -> cost saved`` (e.g. measured
            latency, :data:`~filterprune.selection.cost.CostFn`) instead of the target's MACs/params.
        curves: ``allocation="sensitivity"`` only: the model's per-group sensitivity curves.
        latency: with ``target_latency``: the predictor of the removed latency fraction (:data:`LatencyFn`).

    Raises:
        PruningError: the target cannot be reached within tolerance under the constraints.
        ValueError: scores are missing or malformed, the allocation's input (curves) is missing, or
            ``target_latency`` without ``latency``.
    """
    name, target = options.target
    if name == "target_latency" and latency is None:
        raise ValueError("target_latency needs latency=: a predictor of the removed latency fraction")
    sample = first_sample(example_inputs)  # fractions do not depend on the batch size
    measured = counter is not None or default_counter() is not _analytic_count
    counter = counter or default_counter()
    costed = name != "ratio" or (options.mode == "cost" and options.cost_of is not None and cost_fn is None)
    cost = CostModel(model, sample) if costed else None
    now = (counter(model, sample) if measured else cost.totals()) if cost else (0, 0)
    base = base or Baseline(int(now[0]), int(now[1]), {g.id: g.size for g in groups})
    verify = name not in ("ratio", "target_latency") and measured  # latency: measured by the caller
    fam = _Family(_candidates(groups, scores, options, base), options, base, cost, latency)
    fam.order(unit_key(fam, options, now, cost_fn=cost_fn, curves=curves))

    def analytic(counts: Sequence[int], shift: float = 0.0) -> float:
        return fam.analytic(counts, now)[name] - shift

    def real(counts: Sequence[int]) -> float:
        pruned = apply_plan(copy.deepcopy(model), groups, fam.plan(counts))
        macs, params = counter(pruned, sample)
        ref = (base.macs, macs) if name == "target_macs" else (base.params, params)
        return 1 - ref[1] / max(1, ref[0])

    # Solve on the analytic model; where the real counter disagrees, shift the analytic goal by the
    # disagreement and solve again (the two differ by layers the analytic model does not see).
    # Aim at half the tolerance first (room for the analytic/real gap); small models whose channels
    # are coarse may only land within the full tolerance, so that is tried next.
    tol = options.tolerance
    for aim in (tol / 2, tol):
        shift = 0.0
        for _ in range(4):
            counts = fam.solve(functools.partial(analytic, shift=shift), target, aim)
            achieved = real(counts) if verify else analytic(counts)
            if not verify or abs(achieved - target) <= aim:
                break
            shift = analytic(counts) - achieved
        if abs(achieved - target) <= tol + 1e-9:
            break
    if verify and abs(achieved - target) > tol + 1e-9:
        # the analytic model misses a large part (layers it cannot see, e.g. registered layer ops):
        # search on real counts instead (slower: one count of a pruned copy per evaluation)
        counts = fam.solve(real, target, tol)
        achieved = real(counts)
    if abs(achieved - target) > tol + 1e-9:
        full = fam.counts(len(fam.units))
        best = real(full) if verify else analytic(full)
        raise PruningError(f"cannot reach {name}={target:.4g} within {tol:g}: got {achieved:.4g} "
                           f"(at most {best:.4g}{_limits(groups, options, base, best, target)})")
    plan = fam.plan(counts)
    logger.info("selected %d channels in %d groups (%s allocation): %s %.4f (requested %.4f)",
                plan.num_removed(), len(plan.prune_idxs), options.mode, name, achieved, target)
    return plan
