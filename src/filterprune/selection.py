"""From scores to a :class:`PrunePlan`: which channels to remove to reach a target.

Targets (exactly one), each a fraction of the *baseline* (the model before the first pruning step):

* ``ratio``: fraction of the prunable channels removed;
* ``target_macs``: fraction of MACs removed; ``target_params``: fraction of parameters removed.

Ranking is global by default: channels of all groups in one list, lowest (per-group normalised)
score first. With ``global_ranking=False`` every group removes the same fraction of its channels.
Either way the candidates form a nested family "remove the first k"; ``k`` is found by bisection on
an analytic MACs/params model built from the member shapes (one forward pass for spatial sizes),
then confirmed with the metrics ``count`` on a pruned copy, and bisected on real counts if the two
disagree. The result must land within ``tolerance`` (absolute) of the request, or
:class:`PruningError` says what is reachable.

>>> import torch
>>> from torch import nn
>>> from filterprune.graph.trace import trace_groups
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
>>> x = torch.randn(1, 3, 8, 8)
>>> groups = trace_groups(model, x)
>>> plan = select(model, x, groups, {"0": torch.arange(8.0)}, SelectOptions(ratio=0.5))
>>> plan.prune_idxs
{'0': [0, 1, 2, 3]}
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import PruningError
from .graph.groups import ChannelGroup, PrunePlan
from .graph.surgery import apply_plan, is_depthwise
from .graph.trace import Inputs, first_sample, forward
from .types import NORM_LAYERS, GroupId, Scores
from .utils.modes import evaluating

logger = logging.getLogger(__name__)

Counter = Callable[[nn.Module, Inputs], tuple[int, int]]
NORMALIZERS = ("mean", "max", "l2", "none")
_GRID_BUDGET = 20_000  # evaluations per round of the two-group search in _Family._exchange


@dataclass(frozen=True)
class SelectOptions:
    """What to remove. Exactly one of ``ratio``, ``target_macs``, ``target_params``.

    Attributes:
        ratio: fraction of prunable channels to remove, in [0, 1).
        target_macs: fraction of MACs to remove, in [0, 1).
        target_params: fraction of parameters to remove, in [0, 1).
        global_ranking: rank all channels together; ``False`` removes the same fraction per group.
        normalize: per-group score normalisation before global ranking: mean, max, l2 or none.
        min_channels: every group keeps at least this many channels.
        round_to: kept channel counts are multiples of this (or the group's full width).
        max_ratio: at most this fraction of a group's baseline channels is removed.
        ignored_layers: fnmatch patterns of layer names whose groups are left whole.
        tolerance: how far (absolute) the achieved fraction may be from the request.
    """

    ratio: float | None = None
    target_macs: float | None = None
    target_params: float | None = None
    global_ranking: bool = True
    normalize: str = "mean"
    min_channels: int = 1
    round_to: int = 1
    max_ratio: float = 1.0
    ignored_layers: tuple[str, ...] = ()
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        given = {k: v for k, v in self.targets().items() if v is not None}
        if len(given) != 1:
            raise ValueError(f"give exactly one of ratio, target_macs, target_params (got {sorted(given) or 'none'})")
        (name, value), = given.items()
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
        if self.normalize not in NORMALIZERS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZERS)}, got {self.normalize!r}")
        if int(self.min_channels) < 1 or int(self.round_to) < 1:
            raise ValueError("min_channels and round_to must be >= 1")
        if not 0.0 < self.max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be in (0, 1], got {self.max_ratio!r}")

    def targets(self) -> dict[str, float | None]:
        """The three target fields by name (``None`` for the two not given)."""
        return {"ratio": self.ratio, "target_macs": self.target_macs, "target_params": self.target_params}

    @property
    def target(self) -> tuple[str, float]:
        """(name, value) of the one target given."""
        return next((k, v) for k, v in self.targets().items() if v is not None)


@dataclass(frozen=True)
class Baseline:
    """The model before pruning: targets are fractions of these."""

    macs: int
    params: int
    channels: dict[GroupId, int] = field(default_factory=dict)


def _analytic_count(model: nn.Module, example_inputs: Inputs) -> tuple[int, int]:
    return CostModel(model, example_inputs).totals()


def default_counter() -> Counter:
    """The metrics package's ``count``; if it is missing, the analytic count of :class:`CostModel`."""
    try:
        from .metrics import count
    except ImportError:
        return _analytic_count
    return count


class CostModel:
    """MACs and parameters of conv / Linear / norm layers as functions of their channel widths."""

    def __init__(self, model: nn.Module, example_inputs: Inputs) -> None:
        self.modules = {n: m for n, m in model.named_modules()
                        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, *NORM_LAYERS, nn.PReLU))}
        # spatial positions per sample, summed over calls: of the output (of the input for transposed
        # convs, which metrics.count counts by input element)
        self.positions: dict[str, int] = defaultdict(int)

        def hook(name):
            def record(mod, inputs, out):
                t = inputs[0] if getattr(mod, "transposed", False) else out
                width = t.shape[-1] if isinstance(mod, nn.Linear) else t.shape[1]
                self.positions[name] += t.numel() // max(1, t.shape[0] * width)
            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in self.modules.items()]
        try:
            with evaluating(model):
                forward(model, example_inputs)
        finally:
            for h in handles:
                h.remove()

    def cost(self, name: str, cut_out: int = 0, cut_in: int = 0) -> tuple[float, float]:
        """(MACs, params) of module ``name`` with ``cut_out``/``cut_in`` channels removed."""
        m, pos = self.modules[name], self.positions.get(name, 0)
        if isinstance(m, nn.modules.conv._ConvNd):
            k = math.prod(m.kernel_size)
            out, inp = m.out_channels - cut_out, m.in_channels - cut_in
            if is_depthwise(m):
                out = inp = min(out, inp)
            weights = out * inp / m.groups * k
            return weights * pos, weights + (out if m.bias is not None else 0)
        if isinstance(m, nn.Linear):
            out, inp = m.out_features - cut_out, m.in_features - cut_in
            return out * inp * pos, out * inp + (out if m.bias is not None else 0)
        if isinstance(m, nn.PReLU):
            return 0.0, m.num_parameters - (cut_out if m.num_parameters > 1 else 0)
        width = m.num_features - cut_out
        return 0.0, 2 * width if m.weight is not None else 0

    def totals(self) -> tuple[int, int]:
        """(MACs per sample, parameters) of the model as measured, conv/Linear/norm layers only."""
        macs = params = 0.0
        for name in self.modules:
            mc, pc = self.cost(name)
            macs, params = macs + mc, params + pc
        return int(macs), int(params)


def baseline(model: nn.Module, example_inputs: Inputs, groups: Sequence[ChannelGroup],
             counter: Counter | None = None) -> Baseline:
    """Measure the model that targets are relative to."""
    macs, params = (counter or default_counter())(model, example_inputs)
    return Baseline(int(macs), int(params), {g.id: g.size for g in groups})


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

    A unit takes a group from one allowed removal count to the next (with ``round_to`` r, counts
    that leave a multiple of r channels). Global ranking orders the units of all groups by the
    normalised score of the last channel they remove; layerwise orders them by the fraction of its
    baseline width the group would then have lost, so every prefix cuts about the same fraction of
    every group. Within a group, units are in score order, so every prefix is a valid plan.
    """

    def __init__(self, cands, opts: SelectOptions, base: Baseline, cost: CostModel | None) -> None:
        self.cands, self.base, self.cost = cands, base, cost
        seq = []
        for gi, (g, order, limit, norm) in enumerate(cands):
            base_size = base.channels.get(g.id, g.size)
            already = base_size - g.size
            for n in range(1, limit + 1):
                if opts.round_to > 1 and (g.size - n) % opts.round_to:
                    continue
                key = float(norm[order[n - 1]]) if opts.global_ranking else (already + n) / base_size
                seq.append((key, gi, n))
        seq.sort()
        self.units = [(gi, n) for _, gi, n in seq]
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

    Raises:
        PruningError: the target cannot be reached within tolerance under the constraints.
        ValueError: scores are missing or malformed.
    """
    name, target = options.target
    sample = first_sample(example_inputs)  # fractions do not depend on the batch size
    measured = counter is not None or default_counter() is not _analytic_count
    counter = counter or default_counter()
    cost = CostModel(model, sample) if name != "ratio" else None
    now = (counter(model, sample) if measured else cost.totals()) if cost else (0, 0)
    base = base or Baseline(int(now[0]), int(now[1]), {g.id: g.size for g in groups})
    verify = cost is not None and measured
    fam = _Family(_candidates(groups, scores, options, base), options, base, cost)

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
    logger.info("selected %d channels in %d groups: %s %.4f (requested %.4f)",
                plan.num_removed(), len(plan.prune_idxs), name, achieved, target)
    return plan
