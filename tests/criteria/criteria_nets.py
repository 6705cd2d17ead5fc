"""A hand-described 2-conv net for the criteria oracles, and groups for the tiny topologies.

``two_conv()`` returns the net with its :class:`ChannelGroup` list written by hand, so the oracle tests
do not depend on the tracer; the tiny topologies of ``models_zoo`` use the engine's ``trace_groups``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from filterprune.graph import ChannelGroup, Member
from filterprune.graph.trace import trace_groups


class TwoConv(nn.Module):
    """conv1 (bias) -> bn1 -> relu -> conv2 -> bn2 -> relu -> GAP -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def member(module: str, kind: str, module_type: str, n: int, per: int = 1) -> Member:
    return Member(module, kind, module_type, tuple(tuple(range(c * per, (c + 1) * per)) for c in range(n)))


def two_conv(seed: int = 0) -> tuple[TwoConv, torch.Tensor, list[ChannelGroup]]:
    torch.manual_seed(seed)
    model = TwoConv()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.copy_(torch.randn(bn.num_features, generator=g))  # signed: |gamma| is tested
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    groups = [
        ChannelGroup("conv1", 4, (member("conv1", "out", "Conv2d", 4), member("bn1", "out", "BatchNorm2d", 4),
                                  member("conv2", "in", "Conv2d", 4))),
        ChannelGroup("conv2", 6, (member("conv2", "out", "Conv2d", 6), member("bn2", "out", "BatchNorm2d", 6),
                                  member("fc", "in", "Linear", 6))),
        ChannelGroup("fc", 10, (member("fc", "out", "Linear", 10),), prunable=False),
    ]
    x = torch.randn(2, 3, 8, 8, generator=g)
    return model.eval(), x, groups


def batches(n: int = 3, shape: tuple[int, ...] = (4, 3, 8, 8), seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g), torch.randint(0, 10, (shape[0],), generator=g)) for _ in range(n)]


def traced_groups(model: nn.Module, x: torch.Tensor) -> list[ChannelGroup]:
    """The engine's groups for ``model``."""
    return trace_groups(model, x)
