"""Paper Eq. 2, the search's fitness, in one place: the three objectives and their scalarisation.

The objectives (all minimised) are measured on the validation split after a proxy run:
``val_ce`` (cross-entropy), ``sharpness_gap`` (|logsumexp(z_t) - logsumexp(z_s)|, see
``trainers.metrics.sharpness_gap``) and ``cka_gap`` (1 - linear CKA of penultimate embeddings). NSGA-II
evolves on the three; the one number that ranks trials (the verification's candidates, the tuned rivals'
TPE, ``--select scalar``, every listing) is their *geometric mean* (:data:`SCALAR_NAME`).

The paper adds them (CE + sharpness gap - CKA, i.e. ``val_ce + sharpness_gap + cka_gap`` minus 1). The sum
is not unit-free: the sharpness gap is in the teacher's logit units (2 to 13 on our pairs, against 0.4 to 0.9
for ``val_ce`` and 0.1 to 0.4 for ``cka_gap``), so it decided the sum alone, and it is the objective that
ranks distillers worst. Measured over the 24 searches with a verification stage in ``benchmarks/results``
(Kendall tau, within each search, of a score of the proxy against the mean validation accuracy of the same
candidates re-trained for 25% of the schedule on 2 other seeds): the sum +0.19 +- 0.07 (SE), the sharpness
gap alone +0.02 +- 0.09, the geometric mean +0.32 +- 0.07; geometric mean minus sum, paired by search,
+0.14 +- 0.06 (16 searches better, 5 worse). The geometric mean ranks a trial by the relative size of each
objective, whatever its unit, and is a fixed number per trial (a TPE objective, unlike ranks among the
trials so far). The sharpness gap is absolute where the paper's Eq. 2 is signed: a signed gap, minimised,
rewards a student sharper than its teacher without bound (``docs/search_space.md`` gives the reasoning).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from optuna.trial import FrozenTrial

OBJECTIVES = ("val_ce", "sharpness_gap", "cka_gap")
SCALAR_NAME = "geomean(val_ce, sharpness_gap, cka_gap)"
"""How every output of kdzero names the scalarised fitness (lower is better)."""
SCALARISATION = "geomean"
"""Identifies :func:`scalarise`'s formula where a stored value depends on it (a tuned rival's TPE study)."""
FLOOR = 1e-6
"""Objectives below this count as this in :func:`scalarise` (a CKA rounded above 1 gives a gap below 0)."""


def scalarise(values: Sequence[float] | None) -> float:
    """Geometric mean of the three objectives, each at least :data:`FLOOR` (+inf unless all are finite).

    ``(val_ce * sharpness_gap * cka_gap) ** (1 / 3)``, computed as the exponential of the mean logarithm.
    """
    if values is None or len(values) != len(OBJECTIVES) or not all(math.isfinite(v) for v in values):
        return math.inf
    return float(math.exp(sum(math.log(max(float(v), FLOOR)) for v in values) / len(values)))


def paper_sum(values: Sequence[float] | None) -> float:
    """The paper's scalarisation, ``val_ce + sharpness_gap + cka_gap`` (+inf unless all are finite).

    Not used to rank anything: benchmarks report how it ranks beside :func:`scalarise`.
    """
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
