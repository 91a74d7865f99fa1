"""Paper Eq. 2's scalarisation and the non-dominated fronts the verification ranks candidates by."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from study.fitness import FLOOR, non_dominated_fronts, paper_sum, scalarise


def test_scalarise_is_the_geometric_mean_of_the_three_objectives_and_inf_otherwise() -> None:
    assert scalarise([0.5, 2.0, 0.25]) == pytest.approx(0.25 ** (1 / 3), rel=1e-12)  # cube root of product
    assert scalarise([0.8, 3.0, 0.3]) == pytest.approx((0.8 * 3.0 * 0.3) ** (1 / 3), rel=1e-12)
    assert scalarise([0.5, 0.0, -0.01]) == pytest.approx((0.5 * FLOOR * FLOOR) ** (1 / 3), rel=1e-9)
    for bad in ([0.5, math.nan, 0.25], [0.5, math.inf, 0.25], [0.5, 2.0], None):
        assert scalarise(bad) == math.inf
        assert paper_sum(bad) == math.inf
    assert paper_sum([0.5, 2.0, 0.25]) == 2.75


def test_scalarise_does_not_depend_on_an_objectives_unit() -> None:
    # The paper's sum follows the objective with the largest numbers (the sharpness gap, in logit units); the
    # geometric mean ranks the same whatever unit one objective is counted in.
    a, b = (0.60, 3.0, 0.20), (0.50, 3.5, 0.15)
    for unit in (0.1, 1.0, 10.0, 100.0):
        sa, sb = (a[0], a[1] * unit, a[2]), (b[0], b[1] * unit, b[2])
        assert scalarise(sb) < scalarise(sa)
    assert paper_sum((a[0], a[1] * 100, a[2])) < paper_sum((b[0], b[1] * 100, b[2]))  # the sum flips


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """a is no worse than b everywhere and better somewhere (every objective minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _brute_ranks(points: list[tuple[float, ...]]) -> list[int]:
    """Rank by definition: the length of the longest chain of points dominating it."""
    n = len(points)
    rank = [0] * n
    for _ in range(n):  # relax: rank(i) = 1 + max rank of a dominator (chains are at most n long)
        for i, j in itertools.product(range(n), range(n)):
            if _dominates(points[j], points[i]):
                rank[i] = max(rank[i], rank[j] + 1)
    return rank


def test_fronts_of_a_small_example() -> None:
    points = [
        (1.0, 5.0, 0.0),  # 0: front 0
        (2.0, 2.0, 0.0),  # 1: front 0
        (3.0, 3.0, 0.0),  # 2: dominated by 1 -> front 1
        (2.0, 2.0, 0.0),  # 3: equal to 1 -> front 0 (equal points do not dominate each other)
        (4.0, 4.0, 1.0),  # 4: dominated by 2 -> front 2
        (5.0, 1.0, 0.0),  # 5: front 0
    ]
    assert list(non_dominated_fronts(points)) == [[0, 1, 3, 5], [2], [4]]


@pytest.mark.parametrize("seed", range(5))
def test_fronts_match_the_definition_on_random_points(seed: int) -> None:
    rng = random.Random(seed)
    # few distinct values so that ties and equal points are common
    points = [tuple(float(rng.randint(0, 4)) for _ in range(3)) for _ in range(40)]
    fronts = list(non_dominated_fronts(points, chunk=7))  # a chunk smaller than the set: several blocks
    assert sorted(i for f in fronts for i in f) == list(range(40))
    ranks = _brute_ranks(points)
    for r, front in enumerate(fronts):
        assert front == sorted(front)
        assert all(ranks[i] == r for i in front)


def test_nan_and_minus_inf_count_as_worst() -> None:
    points = [(math.nan, 0.0, 0.0), (1.0, 1.0, 1.0), (-math.inf, 2.0, 2.0), (2.0, 2.0, 2.0)]
    # NaN -> +inf: (inf, 0, 0) is not dominated by (1, 1, 1); -inf -> +inf: (inf, 2, 2) is dominated by
    # (2, 2, 2), which (1, 1, 1) dominates
    assert list(non_dominated_fronts(points)) == [[0, 1], [3], [2]]


def test_fronts_are_lazy_and_empty_input_has_none() -> None:
    assert list(non_dominated_fronts([])) == []
    gen = non_dominated_fronts([(float(i), float(i), float(i)) for i in range(1000)])
    assert next(gen) == [0] and next(gen) == [1]  # a chain: one point per front, taken two at a time
