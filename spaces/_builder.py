"""``build_distiller``: a :class:`DistillerSpec` plus knowledge shapes -> an ``nn.Module`` computing Eq. 1.

``loss = tau^2 * W * mean_n( cal_n * D( T3(T2(T1(align(f_s) / tau))), T3(T2(T1(f_t / tau))) )_n )``, with the
teacher side detached. The aligner maps the student's knowledge to the teacher's shape: identity when the
shapes agree; for maps, spatial resize first (adaptive average pooling when the student map is at least as
large in both dims, bilinear interpolation otherwise) then a 1x1 convolution (+ optional BatchNorm) when
channels differ; for vectors a linear layer. Its parameters are trainable and reachable by
``distiller.parameters()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._calibrations import calibrate
from ._distances import DISTANCES, DISTRIBUTION_DISTANCES, LOGITS_ONLY_DISTANCES, Layout
from ._spec import DistillerSpec
from ._transforms import DISTRIBUTION_AXIS, TRANSFORMS, Transform


class Resize(nn.Module):
    """Resize maps to ``size`` = (H, W): adaptive average pooling when shrinking, else bilinear."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, *size)."""
        if x.shape[2] >= self.size[0] and x.shape[3] >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def _check_shape(name: str, shape: Sequence[int], knowledge: str) -> tuple[int, ...]:
    rank = 3 if knowledge == "feature" else 1
    ok = isinstance(shape, (tuple, list, torch.Size)) and len(shape) == rank
    ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    if not ok:
        want = "(C, H, W)" if rank == 3 else "(D,)"
        raise ValueError(
            f"{name} for {knowledge!r} knowledge must be one sample's shape {want} "
            f"of positive ints (no batch dim), got {shape!r}"
        )
    return tuple(shape)


def make_aligner(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], bn: bool = False
) -> nn.Module:
    """The module mapping student knowledge of ``student_shape`` to ``teacher_shape`` (no batch dim).

    Args:
        student_shape: (C, H, W) or (D,).
        teacher_shape: Same rank as ``student_shape``.
        bn: Add a BatchNorm after the 1x1 convolution.

    Returns:
        ``nn.Identity``, ``nn.Linear``, or an ``nn.Sequential`` of ``Resize`` / ``Conv2d`` (/
        ``BatchNorm2d``).
    """
    if len(student_shape) != len(teacher_shape):
        raise ValueError(
            f"student_shape {student_shape} and teacher_shape {teacher_shape} must have the same rank"
        )
    if tuple(student_shape) == tuple(teacher_shape):
        return nn.Identity()
    if len(student_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0])
    layers: list[nn.Module] = []
    if tuple(student_shape[1:]) != tuple(teacher_shape[1:]):
        layers.append(Resize((teacher_shape[1], teacher_shape[2])))
    if student_shape[0] != teacher_shape[0]:
        layers.append(nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(teacher_shape[0]))
    return nn.Sequential(*layers)


def plan_chain(spec: DistillerSpec) -> tuple[list[Transform], Layout]:
    """The ops that actually run for ``spec`` and the :class:`Layout` its distance reads.

    Ops that are the identity at their input rank are dropped. When the last remaining op is ``softmax_X`` and
    the distance is ``kl`` or ``hard``, that softmax is dropped too and the distance applies ``log_softmax``
    over X (same function, stable log-domain math).

    Args:
        spec: The distiller spec.

    Returns:
        ``(ops, layout)``.
    """
    ops: list[Transform] = [TRANSFORMS[name] for name in spec.effective_transforms()]
    layout = Layout("logits", "c")
    if ops and ops[-1].name in DISTRIBUTION_AXIS:
        mode, axis = DISTRIBUTION_AXIS[ops[-1].name]
        layout = Layout(mode, axis)
        if mode == "probs" and spec.distance in DISTRIBUTION_DISTANCES:
            ops.pop()
            layout = Layout("logits", axis)
    return ops, layout


class Distiller(nn.Module):
    """Eq. 1 for one spec; build with :func:`build_distiller`.

    ``forward(f_s, f_t, *, logits_s=None, logits_t=None, labels=None) -> (loss, {"kd": loss.detach()})``.
    """

    def __init__(
        self,
        spec: DistillerSpec,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        aligner: nn.Module,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.student_shape = student_shape
        self.teacher_shape = teacher_shape
        self.aligner = aligner
        self.generator = generator
        self.ops, self.layout = plan_chain(spec)
        self.distance = DISTANCES[spec.distance]

    def forward(
        self,
        f_s: Tensor,
        f_t: Tensor,
        *,
        logits_s: Tensor | None = None,
        logits_t: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Distillation loss of a batch.

        Args:
            f_s: Student knowledge (N, *student_shape).
            f_t: Teacher knowledge (N, *teacher_shape); detached here.
            logits_s: Student logits (N, K) for the calibration; defaults to ``f_s`` for logits knowledge.
            logits_t: Teacher logits (N, K); defaults to ``f_t`` for logits knowledge.
            labels: Integer labels (N,) (used by ``focal``; ``None`` -> teacher argmax).

        Returns:
            ``(loss, terms)``: scalar loss with grad, and ``{"kd": loss.detach()}``.
        """
        for name, x, shape in (("f_s", f_s, self.student_shape), ("f_t", f_t, self.teacher_shape)):
            if tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"{name} must have shape (N, *{shape}) for this distiller, got {tuple(x.shape)}"
                )
        if f_s.shape[0] != f_t.shape[0]:
            raise ValueError(f"f_s and f_t batch sizes differ: {f_s.shape[0]} vs {f_t.shape[0]}")
        spec = self.spec
        f_t = f_t.detach()
        x_s = self.aligner(f_s)  # teacher's shape
        x_t = f_t
        if spec.tau != 1:
            x_s, x_t = x_s / spec.tau, x_t / spec.tau
        for op in self.ops:
            x_s, x_t = op(x_s, x_t, training=self.training, generator=self.generator)
        per_sample = self.distance(x_s, x_t, self.layout)  # (N,)
        if spec.calibration != "no":
            if spec.knowledge == "logits":
                logits_s = f_s if logits_s is None else logits_s
                logits_t = f_t if logits_t is None else logits_t
            if logits_s is None or logits_t is None:
                raise ValueError(
                    f"calibration {spec.calibration!r} on {spec.knowledge!r} knowledge needs "
                    "logits_s and logits_t"
                )
            per_sample = per_sample * calibrate(spec.calibration, logits_s, logits_t.detach(), labels)
        loss = spec.tau**2 * spec.weight * per_sample.mean()
        return loss, {"kd": loss.detach()}

    def peak_elements(self, batch_size: int) -> int:
        """Elements of the largest tensor the transform chain makes for one batch of ``batch_size``.

        A dry run of the ops on the ``meta`` device (shapes only, nothing allocated), from the aligned
        knowledge (the teacher's shape) to the distance's input: e.g. ``bmm`` after ``local_r1`` on a
        (64, 7, 7) feature map makes (N, 3136, 3136), 1.3e9 elements for N = 128, where the knowledge
        itself has 4e5.
        """
        x = torch.empty((batch_size, *self.teacher_shape), device="meta")
        peak = x.numel()
        for op in self.ops:
            x, _ = op(x, x, training=True, generator=None)
            peak = max(peak, x.numel())
        return peak

    def extra_repr(self) -> str:
        return f"[{self.spec.knowledge}] {self.spec.formula()}"


def build_distiller(
    spec: DistillerSpec,
    student_shape: Sequence[int],
    teacher_shape: Sequence[int],
    *,
    bn: bool = False,
    generator: torch.Generator | None = None,
) -> Distiller:
    """Build the distiller module of ``spec`` for knowledge of the given per-sample shapes.

    Args:
        spec: The distiller spec.
        student_shape: One sample's student knowledge shape, without batch dim: (C, H, W) or (D,).
        teacher_shape: One sample's teacher knowledge shape, without batch dim.
        bn: BatchNorm after the 1x1 conv aligner.
        generator: RNG for the random transforms (``None``: the global torch RNG).

    Returns:
        The :class:`Distiller` (an ``nn.Module``); ``str()`` shows its formula.

    Raises:
        ValueError: On bad shapes, or a distance that is invalid for the knowledge (``hard`` on non-logits).
    """
    if not isinstance(spec, DistillerSpec):
        raise ValueError(f"spec must be a DistillerSpec, got {type(spec).__name__}")
    if spec.distance in LOGITS_ONLY_DISTANCES and spec.knowledge != "logits":
        raise ValueError(
            f"distance {spec.distance!r} is only valid on 'logits' knowledge, "
            f"got knowledge {spec.knowledge!r}"
        )
    s = _check_shape("student_shape", student_shape, spec.knowledge)
    t = _check_shape("teacher_shape", teacher_shape, spec.knowledge)
    return Distiller(spec, s, t, make_aligner(s, t, bn=bn), generator=generator)
