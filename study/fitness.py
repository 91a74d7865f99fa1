"""Paper Eq. 2, the search's fitness, in one place: the three objectives and their scalarisation.

The objectives (all minimised) are measured on the validation split after a proxy run:
``val_ce`` (cross-entropy), ``sharpness_gap`` (|logsumexp(z_t) - logsumexp(z_s)|, see
``trainers.metrics.sharpness_gap``) and ``cka_gap`` (1 - linear CKA of penultimate embeddings). The
scalarisation used to rank trials is their sum, ``val_ce + sharpness_gap + cka_gap`` (the paper's
CE + sharpness gap - CKA plus 1); every output of kdzero names these three and their sum the same way.
The sharpness gap is absolute where the paper's Eq. 2 is signed: a signed gap, minimised, rewards a student
sharper than its teacher without bound (``docs/search_space.md`` gives the reasoning).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from optuna.trial import FrozenTrial

OBJECTIVES = ("val_ce", "sharpness_gap", "cka_gap")


def scalarise(values: Sequence[float] | None) -> float:
    """``val_ce + sharpness_gap + cka_gap`` of the three objectives (+inf unless all are finite)."""
    if values is None or len(values) != len(OBJECTIVES) or not all(math.isfinite(v) for v in values):
        return math.inf
    return float(sum(values))


def scalarised(trial: FrozenTrial) -> float:
    """:func:`scalarise` of a trial's objective values (+inf when it has no finite values)."""
    return scalarise(trial.values)
