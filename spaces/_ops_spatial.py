"""Transforms that look at spatial structure, the batch, or draw random masks.

Shape rule (holds for every op here): knowledge is ``(N, C, H, W)`` ("a map") or ``(N, D)`` ("a vector").
Ops that need a map (pooling, patches, spatial attention, per-sample Gram, ``batch``/``channel`` reshapes,
``mask``) are the identity on vectors; no op raises the rank, and only ``batch`` and ``mm`` lower it (to ``(N,
M)``). Ops whose natural output is 3-D keep a 4-D layout with a single row, ``(N, C, 1, L)``, so every later
op stays defined. Random ops (``mask``, ``drop``) take the (student, teacher) pair and draw ONE mask shared by
both, from ``generator`` (``None``: the global torch RNG); they are only called in training mode.

Scale and patch ratios: the suffix ``_r{r}`` is the size of the output GRID, not of the pooling window, so
that ``r = 1`` is a distinct op rather than a copy of ``no`` (``scale_r1`` = global max pooling, ``local_r1``
= all positions moved into channels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ATT_TEMPERATURE = 0.5
"""Temperature of ``satt``/``catt``/``natt`` (FGD, Yang et al. CVPR 2022, uses T = 0.5)."""
MASK_RATIO = 0.5
"""Fraction of spatial positions that ``mask`` zeroes (MGD's lambda; a per-task hyper-parameter in MGD)."""
DROP_P = 0.1
"""Element drop probability of ``drop`` (kept elements are scaled by 1 / (1 - p), as dropout)."""
MULTI_SCALE_GRIDS = (1, 2, 4)
"""Output grids of the ``multi_scale`` spatial pyramid (1 + 4 + 16 = 21 positions)."""


def scale(x: Tensor) -> Tensor:
    """``scale``: 2x2 max pooling, stride 2, ceil mode: (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))."""
    if x.dim() == 2:
        return x
    k = (min(2, x.shape[2]), min(2, x.shape[3]))
    return F.max_pool2d(x, kernel_size=k, stride=k, ceil_mode=True)


def scale_r1(x: Tensor) -> Tensor:
    """``scale_r1``: adaptive max pooling to a 1x1 grid (global max pooling): (N, C, H, W) -> (N, C, 1, 1)."""
    return x if x.dim() == 2 else F.adaptive_max_pool2d(x, 1)


def scale_r2(x: Tensor) -> Tensor:
    """``scale_r2``: adaptive max pooling to a 2x2 grid: (N, C, H, W) -> (N, C, 2, 2)."""
    return x if x.dim() == 2 else F.adaptive_max_pool2d(x, 2)


def multi_scale(x: Tensor) -> Tensor:
    """``multi_scale``: spatial pyramid of adaptive max pools to 1x1, 2x2 and 4x4 grids, CONCATENATED.

    (N, C, H, W) -> (N, C, 1, 21): the 21 pooled cells are laid out as one row of positions (SPP, He et al.
    2014).
    """
    if x.dim() == 2:
        return x
    cells = [F.adaptive_max_pool2d(x, g).flatten(2) for g in MULTI_SCALE_GRIDS]  # (N, C, g*g) each
    return torch.cat(cells, dim=2).unsqueeze(2)  # (N, C, 1, 21)


def _local(x: Tensor, r: int) -> Tensor:
    """Split a map into an r x r grid of patches and move each patch's positions into channels.

    H and W are zero-padded (bottom/right) up to multiples of r; with patches of ph x pw positions,
    (N, C, H, W) -> (N, C*ph*pw, r, r), channel index c*ph*pw + i*pw + j (pixel-unshuffle with factor (ph,
    pw)).
    """
    if x.dim() == 2:
        return x
    n, c, h, w = x.shape
    ph, pw = math.ceil(h / r), math.ceil(w / r)
    x = F.pad(x, (0, pw * r - w, 0, ph * r - h))  # (N, C, r*ph, r*pw)
    x = x.view(n, c, r, ph, r, pw).permute(0, 1, 3, 5, 2, 4)  # (N, C, ph, pw, r, r)
    return x.reshape(n, c * ph * pw, r, r)


def local_r1(x: Tensor) -> Tensor:
    """``local_r1``: 1x1 grid, every position moved into channels: (N, C, H, W) -> (N, C*H*W, 1, 1)."""
    return _local(x, 1)


def local_r2(x: Tensor) -> Tensor:
    """``local_r2``: 2x2 grid of patches, positions into channels: -> (N, C*ceil(H/2)*ceil(W/2), 2, 2)."""
    return _local(x, 2)


def local_r4(x: Tensor) -> Tensor:
    """``local_r4``: 4x4 grid of patches, positions into channels: -> (N, C*ceil(H/4)*ceil(W/4), 4, 4)."""
    return _local(x, 4)


def batch(x: Tensor) -> Tensor:
    """``batch``: reshape each sample to one vector, (N, C, H, W) -> (N, C*H*W); identity on vectors."""
    return x.flatten(1)


def channel(x: Tensor) -> Tensor:
    """``channel``: reshape to (N, C, H*W), kept 4-D as a one-row map (N, C, 1, H*W); identity on vectors."""
    return x if x.dim() == 2 else x.flatten(2).unsqueeze(2)


def _sqrt_attention(g: Tensor, dim: int) -> Tensor:
    """sqrt(A), A = L * softmax(g / T) over ``dim`` of size L, computed as exp((log_softmax + log L) / 2).

    The log-domain form keeps both the value and the gradient finite when some A underflows to 0.
    """
    size = g.shape[dim]
    return torch.exp(0.5 * (torch.log_softmax(g / ATT_TEMPERATURE, dim=dim) + math.log(size)))


def satt(x: Tensor) -> Tensor:
    """``satt``: spatial attention y = f * sqrt(A_s), A_s = H*W * softmax_hw(mean_c |f| / 0.5) (FGD).

    Identity on 2-D.

    Each tensor uses its own attention (student: student's, teacher: teacher's).
    """
    if x.dim() == 2:
        return x
    n, _, h, w = x.shape
    g = x.abs().mean(dim=1).reshape(n, h * w)  # (N, H*W)
    return x * _sqrt_attention(g, dim=1).view(n, 1, h, w)


def catt(x: Tensor) -> Tensor:
    """``catt``: channel attention y = f * sqrt(A_c), A_c = C * softmax_c(mean_hw |f| / 0.5) (FGD).

    On vectors the "channels" are the D features and mean_hw |f| is |f|.
    """
    g = x.abs() if x.dim() == 2 else x.abs().mean(dim=(2, 3))  # (N, C)
    a = _sqrt_attention(g, dim=1)
    return x * (a if x.dim() == 2 else a[:, :, None, None])


def natt(x: Tensor) -> Tensor:
    """``natt``: batch attention y = f * sqrt(A_n), A_n = N * softmax_n(mean |f| / 0.5) over a sample."""
    g = x.abs().flatten(1).mean(dim=1)  # (N,)
    a = _sqrt_attention(g, dim=0)
    return x * a.view(-1, *([1] * (x.dim() - 1)))


def bmm(x: Tensor) -> Tensor:
    """``bmm``: per-sample Gram matrix G = F F^T / (H*W), F = f as (C, H*W): -> (N, C, 1, C); 2-D: no-op."""
    if x.dim() == 2:
        return x
    f = x.flatten(2)  # (N, C, L)
    gram = torch.bmm(f, f.transpose(1, 2)) / f.shape[2]  # (N, C, C)
    return gram.unsqueeze(2)  # (N, C, 1, C)


def mm(x: Tensor) -> Tensor:
    """``mm``: batch Gram matrix G = X X^T / M, X = f as (N, M) (sample similarities, as SP): -> (N, N)."""
    flat = x.flatten(1)  # (N, M)
    return flat @ flat.t() / flat.shape[1]  # (N, N)


def mask(x_s: Tensor, x_t: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``mask``: zero a random MASK_RATIO of each sample's positions, one mask for student and teacher.

    As MGD's random spatial mask M (N, 1, H, W), M = 1[u >= lambda], u ~ U(0, 1), shared over channels, no
    rescale. MGD masks only the student and regenerates the teacher with a generator block; here both sides
    are masked so the distance compares the same positions. Identity on vectors.
    """
    if x_s.dim() == 2:
        return x_s, x_t
    n, _, h, w = x_t.shape
    u = torch.rand((n, 1, h, w), generator=generator, device=x_t.device, dtype=x_t.dtype)
    keep = (u >= MASK_RATIO).to(x_t.dtype)  # (N, 1, H, W)
    return x_s * keep, x_t * keep


def drop(x_s: Tensor, x_t: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``drop``: dropout, p = 0.1, ONE element mask shared by student and teacher: y = x * m / (1 - p)."""
    u = torch.rand(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
    keep = (u >= DROP_P).to(x_t.dtype) / (1.0 - DROP_P)
    return x_s * keep, x_t * keep
