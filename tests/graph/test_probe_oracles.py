"""The channel-flow probe (``graph.probe``) against hand-built groups whose members are deliberately wrong.

Tracing produces correct groups, so the probe is exercised here with :class:`ChannelGroup` objects written
by hand for tiny nets: a declared consumer slice that a probed channel does not reach (or one it reaches
but that is not declared) must be reported with the exact message; correct groups must pass. Also the
helpers' hand oracles: which channels are probed for a group size, which channels count as changed, and
that no hook is left on the model afterwards.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from filterprune.errors import PruningError
from filterprune.graph.groups import ChannelGroup, Member
from filterprune.graph.probe import _changed, _probe_channels, probe_channel_flow

_WHY = re.escape("that tracing did not predict (channel shuffle, reshape or an op the engine cannot follow)")


def _group(gid, size, *members):
    return ChannelGroup(gid, size, tuple(Member(m, k, t, idxs) for m, k, t, idxs in members), True, "", False)


def _ones(size):
    return tuple((c,) for c in range(size))


def _chain(width, bias=None):
    """conv a (3 -> width, 1x1) -> head (width -> 5); a's bias set by hand when given (weights zero)."""
    model = nn.Sequential()
    model.add_module("a", nn.Conv2d(3, width, 1))
    model.add_module("head", nn.Conv2d(width, 5, 1))
    if bias is not None:
        with torch.no_grad():
            model.a.weight.zero_()
            model.a.bias.copy_(torch.tensor(bias))
    return model.eval()


@pytest.mark.parametrize("size, expected", [(1, [0]), (2, [0, 1]), (3, [1]), (4, [1, 2]), (6, [1, 3, 4]), (9, [1, 4, 7])])
def test_probed_channels_are_the_second_the_middle_and_the_second_to_last(size, expected):
    assert _probe_channels(size) == expected


def test_changed_flags_a_channel_that_moved_by_more_than_a_ten_thousandth_of_the_baseline_scale():
    base = torch.zeros(2, 3, 4)
    base[0, 0, 0] = 1.0  # max |base| = 1: tolerance 1e-4 * (1 + 1) = 2e-4
    now = base.clone()
    now[0, 1, 2] += 0.01   # well above the tolerance
    now[1, 2, 0] += 1e-4   # below it: float noise
    assert _changed(now, base, 1).tolist() == [[False, True, False], [False, False, False]]
    assert _changed(now.movedim(1, 2), base.movedim(1, 2), 2).tolist() == [[False, True, False], [False, False, False]]


def test_a_correct_group_of_two_passes_and_leaves_no_hook_behind():
    model, x = _chain(2), torch.randn(2, 3, 4, 4)
    probe_channel_flow(model, x, [_group("a", 2, ("a", "out", "Conv2d", _ones(2)), ("head", "in", "Conv2d", _ones(2)))])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert "forward" not in vars(model.a)  # the pinned forward is removed


@pytest.mark.parametrize("bias", [None, [1.0, -0.5]])  # [1, -0.5]: a's output peaks at exactly 1
def test_a_group_of_two_declaring_swapped_consumer_channels_is_refused(bias):
    """The probe's perturbation is 10 * (1 + max |out|) times noise: also with max |out| == 1."""
    model, x = _chain(2, bias), torch.randn(2, 3, 4, 4)
    wrong = _group("a", 2, ("a", "out", "Conv2d", _ones(2)), ("head", "in", "Conv2d", ((1,), (0,))))
    with pytest.raises(PruningError, match=rf"^group a: channel 0 reaches head input channels \[0\] {_WHY}; to keep "
                                           r"these channels whole pass ignored_layers=\['a'\]$"):
        probe_channel_flow(model, x, [wrong])


@pytest.mark.parametrize("k", [3, 4])  # the middle and the second-to-last of 6
def test_a_group_of_six_missing_one_probed_consumer_channel_is_refused_naming_it(k):
    model, x = _chain(6), torch.randn(2, 3, 4, 4)
    head = tuple(() if c == k else (c,) for c in range(6))
    wrong = _group("a", 6, ("a", "out", "Conv2d", _ones(6)), ("head", "in", "Conv2d", head))
    with pytest.raises(PruningError, match=rf"^group a: channel {k} reaches head input channels \[{k}\] {_WHY};"):
        probe_channel_flow(model, x, [wrong])


def test_arrivals_at_a_depthwise_conv_are_checked_too():
    model = nn.Sequential()
    model.add_module("a", nn.Conv2d(3, 4, 1))
    model.add_module("dw", nn.Conv2d(4, 4, 3, padding=1, groups=4))
    model.add_module("head", nn.Conv2d(4, 5, 1))
    dw_in = tuple(() if c == 1 else (c,) for c in range(4))  # channel 1 not declared at dw (in or out)
    wrong = _group("a", 4, ("a", "out", "Conv2d", _ones(4)), ("dw", "in", "Conv2d", dw_in),
                   ("dw", "out", "Conv2d", dw_in), ("head", "in", "Conv2d", _ones(4)))
    with pytest.raises(PruningError, match=rf"^group a: channel 1 reaches dw input channels \[1\] {_WHY};"):
        probe_channel_flow(model.eval(), torch.randn(2, 3, 4, 4), [wrong])


class _Product(nn.Module):
    """head(a(x) * b(x)) with a and b all zeros: a perturbation of a or of b alone changes nothing
    downstream (it is multiplied by zero); perturbing both at once changes the head's input."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1)
        for conv in (self.a, self.b):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return self.head(self.a(x) * self.b(x))


def test_channels_that_arrive_only_when_two_groups_are_perturbed_together_name_both_groups():
    # a (size 4) is probed at 1, 2, 1 over the three rows; b (size 3, channels 0-2 of conv b) at 1, 1, 1:
    # row 0 perturbs channel 1 of both, whose product reaches head input 1, declared by neither group
    a = _group("a", 4, ("a", "out", "Conv2d", _ones(4)))
    b = _group("b", 3, ("b", "out", "Conv2d", _ones(3)))
    with pytest.raises(PruningError, match=rf"^channels of several groups interact at channel 1 reaches head input "
                                           rf"channels \[1\] {_WHY}; to keep them whole pass ignored_layers=\['a', 'b'\]$"):
        probe_channel_flow(_Product().eval(), torch.randn(2, 3, 4, 4), [a, b])
