"""Small models for 28x28 inputs: ``cnn_tiny`` (the default student), ``mlp`` and ``vit_tiny``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import register_model


class CNNTiny(nn.Module):
    """About 8.7k parameters, no BatchNorm: three conv-relu stages, two max-pools, global pool, linear."""

    def __init__(
        self, num_classes: int, in_channels: int, widths: tuple[int, int, int] = (8, 16, 48)
    ) -> None:
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, a, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(a, b, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(b, c, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)``: (N, C, 28, 28) -> (N, 48, 7, 7) -> (N, 48) -> (N, K)."""
        x = self.features(x)  # (N, 48, H/4, W/4)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class MLP(nn.Module):
    """Flatten, two ReLU hidden layers, linear head; the input size is fixed by ``image_size``."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int = 28, hidden: tuple[int, ...] = (256, 128)
    ):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(d, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)`` of ``(N, C, S, S)`` images."""
        return self.fc(self.body(torch.flatten(x, 1)))  # (N, C*S*S) -> (N, 128) -> (N, K)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``(N, T, D)`` -> ``(N, T, D)``."""
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViTTiny(nn.Module):
    """Tiny vision transformer without class token: patch tokens, learned positions, mean pooling.

    The last block's tokens are laid back on their patch grid, so the ``feature`` knowledge is a
    ``(dim, S/patch, S/patch)`` map like a CNN's, and the ``embedding`` is its spatial mean.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int = 28,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"vit_tiny: image_size {image_size} must be a multiple of patch {patch}")
        self.grid = image_size // patch
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)`` of ``(N, C, S, S)`` images."""
        x = self.patch_embed(x)  # (N, D, g, g)
        n, d = x.shape[0], x.shape[1]
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (N, g*g, D)
        x = self.norm(self.blocks(x))
        x = x.transpose(1, 2).reshape(n, d, self.grid, self.grid)  # (N, D, g, g)
        return self.head(torch.flatten(self.avgpool(x), 1))  # (N, D) -> (N, K)


@register_model("cnn_tiny", "small")
def cnn_tiny(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """The default student: ~8.7k parameters at 10 classes and 1 channel, no BatchNorm."""
    return CNNTiny(num_classes, in_channels)


@register_model("mlp", "small")
def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Two-hidden-layer MLP (256, 128) on ``image_size`` x ``image_size`` inputs."""
    return MLP(num_classes, in_channels, image_size)


@register_model("vit_tiny", "small")
def vit_tiny(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Patch-4, dim-64, depth-4, 4-head vision transformer on ``image_size`` x ``image_size`` inputs."""
    return ViTTiny(num_classes, in_channels, image_size)
