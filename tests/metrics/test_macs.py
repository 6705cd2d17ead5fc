"""MAC and parameter counting: hand formulas, the CIFAR ResNet figures, and torch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from filterprune.metrics import count, count_params, layer_table
from filterprune.models import create_model
from models_zoo import PRUNABLE, build


class TwoConv(nn.Module):
    """conv1 3->4 (3x3, bias) -> BN -> ReLU -> conv2 4->8 (3x3, stride 2, groups 2) -> BN -> GAP -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() // 2 // x.shape[0]  # FLOPs = 2 x MACs, for the whole batch


def test_two_conv_hand_formula():
    model = TwoConv().train()
    x = torch.randn(3, 3, 16, 16)
    conv1 = 4 * 16 * 16 * (3 * 3 * 3)  # C_out * H_out * W_out * C_in * k * k
    conv2 = 8 * 8 * 8 * (4 // 2 * 3 * 3)  # stride 2 halves H, W; groups=2 halves the fan-in
    fc = 8 * 10
    params = (4 * 3 * 9 + 4) + 2 * 4 + (8 * 2 * 9) + 2 * 8 + (8 * 10 + 10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert count(model, x) == (conv1 + conv2 + fc, params)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    rows = {r["name"]: r for r in layer_table(model, x)}
    assert list(rows) == ["conv1", "bn1", "conv2", "bn2", "fc"]  # call order; F.relu is not a module
    assert (rows["conv2"]["in"], rows["conv2"]["out"], rows["conv2"]["macs"], rows["conv2"]["params"]) == (4, 8, conv2, 144)
    assert rows["bn1"]["macs"] == 0 and rows["bn1"]["params"] == 8
    assert (rows["fc"]["type"], rows["fc"]["in"], rows["fc"]["out"]) == ("Linear", 8, 10)
    assert count(model, x[:1])[0] == conv1 + conv2 + fc  # per sample, whatever the batch


def test_cifar_resnets():
    # ResNet-20: 3x3 convs 16/32/64 wide on 32/16/8 px, conv+fc = 40.55M MACs, 0.27M params
    x = torch.randn(1, 3, 32, 32)
    stem = 32 * 32 * 16 * 27
    stage1 = 6 * 32 * 32 * 16 * 16 * 9
    stage2 = 16 * 16 * 32 * 16 * 9 + 5 * 16 * 16 * 32 * 32 * 9
    stage3 = 8 * 8 * 64 * 32 * 9 + 5 * 8 * 8 * 64 * 64 * 9
    macs = stem + stage1 + stage2 + stage3 + 64 * 10
    conv_params = 16 * 27 + 6 * 16 * 16 * 9 + (32 * 16 * 9 + 5 * 32 * 32 * 9) + (64 * 32 * 9 + 5 * 64 * 64 * 9)
    params = conv_params + 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64) + 64 * 10 + 10
    assert count(create_model("resnet20"), x) == (macs, params) == (40_551_040, 269_722)
    m56, p56 = count(create_model("resnet56"), x)
    assert (round(m56 / 1e6, 2), round(p56 / 1e6, 2)) == (125.49, 0.85)


@pytest.mark.parametrize("name", PRUNABLE)
def test_matches_flop_counter_on_tiny_models(name):
    model, x = build(name)
    assert count(model, x)[0] == flop_counter_macs(model, x) > 0


@pytest.mark.parametrize("name", ["resnet20", "convnet_small"])
def test_matches_flop_counter_on_models(name):
    model = create_model(name)
    x = torch.randn(2, 3, 32, 32) if name == "resnet20" else torch.randn(2, 1, 8, 8)
    assert count(model, x)[0] == flop_counter_macs(model, x)


def test_functional_conv_is_counted():
    """Hooks see modules, not F.conv2d inside a forward; the total counts what torch executes."""

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x):
            return F.conv2d(x, self.w)

    model, x = Functional(), torch.randn(1, 3, 6, 6)
    assert count(model, x) == (4 * 4 * 4 * 27, 4 * 3 * 3 * 3)  # 4 filters x 4x4 outputs x 3*3*3 MACs
    assert sum(r["macs"] for r in layer_table(model, x)) == 0  # no layer ran it


def test_shared_params_counted_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert count(model, torch.randn(2, 4)) == (2 * 16, 20)  # called twice, stored once
    assert count_params(model) == 20
