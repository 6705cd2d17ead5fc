"""The evaluation engine behind CAR/RAR: the network's statistics with one channel masked, for many channels.

:class:`CarEngine` answers "evaluate the model on the evaluation set with channel c of group g masked"
for a list of (group, channel) requests, two ways that give the same numbers:

* **naive** (the reference): ``with masked(model, group, [c])`` (the engine's reversible masks), one
  full forward over every batch per channel;
* **fast**: one forward of the whole network per call (:class:`~._suffix.PrefixRun`) caches, per group,
  the activations entering the part of the network the group's masks change; then every channel is
  evaluated by running only that suffix, ``batch_channels`` channels per forward
  (:meth:`~._suffix.SuffixGraph.run_suffix`). Groups are visited in graph order so that the prefix run
  keeps only live activations. With ``cache=True`` a group's cached activations are kept for the next
  call: greedy pruning within one group re-scores without re-running the prefix (masking a group's
  channels changes only its suffix).

Both paths feed the model outputs to the same statistics (:func:`batch_stats`): per evaluated network,
one float64 row ``[correct, loss sum, correct per class...]`` for classification or ``[sum of squared
errors]`` for regression. Rows of channels a process does not own (``shard=(rank, world)``) stay zero,
so summing the rows of all processes gathers them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..graph.groups import ChannelGroup
from ..graph.masking import masked
from ..utils.progress import progress
from ._suffix import FastPathUnavailable, PrefixRun, SuffixGraph, SuffixPlan
from .base import ScoringError

logger = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
TASKS = ("classification", "regression")


def batch_stats(task: str, out: Tensor, y: Tensor, loss_fn: LossFn, num_classes: int) -> Tensor:
    """Statistics of ``B`` evaluated networks on one batch: ``out`` is ``(B, n, ...)``, ``y`` ``(n, ...)``.

    Returns:
        ``(B, 2 + num_classes)`` float64 ``[correct, loss sum, correct per class]`` for classification
        (``loss sum = n * loss_fn(out[b], y)``), ``(B, 1)`` ``[sum of squared errors]`` for regression.
    """
    copies, n = out.shape[0], out.shape[1]
    if task == "regression":
        pred, target = out.reshape(copies, n, -1), y.reshape(1, n, -1)
        if pred.shape[2] != target.shape[2]:
            raise ScoringError(f"RAR: the model gives {pred.shape[2]} outputs per sample, the targets "
                               f"{target.shape[2]}; a regression metric needs them to match")
        err = pred.double() - target.double()
        return err.square().sum((1, 2)).unsqueeze(1).cpu()
    hit = out.argmax(-1) == y  # (B, n)
    per_class = torch.zeros(copies, num_classes, dtype=torch.float64, device=out.device)
    per_class.index_add_(1, y, hit.double())
    loss = torch.stack([loss_fn(out[b], y).detach().double() * n for b in range(copies)])
    return torch.cat([hit.sum(1, keepdim=True).double(), loss.unsqueeze(1), per_class], 1).cpu()


@dataclass
class EvalStats:
    """Raw statistics: ``base`` ``(S,)`` for the unmasked model, ``rows`` ``(R, S)`` one per request."""

    base: Tensor
    rows: Tensor


class CarEngine:
    """Evaluate a model with single channels masked, naively or by suffix replay (module docstring).

    Args:
        model: the network; it is run in eval mode and returned unchanged.
        groups: its channel groups (as traced).
        batches: the evaluation set, already on the model's device.
        task: ``"classification"`` or ``"regression"``.
        loss_fn: ``loss_fn(outputs, targets) -> mean loss`` (classification tie-break).
        fast: replay suffixes; if the model cannot be replayed, fall back to naive with a warning.
        max_rows: rows per suffix forward (``batch_channels = max(1, max_rows // batch size)``).
        num_classes: classifier width; read from the model output when ``None``.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch], *,
                 task: str = "classification", loss_fn: LossFn | None = None, fast: bool = True,
                 max_rows: int = 2048, num_classes: int | None = None) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not batches:
            raise ValueError("the evaluation set is empty")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.model, self.groups, self.batches = model, list(groups), list(batches)
        self.task, self.max_rows = task, max_rows
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.num_classes = num_classes
        self.graph: SuffixGraph | None = None
        self.plans: dict[str, SuffixPlan] = {}
        self._cache: dict[str, list[dict]] = {}
        if fast:
            try:
                with torch.no_grad():
                    self.graph = SuffixGraph(model, self.groups, self.batches[0][0])
            except FastPathUnavailable as e:
                logger.warning("CAR: fast path unavailable, one full evaluation per channel: %s", e)

    @property
    def fast(self) -> bool:
        return self.graph is not None

    @property
    def num_images(self) -> int:
        return sum(int(y.shape[0]) for _, y in self.batches)

    def plan(self, group: ChannelGroup) -> SuffixPlan:
        """The suffix plan of ``group`` (fast path only)."""
        if self.graph is None:
            raise FastPathUnavailable("no traced graph")
        if group.id not in self.plans:
            self.plans[group.id] = self.graph.plan(group)
        return self.plans[group.id]

    def _stats(self, out: Tensor, y: Tensor, copies: int) -> Tensor:
        if self.num_classes is None:
            self.num_classes = int(out.shape[-1]) if self.task == "classification" else 0
        return batch_stats(self.task, out.reshape(copies, -1, *out.shape[1:]), y, self.loss_fn, self.num_classes)

    def _width(self) -> int:
        return 1 if self.task == "regression" else 2 + int(self.num_classes or 0)

    def evaluate(self, requests: Sequence[tuple[ChannelGroup, int]], *, shard: tuple[int, int] = (0, 1),
                 cache: bool = False, desc: str = "CAR") -> EvalStats:
        """Statistics of the unmasked model and of the model with each requested channel masked.

        Args:
            requests: ``(group, channel)`` pairs; each becomes one row.
            shard: ``(rank, world)``: this process evaluates requests ``i`` with ``i % world == rank``;
                the other rows stay zero.
            cache: keep (and reuse) the fast path's cached activations of the requested groups; valid
                as long as only those groups' masks change in between.
            desc: progress-bar label.
        """
        rank, world = shard
        mine = [i for i in range(len(requests)) if i % world == rank]
        with torch.no_grad():
            if self.graph is None:
                base, rows = self._naive(requests, mine, desc)
            else:
                base, rows = self._fast(requests, mine, cache, desc)
        full = torch.zeros(len(requests), self._width(), dtype=torch.float64)
        for i, row in rows.items():
            full[i] = row
        return EvalStats(base, full)

    # ---- naive ----------------------------------------------------------------------------------

    def _forward_all(self) -> Tensor:
        total = None
        for x, y in self.batches:
            s = self._stats(self.model(x), y, 1)[0]
            total = s if total is None else total + s
        return total

    def _naive(self, requests, mine, desc) -> tuple[Tensor, dict[int, Tensor]]:
        base = self._forward_all()
        rows = {}
        for i in progress(mine, total=len(mine), desc=desc, unit="filter"):
            group, c = requests[i]
            with masked(self.model, group, [c]):
                rows[i] = self._forward_all()
        return base, rows

    # ---- fast -----------------------------------------------------------------------------------

    def _fast(self, requests, mine, cache, desc) -> tuple[Tensor, dict[int, Tensor]]:
        graph = self.graph
        by_group: dict[str, list[int]] = {}
        groups = {}
        for i in mine:
            g = requests[i][0]
            groups[g.id] = g
            by_group.setdefault(g.id, []).append(i)
        order = sorted(by_group, key=lambda gid: self.plan(groups[gid]).last)
        need_prefix = [gid for gid in order if gid not in self._cache and self.plan(groups[gid]).reaches_output]
        prefix = None
        base = None
        if need_prefix or not order:
            keep = {f for gid in need_prefix for f in self.plans[gid].frontier}
            prefix = PrefixRun(graph, [x for x, _ in self.batches], keep)
        pending = list(need_prefix)
        rows: dict[int, Tensor] = {}
        n_batch = max(int(x.shape[0]) for x, _ in self.batches)
        width = max(1, self.max_rows // n_batch)

        def work() -> Iterator[int]:
            for gid in order:
                yield from by_group[gid]

        current, todo = None, []
        for i in progress(work(), total=len(mine), desc=desc, unit="filter"):
            gid = requests[i][0].id
            if current is not None and (gid != current or len(todo) == width):
                self._run_batch(requests, todo, rows)
                todo = []
            if gid != current:
                if current is not None and not cache:
                    self._cache.pop(current, None)  # done with it: free its activations
                current = gid
                if gid in pending:
                    plan = self.plans[gid]
                    prefix.advance(plan.last)
                    self._cache[gid] = prefix.values(plan.frontier)
                    pending.remove(gid)
                    prefix.release({f for p in pending for f in self.plans[p].frontier})
            todo.append(i)
        if todo:
            self._run_batch(requests, todo, rows)
        if prefix is not None:
            prefix.release(set())
            base = sum(self._stats(out, y, 1)[0] for out, (_, y) in zip(prefix.output(), self.batches, strict=True))
        elif order:
            base = self._suffix_stats(groups[order[0]], [None])[0]
        if not cache:
            self._cache.clear()
        return base, rows

    def _run_batch(self, requests, todo: list[int], rows: dict[int, Tensor]) -> None:
        group = requests[todo[0]][0]
        stats = self._suffix_stats(group, [requests[i][1] for i in todo])
        for i, s in zip(todo, stats, strict=True):
            rows[i] = s

    def _suffix_stats(self, group: ChannelGroup, channels: list[int | None]) -> Tensor:
        plan = self.plan(group)
        if not plan.reaches_output:  # no mask of this group changes the output
            return self._forward_all().unsqueeze(0).repeat(len(channels), 1)
        if group.id not in self._cache:  # baseline asked for a group never cached: run its prefix
            prefix = PrefixRun(self.graph, [x for x, _ in self.batches], set(plan.frontier))
            prefix.advance(plan.last)
            self._cache[group.id] = prefix.values(plan.frontier)
        total = None
        for frontier, (_, y) in zip(self._cache[group.id], self.batches, strict=True):
            out = self.graph.run_suffix(plan, frontier, channels)
            s = self._stats(out, y, len(channels))
            total = s if total is None else total + s
        return total

    def release(self) -> None:
        """Drop every cached activation."""
        self._cache.clear()
