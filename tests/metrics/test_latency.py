"""measure_latency: structure only (no timing assertions: CI machines are noisy)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from filterprune.metrics import measure_latency


def test_structure_and_modes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    model.train()
    running = model[1].running_mean.clone()
    out = measure_latency(model, torch.randn(5, 3, 8, 8), batch_sizes=(1, 3), warmup=1, repeats=4)
    assert list(out) == ["1", "3"]
    for bs, r in zip((1, 3), out.values(), strict=True):
        assert r["batch_size"] == bs and r["repeats"] == 4 and r["threads"] >= 1 and r["device"] == "cpu"
        assert r["median_ms"] > 0 and r["iqr_ms"] >= 0
    assert model.training and torch.equal(running, model[1].running_mean)


def test_shape_input_and_validation():
    out = measure_latency(nn.Linear(4, 2), (7, 4), batch_sizes=(2,), warmup=0, repeats=1)
    assert out["2"]["iqr_ms"] == 0 and out["2"]["median_ms"] > 0
    with pytest.raises(ValueError):
        measure_latency(nn.Linear(4, 2), (1, 4), repeats=0)
    with pytest.raises(ValueError):
        measure_latency(nn.Linear(4, 2), (4,))
