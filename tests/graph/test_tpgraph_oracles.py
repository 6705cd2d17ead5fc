"""The torch-pruning graph adapters (``graph._tpgraph``): PReLU widths, slice index mapping.

Hand oracles: a shared-slope ``PReLU()`` between a conv and a flatten into a Linear passes the conv's
channels through at their traced width, so the Linear's inputs are the conv's channel blocks of H*W
features; ``_Within`` keeps exactly the indices in ``[0, limit)``; chained splits are kept whole, not
crashed on.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from graph_nets import pruned_matches_masked
from torch import nn

from filterprune.graph._tpgraph import _Within
from filterprune.graph.groups import PrunePlan
from filterprune.graph.trace import trace_groups


class _PreluFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(3, 4, 1), nn.PReLU(), nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


def test_a_shared_slope_prelu_before_a_flatten_maps_each_channel_to_its_block_of_features():
    torch.manual_seed(0)
    model, x = _PreluFlatten().eval(), torch.randn(2, 3, 3, 3)
    groups = trace_groups(model, x)
    conv = next(g for g in groups if g.id == "conv")
    assert conv.prunable and conv.size == 4
    fc = next(m for m in conv.members if m.module == "fc")
    assert fc.idxs == tuple(tuple(range(9 * c, 9 * c + 9)) for c in range(4))
    pruned = pruned_matches_masked(model, groups, PrunePlan({"conv": [2]}), x)
    assert pruned.fc.in_features == 27


def test_within_keeps_the_indices_from_zero_up_to_the_limit():
    idxs = [SimpleNamespace(idx=i) for i in (0, 3, 4, 5, -1, 2)]
    assert [i.idx for i in _Within(5)(idxs)] == [0, 3, 4, 2]
    assert _Within(0)(idxs) == []


class _ChainedSplits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 6, 1), nn.Conv2d(5, 4, 1)

    def forward(self, x):
        a, b = self.conv(x).split([2, 4], 1)
        c, d = b.split([1, 3], 1)
        return self.head(torch.cat([a, d], 1)).mean((2, 3))


def test_chained_uneven_splits_keep_the_group_whole_with_the_reason():
    groups = {g.id: g for g in trace_groups(_ChainedSplits(), torch.randn(2, 3, 4, 4))}
    assert not groups["conv"].prunable
    assert groups["conv"].reason == "split in the model forward (_ChainedSplits) cuts the channel axis into pieces " \
                                    "of fixed size"


class _VectorPrelu(nn.Module):
    """A Linear whose outputs are summed into one number per sample that a shared-slope PReLU then acts on."""

    def __init__(self):
        super().__init__()
        self.fc, self.act, self.head = nn.Linear(5, 4), nn.PReLU(), nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc(x)
        return self.head(h), self.act(h.sum(1))


def test_a_prelu_on_a_1d_tensor_is_traced_and_leaves_the_linear_prunable():
    """Found by this test: the 1-d PReLU result was given channel axis 1 and the trace raised IndexError.
    The sum over fc's outputs reduces its channels, so fc's group is kept whole for that reduction."""
    groups = {g.id: g for g in trace_groups(_VectorPrelu(), torch.randn(2, 5))}
    assert groups["fc"].size == 4
    assert {(m.module, m.kind) for m in groups["fc"].members} >= {("fc", "out"), ("head", "in")}
