"""``l1`` and ``l2``: the norm of a channel's filter weights.

Provenance: H. Li, A. Kadav, I. Durdanovic, H. Samet, H. P. Graf, "Pruning Filters for Efficient
ConvNets", ICLR 2017, arXiv:1608.08710, section 3.1: the relative importance of filter j of layer i is
s_j = sum |F_{i,j}|, the sum of its absolute kernel weights (the paper's l1 criterion; section 4.5
compares l2). No code adapted.

What is summed, for channel c of a group (coupled channels are removed together, so their norms add):

    score[c] = sum over the group's "out" conv and Linear members m of ||W_m[c]||_p
               (+ with include_consumers: sum over its "in" conv and Linear members of ||W_m[:, c]||_p)

* ``W_m[c]`` is filter c of member m: all its kernel weights, ``(C_in/g, k, k)``. A plain conv group
  has one such member; a residual group has one per conv that feeds the add.
* The norm is taken per member, then the per-member norms are added (for p=1 that is the l1 norm of
  all the filters together; for p=2 it is not the l2 norm of their concatenation).
* Never included: conv/Linear biases and BatchNorm gamma/beta (the paper scores kernel weights only;
  ``bn`` scores gamma).
* ``W_m[:, c]`` (consumers) is the input-channel slice c of each following conv, ``(C_out/g, k, k)``,
  or the block of Linear input columns a flattened channel feeds. A depthwise conv in the group is a
  producer: its filter c is counted once (see ``_weights``).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..types import Scores
from ._weights import group_slices
from .base import Criterion, ScoringContext, ScoringError, register_criterion

logger = logging.getLogger(__name__)


class LpNorm(Criterion):
    """Sum over a group's weight layers of each channel's filter p-norm.

    Args:
        p: the norm's order (1 or 2 are the registered ``l1`` and ``l2``; any p > 0 works).
        include_consumers: also add the norms of the consuming layers' input-channel slices.
    """

    def __init__(self, p: float = 1.0, include_consumers: bool = False) -> None:
        if not p > 0:
            raise ValueError(f"p must be > 0, got {p}")
        self.p = float(p)
        self.include_consumers = include_consumers

    def compute(self, ctx: ScoringContext) -> Scores:
        """``(C,)`` per group: sum over the group's conv/Linear members (with ``include_consumers``, their
        input slices too) of the Lp norm of each channel's weights in that member.

        Raises:
            ScoringError: a group has no conv or Linear weights.
        """
        kinds = ("out", "in") if self.include_consumers else ("out",)
        scores: Scores = {}
        with torch.no_grad():
            for group in ctx.prunable_groups():
                total: Tensor | None = None
                for sl in group_slices(ctx.model, group, kinds=kinds, families=("conv", "linear"), roles=("weight",)):
                    # s_j = ||F_j||_p: per channel, over all of this member's entries for it
                    norm = sl.per_channel(sl.rows.float().abs().pow(self.p)).pow(1.0 / self.p)
                    total = norm if total is None else total + norm.to(total.device)
                if total is None:
                    raise ScoringError(f"criterion {self.name!r}: group {group.id} has no conv or Linear weights")
                scores[group.id] = total
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, p={self.p}, include_consumers={self.include_consumers})"


@register_criterion("l1")
class L1Norm(LpNorm):
    """Li et al.'s l1 filter norm: ``sum |w|`` over each channel's filters (see the module docstring).

    Args:
        include_consumers: also add the consuming layers' input-channel slices.

    >>> L1Norm().name
    'l1'
    """

    def __init__(self, include_consumers: bool = False) -> None:
        super().__init__(1.0, include_consumers)


@register_criterion("l2")
class L2Norm(LpNorm):
    """The l2 filter norm ``sqrt(sum w^2)`` per member filter, summed over the group's weight layers.

    Args:
        include_consumers: also add the consuming layers' input-channel slices.
    """

    def __init__(self, include_consumers: bool = False) -> None:
        super().__init__(2.0, include_consumers)
