"""Tracing: which channels are coupled, what is prunable, what is refused."""

from __future__ import annotations

import ast
import re

import pytest
import torch
import torch.nn.functional as F
from graph_nets import MidNet, _Lambda
from torch import nn

from filterprune.errors import PruningError
from filterprune.graph import trace as trace_mod
from filterprune.graph.trace import trace_groups
from filterprune.models import create_model
from models_zoo import PRUNABLE, build


def _by_id(groups):
    return {g.id: g for g in groups}


@pytest.mark.parametrize("name", PRUNABLE)
def test_groups_are_well_formed(name):
    model, x = build(name)
    groups = trace_groups(model, x)
    ids = [g.id for g in groups]
    assert len(ids) == len(set(ids))
    seen_out = set()
    for g in groups:
        assert g.members[0].module == g.id and g.members[0].kind == "out"
        for m in g.members:
            assert len(m.idxs) == g.size
            key = (m.module, m.kind)
            if m.kind == "out":  # every output dim belongs to exactly one group
                assert key not in seen_out
                seen_out.add(key)
    assert not _by_id(groups)["fc"].prunable  # the classifier's outputs stay
    assert sum(g.prunable for g in groups) >= 2


def test_residual_add_ties_stem_and_both_conv2():
    model, x = build("residual")
    g = _by_id(trace_groups(model, x))["stem"]
    outs = {m.module for m in g.members if m.kind == "out"}
    ins = {m.module for m in g.members if m.kind == "in"}
    assert {"stem", "bn", "block1.conv2", "block1.bn2", "block2.conv2", "block2.bn2"} <= outs
    assert {"block1.conv1", "block2.conv1", "fc"} <= ins


def test_concat_offsets_and_flatten_blocks():
    model, x = build("concat")
    groups = _by_id(trace_groups(model, x))
    fuse_b = next(m for m in groups["branch_b"].members if m.module == "fuse.0")
    assert fuse_b.kind == "in" and fuse_b.idxs[0] == (12,) and fuse_b.idxs[19] == (31,)
    model, x = build("flatten_head")
    fc = next(m for m in _by_id(trace_groups(model, x))["features.2.0"].members if m.module == "fc")
    assert fc.idxs[1] == tuple(range(16, 32))  # channel 1 owns its 4x4 block of flattened features


def test_depthwise_conv_joins_its_input_group():
    model, x = build("depthwise")
    groups = _by_id(trace_groups(model, x))
    assert "dw.0" not in groups
    dw = next(m for m in groups["stem.0"].members if m.module == "dw.0")
    assert dw.kind == "out" and dw.idxs[3] == (3,)


def test_resnet20_stages_are_tied_through_the_shortcut():
    groups = _by_id(trace_groups(create_model("resnet20"), torch.randn(2, 3, 32, 32)))
    assert len(groups) == 1 + 9 + 2 + 1  # stem/stage-1, every conv1, stages 2 and 3, linear
    stage2 = groups["layer2.0.conv2"]
    outs = {m.module for m in stage2.members if m.kind == "out"}
    assert {"layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2", "layer2.0.shortcut"} <= outs
    short_in = next(m for m in groups["conv1"].members if m.module == "layer2.0.shortcut")
    assert short_in.kind == "in" and short_in.idxs[5] == (5,)


def test_train_mode_and_weights_untouched():
    model, x = build("residual")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace_groups(model, x)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ignored_layers_make_groups_whole():
    model, x = build("conv_chain")
    groups = _by_id(trace_groups(model, x, ignored_layers=["block2.0", model.block3[0]]))
    assert groups["block1.0"].prunable
    assert not groups["block2.0"].prunable and "ignored" in groups["block2.0"].reason
    assert not groups["block3.0"].prunable
    with pytest.raises(ValueError, match="not a submodule"):
        trace_groups(model, x, ignored_layers=["nope"])


def test_channel_shuffle_is_refused():
    model, x = build("shuffle")
    with pytest.raises(PruningError, match="shuffle") as e:
        trace_groups(model, x)
    msg = str(e.value)
    assert "\n" not in msg and "view in the model forward (ShuffleNet)" in msg
    groups = _by_id(trace_groups(model, x, ignored_layers=ast.literal_eval(msg.split("ignored_layers=")[1])))
    assert not groups["gconv1"].prunable and groups["conv1"].prunable


def test_probe_catches_a_shuffle_the_op_check_misses(monkeypatch):
    monkeypatch.setattr(trace_mod, "_op_issue", lambda node, rec, model: None)
    model, x = build("shuffle")
    with pytest.raises(PruningError, match="did not predict"):
        trace_groups(model, x)


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(8, 1, 1))

    def forward(self, x):
        return x * self.gamma


@pytest.mark.parametrize("mid, c2_in, match", [
    (nn.GroupNorm(2, 8), 8, r"mid \(GroupNorm\) normalizes over groups of channels"),
    (nn.LayerNorm([8, 8, 8]), 8, r"mid \(LayerNorm\) normalizes over the channels"),
    (_Lambda(lambda x: x[:, :4]), 4, r"getitem in mid \(_Lambda\) cuts the channel axis"),
    (_Lambda(lambda x: sum(x.chunk(2, 1))), 4, r"chunk in mid \(_Lambda\) cuts the channel axis"),
    (_Lambda(lambda x: x * torch.sigmoid(x.mean(1, keepdim=True))), 8, r"mean in mid \(_Lambda\) reduces over the channels"),
])
def test_ops_that_need_every_channel_keep_the_group_whole(mid, c2_in, match):
    groups = _by_id(trace_groups(MidNet(mid, c2_in).eval(), torch.randn(2, 3, 8, 8)))
    assert not groups["conv"].prunable
    assert re.search(match, groups["conv"].reason), groups["conv"].reason
    assert groups["conv2"].prunable


def test_refusal_names_op_and_module_and_its_suggestion_works():
    model, x = MidNet(_Scale(), 8).eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(PruningError) as e:
        trace_groups(model, x)
    msg = str(e.value)
    assert "\n" not in msg and "_Scale mid" in msg and "'mid.gamma'" in msg and "register_layer_op" in msg
    suggestion = ast.literal_eval(msg.split("ignored_layers=")[1])
    groups = _by_id(trace_groups(model, x, ignored_layers=suggestion))
    assert not groups["conv"].prunable and "nn.Parameter" in groups["conv"].reason
    assert groups["conv2"].prunable and groups["conv2"].reaches_output is False


def test_squeeze_excitation_is_accepted():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.f1, self.f2 = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4), nn.Linear(4, 8)
            self.conv2, self.fc = nn.Conv2d(8, 6, 1), nn.Linear(6, 10)

        def forward(self, x):
            x = F.relu(self.conv(x))
            w = torch.sigmoid(self.f2(F.relu(self.f1(x.mean((2, 3))))))
            return self.fc(self.conv2(x * w[:, :, None, None]).mean((2, 3)))

    groups = _by_id(trace_groups(SE().eval(), torch.randn(2, 3, 8, 8)))
    assert groups["conv"].prunable and "f2" in {m.module for m in groups["conv"].members if m.kind == "out"}


def test_input_fed_depthwise_and_outputs_are_not_prunable():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw, self.conv = nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(self.dw(x))

    groups = _by_id(trace_groups(Net().eval(), torch.randn(1, 3, 8, 8)))
    assert not groups["conv"].prunable and groups["conv"].reaches_output
    assert not groups["dw"].prunable and "model input" in groups["dw"].reason


def test_frozen_weights_are_traced_like_trainable_ones():
    model, x = build("residual")
    reference = trace_groups(model, x)
    for p in model.parameters():
        p.requires_grad_(False)
    assert trace_groups(model, x) == reference
