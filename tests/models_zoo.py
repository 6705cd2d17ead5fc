"""Tiny test topologies shared by the engine and criteria tests.

Each entry of :data:`TINY_MODELS` builds a seeded model in eval mode with non-trivial BatchNorm
statistics; :func:`example_input` gives a matching batch. ``PRUNABLE`` lists the ones the engine must
handle; ``REFUSED`` the ones it must refuse (channel shuffle).

>>> model, x = build("conv_chain")
>>> model(x).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


def _cbr(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class ConvChain(nn.Module):
    """Plain conv-BN-ReLU chain, global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = _cbr(3, 16)
        self.block2 = _cbr(16, 24, stride=2)
        self.block3 = _cbr(24, 32)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ResBlock(nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, mid, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class ResidualNet(nn.Module):
    """Stem conv-BN, two residual blocks (the adds tie stem, block1.conv2 and block2.conv2), linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.block1 = ResBlock(16, 24)
        self.block2 = ResBlock(16, 24)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ConcatNet(nn.Module):
    """Two branches (one with a conv bias, no BN) concatenated along channels, then a conv and a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.branch_a = _cbr(16, 12)
        self.branch_b = nn.Conv2d(16, 20, 1, bias=True)
        self.fuse = _cbr(32, 24)
        self.fc = nn.Linear(24, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.branch_a(x), F.relu(self.branch_b(x))], dim=1)
        x = self.fuse(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DepthwiseNet(nn.Module):
    """Depthwise-separable block: conv, depthwise 3x3 (groups=C), pointwise 1x1, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.dw = _cbr(16, 16, groups=16)
        self.pw = _cbr(16, 32)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class FlattenHead(nn.Module):
    """Conv-BN-ReLU, max-pool, conv, flatten straight into a Linear (each channel owns H*W features)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 16), nn.MaxPool2d(2), _cbr(16, 12))
        self.fc = nn.Linear(12 * 4 * 4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class ShuffleNet(nn.Module):
    """Group conv, channel shuffle (view/transpose/reshape), group conv: the engine must refuse it."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.gconv1 = nn.Conv2d(8, 8, 1, groups=groups, bias=False)
        self.gconv2 = nn.Conv2d(8, 8, 1, groups=groups, bias=False)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gconv1(F.relu(self.conv1(x)))
        b, c, h, w = x.shape
        x = x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        x = F.relu(self.gconv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


TINY_MODELS: dict[str, Callable[[], nn.Module]] = {
    "conv_chain": ConvChain,
    "residual": ResidualNet,
    "concat": ConcatNet,
    "depthwise": DepthwiseNet,
    "flatten_head": FlattenHead,
    "shuffle": ShuffleNet,
}
PRUNABLE = ["conv_chain", "residual", "concat", "depthwise", "flatten_head"]
REFUSED = ["shuffle"]
INPUT_SHAPE = (2, 3, 8, 8)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def example_input(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded batch of ``INPUT_SHAPE`` images (any batch size)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *INPUT_SHAPE[1:], generator=g)


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A seeded tiny model in eval mode with randomised BN, and an example batch for it."""
    torch.manual_seed(seed)
    model = randomize_bn(TINY_MODELS[name](), seed)
    return model.eval(), example_input(seed=seed)
