"""Selection constraints where they bind, and the score normalisers, against hand-computed plans.

Two 8-channel groups in a chain (``"0"`` feeds ``"2"``; ``"4"`` is the model output and stays whole).
The first group's raw scores are all far below the second's (``normalize="none"``), so unconstrained
global ranking would empty the first group: every constraint below is the only thing that stops it, and the expected plan is
written out by hand from the constraint's definition.
"""

from __future__ import annotations

import pytest
import torch

from filterprune.errors import PruningError
from filterprune.graph.groups import PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from filterprune.selection import Baseline, SelectOptions, _normalized, select
from models_zoo import pointwise_chain


def _low_high(groups):
    """Group "0": scores 0..7 (all low); group "2": 100..107 (all high)."""
    sizes = {g.id: g.size for g in groups}
    return {"0": torch.arange(sizes["0"], dtype=torch.float), "2": 100 + torch.arange(sizes["2"], dtype=torch.float)}


def _plan(opts, widths=(8, 8)):
    model, x, groups = pointwise_chain(widths)
    return select(model, x, groups, _low_high(groups), opts).prune_idxs


def test_min_channels_binds_at_exactly_min_channels():
    # 8 of 16 channels go; group "0" may lose 8 - 3 = 5 (keeps exactly 3), the other 3 come from "2".
    # An off-by-one (size - min_channels +/- 1) gives 6+2 or 4+4.
    assert _plan(SelectOptions(ratio=0.5, min_channels=3, normalize="none")) == {"0": [0, 1, 2, 3, 4], "2": [0, 1, 2]}


@pytest.mark.parametrize("min_channels, reachable", [(1, True), (2, False)])
def test_min_channels_bound_on_one_group(min_channels, reachable):
    # one candidate group of 8 (the other is ignored, so not counted): ratio 7/8 keeps exactly one channel
    model, x, groups = pointwise_chain()
    opts = SelectOptions(ratio=0.875, min_channels=min_channels, ignored_layers=("2",), normalize="none")
    if reachable:
        assert select(model, x, groups, _low_high(groups), opts).prune_idxs == {"0": list(range(7))}
    else:
        with pytest.raises(PruningError, match="cannot reach ratio"):
            select(model, x, groups, _low_high(groups), opts)


def test_round_to_binds():
    # kept widths must be multiples of 4: group "0" can keep 4 (not 1), so 4 + 4 channels go
    assert _plan(SelectOptions(ratio=0.5, round_to=4, normalize="none")) == {"0": [0, 1, 2, 3], "2": [0, 1, 2, 3]}


def test_max_ratio_binds_in_one_step():
    # at most floor(0.25 * 8) = 2 channels per group
    assert _plan(SelectOptions(ratio=0.25, max_ratio=0.25, normalize="none")) == {"0": [0, 1], "2": [0, 1]}


def test_max_ratio_counts_channels_removed_in_earlier_steps():
    model, x, groups = pointwise_chain()
    base = Baseline(0, 0, {g.id: g.size for g in groups})  # widths before the first step: 8 and 8
    apply_plan(model, groups, PrunePlan({"0": [0, 1, 2]}))  # step 1 took 3 of group "0"
    groups = trace_groups(model, x)
    assert {g.id: g.size for g in groups if g.prunable} == {"0": 5, "2": 8}
    scores = {"0": torch.arange(5.0), "2": 100 + torch.arange(8.0)}
    plan = select(model, x, groups, scores, SelectOptions(ratio=0.5, max_ratio=0.5, normalize="none"), base=base)
    # 8 of the baseline's 16 in all, 3 already gone; group "0" may lose floor(0.5 * 8) - 3 = 1 more
    assert plan.prune_idxs == {"0": [0], "2": [0, 1, 2, 3]}


@pytest.mark.parametrize("how, expected", [
    ("mean", [1 / 3, 2 / 3, 1.0, 2.0, -1.0]),         # / mean |s| = 15 / 5
    ("max", [1 / 6, 2 / 6, 3 / 6, 1.0, -3 / 6]),      # / max |s| = 6
    ("l2", [v / 59 ** 0.5 for v in (1, 2, 3, 6, -3)]),  # / ||s|| = sqrt(59)
    ("none", [1.0, 2.0, 3.0, 6.0, -3.0]),
])
def test_normalizers_formula(how, expected):
    s = torch.tensor([1.0, 2.0, 3.0, 6.0, -3.0])
    torch.testing.assert_close(_normalized(s, how), torch.tensor(expected, dtype=torch.float64))


def test_zero_scores_are_left_as_they_are():
    torch.testing.assert_close(_normalized(torch.zeros(3), "mean"), torch.zeros(3, dtype=torch.float64))


def test_mean_normalisation_ranks_groups_of_different_sizes():
    # group "0" (2 channels, scores 1, 3: mean 2) and group "2" (8 channels, 1..8: mean 4.5).
    # mean-normalised: "2" 0.22, 0.44, then "0" 0.5, then "2" 0.67 -> the 3 lowest are 2:0, 2:1, 0:0.
    # (sum-normalised, "0"'s 0.25 would rank above all of "2"'s, which stop at 8/36 = 0.22.)
    model, x, groups = pointwise_chain((2, 8))
    scores = {"0": torch.tensor([1.0, 3.0]), "2": torch.arange(1.0, 9.0)}
    plan = select(model, x, groups, scores, SelectOptions(ratio=0.3, normalize="mean"))
    assert plan.prune_idxs == {"0": [0], "2": [0, 1]}
    # group "0" scored 10x higher: mean-normalised nothing changes, raw scores take all three from "2"
    scaled = {"0": scores["0"] * 10, "2": scores["2"]}
    plan = select(model, x, groups, scaled, SelectOptions(ratio=0.3, normalize="mean"))
    assert plan.prune_idxs == {"0": [0], "2": [0, 1]}
    plan = select(model, x, groups, scaled, SelectOptions(ratio=0.3, normalize="none"))
    assert plan.prune_idxs == {"2": [0, 1, 2]}


def test_an_ignored_first_group_leaves_the_later_ones_to_selection():
    assert _plan(SelectOptions(ratio=0.5, ignored_layers=("0",), normalize="none")) == {"2": [0, 1, 2, 3]}


def test_groups_at_min_channels_cannot_lose_a_channel():
    model, x, groups = pointwise_chain()
    with pytest.raises(PruningError, match="cannot reach ratio=0.0625"):
        select(model, x, groups, _low_high(groups), SelectOptions(ratio=0.0625, min_channels=8))


def test_a_baseline_without_a_group_counts_its_current_width():
    model, x, groups = pointwise_chain()
    plan = select(model, x, groups, _low_high(groups), SelectOptions(ratio=0.5, max_ratio=0.5, normalize="none"),
                  base=Baseline(0, 0, {}))
    assert plan.prune_idxs == {"0": [0, 1, 2, 3], "2": [0, 1, 2, 3]}


def test_non_finite_scores_are_refused_by_name():
    model, x, groups = pointwise_chain()
    scores = _low_high(groups)
    scores["0"][3] = float("nan")
    with pytest.raises(ValueError, match=r"^scores for group 0 are not all finite$"):
        select(model, x, groups, scores, SelectOptions(ratio=0.25))


def test_small_scores_are_normalised_too():
    # mean |s| = 0.2 < 1: still divided
    torch.testing.assert_close(_normalized(torch.tensor([0.1, 0.2, 0.3]), "mean"),
                               torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))


def test_ratio_zero_is_a_valid_request():
    assert _plan(SelectOptions(ratio=0.0)) == {}


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give exactly one of ratio, target_macs, target_params, target_latency (got none)"),
    ({"ratio": 0.1, "target_macs": 0.2}, "give exactly one of ratio, target_macs, target_params, target_latency (got ['ratio', 'target_macs'])"),
    ({"ratio": 0.1, "normalize": "z"}, "normalize must be one of mean, max, l2, none, got 'z'"),
    ({"ratio": 0.1, "min_channels": 0}, "min_channels and round_to must be >= 1"),
    ({"ratio": 0.1, "max_ratio": 0.0}, "max_ratio must be in (0, 1], got 0.0"),
    ({"ratio": 0.1, "max_ratio": 1.5}, "max_ratio must be in (0, 1], got 1.5"),
])
def test_bad_options_exact_messages(kwargs, message):
    with pytest.raises(ValueError) as e:
        SelectOptions(**kwargs)
    assert str(e.value) == message
