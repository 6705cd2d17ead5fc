"""The built-in equivalence check: passes on correct plans, raises when the trace is wrong."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from filterprune.errors import PruningError
from filterprune.graph.check import apply_plan_checked
from filterprune.graph.groups import PrunePlan
from filterprune.graph.trace import trace_groups
from models_zoo import build


def test_check_reports_small_error():
    model, x = build("concat")
    groups = trace_groups(model, x)
    err = apply_plan_checked(model, groups, PrunePlan({"branch_b": [0, 4, 9], "stem.0": [1]}), x)
    assert 0.0 <= err < 1e-5
    assert model.branch_b.out_channels == 17 and model.fuse[0].in_channels == 29


def test_check_catches_a_missed_coupling():
    model, x = build("residual")
    groups = trace_groups(model, x)
    stem = next(g for g in groups if g.id == "stem")
    # drop block2.conv1's input from the group: masking no longer hides the channel there
    broken = dataclasses.replace(stem, members=tuple(m for m in stem.members if m.module != "block2.conv1"))
    groups = [broken if g.id == "stem" else g for g in groups]
    # surgery leaves block2.conv1 at 16 inputs: the pruned model no longer runs (a shape error)
    with pytest.raises(PruningError, match=r"pruned model fails to run: .*expected input.* to have 16 channels"):
        apply_plan_checked(model, groups, PrunePlan({"stem": [2]}), x)


def test_check_keeps_train_mode():
    model, x = build("conv_chain")
    model.train()
    groups = trace_groups(model, x)
    running = model.block1[1].running_mean.clone()
    apply_plan_checked(model, groups, PrunePlan({"block2.0": [0]}), torch.randn(4, 3, 8, 8))
    assert model.training and torch.equal(model.block1[1].running_mean, running)
