"""Tiny models, data and distiller stand-ins shared by the trainers tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset


def tiny_data(n: int = 256, seed: int = 0, classes: int = 4) -> TensorDataset:
    """Separable 1x8x8 images: the class decides which quadrant is bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    for c in range(classes):
        r, q = divmod(c, 2)
        x[y == c, :, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 1.0
    return TensorDataset(x, y, torch.arange(n))


class TinyNet(nn.Module):
    """Conv -> pool -> linear: feature (C, 4, 4), embedding (C,), logits (K,)."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(width * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


class LocalKD(nn.Module):
    """Stand-in distiller: tau^2 * KL(softmax(z_t/tau) || softmax(z_s/tau)), scaled by ``weight``."""

    def __init__(self, tau: float = 4.0, weight: float = 1.0) -> None:
        super().__init__()
        self.tau, self.weight = tau, weight

    def forward(self, f_s, f_t, *, logits_s=None, logits_t=None, labels=None):
        t = self.tau
        kd = (
            F.kl_div(F.log_softmax(f_s / t, 1), F.softmax(f_t / t, 1), reduction="batchmean")
            * t
            * t
            * self.weight
        )
        return kd, {"kd": kd}


class NaNDistiller(nn.Module):
    def forward(self, f_s, f_t, **_):
        loss = (f_s * 0.0).sum() + torch.log(torch.tensor(-1.0))
        return loss, {"kd": loss}


class ConstDistiller(nn.Module):
    """A loss that does not depend on the student: collapse."""

    def forward(self, f_s, f_t, **_):
        loss = (f_s * 0.0).sum() + (f_t**2).mean()
        return loss, {"kd": loss}
