"""C-SGD widths and clusters (``methods/_clusters.py``): counts against the target worked out by hand.

Net: linear(4->200) relu linear(200->200) relu linear(200->2): two prunable groups of 200 channels, so a
channel-ratio target has a resolution of 1/400, finer than the 0.005 slack of the tie search: a plan that
meets the target exactly must be returned as is, not re-searched to one that removes 0.495 of it.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from filterprune.criteria import ScoringContext, create_criterion
from filterprune.errors import PruningError
from filterprune.graph.trace import trace_groups
from filterprune.methods import check_shortcuts, cluster_groups, kmeans_clusters, target_widths
from filterprune.methods._clusters import group_features, tied_widths
from filterprune.models import create_model
from filterprune.selection import SelectOptions, select


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 2))
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    return model, x, trace_groups(model, x)


def test_tied_widths_keep_the_full_size_of_groups_not_named():
    model, x, groups = _mlp()
    assert tied_widths(model, groups, {}) == {"0": 200, "2": 200}
    assert tied_widths(model, groups, {"2": 50}) == {"0": 200, "2": 50}


def test_target_widths_meet_a_channel_ratio_exactly_when_nothing_ties_them():
    model, x, groups = _mlp()
    widths = target_widths(model, x, groups, SelectOptions(ratio=0.5))
    assert sum(widths.values()) == 200  # half of the 400 prunable channels, not 202 (a re-search to 0.495)


def test_target_widths_score_a_data_driven_criterion_on_the_data_given():
    model, x, groups = _mlp()
    data = [(torch.randn(8, 4, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1] * 4))]
    opts = SelectOptions(ratio=0.25)
    widths = target_widths(model, x, groups, opts, criterion="taylor", data=data, seed=3)
    scores = create_criterion("taylor").score(ScoringContext(model=model, example_inputs=x, groups=list(groups),
                                                             data=data, seed=3))
    plan = select(model, x, groups, scores, opts)
    assert widths == {g.id: g.size - len(plan.prune_idxs.get(g.id, ())) for g in groups if g.prunable}
    assert sum(widths.values()) == 300


def test_widths_naming_an_unknown_group_are_refused_by_name():
    model, x, groups = _mlp()
    with pytest.raises(PruningError, match=r"^widths name unknown group 'nope'$"):
        cluster_groups(model, groups, {"nope": 1})


def test_kmeans_separates_two_obvious_clusters_and_orders_them_by_first_member():
    assert kmeans_clusters(torch.tensor([[0.0], [10.0], [0.1], [10.1]]), 2) == [[0, 2], [1, 3]]


def test_group_features_with_bn_put_a_linear_kernel_beside_gamma_and_beta():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(6.0))
        model[1].bias.copy_(-torch.arange(6.0))
    groups = trace_groups(model, torch.randn(3, 4))
    group = next(g for g in groups if g.id == "0")
    assert torch.equal(group_features(model, group), model[0].weight)
    feats = group_features(model, group, include_bn=True)
    assert feats.shape == (6, 4 + 2) and torch.equal(feats[:, :4], model[0].weight)
    assert sorted(map(tuple, feats[:, 4:].tolist())) == [(float(c), float(-c)) for c in range(6)]


def _resnet20_reversed_shortcut():
    """resnet20 whose stage-2 option-A shortcut lands input channel i on output 23 - i (not 8 + i)."""
    model = create_model("resnet20")
    sc = model.get_submodule("layer2.0.shortcut")
    sc.out_index = torch.flip(sc.out_index, [0])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, x, trace_groups(model, x, probe=False)


def test_a_shortcut_fed_cluster_keeps_the_channel_the_kept_input_feeds():
    """Under a non-monotone shortcut map the channel fed by the input cluster's kept channel is not the
    smallest of its output cluster: it must still be the kept one, or trimming through the shortcut is
    inexact (``check_shortcuts`` refuses the clusters)."""
    model, x, groups = _resnet20_reversed_shortcut()
    widths = {g.id: g.size // 2 for g in groups if g.prunable}
    clusters = cluster_groups(model, groups, widths, method="even")
    check_shortcuts(model, groups, clusters)
    out_index = model.get_submodule("layer2.0.shortcut").out_index.tolist()
    kept_in = {cl[0] for cl in clusters["conv1"]}
    fed = {out_index[c]: c for c in range(16)}  # stage-2 channel -> the stage-1 channel it carries
    for cl in clusters["layer2.0.conv2"]:
        if cl[0] in fed:
            assert fed[cl[0]] in kept_in


def test_cluster_groups_warn_only_where_a_shortcut_changes_the_width(caplog):
    model, x, groups = _mlp()
    with caplog.at_level(logging.WARNING, logger="filterprune.methods._clusters"):
        cluster_groups(model, groups, {"0": 100, "2": 50}, method="even")
    assert not caplog.records
    model, x, groups = _resnet20_reversed_shortcut()
    # stage 1 cut to 4 clusters ties the 16 shortcut-fed stage-2 channels into 4; the 16 free ones can
    # form at most 16 clusters: 20, not the 30 asked. Stage 3 (64 asked, not named) then gets the 20 tied
    # clusters of its 32 shortcut-fed channels plus its 32 free channels: 52
    with caplog.at_level(logging.WARNING, logger="filterprune.methods._clusters"):
        clusters = cluster_groups(model, groups, {"conv1": 4, "layer2.0.conv2": 30}, method="even")
    assert len(clusters["layer2.0.conv2"]) == 20
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "group layer2.0.conv2: 20 clusters instead of 30 (its option-A shortcut ties 4 clusters to the group "
        "that feeds it)",
        "group layer3.0.conv2: 52 clusters instead of 64 (its option-A shortcut ties 20 clusters to the group "
        "that feeds it)"]


def _bn_splits_what_the_kernels_join():
    """linear(4->4) BN relu linear: kernel rows 0~2 and 1~3, but BN gamma/beta +-100 on channels {0, 1} vs {2, 3}."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        a, b = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 1.0])
        model[0].weight.copy_(torch.stack([a, b, a + 0.01, b + 0.01]))
        model[1].weight.copy_(torch.tensor([100.0, 100.0, -100.0, -100.0]))
        model[1].bias.copy_(torch.tensor([100.0, 100.0, -100.0, -100.0]))
    return model, trace_groups(model, torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))


def test_kmeans_clusters_see_bn_gamma_and_beta_only_with_include_bn():
    model, groups = _bn_splits_what_the_kernels_join()
    assert cluster_groups(model, groups, {"0": 2})["0"] == [[0, 2], [1, 3]]
    assert cluster_groups(model, groups, {"0": 2}, include_bn=True)["0"] == [[0, 1], [2, 3]]


def test_cluster_groups_hand_seed_and_restarts_to_kmeans(monkeypatch):
    import filterprune.methods._clusters as clusters_mod

    seen = []
    real = clusters_mod.kmeans_clusters
    monkeypatch.setattr(clusters_mod, "kmeans_clusters", lambda f, m, **k: seen.append(k) or real(f, m, **k))
    model, groups = _bn_splits_what_the_kernels_join()
    cluster_groups(model, groups, {"0": 2}, seed=7, n_init=3)
    assert seen == [{"seed": 7, "n_init": 3}]
