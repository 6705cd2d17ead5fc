"""Sensitivity curves and the sensitivity allocation.

Oracles: the equal-drop plan equals a brute-force search over every threshold (MACs from a hand
formula for the chain, not from the library); a masked point of a curve equals the loss of the
physically pruned copy; a resumed measurement forwards exactly the groups it had not finished and
ends with the same curves; the monotone fit and the interpolation against hand-computed values.
"""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from torch import nn

from filterprune.graph.groups import PrunePlan
from filterprune.graph.surgery import apply_plan
from filterprune.graph.trace import trace_groups
from filterprune.selection import (
    SelectOptions,
    SensitivityCurves,
    loss_and_accuracy,
    measure_curves,
    monotone_fit,
    ratio_grid,
    select,
)

WIDTHS = (16, 24, 32)


def _chain():
    torch.manual_seed(0)
    a, b, c = WIDTHS
    model = nn.Sequential(nn.Conv2d(3, a, 3, padding=1), nn.ReLU(), nn.Conv2d(a, b, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(b, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 10, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    return model, x, trace_groups(model, x)


def _macs(n0, n1, n2):
    """MACs of the chain with n_i channels removed from group i (per 8x8 sample), by hand."""
    a, b, c = WIDTHS[0] - n0, WIDTHS[1] - n1, WIDTHS[2] - n2
    return 64 * 9 * (3 * a + a * b + b * c) + 64 * c * 10


def _synthetic(seed):
    """Strictly increasing random curves on the default grid, as a sensitivity.json would hold them."""
    rng = random.Random(seed)
    groups = {}
    for gid, width in zip(("0", "2", "4"), WIDTHS, strict=True):
        removed = sorted({min(width - 1, max(1, round(r * width))) for r in ratio_grid(9)})
        loss, value = [], 1.0
        for _ in removed:
            value += rng.uniform(0.01, 0.5) * rng.choice([0.1, 1, 3])
            loss.append(value)
        groups[gid] = {"width": width, "order": list(range(width)), "removed": removed,
                       "ratios": [n / width for n in removed], "loss": loss, "acc": [50.0] * len(removed)}
    return SensitivityCurves.from_dict({"format": "filterprune.sensitivity/1", "metric": "loss",
                                        "grid": ratio_grid(9), "base": {"loss": 1.0, "acc": 50.0}, "groups": groups})


def _brute_force(curves, target):
    """Every threshold t (each predicted drop of each allowed count); each group pruned to the largest
    count whose drop is <= t; the smallest t meeting the target, or the one below it if closer."""
    gids = ("0", "2", "4")
    drops = {gid: {n: curves.drop(gid, n / w) for n in range(1, w)} for gid, w in zip(gids, WIDTHS, strict=True)}
    thresholds = sorted({d for per in drops.values() for d in per.values()})
    full = _macs(0, 0, 0)

    def at(t):
        counts = [max([0, *(n for n, d in drops[gid].items() if d <= t)]) for gid in gids]
        return counts, 1 - _macs(*counts) / full

    below = ([0, 0, 0], 0.0)
    for t in thresholds:
        counts, achieved = at(t)
        if achieved >= target:
            return below[0] if abs(below[1] - target) <= abs(achieved - target) else counts
        below = (counts, achieved)
    raise AssertionError("unreachable target")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0.2, 0.45, 0.7])
def test_equal_drop_bisection_equals_brute_force_over_thresholds(seed, target):
    model, x, groups = _chain()
    curves = _synthetic(seed)
    scores = {g.id: torch.arange(float(g.size)) for g in groups if g.prunable}  # order = 0, 1, 2, ...
    plan = select(model, x, groups, scores, SelectOptions(target_macs=target, allocation="sensitivity",
                                                          tolerance=0.05), curves=curves)
    got = [len(plan.prune_idxs.get(gid, [])) for gid in ("0", "2", "4")]
    assert got == _brute_force(curves, target)


def test_sensitivity_without_curves_or_with_a_missing_group_is_refused():
    model, x, groups = _chain()
    scores = {g.id: torch.arange(float(g.size)) for g in groups if g.prunable}
    opts = SelectOptions(target_macs=0.3, allocation="sensitivity")
    with pytest.raises(ValueError, match="needs sensitivity curves"):
        select(model, x, groups, scores, opts)
    curves = _synthetic(0)
    del curves.groups["2"]
    with pytest.raises(ValueError, match="no entry for group"):
        select(model, x, groups, scores, opts, curves=curves)


def test_monotone_fit_and_interpolation_by_hand():
    assert monotone_fit([0.25, 0.5], [0.1, 0.3]) == [0.1, 0.3]  # already monotone: unchanged
    assert monotone_fit([0.25, 0.5, 0.75], [-0.2, 0.4, 0.2]) == [0.0, 0.3, 0.3]  # clipped, then pooled
    c = SensitivityCurves(metric="loss", base={"loss": 1.0, "acc": 0.0})
    c.groups["g"] = c._entry({"width": 4, "order": [0, 1, 2, 3], "removed": [1, 2], "ratios": [0.25, 0.5],
                              "loss": [1.1, 1.5], "acc": [0, 0]})
    assert c.drop("g", 0.125) == pytest.approx(0.05)  # halfway from (0, 0) to (0.25, 0.1)
    assert c.drop("g", 0.375) == pytest.approx(0.3)
    # beyond the grid: the last slope (1.6) beats the mean slope (1.0)
    assert c.drop("g", 0.75) == pytest.approx(0.5 + 1.6 * 0.25, abs=1e-6)
    assert c.ratios_at(0.2) == {"g": 0.25}


def test_accuracy_metric_drop_is_points_lost():
    c = SensitivityCurves(metric="acc", base={"loss": 1.0, "acc": 90.0})
    e = c._entry({"width": 4, "order": [0, 1, 2, 3], "removed": [1], "ratios": [0.25], "loss": [2.0], "acc": [80.0]})
    assert e["drop"] == [10.0] and e["monotone"] == [10.0]


def _data(n=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


class _Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                                      nn.ReLU(), nn.Conv2d(12, 6, 1), nn.ReLU())
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def _classifier():
    torch.manual_seed(0)
    model, x = _Classifier().eval(), torch.randn(1, 3, 8, 8)
    groups = trace_groups(model, x)
    scores = {g.id: torch.rand(g.size) for g in groups if g.prunable}
    return model, groups, scores


def test_a_masked_point_equals_the_physically_pruned_copy():
    model, groups, scores = _classifier()
    data = _data()
    curves = measure_curves(model, groups, scores, loss_and_accuracy(data), points=3)
    measure = loss_and_accuracy(data)
    for g in groups:
        if not g.prunable:
            continue
        e = curves.groups[g.id]
        n, loss = e["removed"][1], e["loss"][1]
        pruned = apply_plan(copy.deepcopy(model), groups, PrunePlan({g.id: sorted(e["order"][:n])}))
        assert measure(pruned)["loss"] == pytest.approx(loss, rel=1e-5)
        assert e["order"] == sorted(range(g.size), key=lambda c, s=scores[g.id]: (float(s[c]), c))
    assert curves.base["loss"] == pytest.approx(measure(model)["loss"])


class _Counting:
    """A measure that counts its passes and, once armed, fails after ``fail_after`` of them (a kill)."""

    def __init__(self, data, fail_after=None):
        self.inner, self.passes, self.fail_after = loss_and_accuracy(data), 0, fail_after

    def __call__(self, model):
        if self.fail_after is not None and self.passes >= self.fail_after:
            raise KeyboardInterrupt
        self.passes += 1
        return self.inner(model)


def test_a_resumed_measurement_forwards_only_the_unfinished_groups(tmp_path):
    model, groups, scores = _classifier()
    data, cache = _data(), tmp_path / "sensitivity.json"
    points = 3
    fresh = measure_curves(model, groups, scores, _Counting(data), points=points)
    n_groups = len(fresh.groups)
    assert n_groups == 3 and fresh.cost["passes"] == 1 + n_groups * points
    assert fresh.cost["images"] == fresh.cost["passes"] * 16
    # killed during the third group: the base and two groups are on disk
    with pytest.raises(KeyboardInterrupt):
        measure_curves(model, groups, scores, _Counting(data, fail_after=1 + 2 * points + 1), points=points,
                       cache=cache)
    assert len(json.loads(cache.read_text())["groups"]) == 2
    again = _Counting(data)
    resumed = measure_curves(model, groups, scores, again, points=points, cache=cache)
    assert again.passes == points  # one group measured, the base and two groups reused
    assert resumed.cost["groups_reused"] == 2 and resumed.cost["passes"] == points
    for gid, e in fresh.groups.items():  # the same curves as the uninterrupted measurement
        assert {f: resumed.groups[gid][f] for f in ("order", "removed", "loss", "acc", "monotone")} == \
               {f: e[f] for f in ("order", "removed", "loss", "acc", "monotone")}
    assert SensitivityCurves.load(cache).groups.keys() == fresh.groups.keys()
    # new scores for one group: only that group is measured again
    changed = dict(scores, **{"features.2": -scores["features.2"]})
    third = _Counting(data)
    measure_curves(model, groups, changed, third, points=points, cache=cache)
    assert third.passes == points


def test_a_cache_in_another_format_is_refused(tmp_path):
    model, groups, scores = _classifier()
    bad = tmp_path / "sensitivity.json"
    bad.write_text(json.dumps({"format": "something/1"}))
    with pytest.raises(ValueError, match="not a filterprune.sensitivity/1 file"):
        measure_curves(model, groups, scores, _Counting(_data()), points=2, cache=bad)


def test_bad_metric_or_points_are_refused():
    model, groups, scores = _classifier()
    with pytest.raises(ValueError, match="metric must be loss or acc"):
        measure_curves(model, groups, scores, _Counting(_data()), metric="top5")
    with pytest.raises(ValueError, match="positive integer"):
        ratio_grid(0)


def test_loss_and_accuracy_equals_the_cross_entropy_and_top1_written_out():
    # issue 14 (mutation survivors): the measure the API's sensitivity pass uses, against the formulas
    from filterprune.selection.sensitivity import loss_and_accuracy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    batches = [(torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])), (torch.randn(3, 3), torch.tensor([3, 3, 1]))]
    measured = loss_and_accuracy(batches)(model)
    assert model.training  # evaluated in eval mode, restored
    with torch.no_grad():
        model.eval()
        logits = torch.cat([model(x) for x, _ in batches])
        model.train()
    y = torch.cat([y for _, y in batches])
    log_p = logits.log_softmax(1)
    expected_loss = float(-log_p[torch.arange(8), y].sum()) / 8
    correct = int((logits.argmax(1) == y).sum())
    assert 0 < correct < 8  # neither bound: a count that adds, subtracts or restarts shows
    assert measured["images"] == 8
    assert measured["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert measured["acc"] == pytest.approx(100.0 * correct / 8)
    with pytest.raises(ValueError, match=r"^sensitivity needs at least one \(x, y\) batch$"):
        loss_and_accuracy([])


def test_loss_and_accuracy_of_a_model_without_parameters():
    # issue 14, session 15: the device comes from the parameters; a parameterless model runs on the CPU
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    measured = loss_and_accuracy([(logits, y)])(nn.Identity())
    expected = (-(logits[0].log_softmax(0)[0]) - logits[1].log_softmax(0)[2]) / 2
    assert measured == {"loss": pytest.approx(float(expected), rel=1e-6), "acc": 50.0, "images": 2}
