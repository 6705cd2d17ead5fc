"""ImageNet ResNet-18 and ResNet-50 (He et al. 2016, "Deep Residual Learning for Image Recognition",
arXiv:1512.03385, Table 1), with the module names of torchvision's ``resnet18``/``resnet50``.

The names and shapes are those of torchvision's published state dicts (``conv1``, ``bn1``,
``layer{1..4}.{i}.conv{1,2,3}``/``bn{1,2,3}``, ``layer{k}.0.downsample.{0,1}`` for the projection
shortcut, ``fc``), so ``create_model("resnet50", pretrained="resnet50-0676ba61.pth")`` loads their
files with every key accounted for, without torchvision. ResNet-50 is the "v1.5" variant that
torchvision publishes: a bottleneck's stride sits on its 3x3 conv, not on the first 1x1. No code
adapted; torchvision is never imported.

Published files (``models.weights.PRETRAINED``; the full sha256 is checked before loading):

    resnet18-f37072fd.pth  ResNet18_Weights.IMAGENET1K_V1, ImageNet-1k top-1 69.758
    resnet50-0676ba61.pth  ResNet50_Weights.IMAGENET1K_V1, ImageNet-1k top-1 76.130

MACs at 224 x 224 (convolutions and the classifier): ResNet-18 1.82 G, ResNet-50 4.11 G.

>>> from filterprune.models import create_model
>>> create_model("resnet18", num_classes=10)(torch.randn(1, 3, 64, 64)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)


def _projection(cin: int, cout: int, stride: int) -> nn.Module | None:
    """1x1 conv + BN shortcut where the shape changes (torchvision's ``downsample``), else ``None``."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, planes, H/stride, W/stride)``: two 3x3 conv-BN plus the shortcut, ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand by 4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, planes * 4, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, 4 planes, H/stride, W/stride)``: 1x1, 3x3, 1x1 conv-BN plus the shortcut, ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ImageNetResNet(nn.Module):
    """7x7/2 stem + 3x3/2 max-pool, four stages (64, 128, 256, 512 planes), global average pool, ``fc``.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18, ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: classifier outputs.
        in_chans: input channels.
        width_mult: scales every width (C-SGD's "train wider, then squeeze"); 1 for the published files.
        zero_init_residual: start every block's last BN at weight 0 (Goyal et al. 2017, section 5.1).
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int],
                 num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        widths = [round(w * width_mult) for w in (64, 128, 256, 512)]
        self.conv1, self.bn1 = nn.Conv2d(in_chans, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for stage, (planes, n) in enumerate(zip(widths, layers, strict=True), start=1):
            blocks = []
            for i in range(n):
                blocks.append(block(cin, planes, 2 if stage > 1 and i == 0 else 1))
                cin = planes * block.expansion
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(last.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, 3, H, W)`` (224 x 224 for the published numbers)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, C, H/32, W/32)
        return self.fc(self.avgpool(x).flatten(1))  # (B, num_classes)


@register_model
def resnet18(**kwargs) -> ImageNetResNet:
    """ResNet-18 for 224 x 224 ImageNet images (1.82 GMACs, 11.7M parameters)."""
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model
def resnet50(**kwargs) -> ImageNetResNet:
    """ResNet-50 v1.5 for 224 x 224 ImageNet images (4.11 GMACs, 25.6M parameters)."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), **kwargs)
