"""``car`` / ``car-classwise``: classification-accuracy reduction of the network when one filter is removed.

Provenance: R. Abbasi-Asl, B. Yu, "Structural Compression of Convolutional Neural Networks" (arXiv
1705.07356) and "Interpreting Convolutional Neural Networks Through Compression" (arXiv 1711.02329;
Frontiers in Big Data 4:704182, 2021). No official code is public; nothing was adapted. What the
abstracts state [V-abs]: the importance of a filter is "the classification accuracy reduction (CAR) of
the network after pruning that filter (similarly defined as RAR for regression)"; filters are pruned
"iteratively" (greedy); a class-wise variant ranks, per filter, the classes whose accuracy it carries.

The index, for channel c of a channel group g (a filter, or for a group tied by residual adds the
same channel of every tied layer), on an evaluation set D of N images::

    CAR(g, c) = A(net) - A(net without c)     in accuracy percentage points (multiples of 100/N)
    RAR(g, c) = R(net) - R(net without c)     R = R^2 (metric="r2") or -MSE (metric="neg_mse")
    CAR_k(g, c) = A_k(net) - A_k(net without c)   A_k = accuracy on the images of class k

"Without c" is the engine's reversible mask (``graph.masking``): c is zeroed at its consumers, which
is exactly the network with c physically removed (BN shifts included, unlike zeroing the conv kernel).
Higher CAR = more important = keep; CAR may be negative (removal helps).

Beyond the abstracts [R + I] (see docs/methods.md section 3):

* D is drawn from the *training* data (``ctx.data``): ``eval_images`` images, or ``ctx.num_batches``
  batches. Whether the paper used training or held-out images is unverified.
* Ties. Accuracy moves in steps of 100/N, so many filters tie (often at 0). The score breaks ties by
  the mean cross-entropy increase dL: ``score = CAR + lam * dL`` with ``lam = 0.5 * (100/N) / max|dL|``
  over the scored filters, which orders filters by CAR first and dL second (lexicographic: the dL
  term never spans a full accuracy step). ``car-classwise`` scores ``max_k CAR_k`` (a filter is as
  important as it is to its most dependent class), ties broken by the CAR score the same way. RAR has no
  tie-break (the metric is continuous).
* Greedy removal: :func:`car_prune_layer` removes the k lowest-CAR filters of one layer, re-scores the
  rest with those masked, and repeats (k=1 is the paper's one-at-a-time). Network-wide, the engine's
  ``prune(..., criterion="car", steps=...)`` re-scores every step; ``steps_for_k`` gives the number
  of steps that removes about k filters per step (the CLI's ``k`` option). Both in :mod:`.car_greedy`.
* Speed (:mod:`._car_fast`): one forward of the whole network per scoring call, then only the layers
  after each group's consumers are run, many masked filters per forward; the results equal the naive
  one-evaluation-per-filter reference (``fast=False``). With a ``torch.distributed`` process group the
  filters are sharded over the processes (:mod:`filterprune.distributed`).

>>> from filterprune.criteria import create_criterion
>>> create_criterion("car", eval_images=1000).requires_data
True
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..types import GroupId, PathLike, Scores
from ..utils.modes import evaluating
from ._car_fast import CarEngine, EvalStats
from .base import Criterion, ScoringContext, ScoringError, register_criterion

logger = logging.getLogger(__name__)

__all__ = ["CAR", "METRICS", "SCOPES", "CarResult", "ClasswiseCAR", "car_analysis", "car_records", "collect_eval_set",
           "export_car_records", "stats_to_result"]

METRICS = ("accuracy", "r2", "neg_mse")
SCOPES = ("network", "layer")


def collect_eval_set(ctx: ScoringContext, eval_images: int | None = None) -> list[tuple[Tensor, Tensor]]:
    """The evaluation batches: the first ``eval_images`` images of ``ctx.data`` (the last batch cut),
    or ``ctx.num_batches`` batches when ``eval_images`` is ``None``; on the scoring device.

    Raises:
        ScoringError: no data, or it yields nothing.
    """
    if eval_images is None:
        return list(ctx.batches())
    if eval_images < 1:
        raise ValueError(f"eval_images must be >= 1, got {eval_images}")
    if ctx.data is None:
        raise ScoringError("CAR needs data: pass (x, y) batches as ScoringContext.data")
    device, out, n = ctx.resolved_device(), [], 0
    for x, y in ctx.data:
        take = min(int(y.shape[0]), eval_images - n)
        out.append((x[:take].to(device), y[:take].to(device)))
        n += take
        if n >= eval_images:
            break
    if not out:
        raise ScoringError("ScoringContext.data yielded no batch")
    if n < eval_images:
        logger.warning("CAR: asked for %d evaluation images, the data gave %d", eval_images, n)
    return out


@dataclass
class CarResult:
    """Per-channel CAR (or RAR) of every scored group, with the raw numbers behind it.

    Attributes:
        metric: ``"accuracy"`` (CAR, percentage points), ``"r2"`` or ``"neg_mse"`` (RAR).
        num_images: size of the evaluation set.
        base: the unmasked network's metric (accuracy in percent, R^2, or -MSE).
        base_loss: its mean cross-entropy (classification), else ``None``.
        drop: per group, ``(C,)`` metric(net) - metric(net without channel c): the CAR / RAR.
        delta_loss: per group, ``(C,)`` mean loss increase (classification), else ``None``.
        class_drop: per group, ``(C, K)`` per-class accuracy reduction (classification), else ``None``.
        class_counts: ``(K,)`` evaluation images per class (classification), else ``None``.
        fast: whether the suffix-replay path produced the numbers.
    """

    metric: str
    num_images: int
    base: float
    base_loss: float | None
    drop: dict[GroupId, Tensor]
    delta_loss: dict[GroupId, Tensor] | None
    class_drop: dict[GroupId, Tensor] | None
    class_counts: Tensor | None
    fast: bool

    def scores(self, variant: str = "car") -> Scores:
        """Scores for selection (higher = keep): ``"car"`` or ``"classwise"`` (module docstring)."""
        if self.metric != "accuracy" or self.delta_loss is None:
            return {gid: d.float() for gid, d in self.drop.items()}
        car = _lexicographic(self.drop, self.delta_loss, 100.0 / self.num_images)
        if variant == "car":
            return {gid: s.float() for gid, s in car.items()}
        if variant != "classwise" or self.class_drop is None:
            raise ValueError(f"unknown CAR variant {variant!r}")
        step = 100.0 / float(self.class_counts.max())  # the finest per-class accuracy step
        worst = {gid: cd.max(1).values for gid, cd in self.class_drop.items()}
        return {gid: s.float() for gid, s in _lexicographic(worst, car, step).items()}


def _lexicographic(primary: dict[GroupId, Tensor], secondary: dict[GroupId, Tensor], step: float) -> dict:
    """``primary + lam * secondary`` with ``lam * max|secondary| = step / 2``: order by primary, then secondary."""
    biggest = max((float(s.abs().max()) for s in secondary.values() if s.numel()), default=0.0)
    lam = 0.5 * step / biggest if biggest > 0 else 0.0
    return {gid: primary[gid].double() + lam * secondary[gid].double() for gid in primary}


def car_analysis(ctx: ScoringContext, *, metric: str = "accuracy", eval_images: int | None = None,
                 fast: bool = True, max_rows: int = 2048, distributed: bool | str = "auto",
                 groups: Sequence[GroupId] | None = None) -> CarResult:
    """CAR / RAR of every channel of the prunable groups of ``ctx`` (or of ``groups``).

    The model is evaluated in eval mode under ``no_grad`` and left exactly as it was.

    Args:
        ctx: the scoring context; ``ctx.data`` supplies the evaluation set (training images).
        metric: ``"accuracy"`` (CAR) or a regression metric ``"r2"`` / ``"neg_mse"`` (RAR).
        eval_images: evaluation-set size; ``None``: ``ctx.num_batches`` batches.
        fast: replay only the layers after each group's consumers (identical results).
        max_rows: samples per batched suffix forward (memory vs speed).
        distributed: shard filters over the ``torch.distributed`` processes: ``"auto"`` when a
            process group is initialised, or ``True`` / ``False``.
        groups: restrict to these group ids.

    Raises:
        ScoringError: no data; ValueError: bad options.
    """
    from ..distributed import all_reduce_sum, current_shard

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    chosen = ctx.prunable_groups() if groups is None else [g for g in ctx.groups if g.id in set(groups)]
    batches = collect_eval_set(ctx, eval_images)
    task = "classification" if metric == "accuracy" else "regression"
    shard = current_shard() if distributed in ("auto", True) else (0, 1)
    with evaluating(ctx.model):
        engine = CarEngine(ctx.model, ctx.groups, batches, task=task, loss_fn=ctx.loss_fn, fast=fast,
                           max_rows=max_rows)
        requests = [(g, c) for g in chosen for c in range(g.size)]
        stats = engine.evaluate(requests, shard=shard, desc=f"CAR ({len(requests)} filters)")
    if shard[1] > 1:
        stats = EvalStats(stats.base, all_reduce_sum(stats.rows))
    return stats_to_result(metric, [g.id for g in chosen], [g.size for g in chosen], batches, stats, engine.fast)


def stats_to_result(metric: str, ids: Sequence[GroupId], split: Sequence[int], batches, stats: EvalStats,
                    fast: bool) -> CarResult:
    """A :class:`CarResult` from the engine's raw rows: ``split[i]`` consecutive rows belong to ``ids[i]``."""
    n = sum(int(y.shape[0]) for _, y in batches)
    rows, base = stats.rows, stats.base
    split = list(split)
    if metric == "accuracy":
        k = rows.shape[1] - 2
        labels = torch.cat([y.reshape(-1).cpu() for _, y in batches])
        counts = torch.bincount(labels, minlength=k)[:k].double()
        drop = 100.0 * (base[0] - rows[:, 0]) / n
        dloss = (rows[:, 1] - base[1]) / n
        class_drop = 100.0 * (base[2:] - rows[:, 2:]) / counts.clamp(min=1)
        return CarResult(
            metric, n, float(100.0 * base[0] / n), float(base[1] / n),
            dict(zip(ids, drop.split(split), strict=True)), dict(zip(ids, dloss.split(split), strict=True)),
            dict(zip(ids, class_drop.split(split), strict=True)), counts, fast,
        )
    targets = torch.cat([y.reshape(y.shape[0], -1).double().cpu() for _, y in batches])
    if metric == "r2":
        sst = float((targets - targets.mean(0)).square().sum())
        denom, base_value = max(sst, 1e-12), 1.0 - float(base[0]) / max(sst, 1e-12)
    else:
        denom, base_value = float(n), -float(base[0]) / n
    drop = (rows[:, 0] - base[0]) / denom  # metric(net) - metric(net without c)
    return CarResult(metric, n, base_value, None, dict(zip(ids, drop.split(split), strict=True)),
                     None, None, None, fast)


@register_criterion("car")
class CAR(Criterion):
    """Accuracy (or regression-metric) reduction when a filter is removed; see the module docstring.

    Args:
        eval_images: evaluation-set size (training images); ``None``: ``ctx.num_batches`` batches.
        k: filters removed per greedy step; read by the prune workflow to set the number of steps
            (:func:`~.car_greedy.steps_for_k`); the scores do not depend on it.
        scope: ``"network"``: every step ranks all filters of the network (k per step with ``k``);
            ``"layer"``: the paper's setting, greedy inside each layer named by ``layer_ratios``
            (``--layer-ratio NAME=R``), k filters per step (default 1), the rest re-scored each step
            (:func:`~.car_greedy.car_prune_layers`).
        metric: ``"accuracy"`` (CAR), ``"r2"`` or ``"neg_mse"`` (RAR, for regression models).
        fast: suffix replay instead of one full evaluation per filter (same scores).
        max_rows: samples per batched suffix forward.
        distributed: shard over ``torch.distributed`` processes (``"auto"``: when initialised).
    """

    requires_data = True
    variant = "car"
    default_normalize = "none"  # accuracy drops share one unit across layers: rank them raw

    def __init__(self, eval_images: int | None = None, k: int | None = None, metric: str = "accuracy",
                 fast: bool = True, max_rows: int = 2048, distributed: bool | str = "auto",
                 scope: str = "network") -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if k is not None and (not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if eval_images is not None and (not isinstance(eval_images, int) or eval_images < 1):
            raise ValueError(f"eval_images must be a positive integer, got {eval_images!r}")
        self.eval_images, self.k, self.metric, self.fast = eval_images, k, metric, fast
        self.max_rows, self.distributed, self.scope = max_rows, distributed, scope
        self.last_result: CarResult | None = None

    def analyze(self, ctx: ScoringContext) -> CarResult:
        """The full :class:`CarResult` (also kept as ``last_result``)."""
        self.last_result = car_analysis(ctx, metric=self.metric, eval_images=self.eval_images, fast=self.fast,
                                        max_rows=self.max_rows, distributed=self.distributed)
        return self.last_result

    def compute(self, ctx: ScoringContext) -> Scores:
        """``(C,)`` per group: the CAR (accuracy drop in percentage points, loss increase as tie-break) of
        removing each channel alone; see :meth:`analyze`.
        """
        return self.analyze(ctx).scores(self.variant)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, eval_images={self.eval_images}, k={self.k}, "
                f"metric={self.metric!r}, fast={self.fast})")


@register_criterion("car-classwise")
class ClasswiseCAR(CAR):
    """Class-wise CAR: score = the largest per-class accuracy reduction (ties: CAR, then loss)."""

    variant = "classwise"

    def __init__(self, eval_images: int | None = None, k: int | None = None, fast: bool = True,
                 max_rows: int = 2048, distributed: bool | str = "auto") -> None:
        super().__init__(eval_images, k, "accuracy", fast, max_rows, distributed)


def car_records(result: CarResult, class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One record per scored channel: group, channel, CAR (or RAR), loss increase, per-class CAR, and the
    most / least affected classes (largest / smallest per-class accuracy reduction)."""
    scores = result.scores("car")
    out = []
    for gid, drop in result.drop.items():
        for c in range(drop.numel()):
            rec: dict[str, Any] = {"group": gid, "channel": c, "score": float(scores[gid][c])}
            rec["rar" if result.metric != "accuracy" else "car"] = float(drop[c])
            if result.delta_loss is not None:
                rec["delta_loss"] = float(result.delta_loss[gid][c])
            if result.class_drop is not None:
                per = result.class_drop[gid][c]
                names = list(class_names) if class_names is not None else [str(k) for k in range(per.numel())]
                rec["class_car"] = {names[k]: float(per[k]) for k in range(per.numel())}
                rec["most_affected"] = names[int(per.argmax())]
                rec["least_affected"] = names[int(per.argmin())]
            out.append(rec)
    return out


def export_car_records(result: CarResult, path: PathLike, class_names: Sequence[str] | None = None) -> Path:
    """Write :func:`car_records` as JSON (``.json``, with the run's metadata) or CSV (``.csv``, one
    ``class_car:<name>`` column per class). Returns the path.

    Raises:
        ValueError: another suffix.
    """
    path = Path(path)
    records = car_records(result, class_names)
    if path.suffix == ".json":
        meta = {"metric": result.metric, "num_images": result.num_images, "base": result.base,
                "base_loss": result.base_loss, "fast": result.fast}
        path.write_text(json.dumps({**meta, "records": records}, indent=1))
    elif path.suffix == ".csv":
        classes = list(records[0].get("class_car", {})) if records else []
        flat = [{**{k: v for k, v in r.items() if k != "class_car"},
                 **{f"class_car:{k}": v for k, v in r.get("class_car", {}).items()}} for r in records]
        fields = [k for k in (flat[0] if flat else {}) if not k.startswith("class_car:")]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields + [f"class_car:{k}" for k in classes])
            writer.writeheader()
            writer.writerows(flat)
    else:
        raise ValueError(f"export_car_records writes .json or .csv, not {path.suffix!r}")
    return path
