"""Structure: which channels must be removed together, masking them, and removing them."""

from .groups import ChannelGroup, Member, PrunePlan

__all__ = ["ChannelGroup", "Member", "PrunePlan"]
