"""The parameter entries each group channel owns: the one place that knows weight layouts.

For every member of a :class:`~filterprune.graph.groups.ChannelGroup`, :func:`group_slices` yields one
:class:`ParamSlice` per parameter (``weight``, ``bias``): a 2-D ``rows`` tensor with one row per index
in ``member.idxs`` and an ``owner`` vector naming the group channel of each row. Criteria reduce
``rows`` along dim 1 and sum rows into channels with :meth:`ParamSlice.per_channel`; they never branch
on layer types. The layouts, per member kind:

===================  ============================================  ==================================
module               ``"out"`` row for index i                     ``"in"`` row for index i
===================  ============================================  ==================================
Conv (groups g)      ``weight[i]`` (C_in/g * k*k), ``bias[i]``     ``weight[rows of i's group, i % (C_in/g)]``
                                                                   (C_out/g * k*k), no bias
ConvTranspose        ``weight[rows of i's group, :, i % (C_out/g)]``  ``weight[i]``, no bias
Linear               ``weight[i, :]``, ``bias[i]``                 ``weight[:, i]`` (a flattened
                                                                   channel owns H*W such indices)
BatchNorm/GroupNorm  ``weight[i]`` (gamma), ``bias[i]`` (beta)    same as ``"out"``
LayerNorm            ``weight[i]``, ``bias[i]`` (channels-last)    same as ``"out"``
PReLU(C)             ``weight[i]`` (slope, family ``act``)          same; ``PReLU()`` (one shared slope): none
===================  ============================================  ==================================

Grouped convs: with tied channels (``graph/_ties.py``) a group channel owns one index per conv group;
its rows are the filters (out) or input columns (in) of each, summed by :meth:`ParamSlice.per_channel`.

A depthwise conv (``C_in/g == 1``) that is both an ``"out"`` and an ``"in"`` member of a group has
only its out rows yielded: its in row for channel c is the same filter, which would be counted twice.
Modules without parameters (pools, PadShortcut, Identity) yield nothing. A module with parameters and
no slicer raises; :func:`register_slicer` adds one for a custom layer.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import FilterpruneError
from ..graph.groups import ChannelGroup, Member

Family = Literal["conv", "linear", "norm", "act"]
Role = Literal["weight", "bias"]
# slicer(module, kind, idx (n,), tensors {"weight": ..., "bias": ...}) -> [(role, rows (n, K)), ...]
Slicer = Callable[[nn.Module, str, Tensor, Mapping[str, Tensor]], list[tuple[str, Tensor]]]

_SLICERS: dict[type, tuple[Family, Slicer]] = {}


@dataclass(frozen=True)
class ParamSlice:
    """The entries of one parameter that carry a group's channels.

    Attributes:
        member: the group member the slice comes from.
        param: qualified parameter name, e.g. ``"layer1.0.conv1.weight"``.
        role: ``"weight"`` or ``"bias"`` (for a norm layer: gamma or beta).
        family: ``"conv"``, ``"linear"`` or ``"norm"``.
        rows: ``(R, K)``, one row per index in ``member.idxs`` (channels concatenated in order).
        owner: ``(R,)`` long, the group channel each row belongs to.
        size: the group's number of channels.
    """

    member: Member
    param: str
    role: str
    family: str
    rows: Tensor
    owner: Tensor
    size: int

    def per_channel(self, values: Tensor) -> Tensor:
        """Sum per-row ``values`` (``(R,)``, or ``(R, K)`` summed over K first) into ``(size,)``."""
        if values.dim() == 2:
            values = values.sum(1)
        out = torch.zeros(self.size, dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.owner.to(values.device), values)


def register_slicer(*module_types: type, family: Family) -> Callable[[Slicer], Slicer]:
    """Register how to slice the parameters of ``module_types`` (subclasses included)."""

    def decorator(fn: Slicer) -> Slicer:
        for t in module_types:
            _SLICERS[t] = (family, fn)
        return fn

    return decorator


def group_slices(
    model: nn.Module,
    group: ChannelGroup,
    *,
    kinds: Collection[str] = ("out", "in"),
    families: Collection[str] | None = None,
    roles: Collection[str] | None = None,
    tensors: Mapping[str, Tensor] | None = None,
) -> Iterator[ParamSlice]:
    """Yield the parameter slices of ``group``'s members, in member order.

    Args:
        model: the model the group was traced from.
        group: the channel group.
        kinds: member kinds to include (``"out"``: producers, ``"in"``: consumers).
        families: restrict to ``"conv"``, ``"linear"``, ``"norm"`` layers; ``None`` for all.
        roles: restrict to ``"weight"`` or ``"bias"``; ``None`` for both.
        tensors: same-shaped stand-ins for parameters by qualified name (gradients, ``w * grad``...);
            parameters missing from it are skipped. ``None`` slices the parameters themselves.

    Raises:
        FilterpruneError: a member module has parameters but no registered slicer.
    """
    out_modules = {m.module for m in group.members if m.kind == "out"}
    for member in group.members:
        if member.kind not in kinds:
            continue
        module = model.get_submodule(member.module)
        entry = _lookup(module)
        if entry is None:
            if any(True for _ in module.parameters(recurse=False)):
                raise FilterpruneError(
                    f"criteria cannot read {member.module} ({type(module).__name__}): no parameter slicer for it"
                )
            continue
        family, slicer = entry
        if families is not None and family not in families:
            continue
        if member.kind == "in" and member.module in out_modules and _is_depthwise(module):
            continue  # its in row is its own filter, already yielded as an out row
        sources = _sources(module, member.module, tensors)
        if not sources:
            continue
        lengths = [len(ix) for ix in member.idxs]
        if len(lengths) != group.size:
            raise FilterpruneError(f"group {group.id}: member {member.module} has {len(lengths)} channels, not {group.size}")
        device = next(iter(sources.values())).device
        idx = torch.tensor([i for ix in member.idxs for i in ix], dtype=torch.long, device=device)
        owner = torch.repeat_interleave(torch.arange(group.size, device=device), torch.tensor(lengths, device=device))
        for role, rows in slicer(module, member.kind, idx, sources):
            if roles is None or role in roles:
                yield ParamSlice(member, f"{member.module}.{role}", role, family, rows, owner, group.size)


def _lookup(module: nn.Module) -> tuple[Family, Slicer] | None:
    for klass in type(module).__mro__:
        if klass in _SLICERS:
            return _SLICERS[klass]
    return None


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.in_channels // module.groups == 1


def _sources(module: nn.Module, qualname: str, tensors: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for role in ("weight", "bias"):
        p = getattr(module, role, None)
        if not isinstance(p, Tensor):
            continue
        t = p if tensors is None else tensors.get(f"{qualname}.{role}")
        if t is not None:
            out[role] = t.detach()
    return out


def _grouped_rows(weight: Tensor, groups: int, idx: Tensor) -> Tensor:
    """Rows of a (grouped) conv weight for indices along its dimension 1 (summed over groups).

    A conv weight is ``(A, B/g, *k)`` with ``A`` split into ``g`` blocks; index ``i`` of the ``B``
    channels (conv in-channels, transposed-conv out-channels) lives in block ``i // (B/g)`` at column
    ``i % (B/g)``: its row is that column across the block's ``A/g`` rows. With ``g == 1`` this is
    ``weight[:, i]``; for a depthwise conv it is channel i's own filter.
    """
    a, b_per_group = weight.shape[0], weight.shape[1]
    w = weight.reshape(groups, a // groups, b_per_group, -1)  # (g, A/g, B/g, k*k)
    rows = w[idx // b_per_group, :, idx % b_per_group]  # (n, A/g, k*k)
    return rows.reshape(len(idx), -1)


@register_slicer(nn.Conv1d, nn.Conv2d, nn.Conv3d, family="conv")
def _conv(module: nn.Module, kind: str, idx: Tensor, t: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    w = t.get("weight")
    out: list[tuple[str, Tensor]] = []
    if kind == "out":
        if w is not None:
            out.append(("weight", w[idx].reshape(len(idx), -1)))  # (n, C_in/g * k*k)
        if "bias" in t:
            out.append(("bias", t["bias"][idx].reshape(-1, 1)))
    elif w is not None:
        out.append(("weight", _grouped_rows(w, module.groups, idx)))  # (n, C_out/g * k*k)
    return out


@register_slicer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, family="conv")
def _conv_transpose(module: nn.Module, kind: str, idx: Tensor, t: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    w = t.get("weight")  # (C_in, C_out/g, *k)
    out: list[tuple[str, Tensor]] = []
    if kind == "out":
        if w is not None:
            out.append(("weight", _grouped_rows(w, module.groups, idx)))
        if "bias" in t:
            out.append(("bias", t["bias"][idx].reshape(-1, 1)))
    elif w is not None:
        out.append(("weight", w[idx].reshape(len(idx), -1)))
    return out


@register_slicer(nn.Linear, family="linear")
def _linear(module: nn.Module, kind: str, idx: Tensor, t: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    w = t.get("weight")  # (out_features, in_features)
    out: list[tuple[str, Tensor]] = []
    if kind == "out":
        if w is not None:
            out.append(("weight", w[idx]))  # (n, in_features)
        if "bias" in t:
            out.append(("bias", t["bias"][idx].reshape(-1, 1)))
    elif w is not None:
        out.append(("weight", w[:, idx].t()))  # (n, out_features)
    return out


@register_slicer(nn.PReLU, family="act")
def _prelu(module: nn.Module, kind: str, idx: Tensor, t: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    w = t.get("weight")  # (num_parameters,): one slope per channel, or one shared by all
    return [("weight", w[idx].reshape(-1, 1))] if w is not None and w.numel() > 1 else []


@register_slicer(nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, family="norm")
def _norm(module: nn.Module, kind: str, idx: Tensor, t: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    return [(role, t[role][idx].reshape(-1, 1)) for role in ("weight", "bias") if role in t]  # gamma, beta
