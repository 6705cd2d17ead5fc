"""Channel-coupling layers (PixelShuffle/Unshuffle) whose blocks cannot be removed together: the groups
they touch are kept whole, with the reason (issue 14: ``_ties._whole`` ran in no test)."""

import torch
from torch import nn

from filterprune.graph.trace import trace_groups


class _TwoInto(nn.Module):
    """Two convs concatenated, then a coupling layer ``name``: PixelShuffle(2) (each output channel takes 4
    channels, the first block from conv a, the second from conv b) or PixelUnshuffle(2) (each input
    channel, of conv a or conv b, feeds 4 outputs). Its input spans two groups."""

    def __init__(self, name: str, coupler: nn.Module, b_width: int, head_in: int):
        super().__init__()
        self.name = name
        self.a, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(3, b_width, 1)
        setattr(self, name, coupler)
        self.head = nn.Conv2d(head_in, 5, 1)

    def forward(self, x):
        return self.head(getattr(self, self.name)(torch.cat([self.a(x), self.b(x)], 1))).mean((2, 3))


class _UnshuffledInput(nn.Module):
    """The image itself, unshuffled, added to a conv's output: that conv's channels come from image
    channels that cannot go."""

    def __init__(self):
        super().__init__()
        self.unshuffle, self.conv, self.head = nn.PixelUnshuffle(2), nn.Conv2d(3, 12, 2, stride=2), nn.Conv2d(12, 5, 1)

    def forward(self, x):
        return self.head(self.unshuffle(x) + self.conv(x)).mean((2, 3))


def test_a_shuffle_block_across_two_groups_keeps_every_group_it_touches_whole():
    # found by this test: only the last group holding the shuffle's input was kept whole, so conv a
    # stayed prunable and pruning it failed at the check ("input.size(-3)=7 is not divisible by 4")
    model, x = _TwoInto("ps", nn.PixelShuffle(2), 6, 2), torch.randn(2, 3, 4, 4)
    groups = {g.id: g for g in trace_groups(model, x)}
    for gid, size in (("a", 2), ("b", 6), ("ps", 2)):
        assert not groups[gid].prunable and groups[gid].size == size
        # (endswith: in about 1 run of 15 the tracer also calls conv b's channels a model output, which
        # comes first; noted in the closing note of issue 14's session 13)
        assert groups[gid].reason.endswith("ps (PixelShuffle) ties channels of several groups")


def test_channels_fed_from_the_input_through_an_unshuffle_stay():
    groups = {g.id: g for g in trace_groups(_UnshuffledInput(), torch.randn(2, 3, 8, 8))}
    conv = groups["unshuffle"]  # the group is named after its first member
    assert not conv.prunable and conv.size == 12
    assert conv.reason == "its channels come through unshuffle (PixelUnshuffle) from channels that stay"
    assert {m.module for m in conv.members} >= {"conv", "unshuffle"}


def test_an_unshuffle_of_two_groups_keeps_both_whole():
    model, x = _TwoInto("un", nn.PixelUnshuffle(2), 3, 20), torch.randn(2, 3, 4, 4)
    groups = {g.id: g for g in trace_groups(model, x)}
    assert not groups["a"].prunable and not groups["b"].prunable
    assert groups["a"].reason == "un (PixelUnshuffle) ties channels of several groups"
