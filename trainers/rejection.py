"""Loss rejection: refuse a candidate distiller before (or while) it wastes a proxy run.

Before a proxy run, :func:`probe_loss` evaluates the candidate on a few training batches with forward and
backward passes but **no optimizer step** (gradients go to ``autograd.grad``, never into ``.grad``, and
buffers such as BatchNorm statistics are restored, so the student is left exactly as it was).
:func:`judge_probe` then applies :class:`RejectionRules`:

* ``nan`` / ``inf``: a non-finite loss or gradient;
* ``explode``: the distiller loss exceeds ``explode_ratio`` times the cross-entropy, or the norm of its
gradient
  w.r.t. the student exceeds ``grad_ratio`` times the cross-entropy's (or ``max_grad``);
* ``collapse``: the distiller gives the student (almost) no gradient on every probed batch
  (norm <= ``vanish_ratio`` x the cross-entropy gradient norm), i.e. the loss is constant in the student.

During a run, :class:`trainers.callbacks.DivergenceGuard` raises ``nan`` / ``inf`` / ``diverge``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trainers.loop import Trainer

REASONS = ("collapse", "diverge", "early_stop", "explode", "inf", "invalid", "nan")


class Rejected(Exception):
    """A candidate refused with a reason from :data:`REASONS` and a human-readable detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; valid reasons are {list(REASONS)}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RejectionRules:
    """Thresholds of the pre-run check.

    Args:
        explode_ratio: Reject when the distiller loss exceeds this multiple of the CE.
        grad_ratio: Reject when the distiller's gradient norm exceeds this multiple of the CE's (published
            distillers reach a few hundred: AT and FitNets use weight 100).
        vanish_ratio: Reject as ``collapse`` when every distiller gradient norm is below this multiple of the
            CE gradient norm (or exactly zero).
        max_grad: Absolute cap on the distiller gradient norm.
    """

    explode_ratio: float = 100.0
    grad_ratio: float = 1e4
    vanish_ratio: float = 1e-7
    max_grad: float = 1e6


@dataclass
class ProbeReport:
    """What :func:`probe_loss` measured on each probed batch."""

    ce: list[float] = field(default_factory=list)
    kd: list[float] = field(default_factory=list)
    ce_grad: list[float] = field(default_factory=list)
    kd_grad: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {
            "ce": self.ce,
            "kd": self.kd,
            "ce_grad": self.ce_grad,
            "kd_grad": self.kd_grad,
            "wall_s": self.wall_s,
        }


def _grad_norm(grads: tuple[torch.Tensor | None, ...]) -> float:
    sq = [g.detach().double().pow(2).sum() for g in grads if g is not None]
    return math.sqrt(float(torch.stack(sq).sum())) if sq else 0.0


def probe_loss(trainer: Trainer, batches: int) -> ProbeReport:
    """Forward + backward of the CE and distiller losses on ``batches`` training batches, no optimizer step.

    The gradients of both terms w.r.t. the student's parameters are measured separately with
    ``torch.autograd.grad`` (nothing is accumulated into ``.grad``), so the student is unchanged.

    Args:
        trainer: A :class:`~trainers.loop.Trainer` holding the student, distiller(s) and the teacher source.
        batches: Number of training batches to probe (the first ones of the seeded epoch-0 order).

    Returns:
        A :class:`ProbeReport`; values may be non-finite (judge them with :func:`judge_probe`).
    """
    t0 = time.perf_counter()
    report = ProbeReport()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    modules = [trainer.model, *trainer.distillers]
    buffers = [{k: b.detach().clone() for k, b in m.named_buffers()} for m in modules]  # e.g. BN statistics
    was_training = trainer.model.training
    trainer.model.train()
    for i, batch in enumerate(trainer.train_batches(epoch=0)):
        if i >= batches:
            break
        ce, kd, _ = trainer.batch_losses(batch)
        ce_g = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
        report.ce.append(float(ce.detach()))
        report.ce_grad.append(_grad_norm(ce_g))
        if kd.requires_grad:
            kd_g = torch.autograd.grad(kd, params, allow_unused=True)
            report.kd_grad.append(_grad_norm(kd_g))
        else:  # the distiller does not depend on the student at all
            report.kd_grad.append(0.0)
        report.kd.append(float(kd.detach()))
    trainer.model.train(was_training)
    with torch.no_grad():
        for m, saved in zip(modules, buffers):
            for k, b in m.named_buffers():
                b.copy_(saved[k])
    report.wall_s = time.perf_counter() - t0
    return report


def judge_probe(report: ProbeReport, rules: RejectionRules) -> None:
    """Raise :class:`Rejected` when the probe shows a non-finite, exploding or collapsed distiller loss.

    Args:
        report: Measurements from :func:`probe_loss`.
        rules: Thresholds.

    Raises:
        Rejected: With reason ``nan``, ``inf``, ``explode`` or ``collapse``.
    """
    for name in ("kd", "kd_grad", "ce", "ce_grad"):
        for i, v in enumerate(getattr(report, name)):
            if math.isnan(v):
                raise Rejected("nan", f"{name} is NaN on probe batch {i}")
            if math.isinf(v):
                raise Rejected("inf", f"{name} is infinite on probe batch {i}")
    for i, (ce, kd, ce_g, kd_g) in enumerate(zip(report.ce, report.kd, report.ce_grad, report.kd_grad)):
        if abs(kd) > rules.explode_ratio * max(ce, 1e-8):
            raise Rejected(
                "explode", f"distiller loss {kd:.4g} > {rules.explode_ratio:g} x CE {ce:.4g} (batch {i})"
            )
        if kd_g > rules.max_grad or kd_g > rules.grad_ratio * max(ce_g, 1e-8):
            raise Rejected(
                "explode",
                f"distiller gradient norm {kd_g:.4g} vs CE gradient norm {ce_g:.4g} (batch {i}); "
                f"limits {rules.grad_ratio:g}x and {rules.max_grad:g}",
            )
    if report.kd_grad and all(
        kd_g <= rules.vanish_ratio * ce_g for kd_g, ce_g in zip(report.kd_grad, report.ce_grad)
    ):
        raise Rejected(
            "collapse",
            f"distiller gradient norms {[f'{g:.3g}' for g in report.kd_grad]} vanish "
            f"(<= {rules.vanish_ratio:g} x CE gradient norms {[f'{g:.3g}' for g in report.ce_grad]})",
        )


def check_trainer(trainer: Trainer, batches: int, rules: RejectionRules | None = None) -> ProbeReport:
    """Probe ``trainer`` on ``batches`` batches and judge the result; returns the report when accepted.

    Raises:
        Rejected: When :func:`judge_probe` refuses the candidate.
    """
    report = probe_loss(trainer, batches)
    judge_probe(report, rules or RejectionRules())
    return report
