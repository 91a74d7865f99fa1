"""Fitness metrics on the validation split (paper Sec. 3.3): CE, accuracy, sharpness gap, linear CKA.

Everything streams a split in batches with bounded memory; CKA keeps only O(D^2) running sums.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from trainers.data import iterate_batches
from trainers.knowledge import KnowledgeExtractor
from trainers.runtime import autocast


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy ``-log softmax(z)_y`` of logits ``(N, K)`` and integer labels ``(N,)``."""
    return float(F.cross_entropy(logits.float(), labels.long()))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose arg-max logit equals the label."""
    return float((logits.argmax(1) == labels).float().mean())


def sharpness_gap(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Mean over samples of ``|logsumexp(z_t) - logsumexp(z_s)|`` (KD-Zero's sharpness gap)."""
    s = torch.logsumexp(student_logits.double(), dim=1)  # (N,)
    t = torch.logsumexp(teacher_logits.double(), dim=1)  # (N,)
    return float((t - s).abs().mean())


class StreamingCKA:
    """Linear CKA (Kornblith et al. 2019) accumulated over batches in float64 with O(D^2) memory.

    Keeps ``n``, ``sum x``, ``sum y``, ``X^T X``, ``Y^T Y`` and ``Y^T X``; centring is applied at the end:
    ``Xc^T Xc = X^T X - n mu_x mu_x^T`` and ``Yc^T Xc = Y^T X - n mu_y mu_x^T``.
    """

    def __init__(self) -> None:
        self.n = 0
        self.sx: torch.Tensor | None = None
        self.sy: torch.Tensor | None = None
        self.xx: torch.Tensor | None = None
        self.yy: torch.Tensor | None = None
        self.yx: torch.Tensor | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch: ``x`` ``(N, Dx)`` and ``y`` ``(N, Dy)`` (extra dims are flattened)."""
        x = x.detach().reshape(len(x), -1).double().cpu()  # (N, Dx)
        y = y.detach().reshape(len(y), -1).double().cpu()  # (N, Dy)
        if len(x) != len(y):
            raise ValueError(f"linear CKA needs the same number of rows, got {len(x)} and {len(y)}")
        if self.sx is None:
            self.sx, self.sy = x.sum(0), y.sum(0)
            self.xx, self.yy, self.yx = x.T @ x, y.T @ y, y.T @ x
        else:
            self.sx += x.sum(0)
            self.sy += y.sum(0)
            self.xx += x.T @ x  # (Dx, Dx)
            self.yy += y.T @ y  # (Dy, Dy)
            self.yx += y.T @ x  # (Dy, Dx)
        self.n += len(x)

    def compute(self) -> float:
        """The CKA of everything seen; 0 when either side has zero variance."""
        if self.n == 0 or self.sx is None:
            raise ValueError("linear CKA of zero samples")
        mx, my = self.sx / self.n, self.sy / self.n
        xx = self.xx - self.n * torch.outer(mx, mx)
        yy = self.yy - self.n * torch.outer(my, my)
        yx = self.yx - self.n * torch.outer(my, mx)
        denom = torch.linalg.matrix_norm(xx) * torch.linalg.matrix_norm(yy)
        if float(denom) <= 0:
            return 0.0
        return float(torch.linalg.matrix_norm(yx) ** 2 / denom)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` of ``x`` (N, Dx), ``y`` (N, Dy).

    ``Xc``, ``Yc`` are the column-centred inputs.

    Widths may differ; computed in float64.
    """
    acc = StreamingCKA()
    acc.update(x, y)
    return acc.compute()


def _rows(source: Any, kind: str, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of teacher knowledge ``kind`` from a mapping of arrays/tensors."""
    arr = source[kind]
    if isinstance(arr, torch.Tensor):
        return arr[index.cpu()].float()
    idx = index.cpu().numpy()
    return torch.from_numpy(np.asarray(arr[idx], dtype=np.float32))


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    split: Dataset,
    teacher_outputs: Mapping[str, Any] | None = None,
    *,
    teacher: nn.Module | None = None,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    cka: bool = True,
    amp: bool = False,
    view: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """CE, accuracy, sharpness gap, CKA and CKA gap of ``model`` against the teacher on ``split``.

    The one evaluation of kdzero: the training loop's periodic validation (early stopping, curves), the
    fitness of a proxy run, a full run's test accuracy and a teacher's accuracy all come from here, with the
    same numerics (bf16 autocast on CUDA when ``amp``, as in training; float32 logits).

    Args:
        model: Student returning logits.
        split: Items ``(x, y, index)``; ``index`` addresses rows of ``teacher_outputs``.
        teacher_outputs: Teacher knowledge of this split, ``{"logits": (N, K), "embedding": (N, D)}`` arrays
            (e.g. memory-mapped from :class:`~trainers.output_cache.TeacherOutputCache`).
        teacher: Live teacher used when ``teacher_outputs`` is ``None``; with neither, only CE and accuracy.
        batch_size: Evaluation batch size.
        device: Torch device.
        cka: Also compute the CKA of penultimate embeddings (needs ``teacher_outputs["embedding"]`` or a
            teacher).
        amp: Forward passes under bf16 autocast on CUDA (the run's ``TrainConfig.amp``).
        view: Precomputed ``trainers.data.tensor_view`` of ``split`` (e.g. already on ``device``).

    Returns:
        ``{"ce", "accuracy", "sharpness_gap", "cka", "cka_gap"}`` (teacher-based entries ``nan`` without a
        teacher).
    """
    was = model.training
    model.eval()
    have_teacher = teacher_outputs is not None or teacher is not None
    need_emb = cka and have_teacher
    s_ext = t_ext = None
    if need_emb:
        s_ext = KnowledgeExtractor(model).eval()
        if teacher_outputs is None:
            t_ext = KnowledgeExtractor(teacher).eval()
    if teacher is not None:
        teacher.eval()
    ce_sum, correct, n, gap_sum = 0.0, 0, 0, 0.0
    cka_acc = StreamingCKA()
    for x, y, index in iterate_batches(split, batch_size, device=device, view=view):
        with autocast(device, amp):
            if s_ext is not None:
                ks = s_ext(x)
                logits_s, emb_s = ks["logits"].float(), ks["embedding"].float()  # (N, K), (N, D)
            else:
                logits_s, emb_s = model(x).float(), None  # (N, K)
        ce_sum += float(F.cross_entropy(logits_s, y, reduction="sum"))
        correct += int((logits_s.argmax(1) == y).sum())
        n += len(y)
        if not have_teacher:
            continue
        if teacher_outputs is not None:
            logits_t = _rows(teacher_outputs, "logits", index).to(logits_s.device)
            emb_t = _rows(teacher_outputs, "embedding", index) if need_emb else None
        else:
            with autocast(device, amp):
                if t_ext is not None:
                    kt = t_ext(x)
                    logits_t, emb_t = kt["logits"].float(), kt["embedding"].float()
                else:
                    logits_t, emb_t = teacher(x).float(), None  # type: ignore[misc]
        gap_sum += sharpness_gap(logits_s, logits_t) * len(y)
        if emb_s is not None and emb_t is not None:
            cka_acc.update(emb_s, emb_t)
    model.train(was)
    if n == 0:
        raise ValueError("evaluate_split got an empty split")
    out = {
        "ce": ce_sum / n,
        "accuracy": correct / n,
        "sharpness_gap": float("nan"),
        "cka": float("nan"),
        "cka_gap": float("nan"),
    }
    if have_teacher:
        out["sharpness_gap"] = gap_sum / n
        if need_emb:
            c = cka_acc.compute()
            out["cka"], out["cka_gap"] = c, 1.0 - c
    return out


@torch.no_grad()
def split_predictions(
    model: nn.Module,
    split: Dataset,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
    amp: bool = False,
) -> list[int]:
    """Predicted classes of ``model`` (eval mode) on a split of ``(x, y, index)`` items, in split order.

    The same forward pass as :func:`evaluate_split` (a teacher's prediction fingerprint is compared with it).
    """
    was = model.training
    model.eval()
    out: list[int] = []
    for x, _, _ in iterate_batches(split, batch_size, device=device):
        with autocast(device, amp):
            out += model(x).float().argmax(1).tolist()  # (N, K) -> (N,)
    model.train(was)
    return out
