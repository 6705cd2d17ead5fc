"""C-SGD ``fold`` against a merge computed by hand on explicit weights.

Clusters of group ``"0"``: ``[[3, 1], [0], [2]]``; channel 3 is kept for the first cluster and
channel 1 removed. By the definition (module docstring of ``methods/_trim.py``):

* every consumer's input slice of the kept channel becomes the sum over the cluster,
  ``W'[:, 3] = W[:, 3] + W[:, 1]`` (a block of H*W features per channel behind a flatten);
* with ``keep="mean"`` the producer entries of both members (conv rows, bias, BN gamma/beta and
  running statistics) become the cluster mean; with ``keep="first"`` they are left alone;
* nothing else changes, and the plan removes channel 1.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from filterprune.graph.trace import trace_groups
from filterprune.methods import fold

CLUSTERS = {"0": [[3, 1], [0], [2]]}


def _conv_bn_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        model[1].bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
        model[1].running_mean.copy_(torch.tensor([-1.0, 1.0, 0.0, 3.0]))
        model[1].running_var.copy_(torch.tensor([1.0, 2.0, 1.0, 4.0]))
    return model, torch.randn(1, 3, 4, 4)


@pytest.mark.parametrize("keep", ["mean", "first"])
def test_fold_into_a_conv_by_hand(keep):
    model, x = _conv_bn_conv()
    before = copy.deepcopy(model)
    plan = fold(model, trace_groups(model, x), CLUSTERS, keep=keep)
    assert plan.prune_idxs == {"0": [1]}

    w_next = before[3].weight.clone()
    w_next[:, 3] = before[3].weight[:, 3] + before[3].weight[:, 1]
    torch.testing.assert_close(model[3].weight, w_next, rtol=0, atol=1e-7)
    torch.testing.assert_close(model[3].bias, before[3].bias, rtol=0, atol=0)

    def merged(t):
        if keep == "first":
            return t
        t = t.clone()
        t[1] = t[3] = (t[1] + t[3]) / 2
        return t

    torch.testing.assert_close(model[0].weight, merged(before[0].weight), rtol=0, atol=1e-7)
    torch.testing.assert_close(model[0].bias, merged(before[0].bias), rtol=0, atol=1e-7)
    expected_bn = {"weight": [1.0, 3.0, 3.0, 3.0], "bias": [0.1, 0.3, 0.3, 0.3],
                   "running_mean": [-1.0, 2.0, 0.0, 2.0], "running_var": [1.0, 3.0, 1.0, 3.0]}
    for name, values in expected_bn.items():
        want = torch.tensor(values) if keep == "mean" else getattr(before[1], name)
        torch.testing.assert_close(getattr(model[1], name), want, rtol=0, atol=1e-6)


def test_fold_into_a_flattened_linear_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5)).eval()
    x = torch.randn(1, 3, 2, 2)
    before = copy.deepcopy(model)
    plan = fold(model, trace_groups(model, x), CLUSTERS, keep="first")
    assert plan.prune_idxs == {"0": [1]}
    w = before[3].weight.clone()  # (5, 16): channel c owns features 4c .. 4c+3
    w[:, 12:16] = before[3].weight[:, 12:16] + before[3].weight[:, 4:8]
    torch.testing.assert_close(model[3].weight, w, rtol=0, atol=1e-7)
    torch.testing.assert_close(model[0].weight, before[0].weight, rtol=0, atol=0)


def test_fold_of_a_collapsed_cluster_keeps_the_function():
    model, x = _conv_bn_conv()
    with torch.no_grad():  # collapse the cluster first, as centripetal training does
        for t in (model[0].weight, model[0].bias, model[1].weight, model[1].bias,
                  model[1].running_mean, model[1].running_var):
            t[1] = t[3]
        y = model(x)
    groups = trace_groups(model, x)
    plan = fold(model, groups, CLUSTERS)
    from filterprune.graph.surgery import apply_plan

    apply_plan(model, groups, plan)
    assert model[3].in_channels == 3
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-6)


def test_fold_refuses_an_unknown_keep():
    model, x = _conv_bn_conv()
    with pytest.raises(ValueError, match="keep must be one of mean, first"):
        fold(model, trace_groups(model, x), CLUSTERS, keep="last")
