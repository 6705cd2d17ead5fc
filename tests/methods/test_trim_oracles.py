"""C-SGD trimming (``methods/_trim.py``, ``_slots.py``, ``_permute.py``): refusal bounds and what a refusal
leaves behind, on a tiny conv -> GAP -> linear net whose clustered filters are made identical (or not) by
hand.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import filterprune.methods._trim as trim_mod
from filterprune.errors import PruningError
from filterprune.graph.trace import trace_groups
from filterprune.methods import clustered_params, deviation, trim

CLUSTERS = {"0": [[0, 1], [2], [3]]}


def _net(collapsed: bool = True):
    """conv(1->4) relu GAP linear(4->2); filters 0 and 1 identical when ``collapsed``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[0] * (1.0 if collapsed else 1.5)
        model[0].bias[1] = model[0].bias[0]
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    return model, x, trace_groups(model, x)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_trim_accepts_a_deviation_equal_to_max_deviation():
    # the bound is "at most max_deviation": a deviation exactly at it is trimmed, not refused
    model, x, groups = _net(collapsed=False)
    dev = deviation(model, clustered_params(model, groups, CLUSTERS)).max_relative
    assert dev > 0.1
    result = trim(model, groups, CLUSTERS, max_deviation=dev)
    assert model[0].out_channels == 3 and result.deviation.max_relative == dev
    with pytest.raises(PruningError, match=r"^C-SGD clusters have not collapsed: relative deviation "):
        fresh, _, fresh_groups = _net(collapsed=False)
        trim(fresh, fresh_groups, CLUSTERS, max_deviation=dev * (1 - 1e-9))


def test_a_failing_masked_vs_pruned_check_leaves_the_model_untouched(monkeypatch):
    """The trim runs on a copy first, masked-vs-pruned check included: when that check fails the model
    keeps every weight (nothing folded into the consumer) and every channel."""
    model, x, groups = _net()
    before = _state(model)

    def failing_check(*a, **k):
        raise PruningError("masked and pruned outputs differ")

    monkeypatch.setattr(trim_mod, "apply_plan_checked", failing_check)
    with pytest.raises(PruningError, match=r"^masked and pruned outputs differ$"):
        trim(model, groups, CLUSTERS, example_inputs=x, check_inputs=x)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("bias", [True, False])
def test_a_linear_producer_is_clustered_on_its_weight_rows_and_bias(bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=bias), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[0]
        if bias:
            model[0].bias[1] = model[0].bias[0]
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    groups = trace_groups(model, x)
    params = clustered_params(model, groups, CLUSTERS)
    want = [("0", "weight", 0, True)] + ([("0", "bias", 0, False)] if bias else [])
    assert [(p.module, p.attr, p.dim, p.kernel) for p in params] == want
    with torch.no_grad():
        before = model(x)
    result = trim(model, groups, CLUSTERS, example_inputs=x, check_inputs=x)
    assert model[0].out_features == 3 and result.logit_diff < 1e-6
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)


def test_a_transposed_conv_producer_holds_its_channels_on_weight_axis_1():
    model = nn.Sequential(nn.ConvTranspose2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(2, 2))
    groups = trace_groups(model, torch.randn(2, 1, 5, 5))
    params = clustered_params(model, groups, CLUSTERS)
    assert [(p.attr, p.dim) for p in params] == [("weight", 1), ("bias", 0)]  # weight: (in, out, k, k)
