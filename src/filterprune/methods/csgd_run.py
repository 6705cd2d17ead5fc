"""C-SGD end to end: cluster, train centripetally with the project's one loop, trim.

* :func:`csgd` (``fp.csgd``): the one-call Python entry, a recipe with defaults, over :func:`csgd_prune`.
* :func:`csgd_prune`: a trained model to a MACs/params/channel-ratio target (``filterprune prune
  --criterion csgd``). The per-group widths come from the engine's selection (rank with a criterion,
  keep the counts); the training budget is spent as centripetal training; no fine-tuning follows.
* :func:`squeeze`: C-SGD's "train wider, then squeeze" (``filterprune train --width-mult 1.5
  --csgd-squeeze-to 1.0``): train a widened model with one cluster per channel of the original widths,
  then trim it to exactly the original architecture.

Provenance: Ding et al., CVPR 2019, arXiv 1904.03837; journal arXiv 2107.14444 (the squeeze).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..api import PruneReport, StepRecord, conv_widths
from ..config import TrainConfig
from ..errors import PruningError
from ..graph.groups import ChannelGroup, PrunePlan
from ..graph.trace import Inputs, map_tensors, trace_groups
from ..metrics import count
from ..selection import SelectOptions
from ..train.ddp import broadcast_object, broadcast_state, is_main
from ..train.loop import fit
from ..types import PathLike, Scores
from ._clusters import CLUSTERINGS, Clusters, cluster_groups, load_clusters, save_clusters, target_widths
from ._permute import align_shortcuts
from ._slots import Deviation
from ._trim import KEEP, TrimResult, _outputs, trim
from .csgd import CentripetalSGD, predicted_decay

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CSGDOptions:
    """C-SGD knobs (``--criterion-options`` / ``--csgd-options`` take them as ``key=value,...``).

    Attributes:
        centripetal: eps, the centripetal strength on kernels; pick it with
            :func:`~filterprune.methods.predicted_decay` for the schedule at hand.
        clustering: ``kmeans`` (seeded, on all producer kernels of a group) or ``even``.
        keep: the trimmed channel is the cluster ``mean`` or the ``first`` member.
        vector_ratio: BN gamma/beta and biases get ``vector_ratio * centripetal``.
        include_bn: k-means also sees BN gamma/beta.
        width_criterion: the criterion whose global/layer-wise ranking sets the widths for a target.
        max_deviation: refuse to trim above this relative intra-cluster deviation.
        force: trim even above ``max_deviation``.
        n_init: k-means restarts.
    """

    centripetal: float = 3e-3
    clustering: str = "kmeans"
    keep: str = "mean"
    vector_ratio: float = 0.1
    include_bn: bool = False
    width_criterion: str = "l1"
    max_deviation: float = 1e-3
    force: bool = False
    n_init: int = 10

    def __post_init__(self) -> None:
        if self.clustering not in CLUSTERINGS:
            raise ValueError(f"C-SGD clustering must be one of {', '.join(CLUSTERINGS)}, got {self.clustering!r}")
        if self.keep not in KEEP:
            raise ValueError(f"C-SGD keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.centripetal < 0 or self.vector_ratio < 0 or self.max_deviation < 0 or self.n_init < 1:
            raise ValueError("C-SGD centripetal, vector_ratio, max_deviation must be >= 0 and n_init >= 1")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any] | None) -> CSGDOptions:
        """Build from ``key=value`` options, refusing unknown keys.

        >>> CSGDOptions.from_kwargs({"centripetal": 0.1}).centripetal
        0.1
        """
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs or {}) - set(known))
        if unknown:
            raise ValueError(f"unknown C-SGD option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values = dict(kwargs or {})
        for k in ("centripetal", "vector_ratio", "max_deviation"):
            if k in values and isinstance(values[k], int) and not isinstance(values[k], bool):
                values[k] = float(values[k])
        for k, v in values.items():
            default = getattr(cls, k)
            if not isinstance(v, type(default)) or isinstance(v, bool) != isinstance(default, bool):
                raise ValueError(f"C-SGD option {k} must be {type(default).__name__}, got {v!r}")
        return cls(**values)


@dataclass
class CSGDResult:
    """The outcome of :func:`csgd_prune` / :func:`squeeze`.

    Attributes:
        report: widths, MACs and params before/after, as for criterion pruning (``max_error`` is the
            output change at trimming).
        trim: what trimming did (plan, deviation before it, output change).
        clusters: the clusters trained.
        history: per-epoch training records (deviation included).
    """

    report: PruneReport
    trim: TrimResult
    clusters: Clusters
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-able facts for ``summary.json``."""
        last = self.history[-1] if self.history else {}
        return {
            "epochs": len(self.history),
            "trim_logit_diff": self.trim.logit_diff,
            "deviation_before_trim": dataclasses.asdict(self.trim.deviation),
            "val_acc_before_trim": last.get("val_acc"),
            "clusters": {gid: len(cl) for gid, cl in self.clusters.items()},
        }


def _first_batch(loader: Iterable | None, limit: int = 100) -> torch.Tensor | None:
    if loader is None:
        return None
    for x, _ in loader:
        return x[:limit]
    return None


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def centripetal_hook(model, groups, clusters, cfg: TrainConfig, opts: CSGDOptions, steps: int) -> CentripetalSGD:
    """The C-SGD training hook for ``clusters``; warns when ``cfg`` is too short for them to collapse."""
    hook = CentripetalSGD(model, groups, clusters, centripetal=opts.centripetal, weight_decay=cfg.weight_decay,
                          vector_ratio=opts.vector_ratio)
    if steps:
        factors = [predicted_decay(cfg, steps, hook.weight_decay + hook.centripetal),
                   predicted_decay(cfg, steps, hook.vector_decay + hook.vector_ratio * hook.centripetal)]
        logger.info("C-SGD: this recipe shrinks the deviation by x%.3g (kernels), x%.3g (vectors)", *factors)
        if max(factors) > opts.max_deviation and not opts.force:
            logger.info("C-SGD: the deviation will shrink only by x%.3g over %d epochs; trimming will likely be "
                           "refused (raise centripetal or vector_ratio)", max(factors), cfg.epochs)
    return hook


def trim_checked(model, groups, clusters, opts: CSGDOptions, probe) -> TrimResult:
    """:func:`~filterprune.methods._trim.trim` with ``opts``, measured and checked on ``probe``."""
    if probe is not None:
        probe = probe.to(_device_of(model))
    result = trim(model, groups, clusters, example_inputs=probe, keep=opts.keep, max_deviation=opts.max_deviation,
                  force=opts.force, check_inputs=probe)
    broadcast_state(model)  # under torchrun every rank trimmed the same weights; rank 0's copy makes it exact
    return result


def _train_and_trim(model, groups, clusters, train_loader, val_loader, cfg, opts, run_dir, resume, probe):
    steps = len(train_loader) if hasattr(train_loader, "__len__") else 0
    hook = centripetal_hook(model, groups, clusters, cfg, opts, steps)
    history = fit(model, train_loader, val_loader, cfg, run_dir=run_dir, hooks=[hook], resume=resume)
    return history, trim_checked(model, groups, clusters, opts, probe)


def _on_model_device(model: nn.Module, inputs: Inputs) -> Inputs:
    device = _device_of(model)
    return map_tensors(inputs, lambda t: t.to(device))


def _direct(name: str, fn, *, snapshot: bool = False):
    """Run a stage's work directly (``stage`` for callers without a run folder)."""
    return fn()


def _has_checkpoints(run_dir: PathLike | None) -> bool:
    return run_dir is not None and any((Path(run_dir) / "checkpoints").glob("epoch_*.safetensors"))


def csgd_prune(
    model: nn.Module,
    example_inputs: Inputs,
    train_loader: Any,
    val_loader: Iterable | None,
    cfg: TrainConfig,
    *,
    target_macs: float | None = None,
    target_params: float | None = None,
    ratio: float | None = None,
    global_ranking: bool = True,
    allocation: str = "global",
    min_channels: int = 1,
    round_to: int = 1,
    seed: int = 0,
    options: CSGDOptions | None = None,
    run_dir: PathLike | None = None,
    stage: Callable[..., Any] | None = None,
    baseline: tuple[int, int, dict[str, int]] | None = None,
    curves_for: Callable[[Sequence[ChannelGroup], Scores], Any] | None = None,
) -> CSGDResult:
    """Prune ``model`` in place with C-SGD: cluster to the target widths, train ``cfg``, trim.

    The one C-SGD pruning path: :func:`filterprune.csgd` and ``filterprune prune --criterion csgd``
    (which passes its run's ``stage`` so that every step is recorded and resumable) both call it.

    Args:
        model: a trained network.
        example_inputs: a batch the model accepts (tracing, counting).
        train_loader: ``(x, y)`` batches for the centripetal training (and a data-driven width criterion).
        val_loader: evaluated after every epoch; its first batch measures the output change at trimming.
        cfg: the training recipe; its ``weight_decay`` is eta inside the decay matrix.
        target_macs: fraction of MACs to remove.
        target_params: fraction of parameters to remove.
        ratio: fraction of channels to remove. Give exactly one target.
        global_ranking: widths from a global ranking; ``False``: the same fraction in every group.
        allocation: how the widths are allocated: global, uniform, cost or sensitivity
            (``SelectOptions.allocation``; sensitivity needs ``curves_for``).
        min_channels: every group keeps at least this many channels.
        round_to: kept counts are multiples of this.
        seed: k-means and criterion seed.
        options: C-SGD options.
        run_dir: ``metrics.jsonl``, checkpoints and ``clusters.json`` go here; a training stopped
            there is continued from its newest checkpoint when ``stage`` is given.
        stage: ``stage(name, fn, snapshot=...)`` runs (or, on resume, recalls) each unit of work:
            ``csgd.widths``, ``csgd.clusters``, ``csgd.centripetal``, ``csgd.trim`` (a
            :class:`~filterprune.workflows.runner.Runner`'s ``stage``); default: run them.
        baseline: ``(macs, params, conv widths)`` of the unpruned model for the report (a resumed run
            starts from a snapshot); default: counted on ``model`` now.
        curves_for: ``curves_for(groups, scores) -> SensitivityCurves`` for ``allocation="sensitivity"``
            (the prune workflow's, cached in its run folder).

    Raises:
        ValueError: bad targets or options.
        PruningError: the target is unreachable, the clusters did not collapse, or the model holds a
            layer C-SGD cannot fold.
    """
    run = stage or _direct
    opts = options or CSGDOptions()
    select_opts = SelectOptions(target_macs=target_macs, target_params=target_params, ratio=ratio,
                                global_ranking=global_ranking, min_channels=min_channels, round_to=round_to,
                                allocation=allocation)
    if baseline is None:
        macs_before, params_before = count(model, example_inputs)
        baseline = (int(macs_before), int(params_before), conv_widths(model))
    widths = run("csgd.widths", lambda: target_widths(model, example_inputs, trace_groups(model, example_inputs),
                                                      select_opts, criterion=opts.width_criterion,
                                                      data=train_loader, seed=seed, curves_for=curves_for))
    clusters = run("csgd.clusters", lambda: broadcast_object(cluster_groups(  # under torchrun: rank 0's
        model, trace_groups(model, example_inputs, probe=False), widths, method=opts.clustering, seed=seed,
        include_bn=opts.include_bn, n_init=opts.n_init)))
    if run_dir is not None and is_main() and not (stage is not None and (Path(run_dir) / "clusters.json").exists()):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        save_clusters(clusters, Path(run_dir) / "clusters.json")

    def centripetal() -> list[dict[str, Any]]:
        groups = trace_groups(model, example_inputs, probe=False)
        steps = len(train_loader) if hasattr(train_loader, "__len__") else 0
        hook = centripetal_hook(model, groups, clusters, cfg, opts, steps)
        return fit(model, train_loader, val_loader, cfg, run_dir=run_dir, hooks=[hook],
                   resume=stage is not None and _has_checkpoints(run_dir))

    history = run("csgd.centripetal", centripetal, snapshot=True)

    def trim_stage() -> dict[str, Any]:
        result = trim_checked(model, trace_groups(model, example_inputs, probe=False), clusters, opts,
                              _first_batch(val_loader))
        return {"plan": result.plan.prune_idxs, "deviation": dataclasses.asdict(result.deviation),
                "logit_diff": result.logit_diff}

    t = run("csgd.trim", trim_stage, snapshot=True)
    trimmed = TrimResult(PrunePlan({k: list(v) for k, v in t["plan"].items()}), Deviation(**t["deviation"]),
                         t["logit_diff"])
    macs, params = count(model, _on_model_device(model, example_inputs))
    name, target = select_opts.target
    report = PruneReport(
        criterion="csgd", target_name=name, target=target, macs_before=baseline[0], macs_after=int(macs),
        params_before=baseline[1], params_after=int(params), widths_before=baseline[2],
        widths_after=conv_widths(model),
        steps=(StepRecord(1, target, trimmed.plan.num_removed(), int(macs), int(params), trimmed.logit_diff),),
        max_error=trimmed.logit_diff,
    )
    return CSGDResult(report, trimmed, clusters, history)


def csgd(
    model: nn.Module,
    example_inputs: Inputs,
    data: Any,
    *,
    target_macs: float | None = None,
    target_params: float | None = None,
    ratio: float | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    train: TrainConfig | None = None,
    val_data: Iterable | None = None,
    options: CSGDOptions | Mapping[str, Any] | None = None,
    global_ranking: bool = True,
    allocation: str = "global",
    min_channels: int = 1,
    round_to: int = 1,
    seed: int = 0,
    run_dir: PathLike | None = None,
) -> CSGDResult:
    """C-SGD (Ding et al., CVPR 2019, arXiv 1904.03837) in one call: the Python twin of ``filterprune
    prune --criterion csgd``, which runs the same :func:`csgd_prune`.

    The per-group widths for the target come from ranking with ``options.width_criterion`` (l1); the
    filters of each group are clustered (k-means, one cluster per kept filter), the model is trained
    ``epochs`` epochs with centripetal SGD (each cluster's filters pulled to their mean), then one filter
    per cluster is kept and the next layer's input slices are summed: losslessly once the clusters
    have collapsed. No fine-tuning follows (the epochs are the training).

    Args:
        model: a trained network; pruned in place (build a new optimizer afterwards).
        example_inputs: a batch the model accepts (tracing, counting).
        data: ``(x, y)`` training batches, iterated once per epoch (a ``BatchLoader`` reshuffles).
        target_macs: fraction of MACs to remove.
        target_params: fraction of parameters to remove.
        ratio: fraction of channels to remove. Give exactly one target.
        epochs: centripetal training epochs; overrides ``train.epochs``.
        lr: peak learning rate; overrides ``train.lr``.
        train: the rest of the recipe; default: the CLI's fine-tune recipe (``PruneRunConfig().finetune``:
            10 epochs, lr 0.01, cosine, Nesterov, weight decay 5e-4).
        val_data: evaluated after every epoch; its first batch measures the output change at the trim
            (``None``: no validation, the trim is still checked against the masked model).
        options: :class:`CSGDOptions` or the CLI's ``--criterion-options`` as a dict
            (``{"centripetal": 0.05, "vector_ratio": 1.0}``; ``filterprune info --criterion csgd``).
        global_ranking: widths from a global ranking; ``False``: the same fraction in every group.
        allocation: how the widths are allocated: global, uniform or cost (``--allocation``).
        min_channels: every group keeps at least this many channels.
        round_to: kept counts are multiples of this.
        seed: k-means and width-criterion seed.
        run_dir: ``metrics.jsonl``, per-epoch checkpoints and ``clusters.json`` go here.

    Returns:
        A :class:`CSGDResult`: ``.report`` (a :class:`~filterprune.api.PruneReport`), ``.trim``,
        ``.clusters``, ``.history``.

    Raises:
        ValueError: bad targets, options or recipe.
        PruningError: the target is unreachable, or the clusters did not collapse (raise ``centripetal``
            or train longer; ``options={"force": True}`` trims anyway).

    >>> import torch, filterprune as fp
    >>> net = fp.create_model("convnet_small", num_classes=10, in_chans=1, image_size=8)
    >>> data = [(torch.randn(16, 1, 8, 8), torch.arange(16) % 10)] * 80  # BN statistics settle too
    >>> # lr x (centripetal + weight decay) = 1: one SGD step makes each cluster's filters equal
    >>> result = fp.csgd(net, torch.randn(2, 1, 8, 8), data, ratio=0.5, epochs=1, lr=0.02,
    ...                  options={"centripetal": 49.9995, "vector_ratio": 1.0},
    ...                  train=fp.TrainConfig(momentum=0.0, schedule="constant", device="cpu"))
    >>> result.report.widths_after["features.3"]
    16
    """
    from ..config import PruneRunConfig

    cfg = train if train is not None else PruneRunConfig().finetune
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None})
    opts = options if isinstance(options, CSGDOptions) else CSGDOptions.from_kwargs(options)
    return csgd_prune(model, example_inputs, data, val_data, cfg, target_macs=target_macs,
                      target_params=target_params, ratio=ratio, global_ranking=global_ranking,
                      allocation=allocation, min_channels=min_channels, round_to=round_to, seed=seed, options=opts,
                      run_dir=run_dir)


def squeeze(
    model: nn.Module,
    reference: nn.Module,
    example_inputs: Inputs,
    train_loader: Any,
    val_loader: Iterable | None,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    options: CSGDOptions | None = None,
    run_dir: PathLike | None = None,
    resume: bool = False,
) -> CSGDResult:
    """Train the wide ``model`` with C-SGD towards ``reference``'s widths, then trim it to them.

    Every group of ``model`` gets as many clusters as the same group (same root layer name) has
    channels in ``reference``. Afterwards the parameter shapes of ``model`` equal ``reference``'s, its
    channels are reordered so that option-A shortcut buffers equal ``reference``'s too
    (:func:`~filterprune.methods._permute.align_shortcuts`), and ``model.filterprune_cfg`` is
    ``reference``'s: the result saves and loads as a plain ``reference``.

    Args:
        model: the widened network (e.g. ``create_model("resnet20", width_mult=1.5)``), trained in place.
        reference: an instance of the target architecture (its weights are not used).
        example_inputs: a batch both accept.
        train_loader: training batches.
        val_loader: validation batches (first batch: output change at trimming).
        cfg: the training recipe.
        seed: k-means seed.
        options: C-SGD options.
        run_dir: training outputs and ``clusters.json`` (reused on ``resume``).
        resume: continue training from ``run_dir`` with its saved clusters.

    Raises:
        PruningError: the two models' groups differ, a shortcut forces other widths, or the clusters
            did not collapse.
    """
    opts = options or CSGDOptions()
    groups = trace_groups(model, example_inputs)
    ref_sizes = {g.id: g.size for g in trace_groups(reference, example_inputs, probe=False)}
    if set(ref_sizes) != {g.id for g in groups}:
        raise PruningError("squeeze: the wide model and the reference have different channel groups")
    macs_before, params_before = count(model, example_inputs)
    widths_before = conv_widths(model)
    saved = Path(run_dir) / "clusters.json" if run_dir is not None else None
    if resume and saved is not None and saved.exists():
        clusters = load_clusters(saved)
    else:
        widths = {g.id: ref_sizes[g.id] for g in groups if g.prunable}
        clusters = cluster_groups(model, groups, widths, method=opts.clustering, seed=seed,
                                  include_bn=opts.include_bn, n_init=opts.n_init)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            save_clusters(clusters, saved)
    history, result = _train_and_trim(model, groups, clusters, train_loader, val_loader, cfg, opts, run_dir,
                                      resume, _first_batch(val_loader))
    x = _on_model_device(model, example_inputs)
    before = _outputs(model, x)
    align_shortcuts(model, reference, trace_groups(model, x, probe=False))
    if not torch.allclose(_outputs(model, x), before, rtol=1e-4, atol=1e-5 * float(before.abs().max())):
        raise PruningError("squeeze: reordering channels to match the reference changed the outputs")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if got != want:
        bad = next(k for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k))
        raise PruningError(f"squeeze: the trimmed model does not match the reference ({bad}: "
                           f"{got.get(bad)} vs {want.get(bad)})")
    if hasattr(reference, "filterprune_cfg"):
        model.filterprune_cfg = dict(reference.filterprune_cfg)
    macs, params = count(model, _on_model_device(model, example_inputs))
    report = PruneReport(
        criterion="csgd", target_name="squeeze", target=0.0, macs_before=int(macs_before), macs_after=int(macs),
        params_before=int(params_before), params_after=int(params), widths_before=widths_before,
        widths_after=conv_widths(model),
        steps=(StepRecord(1, 0.0, result.plan.num_removed(), int(macs), int(params), result.logit_diff),),
        max_error=result.logit_diff,
    )
    return CSGDResult(report, result, clusters, history)
