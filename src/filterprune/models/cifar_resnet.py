"""CIFAR ResNets (He et al. 2016, section 4.2) with parameter-free "option A" shortcuts.

The layout, names and shortcut match the checkpoints of akamaster/pytorch_resnet_cifar10 (see
``../shared/data/README.md``), so those weights load with every key accounted for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graph.ops import LayerOp, register_layer_op
from ._registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride``, then place the input channels among zero channels.

    Unpruned, ``(C_out - C_in) // 2`` zero channels go before the input channels and the rest after, so
    output channel j carries input channel j - (C_out - C_in) // 2. Appending all zeros at the end
    instead breaks the pretrained weights (about 23% accuracy on ResNet-20).

    The placement is kept as an explicit index buffer ``out_index`` (input channel i lands on output
    channel ``out_index[i]``; -1 = dropped) so that channel pruning on either side stays exact: the
    pruning engine edits ``out_index`` and ``out_planes`` instead of guessing what a pad did.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.out_planes = out_planes
        self.register_buffer("out_index", torch.arange(in_planes) + (out_planes - in_planes) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, out_planes, H/stride, W/stride)``: subsample, then input channel ``i``
        goes to output channel ``out_index[i]`` (dropped when -1); the other outputs are zero.
        """
        x = x[:, :, :: self.stride, :: self.stride]
        keep = self.out_index >= 0
        out = x.new_zeros(x.shape[0], self.out_planes, x.shape[2], x.shape[3])
        return out.index_copy(1, self.out_index[keep], x[:, keep])

    def extra_repr(self) -> str:
        """``in=.., out=.., stride=..`` for ``repr``."""
        return f"in={self.out_index.numel()}, out={self.out_planes}, stride={self.stride}"


@register_layer_op(PadShortcut)
class PadShortcutOp(LayerOp):
    """How the engine resizes a :class:`PadShortcut`: its widths live in ``out_index`` and ``out_planes``."""

    def out_channels(self, module: PadShortcut) -> int:
        """The shortcut's output width (``out_planes``)."""
        return module.out_planes

    def in_channels(self, module: PadShortcut) -> int:
        """The shortcut's input width (one ``out_index`` entry per input channel)."""
        return module.out_index.numel()

    def prune_in(self, module: PadShortcut, keep_idxs: torch.Tensor) -> None:
        """Keep only the input channels ``keep_idxs`` (their entries of ``out_index``)."""
        module.out_index = module.out_index[keep_idxs.to(module.out_index.device)]

    def prune_out(self, module: PadShortcut, keep_idxs: torch.Tensor) -> None:
        """Keep only the output channels ``keep_idxs``: inputs that fed a removed output are dropped (-1),
        the others re-targeted to the output's new position.
        """
        # new position of every old output channel (-1: removed), then re-target every input
        idx = module.out_index
        new_pos = torch.full((module.out_planes,), -1, dtype=idx.dtype, device=idx.device)
        new_pos[keep_idxs.to(idx.device)] = torch.arange(len(keep_idxs), dtype=idx.dtype, device=idx.device)
        module.out_index = torch.where(idx >= 0, new_pos[idx.clamp(min=0)], idx)
        module.out_planes = len(keep_idxs)

    def mask_in(self, module: PadShortcut, idxs: torch.Tensor) -> list[tuple[torch.Tensor, int, float]]:
        """Masking an input channel: its ``out_index`` entries (dim 0, at ``idxs``) are set to -1."""
        return [(module.out_index, 0, -1)]  # a dropped input lands nowhere

    def channel_map(self, module: PadShortcut) -> torch.Tensor:
        """``(C_in,)``: the output channel each input channel lands in (-1: none)."""
        return module.out_index

    def channel_attrs(self, module: PadShortcut) -> dict[str, int]:
        """The width attributes a checkpoint must restore: ``{"out_planes": ...}``."""
        return {"out_planes": int(module.out_planes)}


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or option A :class:`PadShortcut` when the
    stride or width changes), then ReLU (He et al. 2016, CIFAR variant, arXiv 1512.03385 sec. 4.2).
    """
    def __init__(self, in_planes: int, mid_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, out_planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        if stride != 1 or in_planes != out_planes:
            self.shortcut: nn.Module = PadShortcut(in_planes, out_planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W) -> (N, out_planes, H/stride, W/stride)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: a 16-channel stem, three stages of n blocks, GAP, linear.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110).
        num_classes: classifier outputs.
        in_chans: input channels.
        width_mult: scales every width (C-SGD's "train wider, then squeeze").
    """

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [round(w * width_mult) for w in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for stage, (planes, stride) in enumerate(zip(widths, (1, 2, 2), strict=True), start=1):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, planes, stride if i == 0 else 1))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, in_chans, H, W)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


@register_model
def resnet20(**kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (3 stages of 3 blocks, widths 16/32/64, 0.27M params); see :class:`CifarResNet`."""
    return CifarResNet(20, **kwargs)


@register_model
def resnet32(**kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (3 stages of 5 blocks, widths 16/32/64); see :class:`CifarResNet`."""
    return CifarResNet(32, **kwargs)


@register_model
def resnet44(**kwargs) -> CifarResNet:
    """CIFAR ResNet-44 (3 stages of 7 blocks, widths 16/32/64); see :class:`CifarResNet`."""
    return CifarResNet(44, **kwargs)


@register_model
def resnet56(**kwargs) -> CifarResNet:
    """CIFAR ResNet-56 (3 stages of 9 blocks, widths 16/32/64, 0.85M params); see :class:`CifarResNet`."""
    return CifarResNet(56, **kwargs)


@register_model
def resnet110(**kwargs) -> CifarResNet:
    """CIFAR ResNet-110 (3 stages of 18 blocks, widths 16/32/64); see :class:`CifarResNet`."""
    return CifarResNet(110, **kwargs)
