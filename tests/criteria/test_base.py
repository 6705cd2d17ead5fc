"""The criterion contract enforced by ``Criterion.score`` and the registry helpers."""

from __future__ import annotations

import pytest
import torch
from criteria_nets import batches, two_conv

from filterprune.criteria import Criterion, ScoringContext, ScoringError, create_criterion
from filterprune.errors import FilterpruneError


class Fixed(Criterion):
    name = "fixed"

    def __init__(self, scores):
        self.scores = scores

    def compute(self, ctx):
        return self.scores


def test_score_validates_and_normalises():
    model, x, groups = two_conv()
    ctx = ScoringContext(model, x, groups)
    good = {"conv1": torch.arange(4, dtype=torch.float64), "conv2": torch.ones(6)}
    out = Fixed(good).score(ctx)
    assert list(out) == ["conv1", "conv2"] and out["conv1"].dtype == torch.float32  # "fc" is not prunable
    with pytest.raises(FilterpruneError, match="wrong groups"):
        Fixed({"conv1": torch.ones(4)}).score(ctx)
    with pytest.raises(FilterpruneError, match="has 6 channels"):
        Fixed({**good, "conv2": torch.ones(5)}).score(ctx)
    with pytest.raises(FilterpruneError, match="non-finite"):
        Fixed({**good, "conv2": torch.full((6,), float("nan"))}).score(ctx)


def test_create_criterion_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown criterion"):
        create_criterion("nope")
    with pytest.raises(ValueError, match="criterion 'l1'"):
        create_criterion("l1", num_batches=3)  # a context setting, not a criterion option
    assert create_criterion("l1", include_consumers=True).include_consumers


def test_context_batches():
    model, x, groups = two_conv()
    with pytest.raises(ValueError, match="num_batches"):
        ScoringContext(model, x, groups, num_batches=0)
    with pytest.raises(ValueError, match="duplicate"):
        ScoringContext(model, x, groups + groups[:1])
    ctx = ScoringContext(model, x, groups, data=batches(5), num_batches=2)
    assert len(list(ctx.batches())) == 2 and ctx.resolved_device().type == "cpu"
    with pytest.raises(ScoringError, match="no batch"):
        list(ScoringContext(model, x, groups, data=[]).batches())
    assert issubclass(ScoringError, ValueError) and issubclass(ScoringError, FilterpruneError)
