"""Paper Eq. 2, the search's fitness, in one place: the three objectives and their scalarisation.

The objectives (all minimised) are measured on the validation split after a proxy run:
``val_ce`` (cross-entropy), ``sharpness_gap`` (|logsumexp(z_t) - logsumexp(z_s)|, see
``trainers.metrics.sharpness_gap``) and ``cka_gap`` (1 - linear CKA of penultimate embeddings). The
scalarisation used to rank trials is their sum, ``val_ce + sharpness_gap + cka_gap`` = CE + sharpness gap +
(1 - CKA), the paper's CE + sharpness - CKA up to a constant.
"""

from __future__ import annotations

import math

from optuna.trial import FrozenTrial

OBJECTIVES = ("val_ce", "sharpness_gap", "cka_gap")


def scalarised(trial: FrozenTrial) -> float:
    """``val_ce + sharpness_gap + cka_gap`` of a trial (+inf when it has no finite values)."""
    if trial.values is None or not all(math.isfinite(v) for v in trial.values):
        return math.inf
    return float(sum(trial.values))
