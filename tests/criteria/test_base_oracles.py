"""The scoring context's data errors, word for word, and the registry's names (criteria/base.py)."""

from __future__ import annotations

import pytest
import torch
from criteria_nets import batches, two_conv

from filterprune.criteria import ScoringContext, ScoringError, list_criteria
from filterprune.criteria.base import CRITERIA


def test_batches_without_data_names_the_field_to_set():
    model, x, groups = two_conv()
    with pytest.raises(ScoringError, match=r"^this criterion needs data: pass \(x, y\) batches as "
                                           r"ScoringContext\.data$"):
        next(ScoringContext(model, x, groups).batches())


def test_batches_of_an_empty_iterable_says_it_yielded_nothing():
    model, x, groups = two_conv()
    with pytest.raises(ScoringError, match=r"^ScoringContext\.data yielded no batch$"):
        list(ScoringContext(model, x, groups, data=iter([])).batches())


def test_every_registered_criterion_class_carries_its_registry_name():
    """``register_criterion(name)`` sets ``cls.name``: the name error messages and reprs show."""
    names = list_criteria()
    assert {"l1", "taylor", "car", "car-classwise"} <= set(names)
    for name in names:
        assert CRITERIA.get(name).name == name


def test_duplicate_group_ids_are_refused():
    model, x, groups = two_conv()
    with pytest.raises(ValueError, match=r"^ScoringContext\.groups has duplicate group ids$"):
        ScoringContext(model, x, groups + groups[:1])


def test_batches_go_to_the_device_of_the_model_parameters():
    """No ``device`` given: the model's first parameter decides (here the meta device, a CPU-only stand-in
    for an accelerator); a parameter-free model means the CPU."""
    model, x, groups = two_conv()
    model = model.to("meta")
    ctx = ScoringContext(model, x, groups, data=batches(1))
    assert ctx.resolved_device() == torch.device("meta")
    ((bx, by),) = list(ctx.batches())
    assert bx.device.type == "meta" and by.device.type == "meta"
    assert ScoringContext(torch.nn.ReLU(), x, []).resolved_device() == torch.device("cpu")
    assert ScoringContext(model, x, groups, device="cpu").resolved_device() == torch.device("cpu")
