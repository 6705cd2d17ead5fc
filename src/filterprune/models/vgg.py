"""VGG-16 with BatchNorm for 32x32 inputs (13 convs, 64..512 channels) and a small digits ConvNet."""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGG(nn.Module):
    """Plain conv-BN-ReLU stack with max-pools, global average pooling and a linear classifier.

    Args:
        cfg: widths, with ``"M"`` for a 2x2 max-pool.
        num_classes: classifier outputs.
        in_chans: input channels.
        width_mult: scales every width.
    """

    def __init__(self, cfg=VGG16_CFG, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = round(v * width_mult)
                layers += _conv_bn_relu(cin, cout)
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, in_chans, H, W)``."""
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def vgg16_bn(**kwargs) -> VGG:
    """VGG-16 with BatchNorm (13 convs, Simonyan & Zisserman 2015, arXiv 1409.1556); see
    :class:`VGG`.
    """
    return VGG(VGG16_CFG, **kwargs)


class SmallConvNet(nn.Module):
    """Three conv-BN-ReLU layers, flatten, linear: sized for 8x8 digits, trains in seconds on a CPU.

    The flatten into the classifier (rather than pooling) exercises the flatten->Linear coupling.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width_mult: float = 1.0, image_size: int = 8) -> None:
        super().__init__()
        w1, w2, w3 = (round(c * width_mult) for c in (16, 32, 32))
        self.features = nn.Sequential(
            *_conv_bn_relu(in_chans, w1),
            *_conv_bn_relu(w1, w2),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w2, w3),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Linear(w3 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, in_chans, image_size, image_size)``."""
        return self.classifier(self.features(x).flatten(1))


@register_model
def convnet_small(**kwargs) -> SmallConvNet:
    """The small ConvNet of the demo and tests (digits-sized inputs); see :class:`SmallConvNet`."""
    return SmallConvNet(**kwargs)
