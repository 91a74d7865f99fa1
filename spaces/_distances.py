"""The distance table: ``fn(x_s, x_t, layout) -> (N,)`` per-sample losses between transformed knowledge.

Inputs are whatever the transform chain outputs, student and teacher of one shape, (N, D) or (N, C, H, W).
Element-wise distances average over a sample's elements. ``kl`` and ``hard`` need distributions: the builder
reads the chain and passes a :class:`Layout` saying what the inputs are and along which axis they are
distributions:

* chain ends (last op that does something) with ``softmax_X``: the builder SKIPS that softmax and passes the
  pre-softmax tensors with ``mode="logits", axis=X``; the distance applies ``log_softmax`` itself. The result
  is the same function, computed in the stable log-domain (finite values and gradients for logits of +-1e4);
* chain ends with ``logsoftmax_X``: ``mode="logprobs", axis=X``, inputs used as log-probabilities;
* anything else: ``mode="logits", axis="c"`` -- the inputs are treated as logits over dim 1.
(``mode="probs"`` -- probabilities, logs taken after clamping to 1e-12 -- is supported for direct callers.)

Per-sample reduction of ``kl`` / ``hard``: the divergence of each distribution is summed over its axis and
averaged over the sample's other positions (axis ``c`` of a map: mean over H*W; axis ``hw``: mean over
channels, as CWD). For batch-axis distributions (``n``) sample n gets N times its mean summand, so the batch
mean is the mean divergence over the distributions. So ``kd`` = softmax_c + kl + tau gives Hinton's tau^2 *
KL(p_t || p_s), batch mean, and ``cwd`` = softmax_hw + kl gives CWD's tau^2 / (N C) * sum KL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ops_pointwise import stable_softmax
from ._registry import Registry

PROB_EPS = 1e-12
"""Clamp of probabilities before the log in ``mode="probs"``."""
COS_EPS = 1e-8
"""Lower bound on the norms in ``cosine`` / ``pearson``."""
STD_EPS = 1e-5
"""Variance offset of the batch standardisation in ``correlation``."""
MODES = ("logits", "logprobs", "probs")
AXES = ("c", "hw", "n")


@dataclass(frozen=True)
class Layout:
    """How ``kl`` / ``hard`` read inputs: ``mode`` (logits | logprobs | probs) along ``axis`` (c | hw | n)."""

    mode: str = "logits"
    axis: str = "c"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"layout.mode: unknown mode {self.mode!r}; valid choices are {list(MODES)}")
        if self.axis not in AXES:
            raise ValueError(f"layout.axis: unknown axis {self.axis!r}; valid choices are {list(AXES)}")


def _axis_last(x: Tensor, axis: str) -> Tensor:
    """Move the distribution axis last: c -> (N, ..., C); hw -> (N, C, H*W); n -> (..., N)."""
    if axis == "hw":
        if x.dim() != 4:
            raise ValueError(f"axis 'hw' needs a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        return x.flatten(2)
    return x.movedim(1 if axis == "c" else 0, -1)


def _log_probs(x: Tensor, layout: Layout) -> Tensor:
    """Log-probabilities along the layout axis, with that axis moved last."""
    x = _axis_last(x, layout.axis)
    if layout.mode == "logits":
        return stable_softmax(x, -1, log=True)
    if layout.mode == "probs":
        return torch.log(x.clamp(min=PROB_EPS))
    return x


def _per_sample(term: Tensor, axis: str, n: int) -> Tensor:
    """Reduce an element-wise divergence (distribution axis last) to per-sample values (N,)."""
    if axis == "n":
        return n * term.movedim(-1, 0).reshape(n, -1).mean(dim=1)
    return term.sum(dim=-1).reshape(n, -1).mean(dim=1)


def kl(x_s: Tensor, x_t: Tensor, layout: Layout) -> Tensor:
    """``kl``: KL(p_t || p_s) = sum p_t (log p_t - log p_s) per distribution (Hinton 2015; CWD 2021)."""
    ls, lt = _log_probs(x_s, layout), _log_probs(x_t, layout)
    return _per_sample(torch.exp(lt) * (lt - ls), layout.axis, x_s.shape[0])


def hard(x_s: Tensor, x_t: Tensor, layout: Layout) -> Tensor:
    """``hard``: cross-entropy -log p_s[argmax p_t] to the teacher's hard label (logits knowledge only)."""
    ls, lt = _log_probs(x_s, layout), _log_probs(x_t, layout)
    one_hot = torch.zeros_like(lt).scatter_(-1, lt.argmax(dim=-1, keepdim=True), 1.0)
    return _per_sample(-one_hot * ls, layout.axis, x_s.shape[0])


def smooth_l1(x_s: Tensor, x_t: Tensor, layout: Layout) -> Tensor:
    """``smooth_l1``: mean of 0.5 d^2 if |d| < 1 else |d| - 0.5, d = x_s - x_t (Huber, beta 1)."""
    return F.smooth_l1_loss(x_s, x_t, reduction="none", beta=1.0).flatten(1).mean(dim=1)


def l1(x_s: Tensor, x_t: Tensor, layout: Layout) -> Tensor:
    """``l1``: mean |x_s - x_t| over a sample's elements."""
    return (x_s - x_t).abs().flatten(1).mean(dim=1)


def l2(x_s: Tensor, x_t: Tensor, layout: Layout) -> Tensor:
    """``l2``: mean (x_s - x_t)^2 over a sample's elements (per-sample MSE, as FitNets / AT)."""
    d = x_s - x_t
    return (d * d).flatten(1).mean(dim=1)


def _cos(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Cosine along ``dim`` of 2-D tensors: sum(a b) / (max(||a||, 1e-8) max(||b||, 1e-8))."""
    na = (a * a).sum(dim=dim).clamp(min=COS_EPS**2)
    nb = (b * b).sum(dim=dim).clamp(min=COS_EPS**2)
    return (a * b).sum(dim=dim) * torch.rsqrt(na) * torch.rsqrt(nb)


def cosine(x_s: Tensor, x_t: Tensor, layout: Layout) -> Tensor:
    """``cosine``: 1 - cos(x_s, x_t) per sample, over the flattened sample (a distance in [0, 2])."""
    return 1.0 - _cos(x_s.flatten(1), x_t.flatten(1), 1)


def pearson(x_s: Tensor, x_t: Tensor, layout: Layout) -> Tensor:
    """``pearson``: DIST's relation loss with beta = gamma = 1 (Huang et al., NeurIPS 2022).

    inter_n = 1 - rho(x_s[n, :], x_t[n, :]) (Pearson over a sample's elements); intra = mean_m (1 - rho(x_s[:,
    m], x_t[:, m])) (Pearson over the batch, per element). Sample n gets inter_n + intra, so the batch mean is
    DIST's inter + intra loss.
    """
    a, b = x_s.flatten(1), x_t.flatten(1)  # (N, M)
    inter = 1.0 - _cos(a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True), 1)  # (N,)
    intra = 1.0 - _cos(a - a.mean(dim=0, keepdim=True), b - b.mean(dim=0, keepdim=True), 0)  # (M,)
    return inter + intra.mean()


def correlation(x_s: Tensor, x_t: Tensor, layout: Layout) -> Tensor:
    """``correlation``: batch-standardised correlation loss, 1 - mean_m z_s[n, m] z_t[n, m].

    z = (x - mean_N) / sqrt(var_N + 1e-5) per element position over the batch (biased variance), so the batch
    mean is 1 - (mean over positions of the Pearson correlation across the batch).
    """
    a, b = x_s.flatten(1), x_t.flatten(1)  # (N, M)

    def standardise(x: Tensor) -> Tensor:
        var, mu = torch.var_mean(x, dim=0, keepdim=True, correction=0)
        return (x - mu) * torch.rsqrt(var + STD_EPS)

    return 1.0 - (standardise(a) * standardise(b)).mean(dim=1)


DistanceFn = Callable[[Tensor, Tensor, Layout], Tensor]


def _table() -> Registry[DistanceFn]:
    reg: Registry[DistanceFn] = Registry("distance")
    for fn in (smooth_l1, l1, l2, kl, hard, cosine, pearson, correlation):
        reg.register(fn.__name__, fn)
    return reg


DISTANCES: Registry[DistanceFn] = _table()
"""All distances by name (sorted iteration)."""
LOGITS_ONLY_DISTANCES = ("hard",)
"""Distances valid on ``logits`` knowledge only."""
DISTRIBUTION_DISTANCES = ("hard", "kl")
"""Distances that read a :class:`Layout`."""
