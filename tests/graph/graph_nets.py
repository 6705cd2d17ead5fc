"""Small nets and checks shared by the graph tests (tracer verdicts, recorder oracles, adapters).

``_Lambda`` keeps its leading underscore: the tracer names a module by its class in its reasons and
messages ("cat in mid (_Lambda) ..."), which the tests assert word for word.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from filterprune.graph.masking import masked_plan
from filterprune.graph.surgery import apply_plan


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class UnshuffledInput(nn.Module):
    """The image itself, unshuffled, added to a conv's output: that conv's channels come from image
    channels that cannot go."""

    def __init__(self):
        super().__init__()
        self.unshuffle, self.conv, self.head = nn.PixelUnshuffle(2), nn.Conv2d(3, 12, 2, stride=2), nn.Conv2d(12, 5, 1)

    def forward(self, x):
        return self.head(self.unshuffle(x) + self.conv(x)).mean((2, 3))


class MidNet(nn.Module):
    """conv (8 channels) -> ``mid`` -> 1x1 conv (``c2_in`` inputs) -> global mean -> linear."""

    def __init__(self, mid, c2_in=8):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = mid
        self.conv2 = nn.Conv2d(c2_in, 6, 1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        return self.fc(self.conv2(self.mid(self.conv(x))).mean((2, 3)))


def pruned_matches_masked(model, groups, plan, x):
    """``plan`` applied by surgery to a copy of ``model``, checked to give the masked model's output on ``x``."""
    with torch.no_grad(), masked_plan(model, groups, plan):
        expected = model(x)
    pruned = apply_plan(copy.deepcopy(model), groups, plan)
    torch.testing.assert_close(pruned(x), expected, rtol=1e-5, atol=1e-5)
    return pruned
