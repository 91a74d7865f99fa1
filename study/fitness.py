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
from collections.abc import Iterator, Sequence

import numpy as np
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


def non_dominated_fronts(points: Sequence[Sequence[float]], chunk: int = 256) -> Iterator[list[int]]:
    """The indices of ``points`` front by front: the Pareto front first, then the front of what is left, ...

    Every objective is minimised; a point dominates another when it is no worse in every objective and
    better in one. Equal points share a front. NaN and -inf count as +inf (worst). Fronts are produced
    lazily (a caller that needs the first few stops early); each costs O(m^2) comparisons over the m points
    left, in blocks of ``chunk`` rows so memory stays O(chunk * m).

    Args:
        points: One sequence of objective values per point, all of the same length.
        chunk: Rows compared at once.

    Yields:
        Each front's indices into ``points``, ascending.
    """
    p = np.asarray([[v if math.isfinite(v) else math.inf for v in row] for row in points], dtype=float)
    left = np.arange(len(p))
    while len(left):
        q = p[left]  # (m, k)
        dominated = np.zeros(len(left), dtype=bool)
        for lo in range(0, len(left), chunk):
            rows = q[lo : lo + chunk, None, :]  # (c, 1, k) against every other point (1, m, k)
            no_worse = (q[None, :, :] <= rows).all(axis=-1)
            better = (q[None, :, :] < rows).any(axis=-1)
            dominated[lo : lo + chunk] = (no_worse & better).any(axis=1)  # (c,)
        yield left[~dominated].tolist()
        left = left[dominated]
