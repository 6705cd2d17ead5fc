"""Allocations ``uniform`` and ``cost`` against independent oracles.

* uniform: every candidate group loses the same fraction of its channels (to one allowed step), the
  constraints bind, and the target (measured with ``metrics.count`` on the pruned copy) is met;
* cost: on a net whose two groups have equal scores but very different MACs per channel, the expensive
  channels go first; on a net with a concat (channels tied across branches), the plan equals an
  independent greedy that costs each group's removals by physically pruning copies and counting them
  (no CostModel, no analytic formula); a measured step-shaped ``cost_fn`` against a hand computation.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from filterprune.graph.groups import PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from filterprune.metrics import count
from filterprune.models import create_model
from filterprune.selection import SelectOptions, select
from models_zoo import build


def _l1(model, groups):
    return {g.id: model.get_submodule(g.id).weight.detach().abs().flatten(1).sum(1) for g in groups if g.prunable}


def _resnet20():
    torch.manual_seed(0)
    model, x = create_model("resnet20").eval(), torch.randn(1, 3, 32, 32)
    groups = trace_groups(model, x)
    return model, x, groups, _l1(model, groups)


def _macs_removed(model, x, groups, plan):
    return 1 - count(apply_plan(copy.deepcopy(model), groups, plan), x)[0] / count(model, x)[0]


@pytest.mark.parametrize("round_to, max_ratio", [(1, 1.0), (4, 1.0), (1, 0.4)])
def test_uniform_removes_the_same_fraction_of_every_group_and_meets_the_target(round_to, max_ratio):
    model, x, groups, scores = _resnet20()
    opts = SelectOptions(target_macs=0.35, allocation="uniform", round_to=round_to, max_ratio=max_ratio,
                         ignored_layers=("layer1.0.conv1",))
    plan = select(model, x, groups, scores, opts)
    assert abs(_macs_removed(model, x, groups, plan) - 0.35) <= opts.tolerance
    cands = [g for g in groups if g.prunable and g.id != "layer1.0.conv1"]
    assert "layer1.0.conv1" not in plan.prune_idxs
    fractions = {g.id: len(plan.prune_idxs.get(g.id, [])) / g.size for g in cands}
    step = {g.id: round_to / g.size for g in cands}  # one allowed count to the next
    # all within one allowed step of a common fraction (the largest minus one step is below the smallest)
    lo, hi = min(fractions.values()), max(fractions.values())
    assert hi - lo <= max(step.values()) + 1e-9, fractions
    assert all(f <= max_ratio + 1e-9 for f in fractions.values())
    for g in cands:
        assert (g.size - len(plan.prune_idxs.get(g.id, []))) % round_to == 0
        kept = set(range(g.size)) - set(plan.prune_idxs.get(g.id, []))
        removed = plan.prune_idxs.get(g.id, [])
        if removed and kept:  # the lowest-scored channels of each group
            assert max(scores[g.id][removed]) <= min(scores[g.id][sorted(kept)])


def test_uniform_equals_global_ranking_off():
    model, x, groups, scores = _resnet20()
    a = select(model, x, groups, scores, SelectOptions(target_macs=0.4, allocation="uniform"))
    b = select(model, x, groups, scores, SelectOptions(target_macs=0.4, global_ranking=False))
    assert a.prune_idxs == b.prune_idxs


class _CheapThenDear(nn.Module):
    """Group "a" (8 channels, 1x1 at 8x8, feeding a 1x1 conv): 3*64 + 8*64 = 704 MACs per channel.
    Group "b" (8 channels, feeding a 64-filter 3x3 conv): 8*64 + 64*9*64 = 37376 MACs per channel."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 64, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def _cheap_dear():
    torch.manual_seed(0)
    model, x = _CheapThenDear().eval(), torch.randn(1, 3, 8, 8)
    groups = trace_groups(model, x)
    scores = {"a": torch.arange(1.0, 9.0), "b": torch.arange(1.0, 9.0)}  # equal scores, channel for channel
    return model, x, groups, scores


def test_cost_removes_the_expensive_channel_of_equal_score_first():
    model, x, groups, scores = _cheap_dear()
    cost = select(model, x, groups, scores, SelectOptions(target_macs=0.25, allocation="cost")).prune_idxs
    glob = select(model, x, groups, scores, SelectOptions(target_macs=0.25)).prune_idxs
    # per unit of MACs, b's channels are ~53x cheaper to lose: b goes first, a is untouched
    assert "a" not in cost and cost["b"] == list(range(len(cost["b"])))
    # global ranking sees only equal scores: it takes from both
    assert glob.get("a") and glob.get("b")


def test_cost_fn_replaces_the_targets_cost_and_is_called_with_group_and_count():
    model, x, groups, scores = _cheap_dear()
    calls = []

    def cost_fn(group, n):  # a "measured" table where a's channels are the dear ones
        calls.append((group.id, n))
        return n * (100.0 if group.id == "a" else 1.0)

    plan = select(model, x, groups, scores, SelectOptions(ratio=0.25, allocation="cost"), cost_fn=cost_fn)
    assert plan.prune_idxs == {"a": [0, 1, 2, 3]}
    assert {gid for gid, _ in calls} == {"a", "b"} and {n for _, n in calls} == set(range(1, 8))


def test_cost_fn_flat_steps_are_merged_into_the_next_saving_unit():
    # A step-shaped table: b saves nothing until its 4th channel (then 40), a saves 10 per channel.
    # Normalised scores (mean of 1..8 = 4.5): s_i = i / 4.5 in both groups. a's keys: s_i / 10 =
    # 0.022, 0.044, 0.067, ...; b's first four units merge into one: (1+2+3+4)/4.5 / 40 = 0.056, shared
    # by b1..b4. Four channels (ratio 0.25 of 16): a1, a2, then b1, b2 -> {a: 2, b: 2}. Without the merge
    # (a zero step costed as infinitely dear, or divided by zero) b would never be cut: {a: 4}.
    model, x, groups, scores = _cheap_dear()

    def cost_fn(group, n):
        return 10.0 * n if group.id == "a" else (40.0 if n >= 4 else 0.0) + 40.0 * max(0, n - 4)

    plan = select(model, x, groups, scores, SelectOptions(ratio=0.25, allocation="cost"), cost_fn=cost_fn)
    assert plan.prune_idxs == {"a": [0, 1], "b": [0, 1]}


def test_cost_with_a_ratio_target_ranks_as_global():
    model, x, groups, scores = _resnet20()
    a = select(model, x, groups, scores, SelectOptions(ratio=0.3, allocation="cost"))
    b = select(model, x, groups, scores, SelectOptions(ratio=0.3))
    assert a.prune_idxs == b.prune_idxs


def _brute_cost_order(model, x, groups, scores):
    """Independent greedy: each group's n lowest-scored channels pruned alone on a copy and counted
    (metrics.count), key = summed mean-normalised score per MACs fraction saved, running max."""
    macs0 = count(model, x)[0]
    units = []
    for g in groups:
        if not g.prunable:
            continue
        s = scores[g.id].double()
        s = s / s.abs().mean()
        order = sorted(range(g.size), key=lambda c: (float(s[c]), c))
        prev, best = 0.0, -math.inf
        for n in range(1, g.size):
            saved = 1 - count(apply_plan(copy.deepcopy(model), groups, PrunePlan({g.id: order[:n]})), x)[0] / macs0
            best = max(best, float(s[order[n - 1]]) / (saved - prev))
            prev = saved
            units.append((best, g.id, n))
    return sorted(units)


@pytest.fixture(scope="module")
def concat_net():
    """The concat net (a stem feeding two concatenated branches), random positive scores, brute-force order."""
    model, x = build("concat")
    x = x[:1]
    groups = trace_groups(model, x)
    torch.manual_seed(0)
    scores = {g.id: torch.rand(g.size) + 0.1 for g in groups if g.prunable}
    return model, x, groups, scores, _brute_cost_order(model, x, groups, scores)


@pytest.mark.parametrize("k", [5, 20, 40])
def test_cost_plan_is_a_prefix_of_an_independent_greedy(concat_net, k):
    # the target is what the greedy's first k units remove, so the bisection must land on exactly them
    model, x, groups, scores, units = concat_net
    brute: dict[str, int] = {}
    for _, gid, n in units[:k]:
        brute[gid] = n
    order = {gid: sorted(range(len(s)), key=lambda c, s=s: (float(s[c]), c)) for gid, s in scores.items()}
    expected = PrunePlan({gid: sorted(order[gid][:n]) for gid, n in brute.items()})
    target = _macs_removed(model, x, groups, expected)
    plan = select(model, x, groups, scores, SelectOptions(target_macs=target, allocation="cost"))
    assert plan.prune_idxs == expected.prune_idxs


def test_bad_allocation_is_refused():
    with pytest.raises(ValueError, match="allocation must be one of global, uniform, cost, sensitivity"):
        SelectOptions(ratio=0.1, allocation="greedy")
    with pytest.raises(ValueError, match="global_ranking=False means allocation='uniform'"):
        SelectOptions(ratio=0.1, allocation="cost", global_ranking=False)
    with pytest.raises(ValueError, match="cost_of"):
        SelectOptions(ratio=0.1, allocation="cost", cost_of="latency")


def test_cost_of_macs_with_a_ratio_target_charges_macs():
    model, x, groups, scores = _cheap_dear()
    plan = select(model, x, groups, scores, SelectOptions(ratio=0.25, allocation="cost", cost_of="macs"))
    assert plan.prune_idxs == {"b": [0, 1, 2, 3]}  # 4 of 16 channels, all from the dear-per-channel group


def test_target_latency_is_met_on_the_predictor_and_cost_ranks_by_it():
    # a predicted-latency table where a's channels are five times dearer than b's (the opposite of MACs)
    model, x, groups, scores = _cheap_dear()

    def latency(cuts):
        return 0.05 * cuts.get(("a", "out"), 0) + 0.01 * cuts.get(("b", "out"), 0)

    plan = select(model, x, groups, scores, SelectOptions(target_latency=0.2, allocation="cost"), latency=latency)
    assert plan.prune_idxs == {"a": [0, 1, 2, 3]}  # 4 x 0.05: the dear channels of equal score first
    with pytest.raises(ValueError, match="target_latency needs latency="):
        select(model, x, groups, scores, SelectOptions(target_latency=0.2))
