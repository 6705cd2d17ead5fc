"""Surgery: shapes and attributes stay consistent; PadShortcut index maps follow; bad plans refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from filterprune.errors import PruningError
from filterprune.graph.groups import PrunePlan
from filterprune.graph.surgery import apply_plan, prune_module
from filterprune.graph.trace import trace_groups
from filterprune.models import create_model
from filterprune.models.cifar_resnet import PadShortcut
from models_zoo import PRUNABLE, build


def _assert_consistent(model):
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels // m.groups), name
            assert m.bias is None or m.bias.shape == (m.out_channels,)
        elif isinstance(m, nn.BatchNorm2d):
            assert m.weight.shape == m.bias.shape == m.running_mean.shape == m.running_var.shape == (m.num_features,)
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features), name


@pytest.mark.parametrize("name", PRUNABLE + ["resnet20"])
def test_every_prunable_group_can_lose_all_but_one(name):
    model, x = (create_model(name).eval(), torch.randn(2, 3, 32, 32)) if name == "resnet20" else build(name)
    groups = trace_groups(model, x)
    plan = PrunePlan({g.id: list(range(1, g.size)) for g in groups if g.prunable})
    apply_plan(model, groups, plan)
    _assert_consistent(model)
    assert model(x).shape == (2, 10)
    regrouped = {g.id: g for g in trace_groups(model, x)}
    assert all(regrouped[g.id].size == 1 for g in groups if g.prunable)


def test_frozen_parameters_stay_frozen():
    model, x = build("conv_chain")
    model.block1[0].weight.requires_grad_(False)
    groups = trace_groups(model, x)
    apply_plan(model, groups, PrunePlan({"block1.0": [0, 1]}))
    assert not model.block1[0].weight.requires_grad and model.block2[0].weight.requires_grad
    assert isinstance(model.block1[0].weight, nn.Parameter)


def test_pad_shortcut_out_and_in():
    sc = PadShortcut(4, 8, 2)  # input i -> output i + 2
    assert sc.out_index.tolist() == [2, 3, 4, 5]
    prune_module(sc, "out", [0, 3])  # output 3 (input 1) gone, later outputs shift down by 2
    assert sc.out_planes == 6 and sc.out_index.tolist() == [1, -1, 2, 3]
    prune_module(sc, "in", [0])
    assert sc.out_index.tolist() == [-1, 2, 3]
    x = torch.randn(1, 3, 4, 4)
    y = sc(x)
    assert y.shape == (1, 6, 2, 2)
    assert torch.equal(y[:, 2], x[:, 1, ::2, ::2]) and torch.equal(y[:, 3], x[:, 2, ::2, ::2])
    assert float(y[:, [0, 1, 4, 5]].abs().sum()) == 0.0


@pytest.mark.parametrize("plan, error, match", [
    ({"nope": [0]}, PruningError, "unknown group"),
    ({"fc": [0]}, PruningError, "not prunable"),
    ({"block1.0": list(range(16))}, PruningError, "every channel"),
    ({"block1.0": [16]}, ValueError, "outside"),
])
def test_bad_plans_are_refused(plan, error, match):
    model, x = build("conv_chain")
    groups = trace_groups(model, x)
    with pytest.raises(error, match=match):
        apply_plan(model, groups, PrunePlan(plan))
