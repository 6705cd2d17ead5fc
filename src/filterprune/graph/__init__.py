"""Structure: which channels must be removed together, masking them, and removing them."""

from .check import apply_plan_checked
from .groups import ChannelGroup, Member, PrunePlan
from .masking import Mask, mask, mask_plan, masked, masked_plan, restore
from .probe import probe_channel_flow
from .surgery import apply_plan
from .trace import trace_groups

__all__ = [
    "ChannelGroup",
    "Mask",
    "Member",
    "PrunePlan",
    "apply_plan",
    "apply_plan_checked",
    "mask",
    "mask_plan",
    "masked",
    "masked_plan",
    "probe_channel_flow",
    "restore",
    "trace_groups",
]
