"""Selection: targets met (measured with metrics.count), constraints respected, bad requests refused."""

from __future__ import annotations

import copy

import pytest
import torch

from filterprune.errors import PruningError
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from filterprune.metrics import count
from filterprune.models import create_model
from filterprune.selection import Baseline, CostModel, SelectOptions, select
from models_zoo import PRUNABLE, build


def _l1(model, groups):
    """Filter L1 norms of each group's root: a criterion-free stand-in for the tests."""
    return {g.id: model.get_submodule(g.id).weight.detach().abs().flatten(1).sum(1) for g in groups if g.prunable}


def _setup(name):
    if name in ("resnet20", "resnet56"):
        torch.manual_seed(0)
        model, x = create_model(name).eval(), torch.randn(2, 3, 32, 32)
    else:
        model, x = build(name)
    groups = trace_groups(model, x)
    return model, x, groups, _l1(model, groups)


def _reduction(model, x, groups, plan):
    macs0, params0 = count(model, x)
    macs1, params1 = count(apply_plan(copy.deepcopy(model), groups, plan), x)
    return 1 - macs1 / macs0, 1 - params1 / params0


@pytest.mark.parametrize("name", PRUNABLE + ["resnet20"])
@pytest.mark.parametrize("target", [0.3, 0.5])
def test_macs_target_within_one_percent(name, target):
    model, x, groups, scores = _setup(name)
    plan = select(model, x, groups, scores, SelectOptions(target_macs=target))
    macs, _ = _reduction(model, x, groups, plan)
    assert abs(macs - target) <= 0.01


@pytest.mark.parametrize("name", ["residual", "concat", "resnet20"])
def test_params_target_within_one_percent(name):
    model, x, groups, scores = _setup(name)
    plan = select(model, x, groups, scores, SelectOptions(target_params=0.4))
    _, params = _reduction(model, x, groups, plan)
    assert abs(params - 0.4) <= 0.01


@pytest.mark.parametrize("global_ranking", [True, False])
def test_ratio_target(global_ranking):
    model, x, groups, scores = _setup("resnet20")
    plan = select(model, x, groups, scores, SelectOptions(ratio=0.25, global_ranking=global_ranking))
    total = sum(g.size for g in groups if g.prunable)
    assert abs(plan.num_removed() / total - 0.25) <= 0.01
    if not global_ranking:  # every group loses about the same fraction
        fractions = [len(plan.prune_idxs.get(g.id, [])) / g.size for g in groups if g.prunable]
        assert max(fractions) - min(fractions) <= 1 / 16 + 1e-9


def test_global_ranking_removes_lowest_scores_first():
    model, x, groups, _ = _setup("conv_chain")
    scores = {g.id: torch.arange(g.size, dtype=torch.float).flip(0) for g in groups if g.prunable}
    plan = select(model, x, groups, scores, SelectOptions(ratio=0.25))
    for gid, idxs in plan.prune_idxs.items():
        size = len(scores[gid])
        assert idxs == list(range(size - len(idxs), size))  # the highest indices carry the lowest scores


@pytest.mark.parametrize("opts", [
    SelectOptions(target_macs=0.6, min_channels=4),
    SelectOptions(target_macs=0.5, round_to=4),
    SelectOptions(target_macs=0.4, max_ratio=0.5),
    SelectOptions(target_macs=0.5, global_ranking=False, round_to=2),
])
def test_constraints_are_respected(opts):
    model, x, groups, scores = _setup("resnet20")
    plan = select(model, x, groups, scores, opts)
    for g in groups:
        removed = len(plan.prune_idxs.get(g.id, []))
        kept = g.size - removed
        assert kept >= opts.min_channels
        assert removed <= opts.max_ratio * g.size
        assert kept == g.size or kept % opts.round_to == 0
    macs, _ = _reduction(model, x, groups, plan)
    assert abs(macs - opts.target_macs) <= 0.01


def test_ignored_layers_patterns():
    model, x, groups, scores = _setup("resnet20")
    plan = select(model, x, groups, scores, SelectOptions(ratio=0.3, ignored_layers=("layer3.*",)))
    assert plan.prune_idxs and not any(gid.startswith("layer3") for gid in plan.prune_idxs)


def test_unreachable_target_is_a_pruning_error():
    model, x, groups, scores = _setup("conv_chain")
    with pytest.raises(PruningError, match="cannot reach target_macs=0.9"):
        select(model, x, groups, scores, SelectOptions(target_macs=0.9, min_channels=8))


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.0}, "ratio must be a fraction"),
    ({"target_macs": -0.1}, "target_macs must be a fraction"),
    ({}, "exactly one"),
    ({"ratio": 0.1, "target_macs": 0.2}, "exactly one"),
    ({"ratio": 0.1, "normalize": "zscore"}, "normalize"),
    ({"ratio": 0.1, "round_to": 0}, "round_to"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        SelectOptions(**kwargs)
    assert "\n" not in str(e.value)


def test_malformed_scores():
    model, x, groups, scores = _setup("conv_chain")
    with pytest.raises(ValueError, match="no scores for group block2.0"):
        select(model, x, groups, {k: v for k, v in scores.items() if k != "block2.0"}, SelectOptions(ratio=0.2))
    bad = dict(scores, **{"block2.0": torch.ones(3)})
    with pytest.raises(ValueError, match="shape"):
        select(model, x, groups, bad, SelectOptions(ratio=0.2))


def test_cumulative_target_against_a_baseline():
    model, x, groups, scores = _setup("resnet20")
    macs0, params0 = count(model, x)
    base = Baseline(macs0, params0, {g.id: g.size for g in groups})
    apply_plan(model, groups, select(model, x, groups, scores, SelectOptions(target_macs=0.3)))
    groups = trace_groups(model, x)
    plan = select(model, x, groups, _l1(model, groups), SelectOptions(target_macs=0.5), base=base)
    apply_plan(model, groups, plan)
    assert abs(1 - count(model, x)[0] / macs0 - 0.5) <= 0.01


def test_cost_model_agrees_with_count():
    for name in ("resnet20", "concat", "depthwise", "flatten_head"):
        model, x, _, _ = _setup(name)
        assert CostModel(model, x[:1]).totals()[0] == count(model, x)[0]


def test_resnet56_selection_is_fast():
    import time

    model, x, groups, scores = _setup("resnet56")
    start = time.perf_counter()
    select(model, x, groups, scores, SelectOptions(target_macs=0.5))
    assert time.perf_counter() - start < 10.0
