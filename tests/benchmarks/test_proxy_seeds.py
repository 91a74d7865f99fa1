"""benchmarks.proxy_seeds --summary: k-seed verdicts over every k-subset, checked against hand counts."""

from __future__ import annotations

import pytest

from benchmarks.proxy_seeds import render, summarise


def _rows(method: str, accs: list[float | None]) -> list[dict]:
    rows = []
    for seed, acc in enumerate(accs):
        row = {"method": method, "seed": seed, "threads": 1, "fraction": 0.05}
        if acc is None:
            row["rejected"] = "diverge: loss grew"
        else:
            row["acc"] = acc
        rows.append(row)
    return rows


ROWS = _rows("ce", [0.70, 0.70, 0.70]) + _rows("kd", [0.10, 0.80, 0.80]) + _rows("dist", [0.60, None, 0.68])


def test_bar_verdicts_over_seed_subsets() -> None:
    (g,) = summarise(ROWS)
    kd = g["methods"]["kd"]
    assert kd["acc"] == [0.10, 0.80, 0.80] and kd["min"] == 0.10
    assert kd["mean"] == pytest.approx(1.7 / 3)
    # k=1: seeds 1 and 2 pass (0.80 >= 0.65), seed 0 fails -> 2/3
    assert kd["passes_bar_k1"] == pytest.approx(2 / 3)
    # k=2: {0,1} mean 0.45 fails, {0,2} 0.45 fails, {1,2} 0.80 passes -> 1/3
    assert kd["passes_bar_k2"] == pytest.approx(1 / 3)
    # k=3: mean 0.567 < 0.65 -> fails
    assert kd["passes_bar_k3"] == 0.0
    # a rejected run counts as 0: dist seeds 0.60 (fails 0.65), 0 (fails), 0.68 (passes)
    assert g["methods"]["dist"]["passes_bar_k1"] == pytest.approx(1 / 3)
    assert "passes_bar_k1" not in g["methods"]["ce"]


def test_pair_order_against_finals() -> None:
    (g,) = summarise(ROWS, finals={"ce": 0.866, "kd": 0.875, "dist": 0.842})
    kd_ce = g["pairs"]["ce vs kd"]  # final: kd above ce, so the proxy is right when kd's mean > ce's
    assert kd_ce["final_diff"] == pytest.approx(0.866 - 0.875)
    assert kd_ce["k1"] == pytest.approx(2 / 3)  # seeds 1, 2
    assert kd_ce["k2"] == pytest.approx(1 / 3)  # only {1, 2}
    assert g["pairs"]["ce vs dist"]["k1"] == 1.0  # ce above dist on every seed, as in the finals
    text = render([g])
    assert "kd" in text and "order ce vs kd" in text
