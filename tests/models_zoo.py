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

from filterprune.graph.trace import trace_groups

NUM_CLASSES = 10


def _cbr(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


def pointwise_chain(widths=(8, 8), batch=1):
    """Seeded 1x1 convs 3 -> a -> b -> 4 (ReLUs between) in eval mode, a (batch, 3, 4, 4) input and the
    traced groups: ``"0"`` (a channels) feeds ``"2"`` (b channels); ``"4"`` is the output and stays whole."""
    torch.manual_seed(0)
    a, b = widths
    model = nn.Sequential(nn.Conv2d(3, a, 1), nn.ReLU(), nn.Conv2d(a, b, 1), nn.ReLU(), nn.Conv2d(b, 4, 1)).eval()
    x = torch.randn(batch, 3, 4, 4)
    return model, x, trace_groups(model, x)


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


# ---- Architecture kinds of issue 11 (users' models other tools break on), with held-back variants ----
KIND_SHAPE = (2, 3, 16, 16)


def _head(c: int) -> nn.Linear:
    return nn.Linear(c, NUM_CLASSES)


class UnequalSplit(nn.Module):
    """conv (32) -> split of the channel axis -> conv on one piece -> cat -> (residual add) -> conv."""

    def __init__(self, sizes=(8, 24), residual: bool = True, how: str = "split") -> None:
        super().__init__()
        self.sizes, self.residual, self.how = list(sizes), residual, how
        c = sum(sizes)
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(sizes[0], sizes[0], 3, padding=1)
        self.mid = nn.Conv2d(c, 48, 3, padding=1)
        self.fc = _head(48)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        if self.how == "chunk":
            a, b = x.chunk(2, 1)
        elif self.how == "slice":
            a, b = x[:, : self.sizes[0]], x[:, self.sizes[0]:]
        else:
            a, b = torch.split(x, self.sizes, 1)
        y = torch.cat([F.relu(self.conv(a)), b], 1)
        y = y + x if self.residual else y
        return self.fc(F.relu(self.mid(y)).mean((2, 3)))


class SpatialSplit(nn.Module):
    """A split along the height axis (not channels): both halves keep every channel."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv, self.fc = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1), _head(32)

    def forward(self, x):
        top, bottom = torch.split(F.relu(self.stem(x)), [6, 10], 2)
        return self.fc(F.relu(self.conv(torch.cat([bottom, top], 2))).mean((2, 3)))


class PixelShuffleNet(nn.Module):
    """conv -> conv to C*r*r -> PixelShuffle(r) -> conv (or PixelUnshuffle(r) -> conv)."""

    def __init__(self, r: int = 2, unshuffle: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        if unshuffle:
            self.up, self.shuffle, self.out = nn.Conv2d(16, 24, 3, padding=1), nn.PixelUnshuffle(r), nn.Conv2d(24 * r * r, 3, 3, padding=1)
        else:
            self.up, self.shuffle, self.out = nn.Conv2d(16, 16 * r * r, 3, padding=1), nn.PixelShuffle(r), nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        return self.out(F.relu(self.shuffle(F.relu(self.up(F.relu(self.stem(x)))))))


class SpatialGate(nn.Module):
    """A one-channel map spread over every channel: ``x * sigmoid(conv_to_1(x))`` and variants."""

    def __init__(self, gate: str = "sigmoid") -> None:
        super().__init__()
        self.gate = gate
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.att = nn.Conv2d(32, 1, 7, padding=3)
        self.conv, self.fc = nn.Conv2d(32, 32, 3, padding=1), _head(32)

    def forward(self, x):
        x = F.relu(self.stem(x))
        if self.gate == "sigmoid":
            x = x * torch.sigmoid(self.att(x))
        elif self.gate == "add":
            x = x + self.att(x)
        elif self.gate == "expand":
            x = torch.tanh(self.att(x)).expand_as(x) * x
        else:  # CBAM's spatial gate: a mean over channels, kept whole
            x = x * torch.sigmoid(self.att(torch.cat([x.mean(1, keepdim=True)] * 32, 1)))
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


class PReLUNet(nn.Module):
    """conv -> PReLU() (one shared slope) or PReLU(C) -> conv -> PReLU -> head."""

    def __init__(self, per_channel: bool = False) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.act = nn.PReLU(32 if per_channel else 1)
        self.conv, self.act2, self.fc = nn.Conv2d(32, 48, 3, padding=1), nn.PReLU(), _head(48)
        with torch.no_grad():
            self.act.weight.uniform_(0.05, 0.5)

    def forward(self, x):
        return self.fc(self.act2(self.conv(self.act(self.bn(self.stem(x))))).mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022): 7x7 depthwise, permute, LayerNorm, Linear 4C, GELU, Linear C,
    permute back, residual add; ``tokens=True`` works on (B, N, C) tokens and averages them with mean(1)."""

    def __init__(self, c: int = 32, tokens: bool = False) -> None:
        super().__init__()
        self.tokens = tokens
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw, self.norm = nn.Conv2d(c, c, 7, padding=3, groups=c), nn.LayerNorm(c)
        self.pw1, self.pw2, self.head = nn.Linear(c, 4 * c), nn.Linear(4 * c, c), _head(c)

    def forward(self, x):
        x = self.stem(x)
        if self.tokens:
            t = self.dw(x).flatten(2).transpose(1, 2)  # (B, N, C)
            t = self.pw2(F.gelu(self.pw1(self.norm(t))))
            return self.head((x.flatten(2).transpose(1, 2) + t).mean(1))
        y = self.dw(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


class GroupedNet(nn.Module):
    """Grouped (not depthwise) convs, ResNeXt style: 1x1 -> 3x3 groups=g -> 1x1, plus a grouped 1x1 chain."""

    def __init__(self, g: int = 4) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.g1 = nn.Conv2d(32, 64, 3, padding=1, groups=g)
        self.bn1 = nn.BatchNorm2d(64)
        self.g2 = nn.Conv2d(64, 64, 3, padding=1, groups=g)
        self.pw = nn.Conv2d(64, 32, 1)
        self.fc = _head(32)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = F.relu(self.g2(F.relu(self.bn1(self.g1(x)))))
        return self.fc(F.relu(self.pw(y) + x).mean((2, 3)))


class TwoInputs(nn.Module):
    """``forward(a, b)``: called with keyword inputs ``{"a": x1, "b": x2}``."""

    def __init__(self) -> None:
        super().__init__()
        self.ca, self.cb = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(3, 32, 3, padding=1)
        self.fuse, self.fc = nn.Conv2d(64, 32, 3, padding=1), _head(32)

    def forward(self, a, b):
        x = torch.cat([F.relu(self.ca(a)), F.relu(self.cb(b))], 1)
        return self.fc(F.relu(self.fuse(x)).mean((2, 3)))


class FunctionalConv(nn.Module):
    """A user's conv with its own kernel, run through ``F.conv2d``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1)


class FunctionalConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.f = nn.Conv2d(3, 32, 3, padding=1), FunctionalConv(32, 32)
        self.conv, self.fc = nn.Conv2d(32, 48, 3, padding=1), _head(48)

    def forward(self, x):
        return self.fc(F.relu(self.conv(F.relu(self.f(F.relu(self.stem(x)))))).mean((2, 3)))


KINDS: dict[str, Callable[[], nn.Module]] = {
    "split_8_24": lambda: UnequalSplit((8, 24)),
    "split_20_12": lambda: UnequalSplit((20, 12)),
    "split_no_residual": lambda: UnequalSplit((8, 24), residual=False),
    "chunk": lambda: UnequalSplit((16, 16), how="chunk"),
    "slice": lambda: UnequalSplit((12, 20), how="slice"),
    "split_height": SpatialSplit,
    "pixel_shuffle_2": lambda: PixelShuffleNet(2),
    "pixel_shuffle_3": lambda: PixelShuffleNet(3),
    "pixel_unshuffle_2": lambda: PixelShuffleNet(2, unshuffle=True),
    "spatial_gate": lambda: SpatialGate("sigmoid"),
    "spatial_gate_add": lambda: SpatialGate("add"),
    "spatial_gate_expand": lambda: SpatialGate("expand"),
    "cbam_channel_mean": lambda: SpatialGate("cbam"),
    "prelu_shared": lambda: PReLUNet(False),
    "prelu_per_channel": lambda: PReLUNet(True),
    "convnext": ConvNeXtBlock,
    "convnext_tokens": lambda: ConvNeXtBlock(tokens=True),
    "grouped_4": lambda: GroupedNet(4),
    "grouped_2": lambda: GroupedNet(2),
    "keyword_inputs": TwoInputs,
}


def build_kind(name: str, seed: int = 0):
    """A seeded model of kind ``name`` in eval mode (random BN statistics) and its example inputs."""
    torch.manual_seed(seed)
    model = randomize_bn(KINDS[name](), seed).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*KIND_SHAPE, generator=g)
    if name == "keyword_inputs":
        return model, {"a": x, "b": torch.randn(*KIND_SHAPE, generator=g)}
    return model, x
