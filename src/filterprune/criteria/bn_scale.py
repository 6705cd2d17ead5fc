"""``bn``: the magnitude of a channel's BatchNorm scale |gamma| (network slimming).

Provenance: Z. Liu, J. Li, Z. Shen, G. Huang, S. Yan, C. Zhang, "Learning Efficient Convolutional
Networks through Network Slimming", ICCV 2017, arXiv:1708.06519, section 3: channels are pruned by
the magnitude of their BN scaling factor gamma (trained with an L1 penalty on gamma; that penalty is a
training-time method, not part of this criterion). Reference code: github.com/liuzhuang13/slimming
(Lua) and github.com/Eric-mingjie/network-slimming (PyTorch). No code adapted.

For channel c of a group: ``score[c] = sum over the group's norm-layer "out" members m of |gamma_m[c]|``.
A plain conv-BN group has one BN; a residual group has one BN per branch feeding the add, and their
|gamma| add up. beta is not used. A prunable group without an affine BatchNorm (or other norm layer
with a scale) cannot be scored: :class:`~filterprune.criteria.base.ScoringError` names it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..types import Scores
from ._weights import group_slices
from .base import Criterion, ScoringContext, ScoringError, register_criterion


@register_criterion("bn")
class BNScale(Criterion):
    """Sum of |gamma| over the group's BatchNorm layers."""

    def compute(self, ctx: ScoringContext) -> Scores:
        """``(C,)`` per group: |gamma_c| of the group's BatchNorm members, summed over members.

        Raises:
            ValueError: a group has no affine normalisation layer to read.
        """
        scores: Scores = {}
        with torch.no_grad():
            for group in ctx.prunable_groups():
                total: Tensor | None = None
                for sl in group_slices(ctx.model, group, kinds=("out",), families=("norm",), roles=("weight",)):
                    s = sl.per_channel(sl.rows.float().abs())  # |gamma_c|
                    total = s if total is None else total + s.to(total.device)
                if total is None:
                    raise ScoringError(
                        f"criterion 'bn': group {group.id} has no affine BatchNorm; use another criterion "
                        "or leave the group out (ignored_layers)"
                    )
                scores[group.id] = total
        return scores
