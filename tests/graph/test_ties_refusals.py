"""Channel-coupling layers (PixelShuffle/Unshuffle) whose blocks cannot be removed together: the groups
they touch are kept whole, with the reason (issue 14: ``_ties._whole`` ran in no test)."""

import pytest
import torch
from graph_nets import UnshuffledInput
from torch import nn

from filterprune.graph.groups import ChannelGroup, Member
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


def test_a_shuffle_block_across_two_groups_keeps_every_group_it_touches_whole():
    # found by this test: only the last group holding the shuffle's input was kept whole, so conv a
    # stayed prunable and pruning it failed at the check ("input.size(-3)=7 is not divisible by 4")
    model, x = _TwoInto("ps", nn.PixelShuffle(2), 6, 2), torch.randn(2, 3, 4, 4)
    groups = {g.id: g for g in trace_groups(model, x)}
    for gid, size in (("a", 2), ("b", 6), ("ps", 2)):
        assert not groups[gid].prunable and groups[gid].size == size
        assert groups[gid].reason == "ps (PixelShuffle) ties channels of several groups"


def test_channels_fed_from_the_input_through_an_unshuffle_stay():
    groups = {g.id: g for g in trace_groups(UnshuffledInput(), torch.randn(2, 3, 8, 8))}
    conv = groups["unshuffle"]  # the group is named after its first member
    assert not conv.prunable and conv.size == 12
    assert conv.reason == "its channels come through unshuffle (PixelUnshuffle) from channels that stay"
    assert {m.module for m in conv.members} >= {"conv", "unshuffle"}


def test_an_unshuffle_of_two_groups_keeps_both_whole():
    model, x = _TwoInto("un", nn.PixelUnshuffle(2), 3, 20), torch.randn(2, 3, 4, 4)
    groups = {g.id: g for g in trace_groups(model, x)}
    assert not groups["a"].prunable and not groups["b"].prunable
    assert groups["a"].reason == "un (PixelUnshuffle) ties channels of several groups"


# ---- issue 14, session 15: survivors of merge_coupled and _whole --------------------------------------


class _TwoShuffles(nn.Module):
    """conv (32 channels) -> PixelShuffle(2) -> PixelShuffle(2) -> conv: output channel k of the second
    shuffle takes channels 4k..4k+3 of the first's output, which take conv channels 16k..16k+15.
    ``reverse`` registers the layers in the opposite order (the second shuffle is merged first)."""

    def __init__(self, reverse: bool):
        super().__init__()
        layers = [("c", nn.Conv2d(3, 32, 1)), ("ps1", nn.PixelShuffle(2)), ("ps2", nn.PixelShuffle(2)),
                  ("h", nn.Conv2d(2, 5, 1))]
        for name, layer in reversed(layers) if reverse else layers:
            setattr(self, name, layer)

    def forward(self, x):
        return self.h(self.ps2(self.ps1(self.c(x)))).mean((2, 3))


def _units(group):
    return {(m.module, m.kind): m.idxs for m in group.members}


@pytest.mark.parametrize("reverse", [False, True])
def test_two_shuffles_in_a_row_tie_each_output_channel_to_its_sixteen_conv_channels(reverse):
    groups = {g.id: g for g in trace_groups(_TwoShuffles(reverse), torch.randn(2, 3, 4, 4))}
    c = groups["c"]
    assert c.prunable and c.size == 2 and set(groups) == {"c", "h"}
    assert _units(c) == {
        ("c", "out"): (tuple(range(16)), tuple(range(16, 32))),
        ("ps1", "in"): (tuple(range(16)), tuple(range(16, 32))),
        ("ps1", "out"): ((0, 1, 2, 3), (4, 5, 6, 7)),
        ("ps2", "in"): ((0, 1, 2, 3), (4, 5, 6, 7)),
        ("ps2", "out"): ((0,), (1,)),
        ("h", "in"): ((0,), (1,)),
    }


class _ThenShuffle(nn.Module):
    """A first coupling layer of kind ``first`` (registered first), then conv (8) -> PixelShuffle(2) -> conv.

    ``round_trip``: y + shuffle(unshuffle(y)), both sides of the shuffle already in y's group after the
    unshuffle is merged; ``image``: the image unshuffled (channels that stay); ``two_groups``: a shuffle
    of two concatenated convs."""

    def __init__(self, first: str):
        super().__init__()
        self.first = first
        if first == "round_trip":
            self.stem, self.un, self.sh = nn.Conv2d(3, 2, 1), nn.PixelUnshuffle(2), nn.PixelShuffle(2)
        elif first == "image":
            self.un, self.conv, self.mix = nn.PixelUnshuffle(2), nn.Conv2d(3, 12, 2, stride=2), nn.Conv2d(12, 2, 1)
        else:
            self.a, self.b, self.sh = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.PixelShuffle(2)
        self.c2, self.ps, self.head = nn.Conv2d(2, 8, 1), nn.PixelShuffle(2), nn.Conv2d(2, 5, 1)

    def forward(self, x):
        if self.first == "round_trip":
            y = self.stem(x)
            y = y + self.sh(torch.relu(self.un(y)))
        elif self.first == "image":
            y = self.mix(self.un(x) + self.conv(x))
        else:
            y = self.sh(torch.cat([self.a(x), self.b(x)], 1))
        return self.head(self.ps(self.c2(y))).mean((2, 3))


@pytest.mark.parametrize("first", ["round_trip", "image", "two_groups"])
def test_a_shuffle_after_another_coupling_layer_is_still_merged(first):
    groups = {g.id: g for g in trace_groups(_ThenShuffle(first), torch.randn(2, 3, 8, 8))}
    c2 = groups["c2"]
    assert c2.prunable and c2.size == 2 and "ps" not in groups
    assert _units(c2)[("c2", "out")] == ((0, 1, 2, 3), (4, 5, 6, 7)) and _units(c2)[("ps", "out")] == ((0,), (1,))


def test_a_shuffle_whose_two_sides_are_already_one_group_leaves_it_as_it_is():
    # y + shuffle(unshuffle(y)): merging the unshuffle ties y's channel k to unshuffled channels 4k..4k+3,
    # and the shuffle maps those same channels back: nothing more to join
    groups = {g.id: g for g in trace_groups(_ThenShuffle("round_trip"), torch.randn(2, 3, 8, 8))}
    stem = groups["stem"]
    assert stem.prunable and stem.size == 2 and "un" not in groups
    units = _units(stem)
    assert len(stem.members) == len(units) == 6
    for side in (("stem", "out"), ("un", "in"), ("sh", "out")):
        assert units[side] == ((0,), (1,))
    for side in (("un", "out"), ("sh", "in")):
        assert units[side] == ((0, 1, 2, 3), (4, 5, 6, 7))


class _TwoIntoOutput(nn.Module):
    """Two convs concatenated into a PixelShuffle(2) whose output is the model's output."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.ps = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.PixelShuffle(2)

    def forward(self, x):
        return self.ps(torch.cat([self.a(x), self.b(x)], 1))


def test_groups_kept_whole_by_a_shuffle_keep_their_reason_and_whether_they_reach_the_output():
    groups = {g.id: g for g in trace_groups(_TwoIntoOutput(), torch.randn(2, 3, 4, 4), ignored_layers=["a"])}
    a, ps = groups["a"], groups["ps"]
    assert a.reason == "a is ignored; ps (PixelShuffle) ties channels of several groups"
    assert a.reaches_output is False and not a.prunable
    assert ps.reaches_output is True and not ps.prunable
    assert ps.reason == "its channels are a model output; ps (PixelShuffle) ties channels of several groups"


class _OptionalShuffle(nn.Module):
    """conv -> conv, plus a branch conv -> PixelShuffle(2) -> conv when ``shuffle``."""

    def __init__(self):
        super().__init__()
        self.shuffle = True
        self.c, self.h = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 5, 1)
        self.ps, self.h2 = nn.PixelShuffle(2), nn.Conv2d(2, 5, 1)

    def forward(self, x):
        y = self.c(x)
        out = self.h(y).mean((2, 3))
        return out + self.h2(self.ps(y)).mean((2, 3)) if self.shuffle else out


def test_a_shuffle_left_out_of_the_forward_pass_joins_nothing():
    # traced once with the shuffle, then without: the unused layer (its widths still recorded) ties nothing
    model, x = _OptionalShuffle(), torch.randn(2, 3, 4, 4)
    trace_groups(model, x)
    model.shuffle = False
    groups = {g.id: g for g in trace_groups(model, x)}
    assert groups["c"].prunable and groups["c"].size == 8
    assert {(m.module, m.kind) for m in groups["c"].members} == {("c", "out"), ("h", "in")}


class _ResidualShuffle(nn.Module):
    """conv a -> a + PixelShuffle(1)(a) -> head: the shuffle's input and output are in one group."""

    def __init__(self):
        super().__init__()
        self.a, self.ps, self.head = nn.Conv2d(3, 4, 1), nn.PixelShuffle(1), nn.Conv2d(4, 5, 1)

    def forward(self, x):
        y = self.a(x)
        return self.head(y + self.ps(y)).mean((2, 3))


def test_a_shuffle_whose_input_and_output_share_a_group_leaves_it_as_it_is():
    # r = 1: each block is one channel in, the same channel out; the group must not be joined with itself
    groups = {g.id: g for g in trace_groups(_ResidualShuffle(), torch.randn(2, 3, 4, 4))}
    one = tuple((c,) for c in range(4))
    assert groups["a"] == ChannelGroup("a", 4, (
        Member("a", "out", "Conv2d", one), Member("ps", "in", "PixelShuffle", one),
        Member("ps", "out", "PixelShuffle", one), Member("head", "in", "Conv2d", one)), True, "", False)


class _Shuffled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.ps, self.head = nn.Conv2d(3, 8, 1), nn.PixelShuffle(2), nn.Conv2d(2, 5, 1)

    def forward(self, x):
        return self.head(self.ps(self.a(x))).mean((2, 3))


def test_a_shuffle_joins_the_groups_around_it_into_blocks_of_four_with_no_reason():
    """Hand oracle: PixelShuffle(2) makes output channel c of input channels 4c .. 4c + 3, so conv a's 8 filters
    go in two units of 4, each with one head input; the joined group keeps every member's type."""
    groups = {g.id: g for g in trace_groups(_Shuffled(), torch.randn(2, 3, 4, 4))}
    blocks, single = ((0, 1, 2, 3), (4, 5, 6, 7)), ((0,), (1,))
    assert groups["a"] == ChannelGroup("a", 2, (
        Member("a", "out", "Conv2d", blocks), Member("ps", "in", "PixelShuffle", blocks),
        Member("ps", "out", "PixelShuffle", single), Member("head", "in", "Conv2d", single)), True, "", False)


def test_a_group_kept_whole_for_a_shuffle_still_does_not_reach_the_output():
    groups = {g.id: g for g in trace_groups(UnshuffledInput(), torch.randn(2, 3, 8, 8))}
    assert groups["unshuffle"].reaches_output is False and groups["head"].reaches_output is True


def test_tying_channels_keeps_whether_the_group_reaches_the_output():
    """tie_channels called directly: a grouped conv (groups=2, block 2) ties channels 0-2 and 1-3; every other
    field of the group, reaches_output included, is returned unchanged."""
    from filterprune.graph._ties import tie_channels
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 6, 1, groups=2))
    one = tuple((c,) for c in range(4))
    group = ChannelGroup("0", 4, (Member("0", "out", "Conv2d", one), Member("1", "in", "Conv2d", one)), True, "", True)
    tied, why = tie_channels(model, group)
    units = ((0, 2), (1, 3))
    assert why == "" and tied == ChannelGroup(
        "0", 2, (Member("0", "out", "Conv2d", units), Member("1", "in", "Conv2d", units)), True, "", True)
