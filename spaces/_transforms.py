"""The transform table: named ops (``len(TRANSFORMS)``), each lifted to act on the (student, teacher) pair.

Every op is applied to the student and the teacher TOGETHER (``Transform.__call__(x_s, x_t)``): deterministic
ops apply the same function to both; random ops (``mask``, ``drop``) draw one mask per call shared by both,
and are the identity when the distiller is in eval mode. The same ops are offered in each of the three
slots (T1, T2, T3): one categorical with fixed choices per slot keeps NSGA-II crossover meaningful (a gene
value means the same thing in every slot and every trial), and every chain is valid for every knowledge kind,
because ops that need a spatial map are the identity on 2-D knowledge (see ``_ops_spatial``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _ops_pointwise as P
from . import _ops_spatial as S
from ._registry import Registry


@dataclass(frozen=True)
class Transform:
    """One registered transform.

    Attributes:
        name: Registry key.
        fn: ``fn(x) -> y`` for deterministic ops; ``fn(x_s, x_t, generator) -> (y_s, y_t)`` when ``paired``.
        needs_map: The op is the identity on 2-D (vector) knowledge.
        to_vector: The op turns its input into an ``(N, M)`` tensor (``batch`` on maps, ``mm`` always).
        paired: The op is random and takes the (student, teacher) pair; identity in eval mode.
    """

    name: str
    fn: Callable[..., object]
    needs_map: bool = False
    to_vector: bool = False
    paired: bool = False

    def is_identity(self, rank: int) -> bool:
        """True when the op does nothing on tensors of this rank (2: vectors, 4: maps)."""
        return self.name == "no" or (self.needs_map and rank == 2)

    def out_rank(self, rank: int) -> int:
        """Rank of the output for an input of ``rank`` (2 or 4)."""
        return 2 if (self.to_vector and not self.is_identity(rank)) else rank

    def __call__(
        self, x_s: Tensor, x_t: Tensor, *, training: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Apply the op to the student and teacher tensors (same shape, (N, D) or (N, C, H, W)).

        Args:
            x_s: Student tensor.
            x_t: Teacher tensor.
            training: Random ops only act in training mode.
            generator: RNG of random ops (``None``: the global torch RNG).

        Returns:
            ``(y_s, y_t)``.
        """
        if x_s.dim() not in (2, 4) or x_s.shape != x_t.shape:
            raise ValueError(
                f"transform {self.name!r} expects student and teacher tensors of one shape, (N, D) or "
                f"(N, C, H, W), "
                f"got {tuple(x_s.shape)} and {tuple(x_t.shape)}"
            )
        if self.paired:
            if not training:
                return x_s, x_t
            return self.fn(x_s, x_t, generator)  # type: ignore[return-value]
        y_s = self.fn(x_s)
        if x_t.requires_grad:
            return y_s, self.fn(x_t)  # type: ignore[return-value]
        with torch.no_grad():  # the teacher side is detached in the distiller: skip autograd bookkeeping
            return y_s, self.fn(x_t)  # type: ignore[return-value]


def _table() -> Registry[Transform]:
    reg: Registry[Transform] = Registry("transform")
    pointwise = {
        "no": P.identity, "batchnorm": P.batchnorm, "min_max": P.min_max,
        "norm_c": P.norm_c, "norm_n": P.norm_n,
        "softmax_c": P.softmax_c, "softmax_n": P.softmax_n,
        "logsoftmax_c": P.logsoftmax_c, "logsoftmax_n": P.logsoftmax_n,
        "exp": P.exp, "mish": P.mish, "leaky_relu": P.leaky_relu, "relu": P.relu, "tanh": P.tanh,
        "sigmoid": P.sigmoid, "pow2": P.pow2, "pow4": P.pow4, "log": P.log, "sqrt": P.sqrt,
        "catt": S.catt, "natt": S.natt,
    }  # fmt: skip
    for name, fn in pointwise.items():
        reg.register(name, Transform(name, fn))
    maps_only = {
        "norm_hw": P.norm_hw, "softmax_hw": P.softmax_hw, "logsoftmax_hw": P.logsoftmax_hw,
        "scale": S.scale, "multi_scale": S.multi_scale, "scale_r1": S.scale_r1, "scale_r2": S.scale_r2,
        "local_r1": S.local_r1, "local_r2": S.local_r2, "local_r4": S.local_r4,
        "channel": S.channel, "satt": S.satt, "bmm": S.bmm,
    }  # fmt: skip
    for name, fn in maps_only.items():
        reg.register(name, Transform(name, fn, needs_map=True))
    reg.register("batch", Transform("batch", S.batch, needs_map=True, to_vector=True))
    reg.register("mm", Transform("mm", S.mm, to_vector=True))
    reg.register("mask", Transform("mask", S.mask, needs_map=True, paired=True))
    reg.register("drop", Transform("drop", S.drop, paired=True))
    return reg


TRANSFORMS: Registry[Transform] = _table()
"""All transforms by name (sorted iteration)."""

IDEMPOTENT: tuple[str, ...] = ("logsoftmax_c", "logsoftmax_hw", "logsoftmax_n", "relu")
"""Ops with op(op(x)) = op(x) exactly (no eps): twice in a row is once. The L2 / min-max normalisations are
idempotent only up to their eps, and ``batchnorm`` not at all (a channel of tiny variance is rescaled
again)."""

NON_NEGATIVE: tuple[str, ...] = (
    "exp", "pow2", "pow4", "relu", "sigmoid", "softmax_c", "softmax_hw", "softmax_n",
)  # fmt: skip
"""Ops whose output is never negative, and whose gradient is 0 wherever their output is exactly 0 (an
underflowed ``exp``, ``sigmoid`` or softmax entry, ``pow2(0)``, ``relu``): a :data:`RECTIFIERS` op right
after one is the identity in value and in gradient. ``min_max`` is left out: its minimum is exactly 0 and,
with ties, still has a gradient that ``relu`` would cut."""

RECTIFIERS: tuple[str, ...] = ("leaky_relu", "relu")
"""Ops equal to the identity on non-negative inputs."""

DISTRIBUTION_AXIS: dict[str, tuple[str, str]] = {
    f"{kind}_{axis}": ("probs" if kind == "softmax" else "logprobs", axis)
    for kind in ("softmax", "logsoftmax")
    for axis in ("hw", "c", "n")
}
"""Ops whose output is a distribution: name -> (``probs`` | ``logprobs``, axis ``hw`` | ``c`` | ``n``)."""
