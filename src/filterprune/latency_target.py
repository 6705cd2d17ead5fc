"""``target_latency=R``: remove the fraction R of the *measured* latency, NetAdapt-style.

Source: Yang et al., "NetAdapt", ECCV 2018, Sec. 3.2-3.3: a per-layer latency table measured on the
target device predicts the latency of a candidate network; candidates are then measured.

1. A per-layer table (:mod:`filterprune.metrics.latency_table`) is measured on the example input's
   device and batch size, or read from its cache file (a run folder's ``latency_table.json``).
2. Selection removes channels until the table predicts ``R`` (``select(..., latency=...)``: the
   table's prediction is the target function of the usual score-ordered family).
3. The candidate is timed side by side with the base model (interleaved rounds, median of per-round
   ratios: :func:`filterprune.metrics.measure_side_by_side`). If the measured reduction ``m`` misses
   ``R`` by more than ``tolerance``, the predicted goal is moved by the miss (``aim += R - m``) and the
   selection is redone, at most ``max_iters`` times; the candidate measured closest to ``R`` is kept.
   Every iteration's predicted and measured reduction is reported.

``round_to="auto"`` (or 0) picks the channel multiple from measurements
(:func:`filterprune.metrics.choose_round_to`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .errors import PruningError
from .graph.groups import ChannelGroup, PrunePlan
from .graph.surgery import apply_plan
from .graph.trace import first_sample
from .metrics.latency import measure_side_by_side
from .metrics.latency_table import LatencyTable, Profiler, Timer, load_or_measure_table, module_widths
from .metrics.round_to import choose_round_to
from .selection import Baseline, Counter, LatencyFn, SelectOptions, select
from .types import PathLike, Scores

logger = logging.getLogger(__name__)

__all__ = ["LatencyOptions", "LatencyTarget", "plan_cuts"]


@dataclass(frozen=True)
class LatencyOptions:
    """How the latency target is measured and met.

    Attributes:
        tolerance: the measured reduction may be this far (absolute) from the target.
        max_iters: measured refinements at most (NetAdapt step 3).
        rounds: interleaved rounds of the side-by-side measurement.
        repeats: timed forwards per model per round.
        warmup: untimed forwards per model per round.
        grid_points: widths per axis in the latency table.
        table_repeats: timed forwards per table grid point.
        round_to_candidates: channel multiples compared when ``round_to`` is chosen from measurements.
        rest: how the table predicts the time of ops it does not time: ``"scaled"`` or ``"fixed"``
            (:mod:`filterprune.metrics.latency_table`).
    """

    tolerance: float = 0.02
    max_iters: int = 4
    rounds: int = 15
    repeats: int = 10
    warmup: int = 3
    grid_points: int = 6
    table_repeats: int = 7
    round_to_candidates: tuple[int, ...] = (1, 4, 8, 16)
    rest: str = "scaled"

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1 or min(self.max_iters, self.rounds, self.repeats, self.grid_points,
                                             self.table_repeats) < 1 or self.warmup < 0:
            raise ValueError(f"invalid latency options: {self}")


def plan_cuts(groups: Sequence[ChannelGroup], plan: PrunePlan) -> dict[tuple[str, str], int]:
    """Indices a plan removes per ``(module, "in"|"out")`` (the form :data:`~filterprune.selection.LatencyFn` takes).

    >>> from filterprune.graph.groups import Member
    >>> g = ChannelGroup("a", 2, (Member("a", "out", "Conv2d", ((0,), (1,))), Member("fc", "in", "Linear", ((0, 1), (2, 3)))))
    >>> plan_cuts([g], PrunePlan({"a": [1]}))
    {('a', 'out'): 1, ('fc', 'in'): 2}
    """
    by_id = {g.id: g for g in groups}
    cuts: dict[tuple[str, str], int] = defaultdict(int)
    for gid, idxs in plan.prune_idxs.items():
        for m in by_id[gid].members:
            cuts[(m.module, m.kind)] += sum(len(m.idxs[c]) for c in idxs)
    return dict(cuts)


class LatencyTarget:
    """The latency table of a model on its example input, and the measured refinement (module docstring).

    Args:
        model: the unpruned model; a copy is kept as the side-by-side reference.
        example_inputs: a batch (tensor); its device and batch size are the ones measured.
        target: fraction of the measured latency to remove (``None``: the table only, e.g. for
            ``round_to="auto"`` or a cost allocation).
        options: measurement and refinement settings.
        table_path: cache file of the table: reused when it fits, written otherwise.
        owned: ``table_path`` belongs to this run (a stale one is replaced; else refused).
        groups: the model's channel groups (traced here when not given).
        timer: ``timer(module, x) -> seconds`` of one forward, for the side-by-side measurement and
            the ``round_to`` choice (a mock in tests).
        profiler: per-layer profiler of the table (:data:`~filterprune.metrics.latency_table.Profiler`;
            a mock in tests).

    Raises:
        ValueError: inputs that are not one tensor, a target outside [0, 1), or a cache file that
            holds something else.
    """

    def __init__(self, model: nn.Module, example_inputs: Tensor, target: float | None, *,
                 options: LatencyOptions | None = None, table_path: PathLike | None = None, owned: bool = False,
                 groups: Sequence[ChannelGroup] | None = None, timer: Timer | None = None,
                 profiler: Profiler | None = None) -> None:
        if not isinstance(example_inputs, Tensor):
            raise ValueError("target_latency needs example_inputs to be one tensor (the batch that is timed)")
        if target is not None and not 0 <= target < 1:
            raise ValueError(f"target_latency must be a fraction in [0, 1), got {target!r}")
        self.target, self.options, self.timer = target, options or LatencyOptions(), timer
        self.x = example_inputs
        self.reference = copy.deepcopy(model).eval()
        self.table: LatencyTable
        if groups is None:
            from .graph.trace import trace_groups

            groups = trace_groups(model, example_inputs)
        self.table, self.reused = load_or_measure_table(
            table_path, model, example_inputs, groups, owned=owned, grid_points=self.options.grid_points,
            repeats=self.options.table_repeats, rest=self.options.rest, profiler=profiler)
        self.table_path = None if table_path is None else str(Path(table_path))
        self.iterations: list[dict[str, Any]] = []
        self.round_to_evidence: dict[str, Any] | None = None

    def choose_round_to(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> int:
        """``round_to`` from measurements on this device (:func:`filterprune.metrics.choose_round_to`)."""
        narrowest = min((g.size for g in groups if g.prunable), default=None)
        choice, self.round_to_evidence = choose_round_to(
            self.table, model, self.x, candidates=self.options.round_to_candidates, narrowest=narrowest,
            timer=self.timer)
        return choice

    def predictor(self, model: nn.Module) -> LatencyFn:
        """``cuts -> predicted removed fraction of the base latency`` for ``model`` as it is now."""
        now = module_widths(model, self.table.layers)

        def removed(cuts: dict[tuple[str, str], int]) -> float:
            widths = {n: (ci - cuts.get((n, "in"), 0), co - cuts.get((n, "out"), 0)) for n, (ci, co) in now.items()}
            return self.table.reduction(widths)

        return removed

    def measure(self, candidate: nn.Module) -> dict[str, Any]:
        """The base and ``candidate`` timed side by side (:func:`~filterprune.metrics.measure_side_by_side`)."""
        o = self.options
        r = measure_side_by_side({"base": self.reference, "pruned": candidate}, self.x, rounds=o.rounds,
                                 repeats=o.repeats, warmup=o.warmup, timer=self.timer)
        return {"measured": r["models"]["pruned"]["reduction"], "base_ms": r["models"]["base"]["median_ms"],
                "pruned_ms": r["models"]["pruned"]["median_ms"], "rounds": r["rounds"], "repeats": r["repeats"]}

    def select(self, model: nn.Module, groups: Sequence[ChannelGroup], scores: Scores, options: SelectOptions, *,
               base: Baseline | None = None, counter: Counter | None = None, final: bool = True,
               **select_kwargs: Any) -> PrunePlan:
        """The plan for ``options.target_latency`` (a cumulative goal), measured and refined when ``final``.

        ``select_kwargs`` (``cost_fn``, ``curves``) go to :func:`~filterprune.selection.select`; with
        ``allocation="cost"`` channels are ranked by score per predicted second saved.

        Raises:
            PruningError: the first predicted goal cannot be reached (later, unreachable refinements
                stop the loop and the best measured candidate is kept).
        """
        goal = options.target_latency
        if goal is None:
            raise ValueError("LatencyTarget.select needs options.target_latency")
        predict = self.predictor(model)
        sample = first_sample(self.x)

        def pick(aim: float) -> PrunePlan:
            # the prediction needs to land no closer than the measurement can tell
            opts = dataclasses.replace(options, target_latency=min(max(aim, 0.0), 0.95),
                                       tolerance=max(options.tolerance, self.options.tolerance))
            return select(model, sample, groups, scores, opts, base=base, counter=counter, latency=predict,
                          **select_kwargs)

        if not final:
            return pick(goal)
        aim, best = goal, None
        for it in range(self.options.max_iters):
            try:
                plan = pick(aim)
            except PruningError:
                if best is None:
                    raise
                logger.info("latency refinement %d: aim %.4f is out of reach; keeping the best so far", it, aim)
                break
            candidate = apply_plan(copy.deepcopy(model), groups, plan)
            row = {"iteration": it, "aim": aim, "predicted": predict(plan_cuts(groups, plan)),
                   **self.measure(candidate)}
            self.iterations.append(row)
            logger.info("latency iteration %d: aim %.4f, predicted %.4f, measured %.4f (goal %.4f)",
                        it, aim, row["predicted"], row["measured"], goal)
            if best is None or abs(row["measured"] - goal) < abs(best[1]["measured"] - goal):
                best = (plan, row)
            if abs(row["measured"] - goal) <= self.options.tolerance:
                break
            aim += goal - row["measured"]
        plan, self.chosen = best  # max_iters >= 1, and the first iteration either ran or raised
        return plan

    def record(self) -> dict[str, Any]:
        """What was measured and chosen: target, table (path, reused, base), iterations, final
        predicted and measured reduction, ``met`` (within tolerance), ``round_to`` evidence."""
        chosen = getattr(self, "chosen", None)
        return {
            "target": self.target, "tolerance": self.options.tolerance, "device": self.table.meta["device"],
            "batch_size": self.table.meta["batch_size"], "threads": self.table.meta["threads"],
            "table": {"path": self.table_path, "reused": self.reused, "base_ms": 1e3 * self.table.base_seconds,
                      "tabled_ms": 1e3 * self.table.layers_seconds(), "layers": len(self.table.layers),
                      "groups": len(self.table.groups), "rest": self.table.meta.get("rest")},
            "iterations": self.iterations,
            "predicted": None if chosen is None else chosen["predicted"],
            "measured": None if chosen is None else chosen["measured"],
            "met": None if chosen is None or self.target is None
            else abs(chosen["measured"] - self.target) <= self.options.tolerance,
            "round_to": self.round_to_evidence,
            "options": dataclasses.asdict(self.options),
        }
