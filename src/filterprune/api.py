"""The functions users type: :func:`prune`, :func:`score`, :func:`save`, :func:`load`.

``prune`` chains the engine's steps: trace the channel groups, score them with a criterion, select
what to remove for the target, check that the masked and the physically pruned model agree, apply.
With ``steps > 1`` it repeats this, re-tracing and re-scoring each time, with an optional
``finetune(model, step)`` after each step. The cumulative target after step i of k is split
geometrically by default (the kept fraction shrinks by the same factor each step: kept_i =
(1 - target) ** (i / k)); ``schedule="linear"`` removes target * i / k instead.

>>> import torch
>>> from filterprune.models import create_model
>>> model = create_model("resnet20")
>>> report = prune(model, torch.randn(2, 3, 32, 32), "l1", target_macs=0.5)
>>> abs(report.macs_reduction - 0.5) <= 0.01
True
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .distributed import broadcast_object
from .graph.check import apply_plan_checked
from .graph.groups import ChannelGroup, PrunePlan
from .graph.surgery import apply_plan
from .graph.trace import Inputs, forward, trace_groups
from .selection import CostFn, SelectOptions, baseline, default_counter, select
from .serialize import load_model, save_model
from .types import PathLike, Scores
from .utils.modes import evaluating, modes_kept

logger = logging.getLogger(__name__)

__all__ = ["PruneReport", "StepRecord", "load", "prune", "save", "score"]

SCHEDULES = ("geometric", "linear")


@dataclass(frozen=True)
class StepRecord:
    """One pruning step: the cumulative target it aimed at and where the model ended up."""

    step: int
    target: float
    removed_channels: int
    macs: int
    params: int
    max_error: float | None


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` did. ``widths_*`` map each conv's qualified name to its output channels;
    ``max_error`` is the largest masked-vs-pruned output difference (``None`` without the check);
    ``latency``: with ``target_latency`` or ``round_to="auto"``, what was measured
    (:meth:`filterprune.latency_target.LatencyTarget.record`)."""

    criterion: str
    target_name: str
    target: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    steps: tuple[StepRecord, ...]
    max_error: float | None
    latency: dict[str, Any] | None = None

    @property
    def macs_reduction(self) -> float:
        """Fraction of MACs removed."""
        return 1 - self.macs_after / max(1, self.macs_before)

    @property
    def params_reduction(self) -> float:
        """Fraction of parameters removed."""
        return 1 - self.params_after / max(1, self.params_before)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field plus the two reductions."""
        out = dataclasses.asdict(self)
        out["steps"] = [dataclasses.asdict(s) for s in self.steps]
        out["macs_reduction"], out["params_reduction"] = self.macs_reduction, self.params_reduction
        return out

    def table(self) -> str:
        """A plain-text before/after table: totals, then one row per conv with the fraction of its filters removed."""
        name_w = max([len("layer"), *map(len, self.widths_before)])
        lines = [
            f"criterion {self.criterion}, {self.target_name}={self.target:g}, {len(self.steps)} step(s)",
            f"MACs   {self.macs_before:>14,d} -> {self.macs_after:>14,d}  (-{100 * self.macs_reduction:.1f}%)",
            f"params {self.params_before:>14,d} -> {self.params_after:>14,d}  (-{100 * self.params_reduction:.1f}%)",
            *_latency_lines(self.latency),
            f"{'layer':<{name_w}}  {'before':>6}  {'after':>6}  {'removed':>7}",
        ]
        for name, before in self.widths_before.items():
            after = self.widths_after.get(name, before)
            lines.append(f"{name:<{name_w}}  {before:>6d}  {after:>6d}  {100 * (1 - after / max(1, before)):>6.1f}%")
        return "\n".join(lines)


def _latency_lines(latency: dict[str, Any] | None) -> list[str]:
    if not latency or latency.get("measured") is None:
        return []
    last = next(r for r in latency["iterations"] if r["measured"] == latency["measured"])
    return [f"latency {last['base_ms']:>10.3f} ms -> {last['pruned_ms']:>10.3f} ms  (-{100 * latency['measured']:.1f}% "
            f"measured side by side, -{100 * latency['predicted']:.1f}% predicted; batch {latency['batch_size']} on "
            f"{latency['device']})"]


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv, by qualified name."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


def _check_inputs(model: nn.Module, example_inputs: Inputs) -> None:
    try:
        with evaluating(model):
            forward(model, example_inputs)
    except Exception as e:  # noqa: BLE001 - whatever the model raises becomes one line
        shape = tuple(example_inputs.shape) if isinstance(example_inputs, Tensor) else type(example_inputs).__name__
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"the model rejects example_inputs of shape {shape}: {reason}") from None


def _criterion(criterion, criterion_kwargs: dict | None, data):
    """The criterion object for a name (or the object itself), checked against the data given."""
    if isinstance(criterion, str):
        from .criteria import list_criteria

        if criterion == "csgd":
            raise ValueError("csgd is a training-time method, not a score: use fp.csgd(model, example_inputs, data, "
                             "target_macs=..., epochs=...)")
        if criterion not in list_criteria():
            raise ValueError(f"unknown criterion {criterion!r}; known: {', '.join(list_criteria())}, and the "
                             "training-time method csgd (fp.csgd)")
        from .criteria import create_criterion

        criterion = create_criterion(criterion, **(criterion_kwargs or {}))
    elif not callable(getattr(criterion, "score", None)):
        raise TypeError("criterion must be a registered name or an object with .score(ctx)")
    if getattr(criterion, "requires_data", False) and data is None:
        raise ValueError(f"criterion {getattr(criterion, 'name', criterion)!r} needs data: pass data=(x, y) batches")
    return criterion


def default_normalize(criterion: Any) -> str:
    """The score normalisation a criterion asks for when none is given: its ``default_normalize``
    attribute (CAR: ``"none"``, raw accuracy drops share one unit), else ``"mean"``."""
    return getattr(criterion, "default_normalize", None) or "mean"


def greedy_steps(model: nn.Module, example_inputs: Inputs, criterion: Any, steps: int, options: SelectOptions | None,
                 ignored_layers: Sequence[str | nn.Module] | None = None) -> int:
    """How many steps to prune in: ``steps``, unless it is 1 and the criterion asks for about ``k``
    channels per step (CAR's ``k=N``), then enough steps for that (:func:`~.criteria.car_greedy.steps_for_k`)."""
    k = getattr(criterion, "k", None)
    if not k or steps != 1 or options is None:
        return steps
    if options.target[0] == "target_latency":
        raise ValueError("CAR's k (filters per step) needs a MACs, params or channel target; with target_latency "
                         "give steps instead")
    from .criteria.car_greedy import steps_for_k

    return steps_for_k(model, example_inputs, k, options=options, ignored_layers=ignored_layers)


def _score(model, example_inputs, groups, crit, data, seed, num_batches) -> Scores:
    from .criteria import ScoringContext

    fields = {f.name for f in dataclasses.fields(ScoringContext)}
    kwargs = {"data": data, "seed": seed, "num_batches": num_batches}
    ctx = ScoringContext(model=model, example_inputs=example_inputs, groups=list(groups),
                         **{k: v for k, v in kwargs.items() if k in fields and v is not None})
    with modes_kept(model):
        return crit.score(ctx)


def score(
    model: nn.Module,
    example_inputs: Inputs,
    criterion: str = "l1",
    data: Iterable | None = None,
    *,
    ignored_layers: Sequence[str | nn.Module] | None = None,
    seed: int = 0,
    num_batches: int | None = None,
    **criterion_kwargs: Any,
) -> dict[str, Tensor]:
    """Per prunable group (keyed by its root layer, e.g. ``"layer1.0.conv1"``), one score per channel.

    The model is not changed. Higher scores mean keep.

    Raises:
        ValueError: unknown criterion (the message lists the known ones), a data-driven criterion
            without ``data``, or inputs the model rejects.
        PruningError: the model cannot be traced safely.
    """
    crit = _criterion(criterion, criterion_kwargs, data)
    _check_inputs(model, example_inputs)
    groups = trace_groups(model, example_inputs, ignored_layers=ignored_layers)
    return _score(model, example_inputs, groups, crit, data, seed, num_batches)


def _cumulative(target: float, step: int, steps: int, schedule: str) -> float:
    if schedule == "linear":
        return target * step / steps
    return 1 - (1 - target) ** (step / steps)


def prune(
    model: nn.Module,
    example_inputs: Inputs,
    criterion: str = "l1",
    target_macs: float | None = None,
    *,
    target_params: float | None = None,
    ratio: float | None = None,
    data: Iterable | None = None,
    steps: int = 1,
    schedule: str = "geometric",
    finetune: Callable[[nn.Module, int], Any] | None = None,
    ignored_layers: Sequence[str | nn.Module] | None = None,
    min_channels: int = 1,
    round_to: int | str = 1,
    max_ratio: float = 1.0,
    global_ranking: bool = True,
    normalize: str | None = None,
    check: bool = True,
    criterion_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    num_batches: int | None = None,
    layer_ratios: dict[str, float] | None = None,
    allocation: str = "global",
    cost_fn: CostFn | None = None,
    sensitivity_points: int = 9,
    sensitivity_metric: str = "loss",
    sensitivity_cache: PathLike | None = None,
    target_latency: float | None = None,
    latency_table: PathLike | None = None,
    latency_options: Any = None,
) -> PruneReport:
    """Prune ``model`` in place to a target and report what changed.

    Args:
        model: the network; pruned in place (build a new optimizer afterwards).
        example_inputs: a batch the model accepts; tracing, counting and the check run on it.
        criterion: a registered criterion name (see ``filterprune.criteria.list_criteria`` or
            ``filterprune info --list``) or an object with ``score(ctx)``. C-SGD is a training-time
            method: :func:`filterprune.csgd`.
        target_macs: fraction of MACs to remove.
        target_params: fraction of parameters to remove.
        ratio: fraction of prunable channels to remove. Give exactly one of the four targets.
        target_latency: fraction of the model's *measured* latency on ``example_inputs``' device and
            batch size to remove: a per-layer latency table predicts it, the pruned model is measured
            side by side with the base and the selection refined (:mod:`filterprune.latency_target`).
        data: ``(x, y)`` batches for data-driven criteria.
        steps: prune in this many steps, re-scoring each time. With CAR's ``k`` option
            (``criterion_kwargs={"k": N}``) and ``steps=1``, as many steps as remove about N channels
            each (:func:`greedy_steps`), as ``filterprune prune --criterion-options k=N`` does.
        schedule: how the target is split across steps: geometric or linear (module docstring).
        finetune: step fine-tuning: ``finetune(model, step)`` is called after each step (1-based, the
            last one included) with the model pruned to that step's widths; whatever it trains is
            what the next step scores (the CLI's ``--step-finetune-epochs``). Its return value is
            ignored.
        ignored_layers: layers (modules or qualified names) whose output channels are kept.
        min_channels: every group keeps at least this many channels.
        round_to: kept channel counts are multiples of this; ``"auto"`` (or 0) measures which multiple
            (1, 4, 8, 16) makes this device's convs fastest per MAC (:mod:`filterprune.metrics.round_to`).
        max_ratio: at most this fraction of a group's channels is removed.
        global_ranking: rank channels across groups; ``False`` prunes each group by the same fraction.
        normalize: per-group score normalisation for global ranking (mean, max, l2, none); unset:
            the criterion's own (:func:`default_normalize`: none for CAR, mean otherwise).
        check: compare masked and pruned outputs at each step; raise above 1e-4 relative.
        criterion_kwargs: options passed to the criterion's constructor: the CLI's
            ``--criterion-options`` keys (``filterprune info --criterion NAME`` lists them). CAR's
            ``{"scope": "layer", "k": N}`` prunes greedily inside each layer of ``layer_ratios``, N
            filters per step (:func:`car_layer_prune`); ``finetune`` runs after each of those steps.
        seed: passed to the criterion.
        num_batches: how many ``data`` batches a data-driven criterion reads.
        layer_ratios: ``{layer name or fnmatch pattern: R}``: the group that layer produces loses
            the lowest-scored fraction R of its (baseline) channels, split over ``steps`` like the
            target, and is left out of the global target, which still counts what it saves. With
            no target given, only these groups are pruned.
        allocation: how the target is shared among groups (:mod:`filterprune.selection.allocation`):
            global (one ranking of normalised scores), uniform (the same fraction per group), cost
            (normalised score per unit of the target's cost saved) or sensitivity (per-group curves on
            ``data``, equal predicted drop).
        cost_fn: with ``allocation="cost"``: ``cost_fn(group, n_removed) -> cost saved`` (e.g. measured
            latency) instead of the target's MACs/params.
        sensitivity_points: with ``allocation="sensitivity"``: ratios measured per group (k/(N+1)).
        sensitivity_metric: with ``allocation="sensitivity"``: ``"loss"`` or ``"acc"`` drop.
        sensitivity_cache: with ``allocation="sensitivity"``: a JSON file the curves are written to and
            resumed from (``-stepK`` is added to its name for steps after the first).
        latency_table: cache file of the latency table (reused when it fits this model, device and
            batch; written otherwise; a file that is something else is refused).
        latency_options: a :class:`filterprune.latency_target.LatencyOptions` (tolerance, refinements,
            repeats).

    Returns:
        A :class:`PruneReport`.

    Raises:
        ValueError: bad arguments (target count or range, unknown criterion or ``"csgd"``, missing
            data, inputs the model rejects).
        PruningError: the model cannot be pruned safely, the target is unreachable, or the check failed.
    """
    targets = {"target_macs": target_macs, "target_params": target_params, "ratio": ratio,
               "target_latency": target_latency}
    auto_round = round_to in ("auto", 0)
    if not auto_round and (not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive integer or 'auto', got {round_to!r}")
    round_to = 1 if auto_round else round_to
    layer_ratios = dict(layer_ratios or {})
    for pat, r in layer_ratios.items():
        if not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ValueError(f"layer_ratios[{pat!r}] must be a fraction in [0, 1), got {r!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    crit = _criterion(criterion, criterion_kwargs, data)
    if getattr(crit, "scope", None) == "layer":
        _check_inputs(model, example_inputs)
        return car_layer_prune(model, example_inputs, crit, data, layer_ratios, targets=targets, steps=steps,
                               allocation=allocation,
                               after_step=None if finetune is None else functools.partial(finetune, model),
                               ignored_layers=ignored_layers, min_channels=min_channels, num_batches=num_batches)
    options = None
    if any(v is not None for v in targets.values()) or not layer_ratios:
        options = SelectOptions(**targets, global_ranking=global_ranking,
                                normalize=normalize or default_normalize(crit), min_channels=min_channels,
                                round_to=round_to, max_ratio=max_ratio, ignored_layers=tuple(layer_ratios),
                                allocation=allocation)
        if options.mode == "sensitivity" and data is None:
            raise ValueError("allocation='sensitivity' needs data: pass data=(x, y) batches to measure the curves on")
    _check_inputs(model, example_inputs)
    steps = greedy_steps(model, example_inputs, crit, steps, options, ignored_layers)

    counter = default_counter()
    groups: list[ChannelGroup] = trace_groups(model, example_inputs, ignored_layers=ignored_layers)
    base = baseline(model, example_inputs, groups, counter)
    latency = None
    if target_latency is not None or auto_round:
        from .latency_target import LatencyTarget

        latency = LatencyTarget(model, example_inputs, target_latency, options=latency_options,
                                table_path=latency_table, groups=groups)
        if auto_round and options is not None:
            options = dataclasses.replace(options, round_to=latency.choose_round_to(model, groups))
    widths_before = conv_widths(model)
    name, value = options.target if options is not None else ("layer_ratios", 0.0)
    records: list[StepRecord] = []
    for step in range(1, steps + 1):
        if step > 1:  # same topology, new widths: the probe already passed on this model
            groups = trace_groups(model, example_inputs, ignored_layers=ignored_layers, probe=False)
        goal = _cumulative(value, step, steps, schedule)
        scores = _score(model, example_inputs, groups, crit, data, seed, num_batches)
        removed, errs = 0, []
        if layer_ratios:
            cumulative = functools.partial(_cumulative, step=step, steps=steps, schedule=schedule)
            fixed = broadcast_object(_layer_plan(groups, scores, layer_ratios, base, cumulative, min_channels))
            if fixed.prune_idxs:
                errs.append(apply_plan_checked(model, groups, fixed, example_inputs) if check else None)
                if not check:
                    apply_plan(model, groups, fixed)
                removed += fixed.num_removed()
                if options is not None:  # the global pass sees the narrowed model
                    groups = trace_groups(model, example_inputs, ignored_layers=ignored_layers, probe=False)
                    scores = _score(model, example_inputs, groups, crit, data, seed, num_batches)
        if options is not None:
            curves = None
            if options.mode == "sensitivity":
                curves = _curves(model, groups, scores, data, num_batches, options, sensitivity_points,
                                 sensitivity_metric, _step_path(sensitivity_cache, step))
            opts = dataclasses.replace(options, **{name: goal})
            if name == "target_latency":
                plan = latency.select(model, groups, scores, opts, base=base, counter=counter, final=step == steps,
                                      cost_fn=cost_fn, curves=curves)
            else:
                plan = select(model, example_inputs, groups, scores, opts, base=base, counter=counter,
                              cost_fn=cost_fn, curves=curves)
            plan = broadcast_object(plan)  # under torchrun: rank 0's selection, surgery on every rank
            errs.append(apply_plan_checked(model, groups, plan, example_inputs) if check else None)
            if not check:
                apply_plan(model, groups, plan)
            removed += plan.num_removed()
        macs, params = counter(model, example_inputs)
        err = max((e for e in errs if e is not None), default=None)
        records.append(StepRecord(step, goal, removed, int(macs), int(params), err))
        logger.info("step %d/%d: %s %.4f, removed %d channels, MACs %d, params %d",
                    step, steps, name, goal, removed, macs, params)
        if finetune is not None:
            finetune(model, step)
    errors = [r.max_error for r in records if r.max_error is not None]
    return PruneReport(
        criterion=getattr(crit, "name", None) or type(crit).__name__, target_name=name, target=value,
        macs_before=base.macs, macs_after=records[-1].macs, params_before=base.params,
        params_after=records[-1].params, widths_before=widths_before, widths_after=conv_widths(model),
        steps=tuple(records), max_error=max(errors) if errors else None,
        latency=latency.record() if latency is not None else None,
    )


def _step_path(path: PathLike | None, step: int) -> Path | None:
    """``path`` for step 1, ``name-stepK.suffix`` beside it for step K > 1."""
    if path is None:
        return None
    path = Path(path)
    return path if step == 1 else path.with_name(f"{path.stem}-step{step}{path.suffix}")


def _curves(model, groups, scores, data, num_batches, options, points, metric, cache):
    """Sensitivity curves on the first ``num_batches`` batches of ``data`` (all of it if ``None``)."""
    import itertools

    from .selection import loss_and_accuracy, measure_curves

    batches = list(itertools.islice(data, num_batches) if num_batches else data)
    return broadcast_object(measure_curves(model, groups, scores, loss_and_accuracy(batches), points=points,
                                           metric=metric, cache=cache, ignored_layers=options.ignored_layers))


def car_layer_prune(model: nn.Module, example_inputs: Inputs, crit: Any, data: Iterable | None,
                    layer_ratios: dict[str, float], *, targets: dict[str, float | None] | None = None, steps: int = 1,
                    after_step: Callable[[int], Any] | None = None, stage: Callable[..., Any] | None = None,
                    ignored_layers: Sequence[str | nn.Module] | None = None, min_channels: int = 1,
                    num_batches: int | None = None, base: tuple[int, int, dict[str, int]] | None = None,
                    allocation: str = "global") -> PruneReport:
    """CAR's ``scope=layer`` (the paper's setting) as :func:`prune` and ``filterprune prune`` run it: greedy
    inside each layer of ``layer_ratios``, ``crit.k`` filters per step (default 1), ``after_step(step)``
    after each (:func:`~filterprune.criteria.car_greedy.car_prune_layers`). ``base``: MACs, params and
    conv widths of the unpruned model (default: counted now). ``allocation``: the caller's, refused
    unless ``"global"`` (the layer fractions are given).

    Raises:
        ValueError: a network-wide target, an allocation, no ``layer_ratios``, ``steps`` other than 1, or
            no data.
    """
    from .criteria.car_greedy import car_prune_layers, check_layer_scope

    check_layer_scope(targets or {}, layer_ratios, steps, allocation)
    if base is None:
        macs, params = default_counter()(model, example_inputs)
        base = (int(macs), int(params), conv_widths(model))
    options = {"eval_images": crit.eval_images, "metric": crit.metric, "fast": crit.fast, "max_rows": crit.max_rows}
    if num_batches is not None:
        options["num_batches"] = num_batches
    records = car_prune_layers(model, example_inputs, data, layer_ratios, k=crit.k or 1, min_channels=min_channels,
                               after_step=after_step, stage=stage, ignored_layers=ignored_layers, **options)
    steps_done = tuple(StepRecord(r["step"], 0.0, r["removed_channels"], r["macs"], r["params"], r["max_error"])
                       for r in records)
    macs_after, params_after = (steps_done[-1].macs, steps_done[-1].params) if steps_done else base[:2]
    return PruneReport(criterion=getattr(crit, "name", None) or "car", target_name="layer_ratios", target=0.0,
                       macs_before=base[0], macs_after=macs_after, params_before=base[1], params_after=params_after,
                       widths_before=base[2], widths_after=conv_widths(model), steps=steps_done, max_error=None)


def _layer_plan(groups: Sequence[ChannelGroup], scores: Scores, layer_ratios: dict[str, float], base,
                cumulative: Callable[[float], float], min_channels: int) -> PrunePlan:
    """The lowest-scored channels of each group named in ``layer_ratios`` (by a layer that produces it)."""
    import fnmatch

    import torch

    plan, matched = PrunePlan(), set()
    for g in groups:
        outs = [m.module for m in g.members if m.kind == "out"]
        pat = next((p for p in layer_ratios if any(fnmatch.fnmatch(o, p) for o in outs)), None)
        if pat is None or not g.prunable:
            continue
        matched.add(pat)
        base_size = base.channels.get(g.id, g.size)
        n = round(cumulative(layer_ratios[pat]) * base_size) - (base_size - g.size)
        n = max(0, min(n, g.size - min_channels))
        if n:
            order = torch.argsort(torch.as_tensor(scores[g.id]), stable=True)
            plan.prune_idxs[g.id] = sorted(int(i) for i in order[:n])
    missing = [p for p in layer_ratios if p not in matched]
    if missing:
        raise ValueError(f"layer_ratios: no prunable group is produced by a layer matching {', '.join(map(repr, missing))}"
                         f"; prunable groups: {', '.join(g.id for g in groups if g.prunable)}")
    return plan


def save(model: nn.Module, path: PathLike, *, meta: dict[str, Any] | None = None,
         example_inputs: Inputs | None = None) -> Path:
    """Save any model (pruned or not) without pickle: safetensors tensors + JSON widths.

    Args:
        model: any ``nn.Module``.
        path: destination, conventionally ``*.safetensors``; written atomically.
        meta: extra JSON-able metadata (metrics, a report).
        example_inputs: a batch the model accepts; its shapes are stored so that :func:`load` runs the
            model once and refuses a file whose layer widths disagree.

    See :func:`filterprune.serialize.save_model`.

    >>> import torch, tempfile, os
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
    ...                           torch.nn.Conv2d(8, 4, 3))
    >>> x = torch.randn(2, 3, 16, 16)
    >>> _ = prune(net, x, "l1", ratio=0.5)
    >>> path = save(net, os.path.join(tempfile.mkdtemp(), "net.safetensors"), example_inputs=x)
    >>> fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
    ...                             torch.nn.Conv2d(8, 4, 3))
    >>> load(path, model=fresh)[0].out_channels
    4
    """
    return save_model(model, path, meta=meta, example_inputs=example_inputs)


def load(path: PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save`, at its saved widths, in eval mode.

    Args:
        path: the ``.safetensors`` file.
        model: a freshly built, *unpruned* instance of the saved model's class; it is resized to the
            saved widths in place and returned. Leave it out for models built by ``create_model``
            (registered with ``@filterprune.register_model``), which are rebuilt by name.

    Raises:
        CheckpointError: one line naming the file and the problem (corrupt, failed digest, malformed
            or inconsistent metadata, tensors that do not fit ``model``).

    See :func:`filterprune.serialize.load_model`.
    """
    return load_model(path, model)
