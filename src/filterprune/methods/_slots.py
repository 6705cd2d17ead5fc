"""The parameters C-SGD acts on: every producer parameter of a clustered group, sliced per channel.

A :class:`ClusteredParam` says where a group's channels live in one parameter (module, attribute, axis,
positions) and which cluster each channel belongs to. The centripetal update, the deviation monitor
and the trimming all read the model through these, so they always agree on what "the clustered
parameters" are. Modules are named as in the traced (unwrapped) model; :func:`resolve` finds them in a
wrapped one (``module.`` of DataParallel/DDP, ``_orig_mod.`` of ``torch.compile``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import PruningError
from ..graph.groups import ChannelGroup
from ..graph.surgery import is_depthwise, weight_dim
from ..types import NORM_LAYERS, GroupId
from ._clusters import Clusters, labels_of

_CONV = nn.modules.conv._ConvNd
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class ClusteredParam:
    """One parameter of a clustered group's producer.

    Attributes:
        group: the group id.
        module: qualified module name in the traced model.
        attr: parameter attribute (``"weight"``, ``"bias"``).
        dim: the axis that holds the group's channels.
        index: ``(n,)`` position along ``dim`` of each group channel.
        labels: ``(n,)`` cluster of each group channel.
        counts: ``(m,)`` cluster sizes (float).
        kernel: a conv/Linear weight (decayed with weight decay + centripetal strength); otherwise a
            vector (BN gamma/beta, a bias, PReLU slopes) with the vector strength.
    """

    group: GroupId
    module: str
    attr: str
    dim: int
    index: Tensor
    labels: Tensor
    counts: Tensor
    kernel: bool

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}"

    def rows(self, t: Tensor) -> Tensor:
        """``(n, K)``: the slice of ``t`` (the parameter, its grad...) of each group channel."""
        return t.index_select(self.dim, self.index.to(t.device)).movedim(self.dim, 0).reshape(len(self.index), -1)

    def write_rows(self, t: Tensor, rows: Tensor) -> None:
        """Write ``(n, K)`` rows back into ``t`` in place."""
        shape = list(t.shape)
        shape[self.dim] = len(self.index)
        moved = [shape[self.dim], *shape[: self.dim], *shape[self.dim + 1:]]
        t.index_copy_(self.dim, self.index.to(t.device), rows.reshape(moved).movedim(0, self.dim))

    def cluster_mean(self, rows: Tensor) -> Tensor:
        """``(m, K)``: the mean row of each cluster."""
        labels = self.labels.to(rows.device)
        sums = torch.zeros(len(self.counts), rows.shape[1], dtype=rows.dtype, device=rows.device)
        return sums.index_add_(0, labels, rows) / self.counts.to(rows.device, rows.dtype)[:, None]


def _module_params(module: nn.Module, name: str) -> list[tuple[str, int, bool]]:
    """(attribute, channel axis, is kernel) of a producer module's parameters."""
    if isinstance(module, _CONV):
        out = [("weight", 0 if is_depthwise(module) else weight_dim(module, "out"), True)]
        return out + ([("bias", 0, False)] if module.bias is not None else [])
    if isinstance(module, nn.Linear):
        return [("weight", 0, True)] + ([("bias", 0, False)] if module.bias is not None else [])
    if isinstance(module, NORM_LAYERS):
        return [(a, 0, False) for a in ("weight", "bias") if getattr(module, a, None) is not None]
    if isinstance(module, nn.PReLU):
        return [("weight", 0, False)] if module.num_parameters > 1 else []
    if not any(True for _ in module.parameters(recurse=False)):  # a weightless router (a shortcut)
        return []
    raise PruningError(f"C-SGD cannot cluster the channels of {name} ({type(module).__name__})")


def clustered_params(model: nn.Module, groups: Sequence[ChannelGroup], clusters: Clusters) -> list[ClusteredParam]:
    """Every producer parameter of every clustered group, in group and member order.

    Raises:
        PruningError: a clustered group is unknown or not prunable, a producer is frozen, or a layer
            type C-SGD cannot handle holds the channels.
        ValueError: a group's clusters are not a partition of its channels.
    """
    by_id = {g.id: g for g in groups}
    out: list[ClusteredParam] = []
    for gid, cl in clusters.items():
        group = by_id.get(gid)
        if group is None or not group.prunable:
            raise PruningError(f"C-SGD: group {gid!r} is unknown or not prunable")
        labels = labels_of(cl, group.size)
        counts = torch.tensor([float(len(c)) for c in cl])
        for member in group.members_of("out"):
            module = model.get_submodule(member.module)
            params = _module_params(module, member.module)
            if params and any(len(ix) != 1 for ix in member.idxs):
                raise PruningError(f"C-SGD: {member.module} holds a channel of group {gid} more than once")
            index = torch.tensor([ix[0] for ix in member.idxs], dtype=torch.long) if params else None
            for attr, dim, kernel in params:
                if not getattr(module, attr).requires_grad:
                    raise PruningError(f"C-SGD: {member.module}.{attr} is frozen; its channels cannot collapse")
                out.append(ClusteredParam(gid, member.module, attr, dim, index, labels, counts, kernel))
    return out


def resolve(model: nn.Module, params: Sequence[ClusteredParam]) -> list[tuple[str, nn.Module]]:
    """(qualified name in ``model``, module) of each param's module, through wrapper prefixes.

    Raises:
        PruningError: a module is not found in ``model``.
    """
    named = dict(model.named_modules())
    if not all(p.module in named for p in params):
        stripped: dict[str, tuple[str, nn.Module]] = {}
        for full, m in named.items():
            short = full
            while short.startswith(_WRAPPER_PREFIXES):
                short = short.split(".", 1)[1]
            stripped.setdefault(short, (full, m))
        missing = [p.module for p in params if p.module not in stripped]
        if missing:
            raise PruningError(f"C-SGD: the model has no layer {missing[0]!r} (was it traced on another model?)")
        return [stripped[p.module] for p in params]
    return [(p.module, named[p.module]) for p in params]


@dataclass(frozen=True)
class Deviation:
    """How far the clusters are from collapsed.

    Attributes:
        kernel: sum over clusters and members of ``||w_i - mean||^2`` for kernels (the reference's
            ``deviation_sum``).
        vector: the same for vectors (BN gamma/beta, biases).
        max_relative: max over parameters of ``||W - cluster means|| / ||W||``.
    """

    kernel: float
    vector: float
    max_relative: float

    def to_dict(self) -> dict[str, float]:
        return {"csgd_deviation": self.kernel, "csgd_deviation_vec": self.vector,
                "csgd_max_rel_deviation": self.max_relative}


@torch.no_grad()
def deviation(model: nn.Module, params: Sequence[ClusteredParam]) -> Deviation:
    """The intra-cluster deviation of ``params`` in ``model`` (wrapped or not)."""
    sums = {True: 0.0, False: 0.0}
    worst = 0.0
    for p, (_, module) in zip(params, resolve(model, params), strict=True):
        rows = p.rows(getattr(module, p.attr).detach().double())
        dev = (rows - p.cluster_mean(rows)[p.labels.to(rows.device)]).pow(2).sum().item()
        sums[p.kernel] += dev
        norm = rows.pow(2).sum().item()
        worst = max(worst, (dev / norm) ** 0.5 if norm > 0 else 0.0)
    return Deviation(sums[True], sums[False], worst)
