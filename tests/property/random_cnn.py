"""Random small CNNs composed from the pieces the engine supports, for the hypothesis suite.

A network is a stem conv, a list of blocks and a head, each block a ``(kind, params)`` pair drawn by
:func:`architectures`. Every block maps a ``(B, C, 8, 8)`` map to a ``(B, C', 8, 8)`` map, so any
sequence composes. :data:`BLOCKS` names the kinds; :data:`LAYER_KINDS` the layer types they use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

BLOCKS = ("conv", "residual", "concat", "split_even", "split_uneven", "depthwise", "grouped", "pixel_shuffle",
          "se", "spatial_gate", "convnext")
NORMS = ("bn", "gn", "none")
ACTS = ("relu", "prelu_shared", "prelu_channel")
HEADS = ("gap", "flatten")
LAYER_KINDS = ("Conv2d", "Conv2d depthwise", "Conv2d grouped", "Linear", "Linear channels-last", "BatchNorm2d",
               "GroupNorm", "LayerNorm", "PReLU()", "PReLU(C)", "PixelShuffle", "residual add", "concat",
               "split", "chunk", "SE gate", "spatial gate", "flatten")
SPATIAL = 8
IN_CHANNELS = 3
NUM_CLASSES = 5


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "gn":
        return nn.GroupNorm(2 if c % 2 == 0 else 1, c)
    return nn.Identity()


def _act(kind: str, c: int) -> nn.Module:
    return {"relu": nn.ReLU(), "prelu_shared": nn.PReLU(), "prelu_channel": nn.PReLU(c)}[kind]


class Block(nn.Module):
    """One block; ``params`` fix its widths and options."""

    def __init__(self, kind: str, c: int, p: dict) -> None:
        super().__init__()
        self.kind, self.p = kind, p
        w = p["width"]
        if kind == "conv":
            self.conv, self.norm, self.act = nn.Conv2d(c, w, 3, padding=1), _norm(p["norm"], w), _act(p["act"], w)
            self.out = w
        elif kind == "residual":
            self.conv1, self.n1 = nn.Conv2d(c, w, 3, padding=1, bias=False), _norm(p["norm"], w)
            self.conv2, self.n2 = nn.Conv2d(w, c, 3, padding=1, bias=False), _norm(p["norm"], c)
            self.out = c
        elif kind == "concat":
            self.a, self.b = nn.Conv2d(c, w, 3, padding=1), nn.Conv2d(c, p["width2"], 1)
            self.out = w + p["width2"]
        elif kind in ("split_even", "split_uneven"):
            self.sizes = [(c + 1) // 2, c // 2] if kind == "split_even" else [p["cut"], c - p["cut"]]
            self.conv = nn.Conv2d(self.sizes[0], w, 3, padding=1)
            self.out = w + self.sizes[1]
        elif kind == "depthwise":
            self.dw, self.norm = nn.Conv2d(c, c, 3, padding=1, groups=c), _norm(p["norm"], c)
            self.pw = nn.Conv2d(c, w, 1)
            self.out = w
        elif kind == "grouped":
            g = p["groups"]
            self.pre = nn.Conv2d(c, 4 * g, 1)
            self.conv, self.norm = nn.Conv2d(4 * g, w * g, 3, padding=1, groups=g), _norm(p["norm"], w * g)
            self.out = w * g
        elif kind == "pixel_shuffle":
            self.conv, self.shuffle = nn.Conv2d(c, 4 * w, 3, padding=1), nn.PixelShuffle(2)
            self.out = w
        elif kind == "se":
            self.conv = nn.Conv2d(c, w, 3, padding=1)
            self.f1, self.f2 = nn.Linear(w, max(2, w // 4)), nn.Linear(max(2, w // 4), w)
            self.out = w
        elif kind == "spatial_gate":
            self.conv, self.att = nn.Conv2d(c, w, 3, padding=1), nn.Conv2d(w, 1, 3, padding=1)
            self.out = w
        elif kind == "convnext":
            self.dw, self.ln = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.LayerNorm(c)
            self.pw1, self.pw2 = nn.Linear(c, 2 * w), nn.Linear(2 * w, c)
            self.out = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k == "conv":
            return self.act(self.norm(self.conv(x)))
        if k == "residual":
            return F.relu(self.n2(self.conv2(F.relu(self.n1(self.conv1(x))))) + x)
        if k == "concat":
            return torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        if k in ("split_even", "split_uneven"):
            a, b = torch.split(x, self.sizes, 1) if k == "split_uneven" else x.chunk(2, 1)
            return torch.cat([F.relu(self.conv(a)), b], 1)
        if k == "depthwise":
            return F.relu(self.pw(F.relu(self.norm(self.dw(x)))))
        if k == "grouped":
            return F.relu(self.norm(self.conv(F.relu(self.pre(x)))))
        if k == "pixel_shuffle":
            return F.avg_pool2d(self.shuffle(F.relu(self.conv(x))), 2)
        if k == "se":
            y = F.relu(self.conv(x))
            s = torch.sigmoid(self.f2(F.relu(self.f1(y.mean((2, 3))))))
            return y * s[:, :, None, None]
        if k == "spatial_gate":
            y = F.relu(self.conv(x))
            return y * torch.sigmoid(self.att(y))
        # convnext: channels-last MLP with a LayerNorm, residual
        y = self.dw(x).permute(0, 2, 3, 1)
        return x + self.pw2(F.gelu(self.pw1(self.ln(y)))).permute(0, 3, 1, 2)


class RandomCNN(nn.Module):
    """stem conv -> blocks -> head (global average pool + Linear, or 2x2 pool + flatten + Linear)."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        c = spec["stem"]
        self.stem, self.bn = nn.Conv2d(IN_CHANNELS, c, 3, padding=1), nn.BatchNorm2d(c)
        blocks = []
        for kind, p in spec["blocks"]:
            blocks.append(Block(kind, c, p))
            c = blocks[-1].out
        self.blocks = nn.Sequential(*blocks)
        self.head = spec["head"]
        self.fc = nn.Linear(c * (4 if self.head == "flatten" else 1), NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        x = F.adaptive_avg_pool2d(x, 2).flatten(1) if self.head == "flatten" else x.mean((2, 3))
        return self.fc(x)


@st.composite
def block_specs(draw, c: int) -> tuple[str, dict]:
    kind = draw(st.sampled_from(BLOCKS))
    p = {"width": draw(st.integers(8, 24)), "norm": draw(st.sampled_from(NORMS)), "act": draw(st.sampled_from(ACTS))}
    if kind == "concat":
        p["width2"] = draw(st.integers(4, 16))
    if kind == "split_uneven":
        p["cut"] = draw(st.integers(1, c - 1))
    if kind == "grouped":
        p["groups"] = draw(st.sampled_from((2, 4)))
        p["width"] = draw(st.integers(2, 6))
    return kind, p


def _out(kind: str, c: int, p: dict) -> int:
    return Block(kind, c, p).out


@st.composite
def architectures(draw) -> dict:
    """A spec for :class:`RandomCNN`: 1 to 4 blocks."""
    c = draw(st.integers(8, 24))
    spec = {"stem": c, "blocks": [], "head": draw(st.sampled_from(HEADS))}
    for _ in range(draw(st.integers(1, 4))):
        kind, p = draw(block_specs(c))
        spec["blocks"].append((kind, p))
        c = _out(kind, c, p)
    return spec


def build(spec: dict, seed: int = 0) -> tuple[RandomCNN, torch.Tensor]:
    """The seeded model in eval mode, with non-trivial norm statistics, and a batch of 2 inputs."""
    torch.manual_seed(seed)
    model = RandomCNN(spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.5)
    return model.eval(), torch.randn(2, IN_CHANNELS, SPATIAL, SPATIAL, generator=g)
