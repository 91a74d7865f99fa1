"""benchmarks.convergence: the summary covers every stored (regime, student) and pairs gaps by seed."""

from __future__ import annotations

from benchmarks.convergence import TOLERANCE, stored_plan, summarise


def _row(regime: str, student: str, epochs: int, seed: int, acc: float) -> dict:
    return {
        "regime": regime,
        "student": student,
        "method": "ce",
        "epochs": epochs,
        "seed": seed,
        "test_acc": acc,
    }


ROWS = [
    _row("full", "mlp", 20, 0, 0.90),
    _row("full", "mlp", 20, 1, 0.80),
    _row("full", "mlp", 40, 0, 0.901),
    _row("full", "mlp", 40, 1, 0.802),
    _row("full", "cnn_tiny", 20, 0, 0.89),
]


def test_stored_plan_keeps_pairs_the_call_did_not_run() -> None:
    plan = stored_plan(ROWS, [("full", "cnn_tiny", [20, 40])])
    assert sorted(plan) == [("full", "cnn_tiny", [20, 40]), ("full", "mlp", [20, 40])]


def test_summarise_pairs_seeds_and_applies_tolerance() -> None:
    s = summarise(ROWS, "full", "mlp", [20, 40])
    assert s["ce"][20]["n"] == 2
    assert abs(s["ce"][20]["mean"] - 0.85) < 1e-12
    gap = s["gap_to_2x"][20]
    # paired differences 0.001 and 0.002: mean 0.0015, SE = sd / sqrt(2) = 0.000707.../sqrt(2) = 0.0005
    assert abs(gap["gain_2x"] - 0.0015) < 1e-12
    assert abs(gap["se"] - 0.0005) < 1e-12
    assert gap["converged"] is (0.0015 < TOLERANCE)
    assert s["shortest_converged"] == 20
