"""Surgery of one module at a time against a functional oracle.

Removing output channels ``R`` of a layer must leave exactly the other output channels of the original
layer (same values); removing input channels ``R`` must give the original layer's output on an input
whose channels ``R`` are zero. Parameters must be the original ones indexed by hand, with their
``requires_grad``; buffers stay buffers. Every layer type surgery knows is covered, and the refusals
(grouped transposed conv, unequal grouped cuts, unknown layers, bad plans) are checked by message.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from filterprune.errors import PruningError
from filterprune.graph.groups import ChannelGroup, Member, PrunePlan
from filterprune.graph.surgery import (
    apply_plan,
    dim_size,
    is_depthwise,
    is_mixer,
    prune_module,
    removals,
    weight_dim,
)

REMOVE = [0, 3, 5]


def _keep(n, remove=REMOVE):
    return [i for i in range(n) if i not in remove]


def _seeded(m):
    torch.manual_seed(0)
    for p in m.parameters():
        nn.init.normal_(p)
    return m.eval()


LAYERS = {
    "conv": lambda: nn.Conv2d(8, 6, 3, padding=1),
    "conv1d": lambda: nn.Conv1d(8, 6, 3),
    "conv_nobias": lambda: nn.Conv2d(8, 6, 1, bias=False),
    "transposed": lambda: nn.ConvTranspose2d(8, 6, 2, stride=2),
    "linear": lambda: nn.Linear(8, 6),
}
INPUTS = {"conv1d": (2, 8, 7), "linear": (2, 8)}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_removing_outputs_keeps_the_other_outputs(name):
    m = _seeded(LAYERS[name]())
    x = torch.randn(INPUTS.get(name, (2, 8, 5, 5)))
    ref = m(x)
    prune_module(m, "out", REMOVE)
    keep = _keep(6)
    assert dim_size(m, "out") == 3 and dim_size(m, "in") == 8
    torch.testing.assert_close(m(x), ref[:, keep])


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_removing_inputs_equals_zeroing_them(name):
    m = _seeded(LAYERS[name]())
    x = torch.randn(INPUTS.get(name, (2, 8, 5, 5)))
    zeroed = x.clone()
    zeroed[:, REMOVE] = 0
    ref = m(zeroed)
    bias = None if m.bias is None else m.bias.detach().clone()
    prune_module(m, "in", REMOVE)
    assert dim_size(m, "in") == 5 and dim_size(m, "out") == 6
    torch.testing.assert_close(m(x[:, _keep(8)]), ref)
    assert (m.bias is None) == (bias is None) and (bias is None or torch.equal(m.bias, bias))  # bias untouched


def test_weight_dims():
    assert weight_dim(nn.Conv2d(2, 3, 1), "out") == 0 and weight_dim(nn.Conv2d(2, 3, 1), "in") == 1
    assert weight_dim(nn.ConvTranspose2d(2, 3, 1), "out") == 1 and weight_dim(nn.ConvTranspose2d(2, 3, 1), "in") == 0
    assert weight_dim(nn.Linear(2, 3), "out") == 0 and weight_dim(nn.Linear(2, 3), "in") == 1


def test_kinds_of_layers():
    dw, grouped = nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 3, groups=2)
    assert is_depthwise(dw) and not is_depthwise(grouped) and not is_depthwise(nn.Conv2d(4, 4, 3))
    assert not is_depthwise(nn.Conv2d(1, 1, 3, groups=1))  # one channel, one group: an ordinary conv
    assert not is_depthwise(nn.Conv2d(4, 8, 3, groups=4))  # channel multiplier 2
    assert not is_depthwise(nn.BatchNorm2d(4))
    assert is_mixer(grouped) and is_mixer(nn.Linear(2, 2)) and not is_mixer(dw) and not is_mixer(nn.BatchNorm2d(2))
    assert dim_size(dw, "in") == 4 and dim_size(grouped, "in") == 4 and dim_size(grouped, "out") == 8
    assert dim_size(nn.BatchNorm2d(5), "in") == 5 and dim_size(nn.PReLU(7), "out") == 7
    assert dim_size(nn.Linear(2, 3), "in") == 2 and dim_size(nn.Linear(2, 3), "out") == 3


def test_depthwise_loses_both_dims():
    m = _seeded(nn.Conv2d(8, 8, 3, padding=1, groups=8))
    x = torch.randn(2, 8, 5, 5)
    ref = m(x)
    prune_module(m, "out", REMOVE)
    keep = _keep(8)
    assert (m.in_channels, m.out_channels, m.groups) == (5, 5, 5)
    torch.testing.assert_close(m(x[:, keep]), ref[:, keep])


def test_grouped_conv_loses_the_same_positions_per_group():
    m = _seeded(nn.Conv2d(8, 8, 1, groups=2))  # blocks of 4 channels
    x = torch.randn(2, 8, 3, 3)
    ref = m(x)
    prune_module(m, "out", [1, 5])  # second channel of each output block
    assert m.out_channels == 6 and m.weight.shape == (6, 4, 1, 1)
    torch.testing.assert_close(m(x), ref[:, [0, 2, 3, 4, 6, 7]])
    m = _seeded(nn.Conv2d(8, 8, 1, groups=2))
    zeroed = x.clone()
    zeroed[:, [2, 6]] = 0
    ref = m(zeroed)
    prune_module(m, "in", [2, 6])
    assert m.in_channels == 6 and m.weight.shape == (8, 3, 1, 1)
    torch.testing.assert_close(m(x[:, [0, 1, 3, 4, 5, 7]]), ref)


@pytest.mark.parametrize("kind, remove, match", [
    ("out", [0, 1, 4], "same channel positions"),  # 2 from block 0, 1 from block 1
    ("in", [0, 5], "same channel positions"),  # equal counts, different positions
])
def test_uneven_grouped_cuts_are_refused(kind, remove, match):
    m = nn.Conv2d(8, 8, 1, groups=2)
    with pytest.raises(PruningError, match=rf"^a grouped conv \(groups=2\) must lose the {match} in every group$"):
        prune_module(m, kind, remove)


def test_grouped_out_cut_of_other_positions_is_allowed():
    m = _seeded(nn.Conv2d(8, 8, 1, groups=2))
    x = torch.randn(1, 8, 2, 2)
    ref = m(x)
    prune_module(m, "out", [0, 7])  # one per block, different positions: fine on the output side
    torch.testing.assert_close(m(x), ref[:, [1, 2, 3, 4, 5, 6]])


def test_grouped_transposed_conv_is_refused():
    with pytest.raises(PruningError, match=r"^cannot prune a grouped transposed conv \(groups=2\)$"):
        prune_module(nn.ConvTranspose2d(4, 4, 1, groups=2), "out", [0, 2])


def test_norm_layers_slice_every_statistic():
    bn = _seeded(nn.BatchNorm2d(6))
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    old = {k: v.detach().clone() for k, v in bn.state_dict().items() if v.dim()}
    prune_module(bn, "out", REMOVE)
    keep = _keep(6)
    assert bn.num_features == 3
    for k, v in old.items():
        assert torch.equal(getattr(bn, k), v[keep]), k
    assert "running_mean" in dict(bn.named_buffers()) and isinstance(bn.weight, nn.Parameter)
    inorm = nn.InstanceNorm2d(6, affine=True)
    prune_module(inorm, "out", REMOVE)
    assert inorm.num_features == 3 and inorm.weight.shape == (3,)


def test_prelu_per_channel_is_sliced_and_shared_is_left():
    p = nn.PReLU(6)
    with torch.no_grad():
        p.weight.copy_(torch.arange(6.0))
    prune_module(p, "out", REMOVE)
    assert p.num_parameters == 3 and p.weight.tolist() == [1.0, 2.0, 4.0]
    shared = nn.PReLU()
    prune_module(shared, "out", REMOVE)
    assert shared.num_parameters == 1 and shared.weight.shape == (1,)


def test_frozen_and_buffer_state_is_kept():
    m = nn.Linear(8, 6)
    m.weight.requires_grad_(False)
    prune_module(m, "out", REMOVE)
    assert isinstance(m.weight, nn.Parameter) and not m.weight.requires_grad and m.bias.requires_grad


def test_unknown_layer_is_refused_and_empty_removal_is_a_no_op():
    with pytest.raises(PruningError, match=r"^no surgery for ReLU$"):
        prune_module(nn.ReLU(), "out", [0])
    prune_module(nn.ReLU(), "out", [])  # nothing to remove: no questions asked
    m = nn.Conv2d(4, 4, 1)
    w = m.weight.detach().clone()
    prune_module(m, "out", [])
    assert torch.equal(m.weight, w) and m.out_channels == 4


def _group(gid="a", size=4, prunable=True, reason=""):
    members = (Member("a", "out", "Conv2d", tuple((c,) for c in range(size))),
               Member("b", "in", "Linear", tuple((2 * c, 2 * c + 1) for c in range(size))))
    return ChannelGroup(gid, size, members, prunable, reason)


def test_removals_map_group_channels_to_member_indices():
    got = removals([_group()], PrunePlan({"a": [3, 1, 1]}))
    assert got == {("a", "out"): [1, 3], ("b", "in"): [2, 3, 6, 7]}


@pytest.mark.parametrize("plan, error, message", [
    ({"x": [0]}, PruningError, "plan names unknown group 'x'"),
    ({"a": [-1]}, ValueError, "plan for group a has channels outside [0, 4)"),
    ({"a": [4]}, ValueError, "plan for group a has channels outside [0, 4)"),
    ({"a": [0, 1, 2, 3]}, PruningError, "plan removes every channel of group a"),
])
def test_bad_plans_by_message(plan, error, message):
    with pytest.raises(error) as e:
        removals([_group()], PrunePlan(plan))
    assert str(e.value) == message


def test_non_prunable_group_is_refused_with_its_reason():
    with pytest.raises(PruningError) as e:
        removals([_group(prunable=False, reason="classifier outputs")], PrunePlan({"a": [0]}))
    assert str(e.value) == "group a is not prunable: classifier outputs"


def test_empty_entries_are_skipped_even_for_unknown_groups():
    assert removals([_group()], PrunePlan({"x": [], "a": []})) == {}
    assert removals([_group()], PrunePlan({"a": [0, 1, 2]})) == {("a", "out"): [0, 1, 2], ("b", "in"): [0, 1, 2, 3, 4, 5]}


def test_apply_plan_on_a_depthwise_chain_equals_masking_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.Conv2d(6, 2, 1)).eval()
    from filterprune.graph.trace import trace_groups

    x = torch.randn(2, 3, 5, 5)
    groups = trace_groups(model, x)
    masked = copy.deepcopy(model)
    with torch.no_grad():  # channels 1 and 4 of the first conv (and the depthwise conv behind it) silenced
        for m in (masked[0], masked[1]):
            m.weight[[1, 4]] = 0
            m.bias[[1, 4]] = 0
    apply_plan(model, groups, PrunePlan({"0": [1, 4]}))
    assert (model[1].in_channels, model[1].out_channels, model[1].groups) == (4, 4, 4)
    assert model[2].in_channels == 4
    torch.testing.assert_close(model(x), masked(x))
