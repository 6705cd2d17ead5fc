"""Trimming after collapse is exact: logits unchanged on plain, residual, concat, depthwise, flatten-head
nets and a CIFAR ResNet-20 with option-A shortcuts; refused before collapse unless forced."""

import copy

import pytest
import torch
from csgd_helpers import RandomLoader, fast_bn, plain_sgd

from device_probes import record_tf32, tf32_enabled, tf32_flags
from filterprune.errors import PruningError
from filterprune.graph.surgery import dim_size
from filterprune.graph.trace import trace_groups
from filterprune.methods import CentripetalSGD, cluster_groups, trim
from filterprune.metrics import count
from filterprune.models import create_model
from models_zoo import PRUNABLE, build


def _collapse(model, x, clusters, groups, steps=40, lr=0.01):
    """Plain SGD with lr * (eta + eps) = 0.5 on kernels and vectors: deviation x 0.5 per step."""
    hook = CentripetalSGD(model, groups, clusters, centripetal=50.0 - 1e-4, weight_decay=1e-4, vector_ratio=1.0)
    fit_cfg = plain_sgd(lr=lr)
    from filterprune.train import fit

    fit(model, RandomLoader(x.shape[1:], steps), None, fit_cfg, hooks=[hook])
    return hook


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", PRUNABLE)
@pytest.mark.parametrize("keep", ["mean", "first"])
def test_trim_after_collapse_keeps_the_logits(name, keep):
    model, x = build(name)
    fast_bn(model)
    groups = trace_groups(model, x)
    widths = {g.id: max(1, g.size // 2) for g in groups if g.prunable}
    clusters = cluster_groups(model, groups, widths, seed=0, method="kmeans" if keep == "mean" else "even")
    hook = _collapse(model, x, clusters, groups)
    assert hook.deviation(model).max_relative < 1e-6
    model.eval()
    with torch.no_grad():
        before = model(x)
    result = trim(model, groups, clusters, example_inputs=x, keep=keep)
    with torch.no_grad():
        after = model(x)
    assert _relative(after, before) <= 1e-4 and result.logit_diff <= 1e-4
    for g in groups:  # every group now has exactly its cluster count (or its full width)
        n = len(clusters[g.id]) if g.id in clusters else g.size
        assert dim_size(model.get_submodule(g.id), "out") == n


def test_resnet20_with_option_a_shortcuts_trims_exactly():
    torch.manual_seed(0)
    model, x = fast_bn(create_model("resnet20")), torch.randn(2, 3, 32, 32)
    groups = trace_groups(model, x)
    widths = {g.id: g.size // 2 for g in groups if g.prunable}
    clusters = cluster_groups(model, groups, widths, seed=0)
    _collapse(model, x, clusters, groups, steps=30)
    model.eval()
    with torch.no_grad():
        before = model(x)
    macs_before, _ = count(model, x)
    result = trim(model, groups, clusters, example_inputs=x)
    with torch.no_grad():
        assert _relative(model(x), before) <= 1e-4
    assert result.logit_diff <= 1e-4
    assert count(model, x)[0] < 0.3 * macs_before  # every group halved: about a quarter of the MACs
    assert model.layer2[0].shortcut.out_index.min() >= 0


def test_trim_refuses_uncollapsed_clusters_unless_forced():
    model, x = build("residual")
    groups = trace_groups(model, x)
    clusters = cluster_groups(model, groups, {"stem": 4})
    with pytest.raises(PruningError, match="not collapsed") as err:
        trim(copy.deepcopy(model), groups, clusters)
    assert "\n" not in str(err.value)
    result = trim(model, groups, clusters, example_inputs=x, force=True)
    assert result.deviation.max_relative > 0.1 and result.logit_diff > 1e-3
    assert model.stem.out_channels == 4


def test_trim_comparisons_run_in_full_fp32_and_restore_the_tf32_flags():
    # the trim's logit difference and the squeeze's permutation check compare two forwards: with TF32
    # convolutions (PyTorch's GPU default) an exact trim reads ~1e-3, so both run with TF32 off
    from filterprune.methods._trim import _outputs

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    seen = record_tf32(net)
    with tf32_enabled():
        out = _outputs(net, torch.randn(2, 3, 8, 8))
        assert seen == [(False, False)] and out.shape == (2 * 4 * 6 * 6,)
        assert tf32_flags() == (True, True)
