"""CIFAR ShuffleNetV1 (groups 3) and ShuffleNetV2 (net size 1), as in CRD's ShuffleNetv1/v2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model
from .resnet_cifar import _init_weights


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channel groups: ``(N, g*c, H, W) -> (N, c, g, H, W) -> (N, g*c, H, W)`` (ShuffleNet)."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4)  # (N, c/g, g, H, W)
    return x.reshape(n, c, h, w)


class ShuffleV1Block(nn.Module):
    """ShuffleNetV1 bottleneck; stride 2 concatenates an average-pooled shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cout // 4
        g = 1 if cin == 24 else groups
        self.groups, self.stride = g, stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1, then add or concatenate the shortcut."""
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(out)


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 for CIFAR: widths 240/480/960, blocks 4/8/4, groups 3."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin, stages = 24, []
        for cout, blocks in zip((240, 480, 960), (4, 8, 4)):
            layers = []
            for i in range(blocks):
                cat = cin if i == 0 else 0
                layers.append(ShuffleV1Block(cin, cout - cat, 2 if i == 0 else 1, 3))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(960, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)``."""
        x = F.relu(self.bn1(self.conv1(x)))  # (N, 24, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 960, H/8, W/8)
        return self.linear(torch.flatten(self.avgpool(x), 1))  # (N, 960) -> (N, K)


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 basic unit: split channels in half, transform one half, concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.half = channels // 2
        c = channels - self.half
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        """Identity on the first half, 1x1-dw3x3-1x1 on the second, then channel shuffle."""
        x1, x2 = x[:, : self.half], x[:, self.half :]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """ShuffleNetV2 down-sampling unit (stride 2 on both branches)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        """Two strided branches concatenated, then channel shuffle."""
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for CIFAR (net size 1): widths 116/232/464, blocks 3/7/3, head 1024."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin, stages = 24, []
        for cout, blocks in zip((116, 232, 464), (3, 7, 3)):
            stages.append(
                nn.Sequential(ShuffleV2Down(cin, cout), *[ShuffleV2Block(cout) for _ in range(blocks)])
            )
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(464, 1024, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1024)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(1024, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))  # (N, 1024, H/8, W/8)
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("shufflenetv1", "cifar")
def shufflenetv1(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ShuffleNetV1 (CRD ``ShuffleV1``)."""
    return ShuffleNetV1(num_classes, in_channels)


@register_model("shufflenetv2", "cifar")
def shufflenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ShuffleNetV2 (CRD ``ShuffleV2``)."""
    return ShuffleNetV2(num_classes, in_channels)
