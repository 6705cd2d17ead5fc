"""``baseline``, the analytic counter and the cost allocation's keys against MACs and parameters by hand.

The chain: 1x1 convs 3 -> 8 -> 8 -> 4 on a 4x4 input (16 positions). MACs per sample
16 * (3*8 + 8*8 + 8*4) = 1920; parameters (3*8 + 8) + (8*8 + 8) + (8*4 + 4) = 140. A channel of group
"0" carries 16 * (3 + 8) = 176 MACs (its filter in conv 0, its input slice of conv 2); one of group "2"
16 * (8 + 4) = 192 (conv 2's filter, conv 4's input slice).
"""

from __future__ import annotations

import pytest
import torch

from filterprune.selection.allocation import cost_keys
from filterprune.selection.cost import CostModel, _analytic_count, baseline
from filterprune.selection.family import _candidates, _Family
from filterprune.selection.options import Baseline, SelectOptions
from models_zoo import pointwise_chain


def test_analytic_count_by_hand():
    model, x, _ = pointwise_chain(batch=2)
    assert _analytic_count(model, x) == (1920, 140)


def test_baseline_with_the_default_counter_by_hand():
    model, x, groups = pointwise_chain(batch=2)
    assert baseline(model, x, groups) == Baseline(1920, 140, {"0": 8, "2": 8, "4": 4})


def test_baseline_uses_the_given_counter_on_the_given_inputs():
    model, x, groups = pointwise_chain(batch=2)
    calls = []

    def counter(m, inputs):
        calls.append((m, inputs))
        return 7.0, 5.0

    assert baseline(model, x, groups, counter=counter) == Baseline(7, 5, {"0": 8, "2": 8, "4": 4})
    assert len(calls) == 1 and calls[0][0] is model and calls[0][1] is x


def test_cost_keys_against_a_baseline_of_an_earlier_step():
    """The model as it is (1920 MACs) after an earlier step of a 3840-MAC baseline: a unit's cost is the
    MACs it saves as a fraction of the baseline (176 / 3840 for a channel of "0", 192 / 3840 for one of
    "2"), not offset by what the earlier step removed; key = score / cost (scores 1..8, not normalised)."""
    model, x, groups = pointwise_chain(batch=2)
    scores = {"0": torch.arange(1.0, 9.0), "2": torch.arange(1.0, 9.0)}
    opts = SelectOptions(target_macs=0.5, allocation="cost", normalize="none")
    base = Baseline(3840, 280, {"0": 8, "2": 8})
    fam = _Family(_candidates(groups, scores, opts, base), opts, base, CostModel(model, x))
    keys = cost_keys(fam, "target_macs", (1920, 140))
    assert keys[0] == pytest.approx({n: n * 3840 / 176 for n in range(1, 8)})
    assert keys[1] == pytest.approx({n: n * 3840 / 192 for n in range(1, 8)})
