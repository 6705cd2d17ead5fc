"""Per-group sensitivity curves: the validation metric with one group alone pruned to a grid of ratios.

For every candidate group ``g`` (prunable, not ignored) and every grid ratio ``r`` (``k / (points + 1)``,
``k = 1..points``: 0.1 .. 0.9 by default), the group's ``n = round(r * W_g)`` lowest-scored channels
(the criterion's ranking; ``1 <= n <= W_g - 1``, ``W_g`` its current width) are masked
(:func:`~filterprune.graph.masking.masked`: the model behaves exactly as if they were removed), the
model is measured (``measure(model) -> {"loss", "acc", "images"}``), and the mask is undone. The
drop of the chosen metric is ``loss - loss_0`` (``metric="loss"``) or ``acc_0 - acc`` (``"acc"``,
percentage points), ``_0`` the unpruned model's value. This is the per-layer sensitivity analysis of
Li et al. 2017 (arXiv:1608.08710, Sec. 3.1, Fig. 2) and AIMET's/ModelOpt's greedy per-layer ratios,
measured per channel *group* (coupled channels are removed together).

**Monotone fit.** Measured drops are noisy (a small evaluation set; pruning a little can even help), so
each curve is replaced by its least-squares non-decreasing fit through ``(0, 0)``: negative drops are
clipped to 0, then isotonic regression (scikit-learn's pool-adjacent-violators,
``sklearn.isotonic.IsotonicRegression``) over ``(0, 0), (r_1, d_1), ...``. Between points the curve is
linear; beyond the last grid ratio it continues with the larger of its last segment's slope and its
mean slope ``d_last / r_last`` (plus 1e-9, so deeper cuts always predict more loss).

**Allocation** (:mod:`filterprune.selection.allocation`, ``"sensitivity"``): every group is pruned as
far as its predicted drop stays within one threshold ``t``; ``t`` is found by bisection so that the
target is met (the least total predicted loss for an equal-drop rule).

**Cache** (``sensitivity.json``, written after every group with an atomic replace, so a killed run keeps
the groups it finished and a resumed one measures only the others)::

    {"format": "filterprune.sensitivity/1",
     "metric": "loss",                       # the metric the allocation uses: "loss" or "acc"
     "grid": [0.1, ..., 0.9],                # requested ratios
     "base": {"loss": 0.31, "acc": 91.2, "images": 1024},
     "groups": {"layer1.0.conv1": {          # group id (its root layer)
         "width": 16,                        # current channels W_g
         "order": [5, 2, ...],               # channels, lowest score first (the removal order)
         "removed": [2, 3, ...],             # n at each measured point
         "ratios": [0.125, 0.1875, ...],     # n / W_g (actual fractions removed)
         "loss": [...], "acc": [...],        # measured values at each point
         "drop": [...], "monotone": [...],   # raw drop of the metric, and its monotone fit
         "removed_fraction": [0.0, ...],     # [0, *ratios] and [base acc, *acc]: the accuracy curve
         "accuracy": [91.2, ...],            #   from the unpruned point, as filterprune plot reads it
         "images": 9216, "seconds": 1.7}},   # what measuring this group cost
     "cost": {"images": ..., "passes": ..., "seconds": ..., "groups_measured": ..., "groups_reused": ...}}

A cached group is reused only if its ``width`` and ``order`` equal the current ones (the same model and
scores); ``cost`` counts what *this* call measured (forward images and evaluation passes, wall time).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..graph.groups import ChannelGroup
from ..graph.masking import masked
from ..types import GroupId, PathLike, Scores
from ..utils.io import atomic_write_json
from .family import _candidates
from .options import Baseline, SelectOptions

logger = logging.getLogger(__name__)

FORMAT = "filterprune.sensitivity/1"
METRICS = ("loss", "acc")
#: ``measure(model) -> {"loss": mean cross-entropy, "acc": top-1 percent, "images": images forwarded}``
Measure = Callable[[nn.Module], Mapping[str, float]]


def ratio_grid(points: int) -> list[float]:
    """``points`` evenly spaced ratios in (0, 1): ``k / (points + 1)``; 9 gives 0.1 .. 0.9."""
    if not isinstance(points, int) or points < 1:
        raise ValueError(f"sensitivity points must be a positive integer, got {points!r}")
    return [round(k / (points + 1), 6) for k in range(1, points + 1)]


def monotone_fit(ratios: Sequence[float], drops: Sequence[float]) -> list[float]:
    """The least-squares non-decreasing fit of ``drops`` (clipped at 0) over ``ratios``, through (0, 0).

    >>> monotone_fit([0.25, 0.5, 0.75], [0.2, 0.1, 0.6])
    [0.15, 0.15, 0.6]
    """
    from sklearn.isotonic import IsotonicRegression

    if not ratios:
        return []
    y = [0.0] + [max(0.0, float(d)) for d in drops]
    fit = IsotonicRegression(increasing=True).fit_transform([0.0, *map(float, ratios)], y)
    return [round(float(v), 12) for v in fit[1:]]


@dataclass
class SensitivityCurves:
    """Measured curves of a model (module docstring for the fields and the JSON format)."""

    metric: str = "loss"
    grid: list[float] = field(default_factory=lambda: ratio_grid(9))
    base: dict[str, float] = field(default_factory=dict)
    groups: dict[GroupId, dict[str, Any]] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)

    def drop(self, gid: GroupId, ratio: float) -> float:
        """Predicted drop of the metric with group ``gid`` alone pruned by ``ratio`` of its width.

        Linear between the monotone fit's points (and ``(0, 0)``), extrapolated beyond the last one
        (module docstring). Raises ``KeyError`` for a group without a curve.
        """
        entry = self.groups[gid]
        xs, ys = [0.0, *entry["ratios"]], [0.0, *entry["monotone"]]
        if ratio <= xs[-1]:
            for i in range(1, len(xs)):
                if ratio <= xs[i]:
                    w = (ratio - xs[i - 1]) / (xs[i] - xs[i - 1])
                    return ys[i - 1] + w * (ys[i] - ys[i - 1])
            return ys[-1]  # only the (0, 0) point
        last = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        slope = max(last, ys[-1] / xs[-1] if xs[-1] > 0 else 0.0) + 1e-9
        return ys[-1] + slope * (ratio - xs[-1])

    def ratios_at(self, threshold: float) -> dict[GroupId, float]:
        """Per group, the largest measured ratio whose predicted drop is at most ``threshold``."""
        return {gid: max([0.0, *(r for r, d in zip(e["ratios"], e["monotone"], strict=True) if d <= threshold)])
                for gid, e in self.groups.items()}

    def to_dict(self) -> dict[str, Any]:
        """The ``sensitivity.json`` content."""
        return {"format": FORMAT, "metric": self.metric, "grid": self.grid, "base": self.base,
                "groups": self.groups, "cost": self.cost}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityCurves:
        """Read ``sensitivity.json`` content; the metric's monotone fit is recomputed from the values.

        Raises:
            ValueError: not this format, or a group entry missing fields.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        curves = cls(metric=data.get("metric", "loss"), grid=list(data.get("grid", [])),
                     base=dict(data.get("base", {})), cost=dict(data.get("cost", {})))
        if curves.metric not in METRICS:
            raise ValueError(f"sensitivity metric must be loss or acc, got {curves.metric!r}")
        for gid, e in dict(data.get("groups", {})).items():
            missing = {"width", "order", "removed", "ratios", "loss", "acc"} - set(e)
            if missing:
                raise ValueError(f"sensitivity entry {gid!r} lacks {', '.join(sorted(missing))}")
            curves.groups[gid] = curves._entry(dict(e))
        return curves

    @classmethod
    def load(cls, path: PathLike) -> SensitivityCurves:
        """Read a ``sensitivity.json`` (:meth:`from_dict`)."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def _entry(self, e: dict[str, Any]) -> dict[str, Any]:
        """``e`` with ``drop`` and ``monotone`` (re)computed for :attr:`metric` from ``base``."""
        values = e[self.metric]
        b = float(self.base[self.metric])
        e["drop"] = [float(v) - b if self.metric == "loss" else b - float(v) for v in values]
        e["monotone"] = monotone_fit(e["ratios"], e["drop"])
        # the accuracy curve from (0, base) in the layout ``filterprune plot`` reads (workflows.records)
        e["removed_fraction"] = [0.0, *e["ratios"]]
        e["accuracy"] = [float(self.base["acc"]), *map(float, e["acc"])]
        return e


def measure_curves(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    scores: Scores,
    measure: Measure,
    *,
    points: int = 9,
    metric: str = "loss",
    cache: PathLike | None = None,
    ignored_layers: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> SensitivityCurves:
    """Measure (or reuse from ``cache``) the curve of every prunable, not ignored group.

    Args:
        model: the model ``groups`` were traced from; left as it was (masks are undone).
        groups: its channel groups.
        scores: the criterion's scores (higher = keep): the order channels are masked in.
        measure: ``measure(model) -> {"loss", "acc", "images"}`` on a fixed validation set.
        points: how many ratios (:func:`ratio_grid`).
        metric: ``"loss"`` (cross-entropy increase) or ``"acc"`` (accuracy points lost).
        cache: ``sensitivity.json`` to resume from and write after every group (module docstring).
        ignored_layers: fnmatch patterns of layers whose groups are left out (as in selection).
        progress: called with each group id before it is measured.

    Returns:
        The curves; ``cost`` holds what this call measured (images, passes, seconds).

    Raises:
        ValueError: bad ``metric``/``points``, scores missing or malformed, or a cache that is not a
            sensitivity file.
    """
    if metric not in METRICS:
        raise ValueError(f"sensitivity metric must be loss or acc, got {metric!r}")
    grid = ratio_grid(points)
    opts = SelectOptions(ratio=0.0, ignored_layers=tuple(ignored_layers))
    cands = _candidates(groups, scores, opts, Baseline(0, 0))
    old = SensitivityCurves.load(cache) if cache is not None and Path(cache).is_file() else None
    start, images, passes, reused = time.perf_counter(), 0, 0, 0

    def run() -> dict[str, float]:
        nonlocal images, passes
        with torch.no_grad():
            out = dict(measure(model))
        images, passes = images + int(out.get("images", 0)), passes + 1
        return {"loss": float(out["loss"]), "acc": float(out["acc"]), "images": int(out.get("images", 0))}

    usable = old is not None and old.grid == grid and bool(old.base)
    curves = SensitivityCurves(metric=metric, grid=grid, base=old.base if usable else run())

    def save() -> None:
        curves.cost = {"images": images, "passes": passes, "seconds": round(time.perf_counter() - start, 3),
                       "groups_measured": len(curves.groups) - reused, "groups_reused": reused}
        if cache is not None:
            atomic_write_json(cache, curves.to_dict())

    save()
    for g, order, _, _ in cands:
        prev = old.groups.get(g.id) if usable else None
        if prev is not None and prev["width"] == g.size and list(prev["order"]) == list(order):
            curves.groups[g.id] = curves._entry(prev)
            reused += 1
            continue
        if progress is not None:
            progress(g.id)
        t0, seen = time.perf_counter(), images
        counts = sorted({min(g.size - 1, max(1, round(r * g.size))) for r in grid}) if g.size > 1 else []
        values = []
        for n in counts:
            with masked(model, g, order[:n]):
                values.append(run())
        curves.groups[g.id] = curves._entry({
            "width": g.size, "order": list(order), "removed": counts, "ratios": [n / g.size for n in counts],
            "loss": [v["loss"] for v in values], "acc": [v["acc"] for v in values],
            "images": images - seen, "seconds": round(time.perf_counter() - t0, 3)})
        save()
    save()
    logger.info("sensitivity: %d groups measured, %d reused; %d passes, %d images, %.1f s",
                curves.cost["groups_measured"], reused, passes, images, curves.cost["seconds"])
    return curves


def loss_and_accuracy(batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Measure:
    """A :data:`Measure` over fixed ``(x, y)`` batches: mean cross-entropy, top-1 percent, images.

    Written here rather than reusing ``filterprune.train.evaluate`` because selection sits below the
    training layer (it is what the API's ``prune(allocation="sensitivity")`` uses; the prune workflow
    passes ``train.evaluate`` on its validation subset instead).
    """
    batches = list(batches)
    if not batches:
        raise ValueError("sensitivity needs at least one (x, y) batch")

    def measure(model: nn.Module) -> dict[str, float]:
        from ..utils.modes import evaluating

        loss, correct, n = 0.0, 0, 0
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with evaluating(model), torch.no_grad():
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                logits = model(x).float()
                loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                n += int(y.numel())
        return {"loss": loss / n, "acc": 100.0 * correct / n, "images": n}

    return measure

