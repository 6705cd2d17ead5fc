"""``select``'s error message and its use of counters, and the family solver's edge cases, against hand oracles.

Oracles: the "cannot reach" message written out from ``_limits``' definition (which constraints bind, which
groups are kept whole, the first three and "; ..."); the number of channels a ratio can remove counted by
hand on a two-group chain; which counter calls ``select`` makes (a recording counter); plateaus of a target
function where the shortest prefix must win; and ``_exchange`` on a hand-written function whose tie between
two moves decides whether the search lands.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import filterprune.selection.engine as engine
from filterprune.errors import PruningError
from filterprune.graph.groups import ChannelGroup
from filterprune.graph.trace import trace_groups
from filterprune.selection import (
    Baseline,
    CostModel,
    SelectOptions,
    _analytic_count,
    _candidates,
    _Family,
    _limits,
    select,
    unit_key,
)
from models_zoo import pointwise_chain


def _scores(groups):
    return {g.id: torch.arange(g.size, dtype=torch.float) for g in groups if g.prunable}


def _group(gid, *, prunable=False, reason="", size=4, reaches_output=False):
    return ChannelGroup(gid, size, (), prunable=prunable, reason=reason, reaches_output=reaches_output)


# ---------------------------------------------------------------------------------------------------
# _limits: the tail of the "cannot reach" message
# ---------------------------------------------------------------------------------------------------

def test_limits_names_every_binding_constraint_in_order():
    opts = SelectOptions(ratio=0.5, min_channels=2, max_ratio=0.5, round_to=2, ignored_layers=("x",))
    assert _limits([], opts, Baseline(0, 0), 0.1, 0.5) == "; under min_channels=2, max_ratio=0.5, round_to=2, ignored_layers"


def test_limits_leave_out_constraints_at_their_defaults():
    # min_channels=1, max_ratio=1, round_to=1, no ignored layers bind nothing: nothing to say at all
    assert _limits([], SelectOptions(ratio=0.5), Baseline(0, 0), 0.1, 0.5) == ""


def test_limits_list_the_first_three_groups_kept_whole_then_an_ellipsis():
    groups = [
        _group("p", prunable=True),                                # prunable: not "kept whole"
        _group("fc", reason="classifier output"),                  # the classifier: expected to stay whole
        _group("out", reason="model output", reaches_output=True),  # a model output: expected too
        _group("one", reason="single channel", size=1),            # one channel: nothing to keep whole
        _group("a", reason="r1"), _group("b", reason="r2"), _group("c", reason="r3"), _group("d", reason="r4"),
    ]
    assert _limits(groups, SelectOptions(ratio=0.5, min_channels=2), Baseline(0, 0), 0.1, 0.5) == (
        "; under min_channels=2, 4 group(s) kept whole: a (r1); b (r2); c (r3); ...")


def test_limits_without_an_ellipsis_for_three_groups_kept_whole():
    groups = [_group("a", reason="r1"), _group("b", reason="r2"), _group("c", reason="r3")]
    assert _limits(groups, SelectOptions(ratio=0.5), Baseline(0, 0), 0.1, 0.5) == (
        "; 3 group(s) kept whole: a (r1); b (r2); c (r3)")


def test_limits_when_the_target_is_in_reach_but_no_combination_lands():
    # best + tolerance >= target: the constraints are not what stops it, the granularity is
    assert _limits([_group("a", reason="r1")], SelectOptions(ratio=0.5, min_channels=2), Baseline(0, 0), 0.6, 0.5) == (
        "; no combination of whole channels lands within the tolerance; try a larger tolerance or another target")


# ---------------------------------------------------------------------------------------------------
# select: the whole message, and which counters it calls
# ---------------------------------------------------------------------------------------------------

def test_unreachable_ratio_message_counts_channels_not_params():
    # one candidate group of 8 (the other is ignored), min_channels=2: at most 6 of its 8 channels go,
    # 6/8 = 0.75 < 0.875. A ratio is counted in channels: neither "got" nor "at most" comes from a counter.
    model, x, groups = pointwise_chain()
    opts = SelectOptions(ratio=0.875, min_channels=2, ignored_layers=("2",))
    with pytest.raises(PruningError, match=r"^cannot reach ratio=0\.875 within 0\.01: got 0\.75 "
                                           r"\(at most 0\.75; under min_channels=2, ignored_layers\)$"):
        select(model, x, groups, _scores(groups), opts)


def test_ratio_selection_neither_counts_nor_runs_the_model():
    """A ratio under global ranking needs no cost model: no counter call and no forward pass."""
    model, x, groups = pointwise_chain()
    calls = []
    model.register_forward_hook(lambda *_: calls.append("forward"))
    plan = select(model, x, groups, _scores(groups), SelectOptions(ratio=0.5),
                  counter=lambda m, inputs: calls.append("count") or (1, 1))
    assert plan.num_removed() == 8
    assert calls == []


def test_a_given_counter_is_used_even_where_the_metrics_package_is_missing(monkeypatch):
    """Without metrics, the default counter is the analytic one and need not be re-checked; a counter the
    caller passes is still the measure: it counts the model itself and every candidate plan."""
    monkeypatch.setattr(engine, "default_counter", lambda: _analytic_count)
    model, x, groups = pointwise_chain()
    seen = []

    def counter(m, inputs):
        seen.append(m)
        return CostModel(m, inputs).totals()

    plan = select(model, x, groups, _scores(groups), SelectOptions(target_macs=0.5, tolerance=0.05), counter=counter)
    assert plan.num_removed() > 0
    assert seen[0] is model  # the unpruned model, counted as it is (not a copy)
    assert len(seen) >= 2  # and at least one pruned copy, to verify the plan


def test_a_baseline_of_one_mac_is_not_clamped_to_two():
    """Removed fraction = 1 - macs / max(1, base macs): a counter that reports one MAC whatever is removed
    leaves 0 % removed, so 50 % cannot be reached."""
    model, x, groups = pointwise_chain()
    with pytest.raises(PruningError, match=r"^cannot reach target_macs=0\.5 within 0\.01: got 0 "):
        select(model, x, groups, _scores(groups), SelectOptions(target_macs=0.5), counter=lambda m, inputs: (1, 1))


def test_global_ranking_off_with_uniform_allocation_is_accepted():
    assert SelectOptions(ratio=0.1, global_ranking=False, allocation="uniform").mode == "uniform"
    with pytest.raises(ValueError, match=r"^global_ranking=False means allocation='uniform'; it cannot be "
                                         r"combined with allocation='cost'$"):
        SelectOptions(ratio=0.1, global_ranking=False, allocation="cost")


# ---------------------------------------------------------------------------------------------------
# select with a counter the analytic model disagrees with: one candidate group ("2" ignored), so a plan
# is "remove the n lowest-scored channels of group 0". The analytic model sees 176 MACs per channel of
# group 0 (conv 0: 3 inputs, conv 2: 8 outputs, 16 positions each); the counter reports _T[a] MACs for
# a kept channels, _T[8] = 1760, so the analytic removed fraction is exactly n / 10 and the counted one
# is 1 - _T[8 - n] / 1760.
# ---------------------------------------------------------------------------------------------------

def _table_counter(table):
    def counter(m, inputs):
        return table[m[0].out_channels], 0
    return counter


def _one_group_plan(table, target, tol):
    model, x, groups = pointwise_chain()
    opts = SelectOptions(target_macs=target, tolerance=tol, ignored_layers=("2",))
    plan = select(model, x, groups, _scores(groups), opts, counter=_table_counter(table))
    assert set(plan.prune_idxs) <= {"0"}
    return len(plan.prune_idxs.get("0", []))


def test_the_measured_gap_is_corrected_towards_half_the_tolerance():
    # counted: n=4 -> 0.475, n=5 -> 0.575. The analytic solve lands on n=5 (exactly 0.5): counted 0.075 off,
    # within the tolerance 0.1 but not within half of it; the analytic goal shifted by that gap (-0.075)
    # lands on n=4, counted 0.025 off. So n=4, the only plan within half the tolerance.
    table = {8: 1760, 7: 1584, 6: 1408, 5: 1232, 4: 924, 3: 748, 2: 528, 1: 352}
    assert [round(1 - table[8 - n] / 1760, 3) for n in (4, 5)] == [0.475, 0.575]
    assert _one_group_plan(table, 0.5, 0.1) == 4


def test_where_the_shifted_analytic_goal_cycles_the_real_counts_are_searched():
    # counted: n=3 -> 0.310, n=4 -> 0.5, n=5 -> 0.690. Shifting the analytic goal alternates between n=5 and
    # n=3 (each gap points at the other), both 0.19 off; n=4 is the only plan within the tolerance.
    table = {8: 1760, 7: 1584, 6: 1408, 5: 1214, 4: 880, 3: 546, 2: 352, 1: 176}
    assert [round(1 - table[8 - n] / 1760, 3) for n in (3, 4, 5)] == [0.31, 0.5, 0.69]
    assert _one_group_plan(table, 0.5, 0.05) == 4


def test_within_half_the_tolerance_the_ranking_prefix_beats_a_closer_plan():
    """target_latency 0.285 (tolerance 0.06): removing the 2 + 2 lowest-ranked channels predicts 0.26,
    0.025 off, within half the tolerance: taken. (Adding the third channel of "2" would predict 0.29, closer,
    but out of ranking order: "0"'s third channel ranks first.)"""
    model, x, groups = pointwise_chain()
    scores = {"0": torch.arange(8.0), "2": torch.arange(8.0) + 0.5}  # ranking: 0:0, 2:0, 0:1, 2:1, 0:2, ...

    def latency(cuts):  # 0.1 per channel of "0", 0.03 per channel of "2"
        return 0.1 * cuts.get(("0", "out"), 0) + 0.03 * cuts.get(("2", "out"), 0)

    opts = SelectOptions(target_latency=0.285, tolerance=0.06, normalize="none")
    plan = select(model, x, groups, scores, opts, latency=latency)
    assert plan.prune_idxs == {"0": [0, 1], "2": [0, 1]}


# ---------------------------------------------------------------------------------------------------
# the family solver and its exchange search, on hand-written target functions
# ---------------------------------------------------------------------------------------------------

def _family(n_groups, width):
    """A chain of ``n_groups`` prunable groups of ``width`` channels; group i's channels rank after group
    i-1's (scores 10 i + c, not normalised), so the units are all of group 0, then all of group 1, ..."""
    torch.manual_seed(0)
    layers = []
    for i in range(n_groups):
        layers += [nn.Conv2d(3 if i == 0 else width, width, 1), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Conv2d(width, 2, 1)).eval()
    groups = trace_groups(model, torch.randn(1, 3, 2, 2))
    groups = [g for g in groups if g.prunable]
    assert len(groups) == n_groups
    scores = {g.id: 10.0 * i + torch.arange(float(width)) for i, g in enumerate(groups)}
    opts = SelectOptions(ratio=0.5, normalize="none")
    base = Baseline(0, 0, {g.id: g.size for g in groups})
    fam = _Family(_candidates(groups, scores, opts, base), opts, base, None)
    fam.order(unit_key(fam, opts, (0, 0)))
    return fam


def test_solve_returns_the_shortest_prefix_on_a_plateau_of_the_target():
    # f reaches the target at 2 removed channels and stays there: every longer prefix ties at distance 0
    fam = _family(1, 8)
    assert fam.solve(lambda c: 0.25 * min(c[0], 2), 0.5, 0.01) == [2]


def test_solve_takes_a_unit_that_lands_exactly_at_target_plus_tolerance():
    # units in order: a channel of group 0 (f 0.8, overshoots 0.75), of group 1 (f exactly 0.75 = target +
    # tol: within, inclusive), of group 2 (f 0.5). The prefixes (0 and 0.8) both miss, so units are tried
    # one by one: group 0's is skipped, group 1's is taken.
    fam = _family(3, 4)
    assert fam.solve(lambda c: 0.8 * c[0] + 0.75 * c[1] + 0.5 * c[2], 0.5, 0.25) == [0, 1, 0]


def test_exchange_ties_go_to_the_first_move_found():
    """Four groups of counts 0..2, target 1 reached only at [1, 1, 1, 1]. From [0, 0, 0, 0] (distance 1),
    the closest moves are [1, 1, 0, 0] and [0, 0, 2, 2] (distance 0.5 each; everything else 0.9). The first
    found (pairs in group order: groups 0 and 1 first) is taken; from it one more pair move lands. From the
    other one nothing gets closer, and the search would give up."""
    fam = _family(4, 3)
    table = {(1, 1, 1, 1): 1.0, (1, 1, 0, 0): 0.5, (0, 0, 2, 2): 0.5, (0, 0, 0, 0): 0.0}

    def f(c):
        return table.get(tuple(c), 0.1)

    assert fam._exchange([0, 0, 0, 0], f, 1.0, 0.01) == [1, 1, 1, 1]
