"""C-SGD clusters: which channels of each group are trained to become identical, and which one stays.

Provenance: Ding et al., "Centripetal SGD for Pruning Very Deep Convolutional Networks with
Complicated Structure", CVPR 2019, arXiv 1904.03837; journal version arXiv 2107.14444. Reference code
DingXiaoH/Centripetal-SGD @ c561153 (Apache-2.0), read for the algorithm only, no code copied:
k-means on the filters (``cluster_by_kmeans``), the contiguous ``even`` split
(``calculate_eqcls_evenly``), one cluster per target channel, no empty cluster.

Differences from the reference, on purpose:

* k-means is seeded (``random_state``, fixed ``n_init``), so clusters are reproducible.
* A group tied by residual adds is clustered on the concatenation of *all* its producers' kernels
  (optionally with BN gamma/beta), not on one "pacesetter" layer.
* Weightless routers (layers whose :class:`~filterprune.graph.ops.LayerOp` has a ``channel_map``, such as
  the CIFAR ResNet's option-A shortcut) constrain the
  group they feed: channel ``o`` of that group receives input channel ``i`` (``channel_map[i] == o``) of
  another group. For the trimmed network to equal the trained one, the channels fed by one input
  cluster must form exactly one cluster (they are identical once the input cluster has collapsed, and
  the kept input can feed only one kept output), and zero-padded channels may only cluster among
  themselves. The fed clusters are therefore dictated by the input group; the free channels are
  clustered into the remaining count (:func:`cluster_groups` logs when that changes a group's width).

A group's clusters are lists of group-channel indices, the kept channel first.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..criteria._weights import group_slices
from ..errors import PruningError
from ..graph.groups import ChannelGroup, PrunePlan
from ..graph.ops import layer_op
from ..graph.surgery import apply_plan
from ..graph.trace import trace_groups
from ..metrics import count
from ..selection import SelectOptions, select
from ..types import GroupId, PathLike, Scores
from ..utils.io import atomic_write

logger = logging.getLogger(__name__)

Clusters = dict[GroupId, list[list[int]]]  # per group: clusters of channels, the kept channel first
CLUSTERINGS = ("kmeans", "even")


def even_clusters(n: int, m: int) -> list[list[int]]:
    """Contiguous blocks of ``n // m`` or ``n // m + 1`` channels, the larger ones first.

    >>> even_clusters(7, 3)
    [[0, 1, 2], [3, 4], [5, 6]]
    """
    _check_count(n, m)
    base, extra = divmod(n, m)
    out, start = [], 0
    for c in range(m):
        size = base + (c < extra)
        out.append(list(range(start, start + size)))
        start += size
    return out


def kmeans_clusters(features: Tensor, m: int, *, seed: int = 0, n_init: int = 10) -> list[list[int]]:
    """k-means of the rows of ``features`` (``(n, d)``) into exactly ``m`` non-empty clusters.

    Deterministic for a given ``seed``. When the rows have fewer than ``m`` distinct values, the
    largest clusters are split until there are ``m``. Clusters are sorted, ordered by first member.

    >>> kmeans_clusters(torch.tensor([[0.0], [10.0], [0.1], [10.1]]), 2)
    [[0, 2], [1, 3]]
    """
    n = features.shape[0]
    _check_count(n, m)
    if m == n:
        return [[i] for i in range(n)]
    if m == 1:
        return [list(range(n))]
    from sklearn.cluster import KMeans

    data = features.detach().reshape(n, -1).to("cpu", torch.float64).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fewer distinct clusters than n_clusters": fixed below
        labels = KMeans(n_clusters=m, random_state=seed, n_init=n_init).fit(data).labels_
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(i)
    clusters = sorted(members.values())
    while len(clusters) < m:  # duplicate rows: split the largest cluster (first of equals)
        big = max(range(len(clusters)), key=lambda c: (len(clusters[c]), -c))
        clusters.append([clusters[big].pop()])
        clusters = sorted(clusters)
    return clusters


def _check_count(n: int, m: int) -> None:
    if not 1 <= m <= n:
        raise ValueError(f"cannot split {n} channels into {m} clusters")


def group_features(model: nn.Module, group: ChannelGroup, *, include_bn: bool = False) -> Tensor:
    """One row per group channel: the kernels of every producer (conv/Linear) of the group, side by side.

    Args:
        model: the model the group was traced from.
        group: the channel group.
        include_bn: append the BatchNorm gamma/beta of the channel.
    """
    families = ("conv", "linear", "norm") if include_bn else ("conv", "linear")
    parts = []
    for s in group_slices(model, group, kinds=("out",), families=families):
        if s.family != "norm" and s.role != "weight":
            continue
        order = torch.argsort(s.owner, stable=True)
        parts.append(s.rows[order].reshape(group.size, -1).float())  # (size, K * rows per channel)
    if not parts:
        raise PruningError(f"group {group.id} has no producer kernel to cluster")
    return torch.cat(parts, 1)


def _channel_of(member_idxs: Sequence[Sequence[int]]) -> dict[int, int]:
    """Index in a member's dimension -> group channel."""
    return {i: c for c, idxs in enumerate(member_idxs) for i in idxs}


def shortcut_feeds(model: nn.Module, group: ChannelGroup, groups: Sequence[ChannelGroup]):
    """For each weightless router (a shortcut) producing channels of ``group``: (input group, {input channel: fed channel}).

    Raises:
        PruningError: the shortcut's input group cannot be found.
    """
    out = []
    for member in group.members_of("out"):
        module = model.get_submodule(member.module)
        op = layer_op(module)
        index_map = op.channel_map(module) if op is not None else None
        if index_map is None:
            continue
        source = next(((g, m) for g in groups for m in g.members_of("in") if m.module == member.module), None)
        if source is None:
            raise PruningError(f"group {group.id}: no group feeds shortcut {member.module}")
        src_group, src_member = source
        fed_channel = _channel_of(member.idxs)
        index = index_map.tolist()
        feeds = {}
        for c, idxs in enumerate(src_member.idxs):
            targets = {fed_channel[index[i]] for i in idxs if index[i] >= 0}
            if len(targets) > 1:
                raise PruningError(f"shortcut {member.module} spreads one channel over several outputs")
            if targets:
                feeds[c] = targets.pop()
        out.append((src_group, feeds))
    return out


def cluster_groups(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    widths: Mapping[GroupId, int],
    *,
    method: str = "kmeans",
    seed: int = 0,
    include_bn: bool = False,
    n_init: int = 10,
    log: bool = True,
) -> Clusters:
    """Clusters for every prunable group: ``widths[group]`` clusters (a missing group keeps its width).

    Groups left with only singleton clusters are omitted from the result (C-SGD leaves them alone).

    Args:
        model: the model ``groups`` were traced from.
        groups: its channel groups.
        widths: target number of channels (= clusters) per group id.
        method: ``"kmeans"`` (on :func:`group_features`) or ``"even"`` (contiguous blocks).
        seed: k-means seed.
        include_bn: k-means also sees BN gamma/beta.
        n_init: k-means restarts.
        log: log the clusters, and a warning where a shortcut's ties change a group's width.

    Raises:
        ValueError: unknown method, or a width outside [1, group size].
        PruningError: an unknown or non-prunable group is given a smaller width.
    """
    if method not in CLUSTERINGS:
        raise ValueError(f"clustering must be one of {', '.join(CLUSTERINGS)}, got {method!r}")
    by_id = {g.id: g for g in groups}
    for gid, width in widths.items():
        if gid not in by_id:
            raise PruningError(f"widths name unknown group {gid!r}")
        if width < by_id[gid].size and not by_id[gid].prunable:
            raise PruningError(f"group {gid} is not prunable: {by_id[gid].reason}")
    done: dict[GroupId, list[list[int]]] = {}

    def clusters_of(group: ChannelGroup) -> list[list[int]]:
        if group.id in done:
            return done[group.id]
        m = int(widths.get(group.id, group.size))
        _check_count(group.size, m)
        signature: list[list] = [[] for _ in range(group.size)]
        fed_by_kept = set()  # channels fed by the kept channel of their input cluster
        for src_group, feeds in shortcut_feeds(model, group, groups):
            src = clusters_of(src_group) if src_group.prunable else [[c] for c in range(src_group.size)]
            label = {c: k for k, cl in enumerate(src) for c in cl}
            for c_in, c_out in feeds.items():
                signature[c_out].append((src_group.id, label[c_in]))
                if c_in == src[label[c_in]][0]:
                    fed_by_kept.add(c_out)
        free = [c for c in range(group.size) if not signature[c]]
        blocks: dict[tuple, list[int]] = {}
        for c in range(group.size):
            if signature[c]:
                blocks.setdefault(tuple(signature[c]), []).append(c)
        fixed = []
        for chans in blocks.values():
            first = next((c for c in chans if c in fed_by_kept), chans[0])
            fixed.append([first, *[c for c in chans if c != first]])
        n_free = m - len(fixed)
        if free:
            n_free = min(max(n_free, 1), len(free))
        else:
            n_free = 0
        if len(fixed) + n_free != m and log:
            logger.warning("group %s: %d clusters instead of %d (its option-A shortcut ties %d clusters to "
                           "the group that feeds it)", group.id, len(fixed) + n_free, m, len(fixed))
        rest: list[list[int]] = []
        if n_free:
            if method == "even" or n_free in (1, len(free)):
                local = even_clusters(len(free), n_free)
            else:
                features = group_features(model, group, include_bn=include_bn)[free]
                local = kmeans_clusters(features, n_free, seed=seed, n_init=n_init)
            rest = [[free[i] for i in cl] for cl in local]
        result = sorted(fixed + rest, key=lambda cl: cl[0])
        done[group.id] = result
        return result

    for group in groups:
        if group.prunable:
            clusters_of(group)
    clusters = {gid: cl for gid, cl in done.items() if any(len(c) > 1 for c in cl)}
    if log:
        logger.info("C-SGD clusters: %s", ", ".join(f"{gid} {by_id[gid].size}->{len(cl)}" for gid, cl in clusters.items()))
    return clusters


def target_widths(
    model: nn.Module,
    example_inputs,
    groups: Sequence[ChannelGroup],
    options: SelectOptions,
    *,
    criterion: str = "l1",
    data: Iterable | None = None,
    seed: int = 0,
    curves_for: Callable[[Sequence[ChannelGroup], Scores], Any] | None = None,
) -> dict[GroupId, int]:
    """Channels per group that ``options``' target asks for, as chosen by ranking with ``criterion``.

    C-SGD uses only the counts (one cluster per kept channel), not which channels the criterion keeps.
    With ``options.allocation == "sensitivity"``, ``curves_for(groups, scores)`` measures the
    sensitivity curves (the prune workflow's, cached in the run folder).

    The counts are those :func:`cluster_groups` can keep (:func:`tied_widths`): where an option-A
    shortcut's ties make them remove more of the target's quantity than asked (by over 0.005; a group cut
    hard drags the groups it feeds along), the target handed to selection is lowered by bisection to the
    smallest one whose tied counts still meet the target (MACs, params or channels; a latency target is
    not re-counted here).

    Raises:
        ValueError: sensitivity allocation without ``curves_for``.
    """
    from ..criteria import ScoringContext, create_criterion

    crit = create_criterion(criterion)
    ctx = ScoringContext(model=model, example_inputs=example_inputs, groups=list(groups), data=data, seed=seed)
    scores = crit.score(ctx)
    curves = None
    if options.mode == "sensitivity":
        if curves_for is None:
            raise ValueError("C-SGD widths by sensitivity need curves_for (filterprune prune --criterion csgd "
                             "--allocation sensitivity measures them)")
        curves = curves_for(groups, scores)

    def widths_for(opts: SelectOptions) -> dict[GroupId, int]:
        plan = select(model, example_inputs, groups, scores, opts, curves=curves)
        asked = {g.id: g.size - len(plan.prune_idxs.get(g.id, ())) for g in groups if g.prunable}
        return tied_widths(model, groups, asked)

    widths = widths_for(options)
    name, goal = options.target
    if name == "target_latency":
        return widths
    base = count(model, example_inputs)
    removed = _removed_fraction(model, example_inputs, groups, widths, name, base)
    if removed <= goal + _TIE_SLACK:
        return widths
    # Option-A shortcut ties removed more than asked (a group cut hard drags the groups it feeds along):
    # bisect the target handed to selection for the smallest one whose tied widths still meet the goal.
    lo, hi, best = 0.0, goal, widths
    for _ in range(_TIE_BISECTIONS):
        mid = (lo + hi) / 2
        trial = widths_for(dataclasses.replace(options, **{name: mid}))
        if _removed_fraction(model, example_inputs, groups, trial, name, base) >= goal - _TIE_SLACK:
            hi, best = mid, trial
        else:
            lo = mid
    logger.info("C-SGD widths: shortcut ties removed %.3f of %s at the target %.3f; selection at %.3f instead",
                removed, name, goal, hi)
    return best


#: how far from its target a tied C-SGD plan may land (over: before the target handed to selection is
#: lowered; under: in that search)
_TIE_SLACK = 0.005
#: bisection steps on that target (its error: target / 2**steps)
_TIE_BISECTIONS = 12


def tied_widths(model: nn.Module, groups: Sequence[ChannelGroup], widths: Mapping[GroupId, int]) -> dict[GroupId, int]:
    """The channels per group that :func:`cluster_groups` can keep for ``widths`` (module docstring: the
    channels an option-A shortcut feeds from one input cluster form one cluster, so a group can keep
    fewer than asked). Every prunable group is listed. Cheap: the contiguous clustering, no k-means."""
    clusters = cluster_groups(model, groups, widths, method="even", log=False)
    return {g.id: len(clusters[g.id]) if g.id in clusters else int(widths.get(g.id, g.size))
            for g in groups if g.prunable}


def _removed_fraction(model: nn.Module, example_inputs, groups: Sequence[ChannelGroup],
                      widths: Mapping[GroupId, int], name: str, before: tuple[int, int]) -> float:
    """The fraction of channels (``ratio``), MACs or params that keeping ``widths`` removes, counted on a
    pruned copy (which channels go does not change the count); ``before``: ``model``'s (MACs, params)."""
    if name == "ratio":
        sizes = {g.id: g.size for g in groups if g.prunable}
        return 1 - sum(widths.values()) / max(1, sum(sizes.values()))
    net = copy.deepcopy(model)
    plan = PrunePlan({g.id: list(range(int(widths[g.id]), g.size)) for g in groups
                      if g.prunable and widths[g.id] < g.size})
    apply_plan(net, trace_groups(net, example_inputs, probe=False), plan)
    after = count(net, example_inputs)
    k = 0 if name == "target_macs" else 1
    return 1 - after[k] / max(1, before[k])


def save_clusters(clusters: Clusters, path: PathLike) -> None:
    """Write clusters as JSON (``{group id: [[kept, ...], ...]}``)."""
    atomic_write(path, json.dumps(clusters, indent=1))


def load_clusters(path: PathLike) -> Clusters:
    """Read clusters written by :func:`save_clusters`."""
    data = json.loads(Path(path).read_text())
    return {str(gid): [[int(c) for c in cl] for cl in cls] for gid, cls in data.items()}


def labels_of(clusters: list[list[int]], size: int) -> Tensor:
    """``(size,)`` long: the cluster of each channel.

    Raises:
        ValueError: the clusters are not a partition of ``range(size)``.
    """
    labels = torch.full((size,), -1, dtype=torch.long)
    for k, cl in enumerate(clusters):
        if not cl:
            raise ValueError("empty cluster")
        for c in cl:
            if not 0 <= c < size or labels[c] >= 0:
                raise ValueError(f"clusters are not a partition of {size} channels")
            labels[c] = k
    if (labels < 0).any():
        raise ValueError(f"clusters are not a partition of {size} channels")
    return labels
