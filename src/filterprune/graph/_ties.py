"""Channels that must be removed together: grouped convolutions, and layers that tie input to output
channels (pixel shuffle).

A conv with ``groups=g`` (not depthwise) splits its input channels into g contiguous blocks and its
filters into g blocks; removing channels is exact only if every block loses the same number (the
widths must stay multiples of g, and block k must still read block k). As Torch-Pruning does for
grouped convs, we remove the same *position* in every block: group channels whose indices in the
conv differ by a multiple of the block width are tied into one unit. A group touched by several
grouped convs ties the union (union-find); a grouped conv that reads channels of this group and of
another one in the same block structure cannot be tied within the group, which then stays whole.

A layer whose :class:`~filterprune.graph.ops.LayerOp` ``couples`` input and output channels (a pixel
shuffle: r² input channels make one output channel) joins the group that ends at its input and the
group that starts at its output into one group whose units are those blocks (:func:`merge_coupled`).
"""

from __future__ import annotations

from torch import nn

from .groups import ChannelGroup, Member
from .ops import layer_op
from .surgery import dim_size, is_depthwise


def _grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not is_depthwise(m)


def tie_channels(model: nn.Module, group: ChannelGroup, pairs=()) -> tuple[ChannelGroup, str]:
    """``group`` with tied channels merged into one unit each, and a reason to keep it whole ("" if none).

    Ties come from the grouped convs among the members and from ``pairs`` (channel pairs of the group
    that must go together). A merged unit's member indices are the union of its channels' indices, so
    selection, masking and surgery remove the tie together; the group's ``size`` becomes the number
    of units.
    """
    parent = list(range(group.size))

    def find(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    tied = False
    for a, b in pairs:
        parent[find(a)] = find(b)
        tied = True
    for member in group.members:
        module = model.get_submodule(member.module)
        if not _grouped(module):
            continue
        if getattr(module, "transposed", False):
            return group, f"{member.module} is a grouped transposed conv (groups={module.groups})"
        width = dim_size(module, member.kind)
        block = width // module.groups
        owner = {i: c for c, idxs in enumerate(member.idxs) for i in idxs}
        for i, c in owner.items():
            if i >= block and i - block not in owner:  # position i - block of the conv group before: another group's
                return group, (f"{member.module} (groups={module.groups}) reads channels of this group and of "
                               "others in its conv groups")
            j = i + block
            if j >= width:
                continue
            if j not in owner:
                return group, (f"{member.module} (groups={module.groups}) reads channels of this group and of "
                               "others in its conv groups")
            parent[find(c)] = find(owner[j])
            tied = True
    if not tied:
        return group, ""
    units: dict[int, list[int]] = {}
    for c in range(group.size):
        units.setdefault(find(c), []).append(c)
    chans = sorted(units.values(), key=min)
    if len(chans) < 2:
        return group, "its grouped convs tie all its channels together"
    members = tuple(
        Member(m.module, m.kind, m.module_type, tuple(tuple(sorted(i for c in unit for i in m.idxs[c])) for unit in chans))
        for m in group.members
    )
    return ChannelGroup(group.id, len(chans), members, group.prunable, group.reason, group.reaches_output), ""


def merge_coupled(model: nn.Module, groups: dict[str, ChannelGroup]) -> dict[str, list[tuple[int, int]]]:
    """Join, in place in ``groups``, the two groups around every layer that couples its input and output
    channels; returns the channel pairs each joined group must tie (for :func:`tie_channels`)."""
    pairs: dict[str, list[tuple[int, int]]] = {}
    for name, module in model.named_modules():
        op = layer_op(module)
        blocks = op.couples(module) if op is not None else None
        if not blocks:
            continue
        holding: dict[str, list[ChannelGroup]] = {"in": [], "out": []}
        for g in groups.values():
            for side in {m.kind for m in g.members if m.module == name}:
                holding[side].append(g)
        a = holding["in"][0] if holding["in"] else None
        b = holding["out"][0] if holding["out"] else None
        if b is None or a is b:
            continue
        kind = type(module).__name__
        if a is None:
            groups[b.id] = _whole(b, f"its channels come through {name} ({kind}) from channels that stay")
            continue
        if len(holding["in"]) > 1 or len(holding["out"]) > 1:  # e.g. a concat of two convs feeds it
            reason = f"{name} ({kind}) ties channels of several groups"
            for g in {g.id: g for g in holding["in"] + holding["out"]}.values():
                groups[g.id] = _whole(g, reason)
            continue
        owner_a = _owner(a, name, "in")
        owner_b = _owner(b, name, "out")
        ties = pairs.pop(a.id, []) + [(i + a.size, j + a.size) for i, j in pairs.pop(b.id, [])]
        for ins, outs in blocks:
            chans = [owner_a.get(i) for i in ins] + [None if owner_b.get(o) is None else owner_b[o] + a.size for o in outs]
            if any(c is None for c in chans):
                reason = f"{name} ({kind}) ties channels of several groups"
                groups[a.id], groups[b.id] = _whole(a, reason), _whole(b, reason)
                break
            ties += [(chans[0], c) for c in chans[1:]]
        else:
            members = tuple(Member(m.module, m.kind, m.module_type, m.idxs + ((),) * b.size) for m in a.members)
            members += tuple(Member(m.module, m.kind, m.module_type, ((),) * a.size + m.idxs) for m in b.members)
            reason = "; ".join(r for r in (a.reason, b.reason) if r)
            del groups[b.id]
            groups[a.id] = ChannelGroup(a.id, a.size + b.size, members, not reason, reason,
                                        a.reaches_output or b.reaches_output)
            pairs[a.id] = ties
    return pairs


def _owner(group: ChannelGroup, module: str, kind: str) -> dict[int, int]:
    member = next(m for m in group.members if m.module == module and m.kind == kind)
    return {i: c for c, idxs in enumerate(member.idxs) for i in idxs}


def _whole(group: ChannelGroup, reason: str) -> ChannelGroup:
    reason = "; ".join(r for r in (group.reason, reason) if r)
    return ChannelGroup(group.id, group.size, group.members, False, reason, group.reaches_output)
