"""``DistillerSpec``: one candidate distiller as plain, validated, JSON round-tripping data.

The distiller it describes is the paper's Eq. 1,
``loss = tau^2 * W * mean_n( cal_n * D( T3(T2(T1(f_s / tau))), T3(T2(T1(f_t / tau))) )_n )``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ._calibrations import CALIBRATIONS
from ._distances import DISTANCES, DISTRIBUTION_DISTANCES
from ._files import parse_data_text, read_data_file, short_repr
from ._transforms import DISTRIBUTION_AXIS, IDEMPOTENT, NON_NEGATIVE, RECTIFIERS, TRANSFORMS

KNOWLEDGE: tuple[str, ...] = ("embedding", "feature", "logits")
"""Knowledge kinds (sorted): ``logits`` (N, K), ``embedding`` (N, D), ``feature`` (N, C, H, W)."""
NODE_KNOWLEDGE: tuple[str, ...] = tuple(k for k in KNOWLEDGE if k != "logits")
"""Knowledge kinds read at a named node of a user's model (logits are always the model's output)."""
WEIGHTS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0)
"""Loss weights W searched by :func:`suggest_spec`."""
TEMPERATURES: tuple[float, ...] = (1.0, 4.0, 8.0)
"""Temperatures tau searched by :func:`suggest_spec`."""
SYMBOLS = {"logits": "z", "embedding": "f", "feature": "f"}
"""Formula symbols: ``z_s``/``z_t`` for logits, ``f_s``/``f_t`` for embeddings and feature maps."""


def acting_transforms(knowledge: str, names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The transforms of a chain that act on ``knowledge``, in order (see ``DistillerSpec.canonical``)."""
    rank = 4 if knowledge == "feature" else 2
    kept: list[str] = []
    for name in names:
        op = TRANSFORMS[name]
        if not op.is_identity(rank):
            kept.append(name)
        rank = op.out_rank(rank)
    return tuple(kept)


def canonical_chain(
    knowledge: str, names: tuple[str, ...] | list[str], distance: str | None = None
) -> tuple[str, ...]:
    """The acting transforms of a chain in canonical form for ``distance`` (see ``DistillerSpec.canonical``).

    An :data:`IDEMPOTENT` op repeated right after itself goes (``relu(relu(x))`` is ``relu(x)``), and so does
    a ``relu`` or ``leaky_relu`` right after an op whose output is never negative (:data:`NON_NEGATIVE`:
    ``relu(softmax_c(z))`` is ``softmax_c(z)``), except as the last op before ``kl`` / ``hard`` after a
    distribution op: there it decides what the distance takes the log-softmax of (``kl(relu(softmax_c(z)))``
    is the log-softmax of probabilities, ``kl(softmax_c(z))`` that of logits). ``kl`` and
    ``hard`` compute the log-softmax over an axis X of what precedes a final distribution op (over channels
    when there is none), so for them that op is normalised to what the distance computes, and a
    ``logsoftmax_X`` right before it is absorbed (log-softmax is idempotent):

    - over channels, the op goes: ``kl(z)``, ``kl(softmax_c(z))``, ``kl(logsoftmax_c(z))`` and
      ``kl(softmax_c(logsoftmax_c(z)))`` are one distiller (``kl(softmax_c(softmax_c(z)))`` is another: the
      log-softmax of probabilities is not that of logits). Where what remains ends with ``softmax_n`` or
      ``softmax_hw``, ``logsoftmax_c`` stays as a marker, or the form would read as that op's own
      log-softmax (``kl(softmax_n(z))``, another loss);
    - over X = n or hw, the op becomes ``softmax_X``.

    ``distance=None``: no distribution rule.
    """
    acting = acting_transforms(knowledge, names)
    kept: list[str] = []
    for i, name in enumerate(acting):
        if kept and kept[-1] == name and name in IDEMPOTENT:
            continue
        if kept and name in RECTIFIERS and kept[-1] in NON_NEGATIVE:
            sets_layout = i == len(acting) - 1 and distance in DISTRIBUTION_DISTANCES
            if not (sets_layout and kept[-1] in DISTRIBUTION_AXIS):
                continue  # relu(x) = leaky_relu(x) = x for x >= 0
        kept.append(name)
    if distance in DISTRIBUTION_DISTANCES and kept and kept[-1] in DISTRIBUTION_AXIS:
        axis = DISTRIBUTION_AXIS[kept.pop()][1]
        if kept and kept[-1] == f"logsoftmax_{axis}":
            kept.pop()
        if axis != "c":
            kept.append(f"softmax_{axis}")
        elif kept and kept[-1] in ("softmax_n", "softmax_hw"):
            kept.append("logsoftmax_c")
    return tuple(kept)


def _num(x: float) -> str:
    return f"{x:g}"


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}: {short_repr(value)}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DistillerSpec:
    """One distiller of the search space (paper Eq. 1).

    Args:
        knowledge: Which knowledge is distilled: ``logits``, ``embedding`` or ``feature``.
        transforms: Three transform names (T1, T2, T3), applied in order; ``no`` is the identity.
        distance: Distance name (a key of ``DISTANCES``).
        calibration: Calibration name (a key of ``CALIBRATIONS``).
        weight: Loss weight W > 0.
        tau: Temperature tau > 0; inputs are divided by tau and the loss multiplied by tau^2.

    Raises:
        ValueError: On an unknown name (the message lists the valid ones), a wrong type, or W / tau <= 0; the
            message names the field.
    """

    knowledge: str
    transforms: tuple[str, str, str]
    distance: str
    calibration: str = "no"
    weight: float = 1.0
    tau: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.knowledge, str) or self.knowledge not in KNOWLEDGE:
            raise ValueError(
                f"knowledge: unknown knowledge {short_repr(self.knowledge)}; valid choices are "
                f"{list(KNOWLEDGE)}"
            )
        ts = self.transforms
        if isinstance(ts, str) or not isinstance(ts, (tuple, list)) or len(ts) != 3:
            raise ValueError(f"transforms must be a sequence of 3 transform names, got {short_repr(ts)}")
        for i, name in enumerate(ts):
            TRANSFORMS.get_or_raise(name, f"transforms[{i}]")
        object.__setattr__(self, "transforms", tuple(ts))
        DISTANCES.get_or_raise(self.distance, "distance")
        CALIBRATIONS.get_or_raise(self.calibration, "calibration")
        object.__setattr__(self, "weight", _positive("weight", self.weight))
        object.__setattr__(self, "tau", _positive("tau", self.tau))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``transforms`` as a list)."""
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillerSpec:
        """Build a spec from :meth:`to_dict` output; unknown keys raise ``ValueError`` naming them.

        Args:
            data: Mapping of field name to value.

        Returns:
            The validated spec.
        """
        if not isinstance(data, dict):
            raise ValueError(
                f"DistillerSpec.from_dict expects a mapping, got {type(data).__name__}: {short_repr(data)}"
            )
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"DistillerSpec: unknown key(s) {short_repr(unknown)}; valid keys are {names}")
        missing = [n for n in ("knowledge", "transforms", "distance") if n not in data]
        if missing:
            raise ValueError(f"DistillerSpec: missing key(s) {missing}")
        return cls(**data)

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict` (keys sorted)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DistillerSpec:
        """Parse JSON text written by :meth:`to_json` (``json.loads`` only, nothing is evaluated).

        Args:
            text: JSON object text (at most 1 MiB, nested at most 32 levels).

        Returns:
            The validated spec.
        """
        return cls.from_dict(parse_data_text(text, "DistillerSpec.from_json: the text", "JSON"))

    @classmethod
    def from_file(cls, path: str | Path) -> DistillerSpec:
        """Read a spec JSON file (e.g. an exported ``distiller.json``) through ``spaces.read_data_file``.

        Args:
            path: The file (at most 1 MiB, UTF-8, nested at most 32 levels).

        Returns:
            The validated spec.

        Raises:
            ValueError: One line naming the file (not found, too large, not UTF-8, not JSON) or the bad field.
        """
        data = read_data_file(path, "spec file", "JSON")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"spec file {str(path)!r}: {err}") from None

    def effective_transforms(self) -> tuple[str, ...]:
        """The transforms that act, in order: ``no`` and ops that are the identity at their input's rank go.

        Ops that need a spatial map (``bmm``, ``local_r4``, ``softmax_hw``...) do nothing on logits and
        embeddings, nor after ``batch`` / ``mm`` have turned a map into vectors.
        """
        return acting_transforms(self.knowledge, self.transforms)

    def canonical(self) -> DistillerSpec:
        """The distiller's canonical form: :func:`canonical_chain` first, padded with ``no``.

        Two specs compute the same loss when their canonical forms are equal (twins): ops that are the
        identity on the knowledge's shape are gone, so are repeats of an idempotent op, and for ``kl`` /
        ``hard`` the softmax over channels the distance applies itself (KD's canonical form has no
        transforms). The form is a label to compare, not a spec to train: for ``kl`` / ``hard`` a chain that
        keeps a distribution op before its dropped final one (``kl(softmax_c(softmax_c(z)))``, whose form has
        one ``softmax_c``) computes another loss than its form would. The genes stored in a study stay as
        drawn and are what is trained; this form is used for twin detection and listings (one entry per
        distinct distiller). Formulas show the acting transforms (:meth:`formula`), so ``kl(z_s, z_t)``
        and ``kl(softmax_c(z_s), softmax_c(z_t))`` print as drawn, as one distiller.
        """
        kept = canonical_chain(self.knowledge, self.transforms, self.distance)
        return replace(self, transforms=tuple(kept) + ("no",) * (3 - len(kept)))

    def canonical_key(self) -> str:
        """JSON text of :meth:`canonical`: equal keys, same distiller."""
        return self.canonical().to_json()

    def weight_step(self, step: int) -> DistillerSpec | None:
        """The same distiller at the weight ``step`` places from its own on the ``WEIGHTS`` grid.

        E.g. KD's W 1 at step -1 is W 0.5, at step -2 W 0.1. ``None`` when the step leaves the grid.

        Raises:
            ValueError: This spec's weight is not on the grid (one a search drew always is).
        """
        if self.weight not in WEIGHTS:
            raise ValueError(
                f"weight {self.weight!r} of {self.formula()} is not on the weight grid {WEIGHTS}"
            )
        i = WEIGHTS.index(self.weight) + step
        return replace(self, weight=WEIGHTS[i]) if 0 <= i < len(WEIGHTS) else None

    def formula(self) -> str:
        """The loss as a human-readable formula, e.g. ``1 * kl(softmax_c(z_s/4), softmax_c(z_t/4)) * 16``.

        Only the transforms that act are shown (:meth:`effective_transforms`), so twins that differ by
        identity ops print alike (a softmax a distribution distance applies itself is shown as drawn);
        ``/tau`` and ``* tau^2`` only appear when tau != 1; a calibration other than ``no`` appears as a
        factor.
        """
        sym = SYMBOLS[self.knowledge]

        def chain(side: str) -> str:
            expr = f"{sym}_{side}" + ("" if self.tau == 1 else f"/{_num(self.tau)}")
            for name in self.effective_transforms():
                expr = f"{name}({expr})"
            return expr

        text = f"{_num(self.weight)} * "
        if self.calibration != "no":
            text += f"{self.calibration} * "
        text += f"{self.distance}({chain('s')}, {chain('t')})"
        if self.tau != 1:
            text += f" * {_num(self.tau**2)}"
        return text

    def __str__(self) -> str:
        return f"[{self.knowledge}] {self.formula()}"
