"""``random``: uniform random scores, the baseline every criterion has to beat.

Provenance: random filter selection is the control of Li et al. 2017 (arXiv:1608.08710, Fig. 2) and
of Mittal et al., "Recovering from Random Pruning", arXiv:1801.10447. No code adapted.

Scores are i.i.d. U[0, 1) per channel. Each group draws from its own generator seeded by
``(ctx.seed, group.id)``, so a group's scores depend on neither the other groups nor their order, and
the global torch RNG is left untouched.
"""

from __future__ import annotations

import zlib

import torch

from ..types import Scores
from .base import Criterion, ScoringContext, register_criterion


@register_criterion("random")
class RandomScore(Criterion):
    """Seeded uniform random scores (reads no weights and no data).

    >>> from filterprune.graph import ChannelGroup
    >>> ctx = ScoringContext(model=torch.nn.Identity(), example_inputs=torch.zeros(1),
    ...                      groups=[ChannelGroup("conv", 3, ())], seed=1)
    >>> RandomScore().score(ctx)["conv"].shape
    torch.Size([3])
    """

    def compute(self, ctx: ScoringContext) -> Scores:
        """``(C,)`` per group: i.i.d. U[0, 1) scores from a generator seeded by ``(ctx.seed, group id)``."""
        scores: Scores = {}
        for group in ctx.prunable_groups():
            seed = zlib.crc32(f"{ctx.seed}:{group.id}".encode())  # stable across runs and processes
            gen = torch.Generator().manual_seed(seed)
            scores[group.id] = torch.rand(group.size, generator=gen)
        return scores
