"""CIFAR ResNets and Wide ResNets as used by CRD / mdistiller (resnet8 ... resnet110, x4, wrn).

The forward returns logits only; intermediate knowledge is read by ``trainers.KnowledgeExtractor``.
Global pooling is adaptive, so the models run at 32x32 (CIFAR) and 28x28 (Fashion-MNIST).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-bn-relu-conv-bn + shortcut, relu."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        """Residual update ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetCifar(nn.Module):
    """ResNet of depth ``6n + 2`` with three stages (CRD ``resnet.py``), widths ``filters``."""

    def __init__(
        self, depth: int, filters: tuple[int, int, int, int], num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"ResNetCifar depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(filters[0], filters[1], n, 1)
        self.layer2 = self._stage(filters[1], filters[2], n, 2)
        self.layer3 = self._stage(filters[2], filters[3], n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(filters[3], num_classes)
        _init_weights(self)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)`` of images ``(N, C, H, W)``."""
        x = self.relu(self.bn1(self.conv1(x)))  # (N, F0, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, F3, H/4, W/4)
        x = torch.flatten(self.avgpool(x), 1)  # (N, F3)
        return self.fc(x)


class WideBlock(nn.Module):
    """Pre-activation wide residual block (Zagoruyko & Komodakis)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.shortcut: nn.Module | None = None
        if cin != cout or stride != 1:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Residual update with pre-activation."""
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-k for CIFAR (CRD ``wrn.py``), depth ``6n + 4``."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = _conv3x3(in_channels, ch[0])
        blocks = []
        for i, stride in enumerate((1, 2, 2)):
            stage = [WideBlock(ch[i], ch[i + 1], stride)] + [
                WideBlock(ch[i + 1], ch[i + 1], 1) for _ in range(n - 1)
            ]
            blocks.append(nn.Sequential(*stage))
        self.block1, self.block2, self.block3 = blocks
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch[3], num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)`` of images ``(N, C, H, W)``."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))  # (N, 64k, H/4, W/4)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 64k)
        return self.fc(x)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


_RESNETS = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}
_WRNS = {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}


def _resnet_builder(depth: int, filters: tuple[int, int, int, int]) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return ResNetCifar(depth, filters, num_classes, in_channels)

    return build


def _wrn_builder(depth: int, widen: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return WideResNet(depth, widen, num_classes, in_channels)

    return build


for _name, (_depth, _filters) in _RESNETS.items():
    register_model(_name, "cifar")(_resnet_builder(_depth, _filters))
for _name, (_depth, _widen) in _WRNS.items():
    register_model(_name, "cifar")(_wrn_builder(_depth, _widen))
