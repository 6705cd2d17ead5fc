"""The one train/eval save-and-restore: every submodule's own flag comes back, also after an error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from filterprune.train.loop import evaluate
from filterprune.utils.modes import evaluating, modes_kept


def _mixed():
    """A training model holding a frozen (eval-mode) BatchNorm: flags differ between submodules."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).train()
    net[1].eval()
    return net


def _flags(net):
    return [m.training for m in net.modules()]


def test_evaluating_sets_eval_and_no_grad_then_restores_each_flag():
    net = _mixed()
    before = _flags(net)
    with evaluating(net):
        assert not any(_flags(net)) and not torch.is_grad_enabled()
    assert _flags(net) == before and torch.is_grad_enabled()
    with evaluating(net, no_grad=False):
        assert torch.is_grad_enabled() and not net.training


def test_flags_restored_when_the_block_raises():
    net = _mixed()
    before = _flags(net)
    with pytest.raises(RuntimeError, match="boom"), modes_kept(net):
        net.train()
        raise RuntimeError("boom")
    assert _flags(net) == before


def test_loop_evaluate_keeps_a_frozen_submodule_frozen():
    # ``model.train(was_training)`` (the old restore) would have switched the frozen BN back to train mode
    net = _mixed()
    before = _flags(net)
    x, y = torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    out = evaluate(net, [(x, y)], "cpu")
    assert _flags(net) == before
    with torch.no_grad():
        expected = 100.0 * float((net.eval()(x).argmax(1) == y).double().mean())
    assert out["acc"] == pytest.approx(expected) and out["n"] == 4
