"""A teacher and a student that are not in kdzero's zoo: the kind of model file a user brings.

The builders have the zoo's signature, ``builder(num_classes, in_channels, **kwargs) -> nn.Module``, so kdzero
can build them from the import path ``my_models:teacher`` / ``my_models:student``. The teacher's forward takes
an extra argument, as in the CIFAR model zoo most KD code uses (``forward(x, is_feat=False)``); kdzero traces
it with the argument held at its default.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, Cin, H, W) -> (N, Cout, H / stride, W / stride)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class Teacher(nn.Module):
    """A small residual network; ``forward(x, is_feat=True)`` also returns its features."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor, is_feat: bool = False):  # noqa: ANN201 - tensor or (features, logits)
        """Logits (N, K); with ``is_feat`` also the feature maps and the embedding."""
        f0 = torch.relu(self.stem(x))
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        emb = torch.flatten(self.pool(f2), 1)
        out = self.fc(emb)
        return ([f0, f1, f2, emb], out) if is_feat else out


class Student(nn.Module):
    """A plain two-layer CNN."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K)."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def teacher(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Module:
    """The teacher builder kdzero calls (``teacher = "my_models:teacher"``)."""
    return Teacher(num_classes, in_channels, width)


def student(num_classes: int = 10, in_channels: int = 1, width: int = 8) -> nn.Module:
    """The student builder kdzero calls (``student = "my_models:student"``)."""
    return Student(num_classes, in_channels, width)
