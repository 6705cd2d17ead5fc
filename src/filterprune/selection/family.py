"""The nested family of plans selection searches: per candidate group, the channel order (lowest score
first) and the allowed removal counts; the *units* (one group's step from one allowed count to the next)
in the order an allocation gives them; the analytic MACs/params of any counts; the solver that finds
the counts meeting a target.

A unit takes a group from one allowed removal count to the next (with ``round_to`` r, counts that
leave a multiple of r channels). The allocation (:mod:`filterprune.selection.allocation`) gives every
unit a sort key; within a group the keys must not decrease, so every prefix of the sorted sequence is a
valid plan ("the group's first n channels").
"""

from __future__ import annotations

import fnmatch
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..graph.groups import PrunePlan
from .cost import CostModel, LatencyFn
from .options import Baseline, SelectOptions

_GRID_BUDGET = 20_000  # evaluations per round of the two-group search in _Family._exchange


def _normalized(s: torch.Tensor, how: str) -> torch.Tensor:
    s = s.detach().double().cpu()
    if how == "none":
        return s
    denom = {"mean": s.abs().mean(), "max": s.abs().max(), "l2": s.norm()}[how]
    return s / denom if float(denom) > 0 else s


def _candidates(groups, scores, opts: SelectOptions, base: Baseline):
    """(group, channel order lowest score first, max removable) for each group selection may cut."""
    out = []
    for g in groups:
        if not g.prunable or any(fnmatch.fnmatch(m.module, pat) for pat in opts.ignored_layers
                                 for m in g.members if m.kind == "out"):
            continue
        s = scores.get(g.id)
        if s is None:
            raise ValueError(f"no scores for group {g.id}")
        s = torch.as_tensor(s)
        if s.shape != (g.size,):
            raise ValueError(f"scores for group {g.id} have shape {tuple(s.shape)}, expected ({g.size},)")
        if not torch.isfinite(s).all():
            raise ValueError(f"scores for group {g.id} are not all finite")
        base_size = base.channels.get(g.id, g.size)
        already = base_size - g.size
        limit = min(g.size - opts.min_channels, math.floor(opts.max_ratio * base_size + 1e-9) - already)
        order = sorted(range(g.size), key=lambda c: (float(s[c]), c))
        out.append((g, order, max(0, limit), _normalized(s, opts.normalize)))
    return out


class _Family:
    """Plans as removal counts per candidate group, grown one *unit* at a time along one sequence.

    ``steps[gi]`` are group ``gi``'s allowed removal counts, ascending; :meth:`order` sorts the units
    of all groups by an allocation's key (module docstring). Within a group, channels go in score
    order, so every prefix is a valid plan.
    """

    def __init__(self, cands, opts: SelectOptions, base: Baseline, cost: CostModel | None,
                 latency: LatencyFn | None = None) -> None:
        self.cands, self.base, self.cost, self.latency = cands, base, cost, latency
        self.steps: list[list[int]] = [
            [n for n in range(1, limit + 1) if opts.round_to == 1 or (g.size - n) % opts.round_to == 0]
            for g, _, limit, _ in cands]
        self.units: list[tuple[int, int]] = []
        self.base_channels = sum(base.channels.get(g.id, g.size) for g, *_ in cands)
        # prefix[gi][(module, kind)][n]: member indices removed by the group's first n channels
        self.prefix = []
        for g, order, _, _ in cands:
            per = {}
            for m in g.members:
                if cost is not None and m.module in cost.modules:
                    lens = [0] + [len(m.idxs[c]) for c in order]
                    per[(m.module, m.kind)] = torch.tensor(lens).cumsum(0).tolist()
            self.prefix.append(per)

    def order(self, key: Callable[[int, int], Any]) -> None:
        """Sort the units ``(gi, n)`` by ``key(gi, n)`` (ties: group index, then count)."""
        seq = sorted((key(gi, n), gi, n) for gi, steps in enumerate(self.steps) for n in steps)
        self.units = [(gi, n) for _, gi, n in seq]

    def counts(self, k: int) -> list[int]:
        """Channels removed per candidate group by the first ``k`` units."""
        n = [0] * len(self.cands)
        for gi, ni in self.units[:k]:
            n[gi] = ni
        return n

    def plan(self, counts: Sequence[int]) -> PrunePlan:
        return PrunePlan({g.id: sorted(order[:ni]) for (g, order, _, _), ni in zip(self.cands, counts, strict=True) if ni})

    def analytic(self, counts: Sequence[int], now: tuple[int, int]) -> dict[str, float]:
        """Removed fractions (of the baseline) of channels, MACs and params under ``counts``."""
        removed_ch = sum(self.base.channels.get(g.id, g.size) - g.size + ni for (g, *_), ni in zip(self.cands, counts, strict=True))
        out = {"ratio": removed_ch / max(1, self.base_channels)}
        if self.cost is not None:
            cut: dict[tuple[str, str], int] = defaultdict(int)
            for per, ni in zip(self.prefix, counts, strict=True):
                for key, prefix in per.items():
                    cut[key] += prefix[ni]
            d_macs = d_params = 0.0
            for name in {name for name, _ in cut}:
                m0, p0 = self.cost.cost(name)
                m1, p1 = self.cost.cost(name, cut.get((name, "out"), 0), cut.get((name, "in"), 0))
                d_macs, d_params = d_macs + m0 - m1, d_params + p0 - p1
            out["target_macs"] = 1 - (now[0] - d_macs) / max(1, self.base.macs)
            out["target_params"] = 1 - (now[1] - d_params) / max(1, self.base.params)
            if self.latency is not None:
                out["target_latency"] = float(self.latency(dict(cut)))
        return out

    def solve(self, f: Callable[[Sequence[int]], float], target: float, tol: float) -> list[int]:
        """Counts whose ``f`` is within ``tol`` of ``target`` if this family has them, else the closest.

        1. Bisection finds the shortest prefix of the sequence reaching the target.
        2. If its last unit overshoots, the following units are tried in order, skipping (and freezing
           the group of) any that overshoot.
        3. If that still falls short (small models, coarse ``round_to``), one unit of any group is
           added, or one added and another group's last one taken back, whichever lands within
           ``tol`` at the lowest score.
        """
        lo, hi = 0, len(self.units)
        while lo < hi:
            mid = (lo + hi) // 2
            if f(self.counts(mid)) >= target:
                hi = mid
            else:
                lo = mid + 1
        tried = [self.counts(k) for k in {max(0, lo - 1), lo}]
        if lo == 0 or any(abs(f(c) - target) <= tol for c in tried):
            return min(tried, key=lambda c: abs(f(c) - target))
        counts, frozen = self.counts(lo - 1), set()
        for gi, ni in self.units[lo - 1:]:
            if gi in frozen or ni <= counts[gi]:
                continue
            trial = list(counts)
            trial[gi] = ni
            value = f(trial)
            if value > target + tol:
                frozen.add(gi)
                continue
            counts = trial
            if value >= target - tol:
                return counts
        tried.append(counts)
        fixed = self._exchange(counts, f, target, tol)
        return fixed if fixed is not None else min(tried, key=lambda c: abs(f(c) - target))

    def _exchange(self, counts, f, target, tol, max_rounds: int = 20) -> list[int] | None:
        """Local search for counts within ``tol`` of ``target``, for coarse families.

        Moves: set one group to any of its allowed counts; and set two groups to any pair of counts
        (small models) or move one group a unit up and another a unit down (large ones). Among states within ``tol`` the cheapest wins, cost being the summed sequence
        positions of the units taken (so low-score channels are still preferred); otherwise the
        move closest to the target is taken and the search goes on.
        """
        steps: dict[int, list[int]] = defaultdict(lambda: [0])  # allowed counts per group, ascending
        cum: dict[int, list[int]] = defaultdict(lambda: [0])  # summed sequence positions up to each
        for pos, (gi, ni) in sorted(enumerate(self.units), key=lambda u: u[1][1]):
            steps[gi].append(ni)
            cum[gi].append(cum[gi][-1] + pos)

        def cost(c):
            return sum(cum[gi][steps[gi].index(c[gi])] for gi in steps)

        counts = list(counts)
        for _ in range(max_rounds):
            now = abs(f(counts) - target)
            trials = []
            for gi, allowed in steps.items():
                for ni in allowed:
                    if ni != counts[gi]:
                        trials.append(counts[:gi] + [ni] + counts[gi + 1:])
            pairs = [(a, b) for a in steps for b in steps if a < b]
            if sum(len(steps[a]) * len(steps[b]) for a, b in pairs) <= _GRID_BUDGET:
                for a, b in pairs:  # few, small groups: every combination of two groups' counts
                    for na in steps[a]:
                        for nb in steps[b]:
                            trial = list(counts)
                            trial[a], trial[b] = na, nb
                            trials.append(trial)
            else:
                for gu, su in steps.items():
                    up = su.index(counts[gu]) + 1
                    for gd, sd in steps.items():
                        down = sd.index(counts[gd]) - 1
                        if gu != gd and up < len(su) and down >= 0:
                            trial = list(counts)
                            trial[gu], trial[gd] = su[up], sd[down]
                            trials.append(trial)
            scored = [(abs(f(t) - target), t) for t in trials]
            landing = [t for d, t in scored if d <= tol]
            if landing:
                return min(landing, key=cost)
            best = min(scored, key=lambda m: m[0], default=None)
            if best is None or best[0] >= now:
                return None
            counts = best[1]
        return None
