"""``check_layer_scope``: CAR ``scope=layer`` requests refused before any work, one message each
(issue 14: these ran only through the CLI before; every branch and message here)."""

import pytest
import torch
from torch import nn

from filterprune.criteria.car_greedy import car_prune_layers, check_layer_scope
from filterprune.metrics import count

NONE = {"target_macs": None, "target_params": None, "ratio": None, "target_latency": None}


def test_a_valid_request_passes():
    assert check_layer_scope(dict(NONE), {"features.0": 0.5}, 1, "global") is None


@pytest.mark.parametrize("target", ["target_macs", "target_params", "ratio", "target_latency"])
def test_a_network_wide_target_is_refused_naming_it(target):
    with pytest.raises(ValueError, match=rf"^CAR scope=layer prunes only the --layer-ratio layers "
                                         rf"\(layer_ratios\); drop {target}$"):
        check_layer_scope({**NONE, target: 0.3}, {"features.0": 0.5}, 1, "global")


def test_the_first_of_two_targets_is_named():
    with pytest.raises(ValueError, match="drop target_macs$"):
        check_layer_scope({**NONE, "target_macs": 0.3, "ratio": 0.2}, {"features.0": 0.5}, 1, "global")


@pytest.mark.parametrize("allocation", ["uniform", "cost", "sensitivity"])
def test_an_allocation_is_refused(allocation):
    with pytest.raises(ValueError, match=rf"^CAR scope=layer prunes each --layer-ratio layer by its own fraction: "
                                         rf"allocation '{allocation}' does not apply \(drop --allocation\)$"):
        check_layer_scope(dict(NONE), {"features.0": 0.5}, 1, allocation)


def test_no_layers_is_refused():
    with pytest.raises(ValueError, match=r"^CAR scope=layer needs the layers and fractions: --layer-ratio NAME=R "
                                         r"\(layer_ratios=\{NAME: R\}\)$"):
        check_layer_scope(dict(NONE), {}, 1, "global")


@pytest.mark.parametrize("steps", [0, 2])
def test_steps_other_than_one_are_refused(steps):
    with pytest.raises(ValueError, match=r"^CAR scope=layer makes one step per k filters; leave steps at 1$"):
        check_layer_scope(dict(NONE), {"features.0": 0.5}, steps, "global")


# ---- car_prune_layers: the per-layer greedy reachable from prune (issue 14: its arguments and records) ----

def _net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(12, 3, 6, 6, generator=g), torch.randint(0, 4, (12,), generator=g)) for _ in range(2)]
    return model, torch.randn(2, 3, 6, 6), data


@pytest.mark.parametrize("k", [0, -1, 1.0, True])
def test_car_prune_layers_refuses_a_k_that_is_not_a_positive_integer(k):
    model, x, data = _net()
    with pytest.raises(ValueError, match=rf"^k must be a positive integer, got {k!r}$"):
        car_prune_layers(model, x, data, {"0": 0.5}, k=k)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_car_prune_layers_refuses_a_ratio_outside_zero_one(ratio):
    model, x, data = _net()
    with pytest.raises(ValueError, match=rf"^layer_ratios\['0'\] must be a fraction in \[0, 1\), got {ratio!r}$"):
        car_prune_layers(model, x, data, {"0": ratio})


def test_car_prune_layers_names_the_prunable_groups_when_a_pattern_matches_none():
    model, x, data = _net()
    with pytest.raises(ValueError, match=r"^layer_ratios: no prunable group is produced by a layer matching 'fc'; "
                                         r"prunable groups: 0, 2$"):
        car_prune_layers(model, x, data, {"fc": 0.5})
    with pytest.raises(ValueError, match="matching '2'"):  # an ignored layer's group is not prunable
        car_prune_layers(model, x, data, {"2": 0.5}, ignored_layers=["2"])


def test_car_prune_layers_steps_records_and_stage_calls_by_hand():
    model, x, data = _net()
    staged, after = [], []

    def stage(name, fn, snapshot=False):
        staged.append((name, snapshot))
        return fn()

    # layer 0: round(0.5 x 6) = 3 filters, k=2 -> steps of 2 and 1; layer 2: a ratio of 0 removes nothing
    records = car_prune_layers(model, x, data, {"0": 0.5, "2": 0.0}, k=2, min_channels=3, stage=stage,
                               after_step=after.append, eval_images=20)
    assert [(r["step"], r["group"], r["removed_channels"], len(r["removed"])) for r in records] == [
        (1, "0", 2, 2), (2, "0", 1, 1)]
    assert staged == [("step1.car_layer", True), ("step2.car_layer", True)] and after == [1, 2]
    assert model[0].out_channels == 3 and model[2].in_channels == 3
    assert records[-1]["macs"] == count(model, x)[0] and records[-1]["params"] == count(model, x)[1]
    assert set(records[0]) == {"step", "group", "removed", "removed_channels", "macs", "params", "max_error"}
    model, x, data = _net()
    # min_channels caps each layer: layer 0 keeps its 6 (6 - 7 < 0), layer 2 loses 8 - 7 = 1 of round(7.2)
    records = car_prune_layers(model, x, data, {"*": 0.9}, k=5, min_channels=7)
    assert [(r["group"], r["removed_channels"]) for r in records] == [("2", 1)]


def test_car_prune_layers_defaults_a_group_matched_twice_and_the_options_it_passes_on(monkeypatch):
    import filterprune.criteria.car_greedy as greedy

    model, x, data = _net()
    # defaults: k=1 (one filter per step), min_channels=1; group 0 matched by two patterns counts once
    records = car_prune_layers(model, x, data, {"0": 0.5, "[0]": 0.5}, eval_images=20)
    assert [(r["group"], r["removed_channels"]) for r in records] == [("0", 1)] * 3
    model, x, data = _net()
    assert [r["removed_channels"] for r in car_prune_layers(model, x, data, {"2": 0.99})] == [1] * 7  # keeps 1
    seen = []
    real = greedy.car_prune_layer
    monkeypatch.setattr(greedy, "car_prune_layer", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    model, x, data = _net()
    car_prune_layers(model, x, data, {"0": 0.2}, eval_images=20, num_batches=1, fast=False)
    assert seen == [{"k": 1, "eval_images": 20, "num_batches": 1, "fast": False}]
    assert check_layer_scope(dict(NONE), {"0": 0.5}, 1) is None  # allocation defaults to global
