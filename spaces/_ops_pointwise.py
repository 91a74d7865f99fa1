"""Transforms that keep the tensor's shape: normalisations, (log-)softmax, activations and powers.

Knowledge reaches a transform as ``(N, D)`` (logits, embeddings, or a map flattened by ``batch`` / ``mm``) or
as ``(N, C, H, W)`` (feature maps). Ops with ``_hw`` in their name are spatial: on 2-D tensors they are the
identity (the table in ``_transforms.py`` marks them ``needs_map``), so every gene is valid for every
knowledge kind.

Every op is finite for every finite input: ``log`` and ``sqrt`` are sign-preserving, ``exp`` is clamped, and
the normalisations divide by ``max(norm, eps)`` (``F.normalize``) or ``sqrt(var + eps)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NORM_EPS = 1e-6
"""Lower bound on the L2 norm in ``norm_*`` (``x / max(||x||, eps)``)."""
BN_EPS = 1e-5
"""Variance offset of ``batchnorm`` (as ``nn.BatchNorm``)."""
MIN_MAX_EPS = 1e-8
"""Range offset of ``min_max``."""
EXP_MAX = 20.0
"""``exp`` clamps its input to ``<= EXP_MAX`` so that ``exp(1e4)`` stays finite (exp(20) ~ 4.9e8)."""
SQRT_EPS = 1e-6
"""Offset inside ``sqrt``: ``sign(x) * (sqrt(|x| + eps) - sqrt(eps))`` has slope <= 1/(2 sqrt(eps)) = 500."""
LEAKY_SLOPE = 0.01
"""Negative slope of ``leaky_relu`` (PyTorch default)."""


SMALL_AXIS = 32
"""Below this axis size (log-)softmax uses a max-shifted formula over the axis moved first: ~3x faster on CPU
than the row-by-row kernel when there are many short rows (e.g. after ``local_r2``); same values."""


def _spatial_flat(x: Tensor) -> Tensor:
    return x.flatten(2)  # (N, C, H*W)


def stable_softmax(x: Tensor, dim: int, log: bool = False) -> Tensor:
    """Softmax (or log-softmax) over ``dim``: exp(x - m) / sum exp(x - m), m = max over ``dim``; stable."""
    if x.shape[dim] >= SMALL_AXIS:
        return torch.log_softmax(x, dim=dim) if log else torch.softmax(x, dim=dim)
    xt = x.movedim(dim, 0).contiguous()  # reductions over a short LEADING axis vectorise well
    z = xt - xt.amax(dim=0, keepdim=True).detach()  # the result does not depend on the shift
    e = torch.exp(z)
    out = z - torch.log(e.sum(dim=0, keepdim=True)) if log else e / e.sum(dim=0, keepdim=True)
    return out.movedim(0, dim)


def l2_normalize(x: Tensor, dim: int) -> Tensor:
    """X / max(||x||_2, 1e-6) over ``dim`` (as ``F.normalize``, in fewer passes)."""
    sq = (x * x).sum(dim=dim, keepdim=True)
    return x * torch.rsqrt(sq.clamp(min=NORM_EPS**2))


def identity(x: Tensor) -> Tensor:
    """``no``: y = x."""
    return x


def batchnorm(x: Tensor) -> Tensor:
    """``batchnorm``: parameter-free batch normalisation, y = (x - mean) / sqrt(var + 1e-5).

    Statistics per channel over (N, H, W) for maps and per feature over N for vectors, biased variance, always
    batch statistics (Ioffe & Szegedy 2015 without the affine part). A batch of one gives zeros.
    """
    if x.numel() // x.shape[1] > 1:  # the fused kernel refuses a single value per channel
        return F.batch_norm(x, None, None, training=True, eps=BN_EPS)
    return (x - x.mean(dim=0, keepdim=True)) / BN_EPS**0.5  # one value per channel: var = 0


def min_max(x: Tensor) -> Tensor:
    """``min_max``: per-sample y = (x - min) / (max - min + 1e-8), min/max over all of a sample."""
    flat = x.flatten(1)  # (N, M)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo + MIN_MAX_EPS)).reshape(x.shape)


def norm_hw(x: Tensor) -> Tensor:
    """``norm_hw``: L2 normalisation over the H*W positions of each (sample, channel); identity on 2-D."""
    if x.dim() == 2:
        return x
    return l2_normalize(_spatial_flat(x), 2).reshape(x.shape)


def norm_c(x: Tensor) -> Tensor:
    """``norm_c``: L2 normalisation over channels (dim 1): per position for maps, per sample for vectors."""
    return l2_normalize(x, 1)


def norm_n(x: Tensor) -> Tensor:
    """``norm_n``: L2 normalisation over the batch (dim 0), per element position."""
    return l2_normalize(x, 0)


def softmax_hw(x: Tensor) -> Tensor:
    """``softmax_hw``: softmax over the flattened H*W positions of each channel (CWD); identity on 2-D."""
    if x.dim() == 2:
        return x
    return stable_softmax(_spatial_flat(x), 2).reshape(x.shape)


def softmax_c(x: Tensor) -> Tensor:
    """``softmax_c``: softmax over channels / classes (dim 1), as in Hinton's KD."""
    return stable_softmax(x, 1)


def softmax_n(x: Tensor) -> Tensor:
    """``softmax_n``: softmax over the batch (dim 0)."""
    return stable_softmax(x, 0)


def logsoftmax_hw(x: Tensor) -> Tensor:
    """``logsoftmax_hw``: log-softmax over the flattened H*W positions of each channel; identity on 2-D."""
    if x.dim() == 2:
        return x
    return stable_softmax(_spatial_flat(x), 2, log=True).reshape(x.shape)


def logsoftmax_c(x: Tensor) -> Tensor:
    """``logsoftmax_c``: log-softmax over channels / classes (dim 1)."""
    return stable_softmax(x, 1, log=True)


def logsoftmax_n(x: Tensor) -> Tensor:
    """``logsoftmax_n``: log-softmax over the batch (dim 0)."""
    return stable_softmax(x, 0, log=True)


def exp(x: Tensor) -> Tensor:
    """``exp``: clamped exponential, y = e^min(x, 20); finite on +1e4 (gradient 0 above 20)."""
    return torch.exp(x.clamp(max=EXP_MAX))


def mish(x: Tensor) -> Tensor:
    """``mish``: y = x * tanh(softplus(x)) (Misra 2019)."""
    return F.mish(x)


def leaky_relu(x: Tensor) -> Tensor:
    """``leaky_relu``: y = max(x, 0.01 x)."""
    return F.leaky_relu(x, LEAKY_SLOPE)


def relu(x: Tensor) -> Tensor:
    """``relu``: y = max(x, 0)."""
    return torch.relu(x)


def tanh(x: Tensor) -> Tensor:
    """``tanh``: hyperbolic tangent."""
    return torch.tanh(x)


def sigmoid(x: Tensor) -> Tensor:
    """``sigmoid``: y = 1 / (1 + exp(-x))."""
    return torch.sigmoid(x)


def pow2(x: Tensor) -> Tensor:
    """``pow2``: y = x * x (as in attention transfer's |f|^2)."""
    return x * x


def pow4(x: Tensor) -> Tensor:
    """``pow4``: y = x * x * x * x."""
    sq = x * x
    return sq * sq


def log(x: Tensor) -> Tensor:
    """``log``: sign-preserving logarithm, finite everywhere, odd, slope 1 at 0.

    y = sign(x) * log(1 + |x|).
    """
    return torch.sign(x) * torch.log1p(x.abs())


def sqrt(x: Tensor) -> Tensor:
    """``sqrt``: sign-preserving square root with a finite slope (500) at 0.

    y = sign(x) * (sqrt(|x| + 1e-6) - sqrt(1e-6)).
    """
    return torch.sign(x) * (torch.sqrt(x.abs() + SQRT_EPS) - SQRT_EPS**0.5)
