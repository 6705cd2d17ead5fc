"""``criteria._weights.group_slices``: each layout against explicit indexing."""

from __future__ import annotations

import pytest
import torch
from criteria_nets import member
from torch import nn

from filterprune.criteria._weights import group_slices
from filterprune.errors import FilterpruneError
from filterprune.graph import ChannelGroup


def slices(model, *members, size, **kw):
    return list(group_slices(model, ChannelGroup("g", size, tuple(members)), **kw))


def per_channel_rows(sl, c):
    return sl.rows[sl.owner == c]


def test_conv_out_and_in_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1))
    got = slices(model, member("0", "out", "Conv2d", 4), member("1", "out", "BatchNorm2d", 4),
                 member("2", "in", "Conv2d", 4), size=4)
    assert [(s.param, s.family, s.role) for s in got] == [
        ("0.weight", "conv", "weight"), ("0.bias", "conv", "bias"), ("1.weight", "norm", "weight"),
        ("1.bias", "norm", "bias"), ("2.weight", "conv", "weight")]
    w_out, b_out, gamma, beta, w_in = got
    for c in range(4):
        assert torch.equal(per_channel_rows(w_out, c).flatten(), model[0].weight[c].flatten())
        assert torch.equal(per_channel_rows(b_out, c).flatten(), model[0].bias[c:c + 1])
        assert torch.equal(per_channel_rows(gamma, c).flatten(), model[1].weight[c:c + 1])
        assert torch.equal(per_channel_rows(beta, c).flatten(), model[1].bias[c:c + 1])
        assert torch.equal(per_channel_rows(w_in, c).flatten(), model[2].weight[:, c].flatten())
    only = slices(model, member("0", "out", "Conv2d", 4), member("1", "out", "BatchNorm2d", 4), size=4,
                  families=("norm",), roles=("weight",))
    assert [s.param for s in only] == ["1.weight"]


def test_grouped_conv_in_rows():
    """groups=2, (C_out, C_in/g, k, k) = (6, 2, 3, 3): in-channel i lives in group i // 2, column i % 2."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False)
    (sl,) = slices(nn.Sequential(conv), member("0", "in", "Conv2d", 4), size=4)
    for i in range(4):
        g, j = divmod(i, 2)
        assert torch.equal(per_channel_rows(sl, i).flatten(), conv.weight[g * 3:(g + 1) * 3, j].flatten())


def test_depthwise_counted_once():
    torch.manual_seed(0)
    dw = nn.Conv2d(4, 4, 3, groups=4, bias=False)
    model = nn.Sequential(dw)
    both = slices(model, member("0", "in", "Conv2d", 4), member("0", "out", "Conv2d", 4), size=4)
    assert len(both) == 1 and both[0].member.kind == "out"
    (alone,) = slices(model, member("0", "in", "Conv2d", 4), size=4)  # its in row is its own filter
    for c in range(4):
        assert torch.equal(per_channel_rows(alone, c).flatten(), dw.weight[c].flatten())


def test_linear_after_flatten_owns_blocks():
    torch.manual_seed(0)
    fc = nn.Linear(3 * 4, 5)  # 3 channels of 2x2 flattened
    (sl,) = slices(nn.Sequential(fc), member("0", "in", "Linear", 3, per=4), size=3)
    assert sl.rows.shape == (12, 5)
    for c in range(3):
        assert torch.equal(per_channel_rows(sl, c), fc.weight[:, 4 * c:4 * c + 4].t())
    torch.testing.assert_close(sl.per_channel(sl.rows.abs()), fc.weight.abs().reshape(5, 3, 4).sum(dim=(0, 2)))


def test_conv_transpose_out_rows():
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(4, 6, 2, groups=2)  # weight (C_in, C_out/g, k, k) = (4, 3, 2, 2)
    w, b = slices(nn.Sequential(ct), member("0", "out", "ConvTranspose2d", 6), size=6)
    for o in range(6):
        g, j = divmod(o, 3)
        assert torch.equal(per_channel_rows(w, o).flatten(), ct.weight[g * 2:(g + 1) * 2, j].flatten())
        assert torch.equal(per_channel_rows(b, o).flatten(), ct.bias[o:o + 1])


def test_tensors_override_and_skip():
    model = nn.Sequential(nn.Conv2d(2, 3, 1))
    grads = {"0.weight": torch.ones(3, 2, 1, 1)}  # no entry for the bias: skipped
    (sl,) = slices(model, member("0", "out", "Conv2d", 3), size=3, tensors=grads)
    assert sl.role == "weight" and torch.equal(sl.rows, torch.ones(3, 2))


def test_parameter_free_members_and_unknown_layers():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(3))

    model = nn.Sequential(nn.ReLU(), Scale())
    assert slices(model, member("0", "out", "ReLU", 3), size=3) == []
    with pytest.raises(FilterpruneError, match="no parameter slicer"):
        slices(model, member("1", "out", "Scale", 3), size=3)
