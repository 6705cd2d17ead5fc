"""filterprune's own vocabulary for coupled channels. No torch-pruning type leaves ``graph/trace.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..types import GroupId


@dataclass(frozen=True)
class Member:
    """One place a group's channels live: a dimension of one module's parameters.

    ``idxs[c]`` lists the indices along that dimension that carry group channel ``c`` (one index for a
    conv or BN; a block of ``H*W`` indices for a Linear after flatten; an offset index behind a concat).

    Attributes:
        module: qualified module name, e.g. ``"layer1.0.bn1"``.
        kind: ``"out"`` (the module produces the channel: conv filters, BN entries, shortcut outputs)
            or ``"in"`` (the module consumes it: conv input channels, Linear input features).
        module_type: class name of the module (``"Conv2d"``, ``"BatchNorm2d"``, ``"Linear"``...).
        idxs: per group channel, the indices in this member's dimension.
    """

    module: str
    kind: Literal["out", "in"]
    module_type: str
    idxs: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together, with every layer they touch.

    Attributes:
        id: qualified name of the group's root layer (the first conv that produces it).
        size: number of channels in the group (= the root's output width).
        members: every (module, dimension) slice the group's channels occupy, root first.
        prunable: ``False`` for groups that must stay whole (ignored layers, the classifier's outputs).
        reason: why the group is not prunable (empty when it is).
        reaches_output: the channels are (part of) a model output.
    """

    id: GroupId
    size: int
    members: tuple[Member, ...]
    prunable: bool = True
    reason: str = ""
    reaches_output: bool = False

    def members_of(self, kind: str | None = None, module_type: str | None = None) -> list[Member]:
        """The members of one ``kind`` (``"out"``/``"in"``) and/or ``module_type`` (``"BatchNorm2d"``...),
        in member order; ``None`` matches any.
        """
        return [
            m for m in self.members
            if (kind is None or m.kind == kind) and (module_type is None or m.module_type == module_type)
        ]


@dataclass
class PrunePlan:
    """Which channels of which groups to remove: the output of selection, the input of surgery.

    ``prune_idxs[group_id]`` holds the group-channel indices to remove (sorted, unique).
    """

    prune_idxs: dict[GroupId, list[int]] = field(default_factory=dict)

    def num_removed(self) -> int:
        """Channels removed by the plan, summed over groups."""
        return sum(len(v) for v in self.prune_idxs.values())

    def keep_idxs(self, group: ChannelGroup) -> list[int]:
        """The channels of ``group`` that this plan keeps."""
        removed = set(self.prune_idxs.get(group.id, ()))
        return [c for c in range(group.size) if c not in removed]
