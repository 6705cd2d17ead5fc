"""``measure_curves``' bookkeeping and the ``sensitivity.json`` round trip, against hand-written values.

A scripted measure returns pass ``k`` (0 = the unpruned model) as loss ``1 + k``, accuracy ``90 - 10 k``,
so every curve, drop, image count and pass count below is written out by hand; a fake clock that moves
0.125 s per pass makes the recorded seconds exact. The chain has a one-channel group (nothing to
measure: it cannot lose its only channel) and a four-channel one.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from filterprune.graph.trace import trace_groups
from filterprune.selection import SensitivityCurves, measure_curves, ratio_grid

FORMAT = "filterprune.sensitivity/1"


def _chain():
    """Groups "0" (1 channel) and "2" (4 channels); "4" is the output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU(), nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    groups = trace_groups(model, torch.randn(1, 3, 4, 4))
    scores = {g.id: torch.arange(float(g.size)) for g in groups if g.prunable}
    return model, groups, scores


class _Scripted:
    """Pass k returns loss 1 + k and accuracy 90 - 10 k (and ``images`` if given); moves ``clock`` by 0.125 s."""

    def __init__(self, images=None):
        self.passes, self.images, self.now = 0, images, 100.0

    def clock(self):
        return self.now

    def __call__(self, model):
        k = self.passes
        self.passes += 1
        self.now += 0.125
        out = {"loss": 1.0 + k, "acc": 90.0 - 10 * k}
        if self.images is not None:
            out["images"] = self.images
        return out


def test_a_measure_without_an_image_count_counts_zero_images():
    model, groups, scores = _chain()
    curves = measure_curves(model, groups, scores, _Scripted(), points=3)
    assert curves.base == {"loss": 1.0, "acc": 90.0, "images": 0}
    assert curves.groups["2"]["images"] == 0
    assert (curves.cost["images"], curves.cost["passes"]) == (0, 4)


def test_curves_of_the_accuracy_metric_by_hand():
    model, groups, scores = _chain()
    measure = _Scripted(images=8)
    curves = measure_curves(model, groups, scores, measure, points=3, metric="acc")
    assert curves.metric == "acc" and curves.grid == [0.25, 0.5, 0.75]
    assert curves.base == {"loss": 1.0, "acc": 90.0, "images": 8}
    e = curves.groups["2"]  # n = round(r * 4) for r in 0.25, 0.5, 0.75: passes 1, 2, 3
    assert (e["removed"], e["ratios"], e["loss"], e["acc"]) == ([1, 2, 3], [0.25, 0.5, 0.75], [2.0, 3.0, 4.0],
                                                                [80.0, 70.0, 60.0])
    assert e["drop"] == [10.0, 20.0, 30.0] and e["monotone"] == [10.0, 20.0, 30.0]  # accuracy points lost
    assert e["removed_fraction"] == [0.0, 0.25, 0.5, 0.75] and e["accuracy"] == [90.0, 80.0, 70.0, 60.0]
    assert e["images"] == 24


def test_a_one_channel_group_has_an_empty_curve_and_costs_no_pass():
    model, groups, scores = _chain()
    measure = _Scripted(images=8)
    curves = measure_curves(model, groups, scores, measure, points=3)
    e = curves.groups["0"]
    assert (e["removed"], e["ratios"], e["loss"], e["acc"], e["images"]) == ([], [], [], [], 0)
    assert measure.passes == 4  # the base and the three points of group "2"
    assert curves.groups["2"]["loss"] == [2.0, 3.0, 4.0]


def test_seconds_per_group_and_in_all_from_the_clock(monkeypatch):
    model, groups, scores = _chain()
    measure = _Scripted(images=8)
    monkeypatch.setattr(time, "perf_counter", measure.clock)
    curves = measure_curves(model, groups, scores, measure, points=3)
    assert set(curves.groups["2"]) == {"width", "order", "removed", "ratios", "loss", "acc", "images", "seconds",
                                       "drop", "monotone", "removed_fraction", "accuracy"}
    assert curves.groups["2"]["seconds"] == 0.375  # three passes of 0.125 s
    assert curves.groups["0"]["seconds"] == 0.0
    assert curves.cost == {"images": 32, "passes": 4, "seconds": 0.5, "groups_measured": 2, "groups_reused": 0}


def test_a_resumed_run_counts_reused_groups_apart_from_measured_ones(tmp_path):
    model, groups, scores = _chain()
    cache = tmp_path / "sensitivity.json"
    first = measure_curves(model, groups, scores, _Scripted(images=8), points=3, cache=cache)
    assert (first.cost["groups_measured"], first.cost["groups_reused"]) == (2, 0)
    again = _Scripted(images=8)
    second = measure_curves(model, groups, scores, again, points=3, cache=cache)
    assert again.passes == 0
    assert (second.cost["groups_measured"], second.cost["groups_reused"]) == (0, 2)
    assert (second.cost["images"], second.cost["passes"]) == (0, 0)


# ---------------------------------------------------------------------------------------------------
# the JSON round trip
# ---------------------------------------------------------------------------------------------------

def _entry():
    return {"width": 4, "order": [3, 2, 1, 0], "removed": [1, 2], "ratios": [0.25, 0.5], "loss": [2.0, 3.0],
            "acc": [80.0, 60.0]}


def test_from_dict_keeps_the_metric_and_the_cost():
    data = {"format": FORMAT, "metric": "acc", "grid": [0.25, 0.5], "base": {"loss": 1.0, "acc": 90.0},
            "groups": {"g": _entry()}, "cost": {"images": 16, "passes": 2}}
    curves = SensitivityCurves.from_dict(data)
    assert curves.metric == "acc" and curves.cost == {"images": 16, "passes": 2}
    e = curves.groups["g"]
    assert e["drop"] == [10.0, 30.0]  # 90 - 80, 90 - 60: the accuracy metric, not the loss
    assert e["removed_fraction"] == [0.0, 0.25, 0.5] and e["accuracy"] == [90.0, 80.0, 60.0]


def test_from_dict_defaults_a_missing_metric_to_loss_and_missing_groups_to_none():
    curves = SensitivityCurves.from_dict({"format": FORMAT, "base": {"loss": 1.0, "acc": 90.0}})
    assert (curves.metric, curves.grid, curves.groups, curves.cost) == ("loss", [], {}, {})
    curves = SensitivityCurves.from_dict({"format": FORMAT, "base": {"loss": 1.0, "acc": 90.0},
                                          "groups": {"g": _entry()}})
    assert curves.groups["g"]["drop"] == [1.0, 2.0]  # loss - base loss


def test_to_dict_then_from_dict_round_trips_an_accuracy_curve():
    curves = SensitivityCurves(metric="acc", grid=[0.25, 0.5], base={"loss": 1.0, "acc": 90.0}, cost={"passes": 3})
    curves.groups["g"] = curves._entry(_entry())
    data = curves.to_dict()
    assert set(data) == {"format", "metric", "grid", "base", "groups", "cost"}
    assert (data["format"], data["metric"]) == (FORMAT, "acc")
    again = SensitivityCurves.from_dict(data)
    assert (again.metric, again.grid, again.base, again.cost) == ("acc", [0.25, 0.5], curves.base, {"passes": 3})
    assert again.groups["g"]["monotone"] == [10.0, 30.0]


def test_one_point_grid_is_the_midpoint():
    assert ratio_grid(1) == [0.5]
    with pytest.raises(ValueError, match=r"^sensitivity points must be a positive integer, got 0$"):
        ratio_grid(0)


def test_ratio_grid_rounds_to_six_decimals():
    # k / 7: 0.142857142..., 0.285714285..., 0.428571428..., 0.571428571..., 0.714285714..., 0.857142857...
    assert ratio_grid(6) == [0.142857, 0.285714, 0.428571, 0.571429, 0.714286, 0.857143]
