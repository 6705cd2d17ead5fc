"""The analytic cost model of selection against hand-computed MACs/params and against pruned models.

Oracles: (1) the paper convention written out by hand for every layer type the model knows (conv,
depthwise conv, transposed conv, Linear on 2-d and 3-d inputs, BN, PReLU shared and per channel);
(2) ``cost(name, cut_out, cut_in)`` on the original model equals ``cost(name)`` measured on the model
physically pruned by the same number of channels (apply_plan), for every group of the test zoo;
(3) ``totals()`` equals ``metrics.count`` (MACs and params) on models made of those layers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from filterprune.graph.groups import PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from filterprune.metrics import count
from filterprune.selection import CostModel
from models_zoo import PRUNABLE, build


class _Zoo(nn.Module):
    """One of every layer type CostModel prices, on a 5x5 input (25 output positions per conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.PReLU(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.shared = nn.PReLU()
        self.c2 = nn.Conv2d(6, 4, 1)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)  # 5x5 -> 10x10
        self.fc = nn.Linear(200, 3)

    def forward(self, x):
        x = self.shared(self.dw(self.act(self.bn(self.c1(x)))))
        return self.fc(self.up(self.c2(x)).flatten(1))


# (MACs per sample, params) by hand: conv C_out * C_in/groups * k * positions (+ bias params);
# transposed conv counts positions of its input; BN 2 params per channel; PReLU its slopes.
_HAND = {
    "c1": (6 * 3 * 9 * 25, 6 * 3 * 9 + 6),
    "bn": (0, 12),
    "act": (0, 6),
    "dw": (6 * 9 * 25, 6 * 9),
    "shared": (0, 1),
    "c2": (4 * 6 * 25, 4 * 6 + 4),
    "up": (2 * 4 * 4 * 25, 2 * 4 * 4 + 2),
    "fc": (3 * 200, 3 * 200 + 3),
}

# the same with cuts: (cut_out, cut_in) -> (MACs, params)
_HAND_CUT = {
    "c1": ((2, 0), (4 * 3 * 9 * 25, 4 * 3 * 9 + 4)),
    "c2": ((1, 2), (3 * 4 * 25, 3 * 4 + 3)),
    "bn": ((2, 0), (0, 8)),
    "act": ((2, 0), (0, 4)),
    "shared": ((2, 0), (0, 1)),  # one slope for all channels: nothing to cut
    "dw": ((2, 0), (4 * 9 * 25, 4 * 9)),  # 4 channels left, one kernel each
    "dw_both": ((2, 2), (4 * 9 * 25, 4 * 9)),  # the same conv, cut on both sides
    "up": ((1, 1), (1 * 3 * 4 * 25, 1 * 3 * 4 + 1)),
    "fc": ((1, 100), (2 * 100, 2 * 100 + 2)),
}


def test_cost_of_every_layer_type_by_hand():
    cm = CostModel(_Zoo(), torch.randn(2, 3, 5, 5))  # batch 2: the counts are per sample
    assert set(cm.modules) == set(_HAND)
    assert {n: cm.cost(n) for n in _HAND} == pytest.approx(_HAND)
    assert cm.totals() == (sum(m for m, _ in _HAND.values()), sum(p for _, p in _HAND.values()))


@pytest.mark.parametrize("name", sorted(_HAND_CUT))
def test_cost_with_cuts_by_hand(name):
    cm = CostModel(_Zoo(), torch.randn(1, 3, 5, 5))
    (cut_out, cut_in), expected = _HAND_CUT[name]
    name = name.removesuffix("_both")
    assert cm.cost(name, cut_out, cut_in) == pytest.approx(expected)


def test_grouped_conv_by_hand():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2, bias=False))  # 6 filters of 2 input channels
    cm = CostModel(model, torch.randn(1, 4, 5, 5))  # 3x3 output
    assert cm.cost("0") == (6 * 2 * 9 * 9, 6 * 2 * 9)
    assert cm.cost("0", 2, 0) == (4 * 2 * 9 * 9, 4 * 2 * 9)


def test_a_layer_never_called_costs_no_macs():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 3, 1)

        def forward(self, x):
            return self.used(x)

    cm = CostModel(Unused(), torch.randn(1, 2, 4, 4))
    assert cm.cost("spare") == (0, 2 * 3 + 3) and cm.cost("spare", 1, 1) == (0, 1 * 2 + 2)
    assert cm.totals() == (2 * 2 * 16, 6 + 9)


def test_narrow_layers_at_batch_one():
    model = nn.Sequential(nn.Conv2d(2, 1, 1), nn.BatchNorm2d(1, affine=False), nn.PReLU(1), nn.Conv2d(1, 2, 1),
                          nn.PReLU(2))
    cm = CostModel(model, torch.randn(1, 2, 3, 3))  # one sample, one channel: 9 positions
    assert cm.positions["0"] == 9 and cm.cost("0") == (2 * 9, 2 + 1)
    assert cm.cost("1") == (0, 0)  # no affine parameters
    assert cm.cost("2") == (0, 1) and cm.cost("4", 1) == (0, 1)  # PReLU(2) with one channel cut


def test_totals_match_the_metrics_count():
    model, x = _Zoo().eval(), torch.randn(1, 3, 5, 5)
    assert CostModel(model, x).totals() == count(model, x)


def test_linear_positions_are_the_tokens_and_repeated_calls_add_up():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3, bias=False)
            self.conv = nn.Conv2d(2, 2, 1, bias=False)

        def forward(self, t, x):
            return self.fc(t), self.conv(self.conv(x))  # conv called twice

    cm = CostModel(Tokens(), (torch.randn(2, 7, 5), torch.randn(2, 2, 3, 3)))
    assert cm.positions == {"fc": 7, "conv": 2 * 9}
    assert cm.cost("fc") == (3 * 5 * 7, 15)
    assert cm.cost("conv") == (2 * 2 * 18, 4)


def test_cost_model_leaves_the_model_in_its_mode_and_unhooked():
    model = _Zoo().train()
    before = copy.deepcopy(model.bn.running_mean)
    CostModel(model, torch.randn(2, 3, 5, 5))
    assert model.training and torch.equal(model.bn.running_mean, before)
    assert not any(m._forward_hooks for m in model.modules())


def _cuts(group, n):
    """(module, kind) -> member entries removed with the group's first n channels."""
    cut: dict[tuple[str, str], int] = {}
    for m in group.members:
        cut[(m.module, m.kind)] = cut.get((m.module, m.kind), 0) + sum(len(m.idxs[c]) for c in range(n))
    return cut


@pytest.mark.parametrize("name", PRUNABLE)
def test_cost_with_cuts_equals_the_cost_of_the_pruned_model(name):
    model, x = build(name)
    x = x[:1]
    groups = trace_groups(model, x)
    cm = CostModel(model, x)
    for g in groups:
        if not g.prunable:
            continue
        n = g.size // 2
        pruned = apply_plan(copy.deepcopy(model), groups, PrunePlan({g.id: list(range(n))}))
        after = CostModel(pruned, x)
        cut = _cuts(g, n)
        for module in {mod for mod, _ in cut} & set(cm.modules):
            predicted = cm.cost(module, cut.get((module, "out"), 0), cut.get((module, "in"), 0))
            assert predicted == pytest.approx(after.cost(module)), (name, g.id, module)
