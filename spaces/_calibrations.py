"""The calibration table: per-sample weights from DETACHED logits (and labels), normalised to batch mean 1.

Each entry is ``fn(logits_s, logits_t, labels) -> (N,)`` raw non-negative weights on the RAW logits (not
divided by tau); :func:`calibrate` detaches the inputs and returns ``(w + 1e-8) / (mean(w) + 1e-8)``, whose
batch mean is exactly 1 (so the calibration reweights samples without changing the loss scale; a batch of
equal weights gives all ones). When ``labels`` is ``None``, ``focal`` uses the teacher's argmax as the label.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._registry import Registry

WEIGHT_EPS = 1e-8
"""Offset of the batch-mean normalisation."""
FOCAL_EPS = 1e-7
"""Offset of WSLD's CE ratio (as the authors' code)."""


def no(logits_s: Tensor, logits_t: Tensor, labels: Tensor | None) -> Tensor:
    """``no``: w = 1."""
    return torch.ones(logits_s.shape[0], dtype=logits_s.dtype, device=logits_s.device)


def entropy(logits_s: Tensor, logits_t: Tensor, labels: Tensor | None) -> Tensor:
    """``entropy``: w = H(p_t) = -sum_k p_t log p_t (more weight where the teacher is uncertain)."""
    lt = torch.log_softmax(logits_t, dim=1)
    return -(lt.exp() * lt).sum(dim=1)


def focal(logits_s: Tensor, logits_t: Tensor, labels: Tensor | None) -> Tensor:
    """``focal``: WSLD's weight w = 1 - exp(-CE_s / (CE_t + 1e-7)), CE to the labels (Zhou et al. 2021)."""
    if labels is None:
        labels = logits_t.argmax(dim=1)
    ce_s = F.cross_entropy(logits_s, labels, reduction="none")
    ce_t = F.cross_entropy(logits_t, labels, reduction="none")
    return 1.0 - torch.exp(-(ce_s / (ce_t + FOCAL_EPS)).clamp(min=0.0))


def sim(logits_s: Tensor, logits_t: Tensor, labels: Tensor | None) -> Tensor:
    """``sim``: w = 1 - cos(p_s, p_t), more weight where student and teacher predictions disagree."""
    p_s, p_t = torch.softmax(logits_s, dim=1), torch.softmax(logits_t, dim=1)
    return 1.0 - F.cosine_similarity(p_s, p_t, dim=1).clamp(-1.0, 1.0)


def conf(logits_s: Tensor, logits_t: Tensor, labels: Tensor | None) -> Tensor:
    """``conf``: w = max_k p_t, more weight where the teacher is confident."""
    return torch.softmax(logits_t, dim=1).amax(dim=1)


CalibrationFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def _table() -> Registry[CalibrationFn]:
    reg: Registry[CalibrationFn] = Registry("calibration")
    for fn in (no, entropy, focal, sim, conf):
        reg.register(fn.__name__, fn)
    return reg


CALIBRATIONS: Registry[CalibrationFn] = _table()
"""All calibrations by name (sorted iteration)."""


def calibrate(name: str, logits_s: Tensor, logits_t: Tensor, labels: Tensor | None = None) -> Tensor:
    """Per-sample weights of calibration ``name``, from detached logits, normalised to batch mean 1.

    Args:
        name: Calibration name (a key of ``CALIBRATIONS``).
        logits_s: Student logits (N, K).
        logits_t: Teacher logits (N, K).
        labels: Integer labels (N,), or ``None``.

    Returns:
        Weights (N,), detached, batch mean 1.
    """
    fn = CALIBRATIONS.get_or_raise(name, "calibration")
    if logits_s.dim() != 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            f"calibration {name!r} needs student and teacher logits of one shape (N, K), "
            f"got {tuple(logits_s.shape)} and {tuple(logits_t.shape)}"
        )
    with torch.no_grad():
        w = fn(logits_s.detach().float(), logits_t.detach().float(), labels)
        return ((w + WEIGHT_EPS) / (w.mean() + WEIGHT_EPS)).to(logits_s.dtype)
