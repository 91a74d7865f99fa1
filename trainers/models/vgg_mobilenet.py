"""CIFAR VGG (vgg8, vgg11, vgg13) and MobileNetV2 (width 0.5, as CRD ``mobile_half``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._registry import register_model
from .resnet_cifar import _init_weights

_VGG_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGGCifar(nn.Module):
    """VGG with batch norm for 32x32 inputs (CRD ``vgg.py``): five conv stages, four max-pools, linear."""

    def __init__(self, cfg: list[list[int]], num_classes: int, in_channels: int) -> None:
        super().__init__()
        stages, cin = [], in_channels
        for widths in cfg:
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            stages.append(nn.Sequential(*layers))
        self.block0, self.block1, self.block2, self.block3, self.block4 = stages
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)``; 32x32 -> 2x2 (28x28 -> 1x1) before the global pooling."""
        x = self.pool(self.block0(x))  # (N, 64, H/2, W/2)
        x = self.pool(self.block1(x))  # (N, 128, H/4, W/4)
        x = self.pool(self.block2(x))  # (N, 256, H/8, W/8)
        x = self.pool(self.block3(x))  # (N, 512, H/16, W/16)
        x = self.block4(x)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 512)
        return self.classifier(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Block output, with identity shortcut when stride 1 and equal widths."""
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for CIFAR as CRD ``mobilenetv2.py`` (expansion 6, width multiplier 0.5)."""

    def __init__(self, num_classes: int, in_channels: int, expand: int = 6, width: float = 0.5) -> None:
        super().__init__()
        setting = [
            [1, 16, 1, 1],
            [expand, 24, 2, 1],
            [expand, 32, 3, 2],
            [expand, 64, 4, 2],
            [expand, 96, 3, 1],
            [expand, 160, 3, 2],
            [expand, 320, 1, 1],
        ]
        cin = int(32 * width)
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        )
        blocks: list[nn.Module] = []
        for t, c, n, s in setting:
            cout = int(c * width)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        last = 1280
        self.conv2 = nn.Sequential(
            nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU(inplace=True)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)``; spatial size shrinks by 16 before the global pooling."""
        x = self.conv2(self.blocks(self.conv1(x)))  # (N, 1280, H/16, W/16)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 1280)
        return self.classifier(x)


def _vgg_builder(cfg: list[list[int]]) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return VGGCifar(cfg, num_classes, in_channels)

    return build


for _name, _cfg in _VGG_CFG.items():
    register_model(_name, "cifar")(_vgg_builder(_cfg))


@register_model("mobilenetv2", "cifar")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """MobileNetV2 (CRD ``mobile_half``)."""
    return MobileNetV2Cifar(num_classes, in_channels)
