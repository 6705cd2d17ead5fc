"""``check_layer_scope``: CAR ``scope=layer`` requests refused before any work, one message each
(issue 14: these ran only through the CLI before; every branch and message here)."""

import pytest

from filterprune.criteria.car_greedy import check_layer_scope

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
