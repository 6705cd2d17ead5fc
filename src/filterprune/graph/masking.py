"""Reversible masking: make a model behave exactly as if channels were removed, then undo it.

A group's channel is visible downstream only through its consumers: the input slices of the convs
and Linears that read it (``kind="in"`` members) and what registered layer ops name (``LayerOp.mask_in``). Zeroing those
slices makes the channel invisible everywhere, so ``masked(x) == pruned(x)`` up to float summation
order, whatever sits between producer and consumers (BN, ReLU, residual adds, concat, flatten).
Producers are left alone. The zeroed slices are saved and written back on restore, bit for bit.

A trial mask touches only the consumer slices of the masked channels, so it costs a few small
``index_fill_`` calls: cheap enough for one-filter-at-a-time methods (CAR) over thousands of filters.

>>> import torch
>>> from filterprune.graph.trace import trace_groups
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
>>> x = torch.randn(1, 3, 4, 4)
>>> g = trace_groups(model, x)[0]
>>> with masked(model, g, [1, 2]):
...     y = model(x)
>>> bool(model[2].weight[:, 1].abs().sum() > 0)
True
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..errors import PruningError
from .groups import ChannelGroup, PrunePlan
from .ops import layer_op
from .surgery import is_depthwise, weight_dim

logger = logging.getLogger(__name__)


def _drop_autocast_casts() -> None:
    """Forget autocast's cached low-precision copies of weights.

    Inside one ``torch.autocast`` region, PyTorch casts each weight (a leaf that requires grad) once and
    reuses that copy for the rest of the region; a weight changed in place afterwards keeps being read
    through its stale copy. Masks change weights in place, so every fill and restore drops the cache:
    a greedy method scoring under bfloat16 autocast then sees the channels it already removed.
    """
    torch.clear_autocast_cache()


class Mask:
    """Saved slices of one or more masks; :meth:`restore` writes them back (last masked, first restored)."""

    def __init__(self) -> None:
        self._saved: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []

    def _fill(self, tensor: torch.Tensor, dim: int, index: torch.Tensor, value: float) -> None:
        index = index.to(tensor.device)
        with torch.no_grad():
            self._saved.append((tensor, dim, index, tensor.index_select(dim, index).clone()))
            tensor.index_fill_(dim, index, value)
        _drop_autocast_casts()

    def restore(self) -> None:
        """Undo every fill of this mask, bit-exactly. Calling it twice is harmless."""
        with torch.no_grad():
            while self._saved:
                tensor, dim, index, values = self._saved.pop()
                tensor.index_copy_(dim, index, values)
        _drop_autocast_casts()

    @property
    def active(self) -> bool:
        """Whether some slices are masked (not yet restored)."""
        return bool(self._saved)


def _consumer_slots(model: nn.Module, group: ChannelGroup, prune_idxs: Sequence[int]):
    """(tensor, dim, index, fill value) for every consumer slice of the channels ``prune_idxs``."""
    if not group.prunable:
        raise PruningError(f"group {group.id} is not prunable: {group.reason}")
    chans = sorted(set(int(c) for c in prune_idxs))
    if chans and not (0 <= chans[0] and chans[-1] < group.size):
        raise ValueError(f"channels for group {group.id} must lie in [0, {group.size})")
    for member in group.members:
        if member.kind != "in":
            continue
        idx = [i for c in chans for i in member.idxs[c]]
        if not idx:
            continue
        index = torch.tensor(idx, dtype=torch.long)
        module = model.get_submodule(member.module)
        op = layer_op(module)
        if op is not None:
            for tensor, dim, value in op.mask_in(module, index):
                yield tensor, dim, index, value
        elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and not is_depthwise(module):
            groups = getattr(module, "groups", 1)
            if groups > 1:  # tied channels: the same positions of every block, so whole columns go
                if module.transposed:
                    raise PruningError(f"cannot mask the input of grouped transposed conv {member.module}")
                index = torch.unique(index % (module.in_channels // groups))
            yield module.weight, weight_dim(module, "in"), index, 0.0
        else:
            raise PruningError(f"cannot mask the input of {member.module} ({type(module).__name__})")


def mask(model: nn.Module, group: ChannelGroup, prune_idxs: Sequence[int], *, into: Mask | None = None) -> Mask:
    """Hide channels ``prune_idxs`` of ``group`` in ``model`` (in place); returns the handle to restore.

    Args:
        model: the model ``group`` was traced from.
        group: a prunable group.
        prune_idxs: group channels to hide.
        into: add to an existing handle instead of a new one.

    Raises:
        PruningError: the group is not prunable.
        ValueError: a channel is out of range.
    """
    handle = into if into is not None else Mask()
    for tensor, dim, index, value in list(_consumer_slots(model, group, prune_idxs)):
        handle._fill(tensor, dim, index, value)
    return handle


def mask_plan(model: nn.Module, groups: Sequence[ChannelGroup], plan: PrunePlan) -> Mask:
    """Hide every channel of ``plan`` at once; one handle restores them all."""
    by_id = {g.id: g for g in groups}
    unknown = [gid for gid in plan.prune_idxs if gid not in by_id]
    if unknown:
        raise PruningError(f"plan names unknown group {unknown[0]!r}")
    handle = Mask()
    try:
        for gid, prune_idxs in plan.prune_idxs.items():
            if prune_idxs:
                mask(model, by_id[gid], prune_idxs, into=handle)
    except Exception:
        handle.restore()
        raise
    return handle


def restore(handle: Mask) -> None:
    """Undo a :func:`mask` / :func:`mask_plan` bit-exactly."""
    handle.restore()


@contextlib.contextmanager
def masked(model: nn.Module, group: ChannelGroup, prune_idxs: Sequence[int]) -> Iterator[Mask]:
    """``with masked(model, group, idxs): ...`` runs the block as if those channels were removed."""
    handle = mask(model, group, prune_idxs)
    try:
        yield handle
    finally:
        handle.restore()


@contextlib.contextmanager
def masked_plan(model: nn.Module, groups: Sequence[ChannelGroup], plan: PrunePlan) -> Iterator[Mask]:
    """``with masked_plan(model, groups, plan): ...`` runs the block as if ``plan`` were applied."""
    handle = mask_plan(model, groups, plan)
    try:
        yield handle
    finally:
        handle.restore()
