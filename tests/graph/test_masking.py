"""Masking: masked(x) equals pruned(x), and restore is bit-exact."""

from __future__ import annotations

import copy

import pytest
import torch

from filterprune.errors import PruningError
from filterprune.graph.groups import PrunePlan
from filterprune.graph.masking import mask, mask_plan, masked, masked_plan, restore
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from filterprune.models import create_model
from models_zoo import PRUNABLE, build


def _random_plan(groups, seed=0, frac=0.4):
    g = torch.Generator().manual_seed(seed)
    plan = {}
    for grp in groups:
        if grp.prunable:
            n = max(1, int(frac * grp.size))
            plan[grp.id] = sorted(torch.randperm(grp.size, generator=g)[:n].tolist())
    return PrunePlan(plan)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", PRUNABLE + ["resnet20"])
@pytest.mark.parametrize("seed", [0, 1])
def test_masked_equals_pruned(name, seed):
    if name == "resnet20":
        torch.manual_seed(seed)
        model, x = create_model(name).eval(), torch.randn(2, 3, 32, 32)
    else:
        model, x = build(name, seed)
    groups = trace_groups(model, x)
    plan = _random_plan(groups, seed)
    before = _state(model)
    with torch.no_grad(), masked_plan(model, groups, plan):
        y_masked = model(x)
    _assert_same_state(before, model.state_dict())  # restored bit-exactly
    pruned = apply_plan(copy.deepcopy(model), groups, plan)
    with torch.no_grad():
        y_pruned = pruned(x)
    torch.testing.assert_close(y_pruned, y_masked, rtol=1e-5, atol=1e-5)


def test_single_group_mask_and_restore_functions():
    model, x = build("residual")
    groups = {g.id: g for g in trace_groups(model, x)}
    before = _state(model)
    with torch.no_grad():
        y0 = model(x)
        handle = mask(model, groups["stem"], [0, 3])
        y1 = model(x)
        mask(model, groups["block1.conv1"], [2], into=handle)
        y2 = model(x)
        restore(handle)
        y3 = model(x)
    assert not torch.equal(y0, y1) and not torch.equal(y1, y2)
    assert torch.equal(y0, y3)
    _assert_same_state(before, model.state_dict())
    restore(handle)  # a second restore is harmless
    _assert_same_state(before, model.state_dict())


def test_mask_and_restore_are_seen_inside_one_autocast_region():
    """Autocast caches one bfloat16 copy of each weight per region: a mask (an in-place fill) and its
    restore must reach the forwards that follow in the same region (greedy CAR under --bf16 scored
    every step as if nothing had been removed)."""
    model, x = build("residual")
    model.eval()
    groups = {g.id: g for g in trace_groups(model, x)}
    with torch.no_grad():
        handle = mask(model, groups["stem"], [0, 3])
        want_masked = model(x)
        restore(handle)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y0 = model(x).float()
        handle = mask(model, groups["stem"], [0, 3])
        y1 = model(x).float()
        restore(handle)
        y2 = model(x).float()
    assert torch.equal(y0, y2)
    err = (y1 - want_masked).abs().max()
    assert err < 0.1 * (y0 - want_masked).abs().max()  # the masked model, to bf16 precision, not the unmasked one


def test_pad_shortcut_index_is_masked_and_restored():
    model = create_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    stem = next(g for g in trace_groups(model, x) if g.id == "conv1")
    index = model.layer2[0].shortcut.out_index.clone()
    with masked(model, stem, [4]):
        assert int(model.layer2[0].shortcut.out_index[4]) == -1
        assert float(model.layer1[0].conv1.weight.detach()[:, 4].abs().sum()) == 0.0
    assert torch.equal(model.layer2[0].shortcut.out_index, index)


def test_mask_touches_only_consumer_slices():
    model = create_model("resnet56").eval()
    groups = trace_groups(model, torch.randn(1, 3, 32, 32))
    handle = mask(model, groups[1], [0])  # one filter of layer1.0.conv1
    saved = sum(values.numel() for _, _, _, values in handle._saved)
    handle.restore()
    assert saved == 16 * 9  # layer1.0.conv2's input slice: cheap enough for one-filter-at-a-time trials


def test_mask_errors():
    model, x = build("conv_chain")
    groups = {g.id: g for g in trace_groups(model, x)}
    with pytest.raises(PruningError, match="not prunable"):
        mask(model, groups["fc"], [0])
    with pytest.raises(ValueError, match="must lie in"):
        mask(model, groups["block1.0"], [16])
    before = _state(model)
    with pytest.raises(PruningError, match="unknown group"):
        mask_plan(model, list(groups.values()), PrunePlan({"block1.0": [0], "nope": [1]}))
    _assert_same_state(before, model.state_dict())
