"""Physical channel removal: ``apply_plan(model, groups, plan)`` slices every member in place.

All removals of one call are gathered per (module, dim) in the *original* index space and applied at
once, so no index shifts between groups. Parameters keep their ``requires_grad``; buffers (BatchNorm
statistics, a registered layer's index maps) follow. Optimizer state is not touched: build a new
optimizer after surgery.

>>> import torch
>>> from torch import nn
>>> from filterprune.graph.trace import trace_groups
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
>>> groups = trace_groups(model, torch.randn(1, 3, 8, 8))
>>> _ = apply_plan(model, groups, PrunePlan({"0": [0, 5]}))
>>> model[0].out_channels, model[1].num_features, model[3].in_channels
(6, 6, 6)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import PruningError
from ..types import NORM_LAYERS
from .groups import ChannelGroup, PrunePlan
from .ops import layer_op

logger = logging.getLogger(__name__)

# Modules whose channel dims we know how to slice (here) and mask (masking.py).
PASS_THROUGH = (*NORM_LAYERS, nn.PReLU)

_CONV = nn.modules.conv._ConvNd


def is_depthwise(m: nn.Module) -> bool:
    """A conv whose every group holds one input and one output channel."""
    return isinstance(m, _CONV) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def is_mixer(m: nn.Module) -> bool:
    """A layer whose input and output channels are separate dims (a conv that is not depthwise, a
    Linear, a registered layer op): channels end at its input and new ones start at its output."""
    return (isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or layer_op(m) is not None) and not is_depthwise(m)


def dim_size(m: nn.Module, kind: str) -> int:
    """Width of ``m``'s output (``kind="out"``) or input (``"in"``) channel dim."""
    if isinstance(m, _CONV):
        return m.out_channels if kind == "out" or is_depthwise(m) else m.in_channels
    if isinstance(m, nn.Linear):
        return m.out_features if kind == "out" else m.in_features
    op = layer_op(m)
    if op is not None:
        return op.out_channels(m) if kind == "out" else op.in_channels(m)
    if isinstance(m, nn.PReLU):
        return m.num_parameters
    return m.num_features  # BatchNorm, InstanceNorm


def weight_dim(m: nn.Module, kind: str) -> int:
    """The axis of ``m.weight`` that holds its ``kind`` channels (conv/Linear)."""
    transposed = isinstance(m, _CONV) and m.transposed
    return int((kind == "in") != transposed)


def _keep(n: int, remove: Sequence[int]) -> torch.Tensor:
    removed = set(remove)
    return torch.tensor([i for i in range(n) if i not in removed], dtype=torch.long)


def _slice_param(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    old = getattr(module, name)
    if old is None:
        return
    new = old.detach().index_select(dim, keep.to(old.device)).clone()
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, name, new)  # a registered buffer stays registered


def _prune_grouped(m: nn.modules.conv._ConvNd, kind: str, keep: torch.Tensor) -> None:
    """A grouped (not depthwise) conv: every conv group must lose the same number of channels, and on
    the input side the same positions (the rows of group k read columns of block k only)."""
    g = m.groups
    if m.transposed:
        raise PruningError(f"cannot prune a grouped transposed conv (groups={g})")
    width = m.out_channels if kind == "out" else m.in_channels
    block = width // g
    per_block = [[int(i) % block for i in keep if int(i) // block == k] for k in range(g)]
    if len({len(b) for b in per_block}) != 1 or (kind == "in" and any(b != per_block[0] for b in per_block)):
        raise PruningError(f"a grouped conv (groups={g}) must lose the same channel positions in every group")
    if kind == "out":
        _slice_param(m, "weight", 0, keep)
        _slice_param(m, "bias", 0, keep)
        m.out_channels = len(keep)
    else:
        _slice_param(m, "weight", 1, torch.tensor(per_block[0], dtype=torch.long))
        m.in_channels = len(keep)


def prune_module(m: nn.Module, kind: str, remove: Sequence[int]) -> None:
    """Remove channels ``remove`` of ``m``'s ``kind`` dim in place (depthwise convs: both dims)."""
    if not remove:
        return
    op = layer_op(m)
    if op is None and not isinstance(m, (_CONV, nn.Linear, *PASS_THROUGH)):
        raise PruningError(f"no surgery for {type(m).__name__}")
    keep = _keep(dim_size(m, kind), remove)
    if op is not None:
        (op.prune_out if kind == "out" else op.prune_in)(m, keep)
    elif isinstance(m, _CONV):
        if m.groups > 1 and not is_depthwise(m):
            _prune_grouped(m, kind, keep)
        elif is_depthwise(m):
            _slice_param(m, "weight", 0, keep)
            _slice_param(m, "bias", 0, keep)
            m.in_channels = m.out_channels = m.groups = len(keep)
        elif kind == "out":
            _slice_param(m, "weight", weight_dim(m, "out"), keep)
            _slice_param(m, "bias", 0, keep)
            m.out_channels = len(keep)
        else:
            _slice_param(m, "weight", weight_dim(m, "in"), keep)
            m.in_channels = len(keep)
    elif isinstance(m, nn.Linear):
        _slice_param(m, "weight", weight_dim(m, kind), keep)
        if kind == "out":
            _slice_param(m, "bias", 0, keep)
            m.out_features = len(keep)
        else:
            m.in_features = len(keep)
    elif isinstance(m, NORM_LAYERS):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(m, name, 0, keep)
        m.num_features = len(keep)
    elif m.num_parameters > 1:  # PReLU with a slope per channel (a shared slope stays)
        _slice_param(m, "weight", 0, keep)
        m.num_parameters = len(keep)


def removals(groups: Sequence[ChannelGroup], plan: PrunePlan) -> dict[tuple[str, str], list[int]]:
    """Per (module name, kind): the indices ``plan`` removes, validated against ``groups``.

    Raises:
        PruningError: the plan names an unknown or non-prunable group, or empties a group.
        ValueError: a channel index is out of range.
    """
    by_id = {g.id: g for g in groups}
    out: dict[tuple[str, str], set[int]] = defaultdict(set)
    for gid, prune_idxs in plan.prune_idxs.items():
        if not prune_idxs:
            continue
        if gid not in by_id:
            raise PruningError(f"plan names unknown group {gid!r}")
        group = by_id[gid]
        if not group.prunable:
            raise PruningError(f"group {gid} is not prunable: {group.reason}")
        chans = set(prune_idxs)
        if not all(0 <= c < group.size for c in chans):
            raise ValueError(f"plan for group {gid} has channels outside [0, {group.size})")
        if len(chans) >= group.size:
            raise PruningError(f"plan removes every channel of group {gid}")
        for member in group.members:
            out[(member.module, member.kind)].update(i for c in chans for i in member.idxs[c])
    return {k: sorted(v) for k, v in out.items()}


def apply_plan(model: nn.Module, groups: Sequence[ChannelGroup], plan: PrunePlan) -> nn.Module:
    """Physically remove the channels of ``plan`` from ``model`` (in place) and return it.

    ``groups`` must describe the model as it is now (trace again after each surgery).

    Raises:
        PruningError: see :func:`removals`.
        ValueError: a channel index is out of range.
    """
    todo = removals(groups, plan)
    for (name, kind), remove in todo.items():
        module = model.get_submodule(name)
        if is_depthwise(module) and kind == "in":
            continue  # its "out" entry removes both dims
        prune_module(module, kind, remove)
    logger.debug("removed %d channels from %d groups", plan.num_removed(), len(plan.prune_idxs))
    return model
