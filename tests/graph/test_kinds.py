"""The architecture kinds of issue 11, each with held-back variants (tests/models_zoo.py ``KINDS``).

Oracles: pruned == masked (``apply_plan_checked`` inside ``fp.prune``), the MACs target met within 1%
by an independent count (``torch.utils.flop_counter.FlopCounterMode``), the layer that makes the kind
hard really resized consistently, and refusals that name op and module with an ``ignored_layers``
suggestion that works.
"""

from __future__ import annotations

import ast

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import filterprune as fp
from filterprune.graph.ops import LayerOp, register_layer_op
from filterprune.graph.trace import trace_groups
from models_zoo import KINDS, FunctionalConv, FunctionalConvNet, build_kind

TARGET = {"split_height": 0.25}
# kinds whose group through the hard op must stay whole, and the words of its reason
KEPT = {"split_8_24": "cuts the channel axis", "split_20_12": "cuts the channel axis", "chunk": "chunk in",
        "slice": "getitem in", "split_no_residual": "cuts the channel axis", "convnext": "normalizes over the channels",
        "convnext_tokens": "normalizes over the channels", "cbam_channel_mean": "reduces over the channels"}


def executed_macs(model, x) -> int:
    """MACs per sample as torch executes them (FLOPs / 2), independent of filterprune's counter."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(**x) if isinstance(x, dict) else model(x)
    batch = next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0]
    return fc.get_total_flops() // 2 // batch


@pytest.mark.parametrize("kind", KINDS)
def test_kind_is_pruned_exactly_to_the_target(kind):
    model, x = build_kind(kind)
    groups = {g.id: g for g in trace_groups(model, x)}
    if kind in KEPT:
        assert not groups["stem"].prunable and KEPT[kind] in groups["stem"].reason
    before = executed_macs(model, x)
    target = TARGET.get(kind, 0.3)
    report = fp.prune(model, x, "l1", target_macs=target)
    assert report.max_error is not None  # the masked-vs-pruned check ran and passed
    assert abs((1 - executed_macs(model, x) / before) - target) <= 0.01
    assert fp.count(model, x)[0] == executed_macs(model, x)


def test_the_hard_layers_are_really_resized():
    model, x = build_kind("pixel_shuffle_3")
    fp.prune(model, x, "l1", target_macs=0.3)
    assert model.up.out_channels == 9 * model.out.in_channels < 9 * 16  # blocks of r*r go together
    model, x = build_kind("pixel_unshuffle_2")
    fp.prune(model, x, "l1", target_macs=0.3)
    assert model.out.in_channels == 4 * model.up.out_channels < 4 * 24
    model, x = build_kind("grouped_4")
    fp.prune(model, x, "l1", target_macs=0.3)
    assert model.g1.out_channels < 64 and model.g1.out_channels % 4 == 0 and model.g2.in_channels == model.g1.out_channels
    model, x = build_kind("prelu_per_channel")
    fp.prune(model, x, "l1", target_macs=0.3)
    assert model.act.num_parameters == model.stem.out_channels < 32 and model.act2.num_parameters == 1
    model, x = build_kind("spatial_gate")
    fp.prune(model, x, "l1", target_macs=0.3)
    assert model.att.in_channels == model.stem.out_channels < 32
    model, x = build_kind("convnext")
    fp.prune(model, x, "l1", target_macs=0.3)
    assert model.pw1.out_features == model.pw2.in_features < 128 and model.norm.normalized_shape == (32,)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "random", "taylor"])
@pytest.mark.parametrize("kind", ["prelu_per_channel", "grouped_4", "convnext", "pixel_shuffle_2", "spatial_gate"])
def test_every_criterion_reads_every_layer_kind(kind, criterion):
    model, x = build_kind(kind)
    if criterion == "taylor" and kind == "pixel_shuffle_2":
        pytest.skip("taylor needs a classification loss; this model outputs images")
    data = [(x, torch.randint(0, 10, (x.shape[0],)))] if criterion == "taylor" else None
    groups = [g for g in trace_groups(model, x) if g.prunable]
    try:
        scores = fp.score(model, x, criterion, data=data)
    except fp.FilterpruneError as e:  # allowed: one line naming what cannot be read (bn without a norm layer)
        assert criterion == "bn" and "\n" not in str(e)
        return
    assert set(scores) == {g.id for g in groups}
    assert all(scores[g.id].shape == (g.size,) and torch.isfinite(scores[g.id]).all() for g in groups)


def test_prelu_scores_include_the_slope():
    model, x = build_kind("prelu_per_channel")
    from filterprune.criteria._weights import group_slices

    group = next(g for g in trace_groups(model, x) if g.id == "stem")
    act = [sl for sl in group_slices(model, group) if sl.member.module == "act"]
    assert len(act) == 1 and act[0].family == "act"
    assert torch.equal(act[0].per_channel(act[0].rows.abs()), model.act.weight.detach().abs())


def test_keyword_inputs_are_counted_and_pruned():
    model, x = build_kind("keyword_inputs")
    assert fp.count(model, x)[0] == executed_macs(model, x) > 0
    report = fp.prune(model, x, "l2", target_params=0.3)
    assert abs(report.params_reduction - 0.3) <= 0.01


def test_functional_conv_refusal_names_it_and_its_suggestion_works():
    torch.manual_seed(0)
    model, x = FunctionalConvNet().eval(), torch.randn(2, 3, 16, 16)
    with pytest.raises(fp.PruningError) as e:
        fp.prune(model, x, "l1", target_macs=0.2)
    msg = str(e.value)
    assert "FunctionalConv f" in msg and "'f.weight'" in msg and "register_layer_op" in msg and "\n" not in msg
    before = executed_macs(model, x)
    assert fp.count(model, x)[0] == before  # F.conv2d counted: 32*32*9 MACs per position
    report = fp.prune(model, x, "l1", target_macs=0.2, ignored_layers=ast.literal_eval(msg.split("ignored_layers=")[1]))
    assert abs(report.macs_reduction - 0.2) <= 0.01
    assert abs((1 - executed_macs(model, x) / before) - 0.2) <= 0.01


class FunctionalConvOp(LayerOp):
    """What a user writes to prune through their own F.conv2d layer."""

    def out_channels(self, m):
        return m.weight.shape[0]

    def in_channels(self, m):
        return m.weight.shape[1]

    def prune_out(self, m, keep_idxs):
        m.weight = nn.Parameter(m.weight.detach()[keep_idxs])

    def prune_in(self, m, keep_idxs):
        m.weight = nn.Parameter(m.weight.detach()[:, keep_idxs])

    def mask_in(self, m, idxs):
        return [(m.weight, 1, 0.0)]

    def channel_attrs(self, m):
        return {}


def test_registered_functional_conv_is_pruned_on_both_sides():
    register_layer_op(FunctionalConv, FunctionalConvOp())
    try:
        torch.manual_seed(0)
        model, x = FunctionalConvNet().eval(), torch.randn(2, 3, 16, 16)
        before = executed_macs(model, x)
        fp.prune(model, x, "random", target_macs=0.4)
        assert abs((1 - executed_macs(model, x) / before) - 0.4) <= 0.01
        assert model.f.weight.shape[1] == model.stem.out_channels and model.f.weight.shape[0] == model.conv.in_channels
    finally:
        from filterprune.graph import ops

        ops._OPS.pop(FunctionalConv, None)
