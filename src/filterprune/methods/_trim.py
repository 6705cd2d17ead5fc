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

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PruningError
from ..graph.check import evaluating
from ..graph.groups import ChannelGroup, PrunePlan
from ..graph.ops import layer_op
from ..graph.surgery import apply_plan, is_depthwise, weight_dim
from ..graph.trace import Inputs, flat_outputs, forward
from ._clusters import Clusters, labels_of, shortcut_feeds
from ._slots import Deviation, _module_params, clustered_params, deviation

logger = logging.getLogger(__name__)

KEEP = ("mean", "first")
_NORM = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


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
    if isinstance(module, _NORM) and module.track_running_stats:
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
    with evaluating(model):
        return torch.cat([t.detach().float().flatten() for t in flat_outputs(forward(model, example_inputs))])


def trim(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    clusters: Clusters,
    *,
    example_inputs: Inputs | None = None,
    keep: str = "mean",
    max_deviation: float = 1e-3,
    force: bool = False,
) -> TrimResult:
    """Keep one channel per cluster: fold, then remove the rest with the engine (in place).

    Args:
        model: the trained model ``groups`` were traced from (unwrapped).
        groups: its channel groups, as it is now.
        clusters: the clusters it was trained with.
        example_inputs: a batch to measure how much trimming changed the outputs.
        keep: ``"mean"`` (the kept channel becomes the cluster mean) or ``"first"``.
        max_deviation: refuse when a parameter's relative deviation from its cluster means is above this.
        force: trim anyway.

    Raises:
        PruningError: the clusters have not collapsed (and not ``force``), or see :func:`fold`.
    """
    dev = deviation(model, clustered_params(model, groups, clusters))
    if dev.max_relative > max_deviation and not force:
        raise PruningError(f"C-SGD clusters have not collapsed: relative deviation {dev.max_relative:.3g} > "
                           f"{max_deviation:g}; train longer, raise the centripetal strength, or force the trim")
    before = _outputs(model, example_inputs) if example_inputs is not None else None
    plan = fold(model, groups, clusters, keep=keep)
    apply_plan(model, groups, plan)
    diff = None
    if before is not None:
        after = _outputs(model, example_inputs)
        diff = float((after - before).abs().max() / before.abs().max().clamp_min(1e-12))
    logger.info("C-SGD trim: removed %d channels in %d groups; deviation %.3g, output change %s",
                plan.num_removed(), len(plan.prune_idxs), dev.max_relative,
                "n/a" if diff is None else f"{diff:.3g}")
    return TrimResult(plan, dev, diff)
