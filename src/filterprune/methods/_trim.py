"""C-SGD trimming: keep one channel per cluster, fold the others into every consumer, then cut them.

Provenance: Ding et al., CVPR 2019, arXiv 1904.03837; reference ``csgd/csgd_prune.py`` of
DingXiaoH/Centripetal-SGD @ c561153 (Apache-2.0), read for the algorithm only.

Once a cluster has collapsed, its members' feature maps are identical, so a consumer reading them sees
``sum_j W[:, j] x_j = (sum_j W[:, j]) x_kept``. :func:`fold` writes that sum into the kept member's
input slice in every consumer (conv input channels, Linear features after pooling or a flatten block
per channel, every branch behind a residual add) and sets the kept producer entries to the cluster
mean (``keep="mean"``; ``"first"`` leaves the kept member as it is, as the reference does). The removal
itself is the engine's :func:`~filterprune.graph.surgery.apply_plan` on a plan of the removed members,
which also drops their BatchNorm entries and edits option-A shortcut index maps.

A weightless router (a layer whose :class:`~filterprune.graph.ops.LayerOp` has a ``channel_map``, such as
the CIFAR ResNet's option-A shortcut) moves input channel ``i`` to output channel ``channel_map[i]`` with no weights to fold into; trimming through it is exact only when the
clusters respect it (:func:`check_shortcuts`, which :func:`~filterprune.methods.cluster_groups` ensures).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PruningError
from ..graph.check import apply_plan_checked
from ..graph.groups import ChannelGroup, PrunePlan
from ..graph.ops import layer_op
from ..graph.surgery import apply_plan, is_depthwise, weight_dim
from ..graph.trace import Inputs, flat_outputs, forward
from ..types import NORM_LAYERS
from ..utils.modes import evaluating, full_fp32
from ._clusters import Clusters, labels_of, shortcut_feeds
from ._slots import Deviation, _module_params, clustered_params, deviation

logger = logging.getLogger(__name__)

KEEP = ("mean", "first")


@dataclass(frozen=True)
class TrimResult:
    """What :func:`trim` did.

    Attributes:
        plan: the removed channels, per group.
        deviation: the intra-cluster deviation just before trimming.
        logit_diff: ``max |out_after - out_before| / max |out_before|`` on the example inputs (eval
            mode), or ``None`` when none were given.
    """

    plan: PrunePlan
    deviation: Deviation
    logit_diff: float | None


def _clusters_or_singletons(clusters: Clusters, group: ChannelGroup) -> list[list[int]]:
    return clusters.get(group.id) or [[c] for c in range(group.size)]


def check_shortcuts(model: nn.Module, groups: Sequence[ChannelGroup], clusters: Clusters) -> None:
    """Refuse clusters that an option-A shortcut would make trimming inexact for.

    Each cluster of a shortcut's output group must be fed by a single input cluster (or be all
    zero-padded channels), and every removed input must feed a removed output of the cluster whose
    kept channel the kept input feeds.

    Raises:
        PruningError: naming the shortcut and the offending cluster.
    """
    for group in groups:
        for src, feeds in shortcut_feeds(model, group, groups):
            if src.id not in clusters and group.id not in clusters:
                continue
            src_cl, out_cl = _clusters_or_singletons(clusters, src), _clusters_or_singletons(clusters, group)
            src_label, out_label = labels_of(src_cl, src.size), labels_of(out_cl, group.size)
            fed_by = {c_out: int(src_label[c_in]) for c_in, c_out in feeds.items()}
            for k, cl in enumerate(out_cl):
                sources = {fed_by.get(c) for c in cl}
                if len(sources) > 1:
                    raise PruningError(f"C-SGD: cluster {k} of group {group.id} mixes channels its shortcut "
                                       f"feeds from different clusters of {src.id} (or zero padding)")
            for cl in src_cl:
                kept_out = feeds.get(cl[0])
                for c in cl[1:]:
                    if c not in feeds:
                        continue
                    target = out_cl[int(out_label[feeds[c]])]
                    if kept_out is None or target[0] != kept_out or feeds[c] == kept_out:
                        raise PruningError(f"C-SGD: channel {c} of {src.id} reaches group {group.id} through a "
                                           "shortcut, but its cluster's kept channel does not stand for it there")


@torch.no_grad()
def fold(model: nn.Module, groups: Sequence[ChannelGroup], clusters: Clusters, *, keep: str = "mean") -> PrunePlan:
    """Fold each cluster into its kept channel (in place) and return the plan that removes the others.

    The model computes the same function before and after (up to float rounding) when the clusters
    have collapsed; the returned plan is then exact to apply.

    Raises:
        ValueError: unknown ``keep``.
        PruningError: a consumer the fold cannot handle (a grouped conv), or clusters a shortcut forbids.
    """
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    check_shortcuts(model, groups, clusters)
    params = clustered_params(model, groups, clusters)  # validates the clusters
    by_id = {g.id: g for g in groups}
    plan = PrunePlan()
    for gid, cl in clusters.items():
        group = by_id[gid]
        for member in group.members:
            module = model.get_submodule(member.module)
            if member.kind == "out":
                if keep == "mean":
                    _average_outputs(module, member.idxs, cl, group.size)
                continue
            op = layer_op(module)
            if (op is not None and op.channel_map(module) is not None) or is_depthwise(module):
                continue  # checked above / folded as a producer
            if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or getattr(module, "groups", 1) > 1:
                raise PruningError(f"C-SGD cannot fold into {member.module} ({type(module).__name__})")
            src, dst = [], []
            for c in cl:
                for j in c[1:]:
                    if len(member.idxs[j]) != len(member.idxs[c[0]]):
                        raise PruningError(f"C-SGD: {member.module} holds channels of group {gid} unevenly")
                    src += member.idxs[j]
                    dst += member.idxs[c[0]]
            if src:
                dim = weight_dim(module, "in")
                w = module.weight
                w.index_add_(dim, torch.tensor(dst, device=w.device), w.index_select(dim, torch.tensor(src, device=w.device)))
        plan.prune_idxs[gid] = sorted(j for c in cl for j in c[1:])
    logger.debug("folded %d clustered parameters", len(params))
    return plan


def _average_outputs(module: nn.Module, idxs, cl: list[list[int]], size: int) -> None:
    """Set every channel's producer entries (parameters, BN statistics) to its cluster mean."""
    entries = [(attr, dim) for attr, dim, _ in _module_params(module, "")]
    if isinstance(module, NORM_LAYERS) and module.track_running_stats:
        entries += [("running_mean", 0), ("running_var", 0)]
    if not entries:
        return
    labels = labels_of(cl, size)
    counts = torch.tensor([float(len(c)) for c in cl])
    index = torch.tensor([ix[0] for ix in idxs], dtype=torch.long)
    for attr, dim in entries:
        t = getattr(module, attr)
        if t is None:
            continue
        rows = t.index_select(dim, index.to(t.device)).movedim(dim, 0)  # (n, ...)
        flat = rows.reshape(size, -1).double()
        means = torch.zeros(len(cl), flat.shape[1], dtype=flat.dtype, device=flat.device)
        means.index_add_(0, labels.to(flat.device), flat)
        means /= counts.to(flat.device, flat.dtype)[:, None]
        new = means[labels.to(flat.device)].to(t.dtype).reshape(rows.shape).movedim(0, dim)
        t.data.index_copy_(dim, index.to(t.device), new)


def _outputs(model: nn.Module, example_inputs: Inputs) -> torch.Tensor:
    """Flat float32 outputs in eval mode, TF32 off: they are compared across a trim or a permutation."""
    with evaluating(model), full_fp32():
        return torch.cat([t.detach().float().flatten() for t in flat_outputs(forward(model, example_inputs))])


@torch.no_grad()
def bn_stat_deviation(model: nn.Module, groups: Sequence[ChannelGroup], clusters: Clusters) -> tuple[float, str | None]:
    """The largest relative intra-cluster deviation of a normalisation layer's running statistics.

    For each clustered group and each of its BatchNorm members, ``||s - cluster means(s)|| / ||s||`` for
    ``s`` = ``running_mean`` and ``running_var``: channels whose kernels collapsed but whose statistics
    did not (BN frozen during training, too few steps since the collapse) still compute different
    outputs in eval mode, so a trim that ignores them is not lossless.

    Returns:
        ``(worst, "module.running_var")`` (``(0.0, None)`` without tracked statistics).
    """
    by_id = {g.id: g for g in groups}
    worst, where = 0.0, None
    for gid, cl in clusters.items():
        group = by_id.get(gid)
        if group is None:
            continue
        labels = labels_of(cl, group.size)
        counts = torch.tensor([float(len(c)) for c in cl], dtype=torch.float64)
        for member in group.members_of("out"):
            m = model.get_submodule(member.module)
            if not isinstance(m, NORM_LAYERS) or not m.track_running_stats or m.running_mean is None:
                continue
            index = torch.tensor([ix[0] for ix in member.idxs], dtype=torch.long)
            for attr in ("running_mean", "running_var"):
                v = getattr(m, attr).detach().cpu().double().index_select(0, index)  # (size,)
                means = torch.zeros(len(cl), dtype=torch.float64).index_add_(0, labels, v) / counts
                norm = float(v.norm())
                rel = float((v - means[labels]).norm()) / norm if norm > 0 else 0.0
                if rel > worst:
                    worst, where = rel, f"{member.module}.{attr}"
    return worst, where


FORCE_HINT = "force the trim with the C-SGD option force=True (--criterion-options ...,force=True)"


def trim(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    clusters: Clusters,
    *,
    example_inputs: Inputs | None = None,
    keep: str = "mean",
    max_deviation: float = 1e-3,
    force: bool = False,
    check_inputs: Inputs | None = None,
) -> TrimResult:
    """Keep one channel per cluster: fold, then remove the rest with the engine (in place).

    Three tests guard it. (1) Collapse: the relative intra-cluster deviation of every clustered
    parameter and of the BatchNorm running statistics (:func:`bn_stat_deviation`) is at most
    ``max_deviation``. (2) The same masked-vs-pruned check as every prune
    (:func:`~filterprune.graph.check.apply_plan_checked`, on ``check_inputs``) after folding. (3) The
    trimmed model's outputs on ``example_inputs`` differ from the trained model's by at most
    ``max_deviation`` (relative to the largest output). The trim runs on a copy first: a refusal leaves
    ``model`` trained and untrimmed.

    Args:
        model: the trained model ``groups`` were traced from (unwrapped).
        groups: its channel groups, as it is now.
        clusters: the clusters it was trained with.
        example_inputs: a batch to measure how much trimming changes the outputs (test 3).
        keep: ``"mean"`` (the kept channel becomes the cluster mean) or ``"first"``.
        max_deviation: the bound of tests 1 and 3.
        force: trim despite tests 1 and 3 (the output change is still measured and logged).
        check_inputs: a batch for the masked-vs-pruned check (test 2; ``None`` skips it).

    Raises:
        PruningError: a test failed (naming the option that forces the trim), or see :func:`fold`.
    """
    dev = deviation(model, clustered_params(model, groups, clusters))
    bn_dev, bn_where = bn_stat_deviation(model, groups, clusters)
    if not force and dev.max_relative > max_deviation:
        raise PruningError(f"C-SGD clusters have not collapsed: relative deviation {dev.max_relative:.3g} > "
                           f"{max_deviation:g}; train longer, raise the centripetal strength, or {FORCE_HINT}")
    if not force and bn_dev > max_deviation:
        raise PruningError(f"C-SGD clusters have not collapsed: BatchNorm statistics {bn_where} differ inside a "
                           f"cluster (relative deviation {bn_dev:.3g} > {max_deviation:g}); train longer with BN "
                           f"in training mode, or {FORCE_HINT}")
    before = _outputs(model, example_inputs) if example_inputs is not None else None
    trial = copy.deepcopy(model)
    plan = _fold_and_cut(trial, groups, clusters, keep, check_inputs)
    diff = None
    if before is not None:
        after = _outputs(trial, example_inputs)
        diff = float((after - before).abs().max() / before.abs().max().clamp_min(1e-12))
        if diff > max_deviation:
            if not force:
                raise PruningError(f"C-SGD trim would change the outputs by {diff:.3g} (relative) > "
                                   f"{max_deviation:g}: the clusters are not equivalent; train longer, or {FORCE_HINT}")
            logger.warning("C-SGD trim forced: outputs change by %.3g (relative)", diff)
    del trial
    _fold_and_cut(model, groups, clusters, keep, check_inputs)  # the same, deterministic steps on the model
    logger.info("C-SGD trim: removed %d channels in %d groups; deviation %.3g (BN statistics %.3g), output change %s",
                plan.num_removed(), len(plan.prune_idxs), dev.max_relative, bn_dev,
                "n/a" if diff is None else f"{diff:.3g}")
    return TrimResult(plan, dev, diff)


def _fold_and_cut(model: nn.Module, groups, clusters, keep: str, check_inputs) -> PrunePlan:
    plan = fold(model, groups, clusters, keep=keep)
    if check_inputs is not None:
        apply_plan_checked(model, groups, plan, check_inputs)
    else:
        apply_plan(model, groups, plan)
    return plan
