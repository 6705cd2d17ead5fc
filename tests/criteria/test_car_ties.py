"""Greedy CAR on data where every filter ties on accuracy: the loss tie-break alone decides.

The evaluation labels are the network's own predictions on 8 images, and no single filter of
``block2.0`` flips a prediction, so every CAR is 0 at every step. The oracle is brute force on
physically pruned copies: remove the filter whose removal leaves the *smallest* loss.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from filterprune.criteria.car_greedy import car_prune_layer
from filterprune.graph.groups import PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from models_zoo import build

GROUP = "block2.0"


def _tied_data():
    model, x = build("conv_chain")
    xs = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(xs).argmax(1)
    return model, x, [(xs, y)]


def _pruned(model, groups, chans, batches):
    """(accuracy %, mean loss) of a physically pruned copy."""
    net = copy.deepcopy(model)
    if chans:
        apply_plan(net, groups, PrunePlan({GROUP: sorted(chans)}))
    (xs, y), = batches
    with torch.no_grad():
        out = net(xs)
    return 100.0 * float((out.argmax(1) == y).double().mean()), float(F.cross_entropy(out, y))


def _brute(model, x, batches, n_remove):
    """Greedy by brute force; also records each step's candidates (drop, loss, channel)."""
    groups = trace_groups(model, x)
    removed, steps = [], []
    while len(removed) < n_remove:
        base, _ = _pruned(model, groups, removed, batches)
        cands = []
        for c in range(24):
            if c not in removed:
                acc, loss = _pruned(model, groups, removed + [c], batches)
                cands.append((round(base - acc, 9), loss, c))
        steps.append(cands)
        removed.append(min(cands)[2])
    return removed, steps


@pytest.mark.parametrize("fast", [True, False])
def test_greedy_ties_broken_by_smaller_loss(fast):
    model, x, batches = _tied_data()
    expected, steps = _brute(model, x, batches, 3)
    for cands in steps:  # the data has CAR ties: every filter drops 0 points, losses all differ
        assert {d for d, _, _ in cands} == {0.0}
        assert len({round(loss, 6) for _, loss, _ in cands}) == len(cands)
    assert expected != [max(steps[0])[2]] + expected[1:]  # the largest loss would be another filter
    assert expected[0] != 0  # as would the lowest index
    result = car_prune_layer(copy.deepcopy(model), x, batches, GROUP, 3, k=1, fast=fast)
    assert result.removed == expected
    assert [h["drop"] for h in result.history] == [[0.0]] * 3


def test_greedy_ties_with_k_two():
    model, x, batches = _tied_data()
    _, steps = _brute(model, x, batches, 1)
    two_smallest = [c for _, _, c in sorted(steps[0])[:2]]
    result = car_prune_layer(copy.deepcopy(model), x, batches, GROUP, 2, k=2, apply=False)
    assert result.removed == two_smallest
