"""Channel permutations that leave a model's function unchanged, to give a squeezed model canonical buffers.

After C-SGD squeezes a widened CIFAR ResNet, every tensor has the original shape, but the option-A
shortcuts' index maps (``LayerOp.channel_map``) say where each kept input channel landed among the kept outputs, which
need not be where a freshly built model puts them. Reordering a group's channels (producers' output
slices, BatchNorm entries, consumers' input slices, shortcut maps) changes nothing the model computes;
:func:`align_shortcuts` picks the order that makes every shortcut's map equal the reference model's, so
the result is a plain checkpoint of the reference architecture, buffers included.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..graph.groups import ChannelGroup
from ..graph.ops import layer_op
from ..graph.surgery import dim_size, is_depthwise, weight_dim
from ..types import NORM_LAYERS
from ._slots import _module_params

logger = logging.getLogger(__name__)


def _reorder(t: torch.Tensor | None, dim: int, order: torch.Tensor) -> None:
    if t is not None:
        t.data = t.data.index_select(dim, order.to(t.device))


@torch.no_grad()
def permute_channels(model: nn.Module, group: ChannelGroup, perm: Sequence[int]) -> None:
    """Reorder ``group``'s channels in place: new channel ``p`` is old channel ``perm[p]``."""
    if sorted(perm) != list(range(group.size)):
        raise ValueError(f"not a permutation of {group.size} channels")
    for member in group.members:
        module = model.get_submodule(member.module)
        if member.kind == "in" and is_depthwise(module):
            continue  # its "out" entry reorders it
        order = torch.arange(dim_size(module, member.kind))
        for p, old in enumerate(perm):
            for pos, src in zip(member.idxs[p], member.idxs[old], strict=True):
                order[pos] = src
        op = layer_op(module)
        if op is not None:  # a registered layer reorders itself: keep every channel, in the new order
            (op.prune_in if member.kind == "in" else op.prune_out)(module, order)
        elif member.kind == "in":
            _reorder(module.weight, weight_dim(module, "in"), order)
        else:
            for attr, dim, _ in _module_params(module, member.module):
                _reorder(getattr(module, attr), dim, order)
            if isinstance(module, NORM_LAYERS) and module.track_running_stats:
                _reorder(module.running_mean, 0, order)
                _reorder(module.running_var, 0, order)


def align_shortcuts(model: nn.Module, reference: nn.Module, groups: Sequence[ChannelGroup]) -> int:
    """Permute channel groups so every weightless router's ``channel_map`` equals ``reference``'s.

    ``groups`` describe ``model`` as it is now and are visited in order (a group's permutation also
    reorders the inputs of the shortcut it feeds, which later groups then see). Returns the number of
    groups permuted; a shortcut that cannot be matched (dropped inputs, different sizes) is left alone.
    """
    ref_modules = dict(reference.named_modules())
    done = 0
    for group in groups:
        for member in group.members_of("out"):
            module = model.get_submodule(member.module)
            ref = ref_modules.get(member.module)
            op, ref_op = layer_op(module), layer_op(ref) if ref is not None else None
            have = op.channel_map(module) if op is not None else None
            want = ref_op.channel_map(ref) if ref_op is not None else None
            if have is None or want is None:
                continue
            have, want = have.tolist(), want.tolist()
            if have == want:
                continue
            if (len(have) != len(want) or min(have + want) < 0 or op.out_channels(module) != ref_op.out_channels(ref)
                    or len(set(want)) != len(want)):
                logger.warning("cannot align shortcut %s with the reference", member.module)
                continue
            channel = {pos[0]: c for c, pos in enumerate(member.idxs)}
            perm = [-1] * group.size
            for h, w in zip(have, want, strict=True):
                perm[channel[w]] = channel[h]
            rest = iter(sorted(set(range(group.size)) - set(perm)))
            perm = [p if p >= 0 else next(rest) for p in perm]
            permute_channels(model, group, perm)
            done += 1
    return done
