"""Is a student schedule long enough for plain CE to converge? CE at E, 2E, 4E epochs, paired by seed.

The table's targets need student schedules under which CE has converged: CE with the schedule within 0.3
points of CE with twice the epochs. This benchmark measures, per regime and student, CE test accuracy at each
epoch count of ``--epochs`` (default: the table's schedule x1, x2, x4) on the same seeds, and names the
shortest schedule whose paired gap to twice its epochs is below the tolerance.

Usage (from the repository root)::

    python -m benchmarks.convergence --regimes 10pct --students cnn_tiny --seeds 2 --jobs 2 --threads 1

Rows go to ``<out>/<run>.json`` as each training finishes (``--resume`` keeps them); the summary is printed
and written to ``<out>/<run>.summary.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import table  # noqa: E402
from benchmarks.table_runs import Rows, TrainPool, clean_json  # noqa: E402
from benchmarks.table_stats import select  # noqa: E402

TOLERANCE = 0.003
"""CE with the schedule must be within 0.3 points of CE with twice the epochs (issue 12's target)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=__doc__.splitlines()[0])
    p.add_argument("--regimes", default="10pct,full", help="comma-separated regimes (default 10pct,full)")
    p.add_argument("--students", default="cnn_tiny,mlp", help="comma-separated students")
    p.add_argument("--epochs", help="comma-separated epoch counts (default: the table's schedule x1, x2, x4)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per epoch count (default 2)")
    p.add_argument("--jobs", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--out", default=str(table.RESULTS), help="results folder")
    p.add_argument("--run", default="convergence-fashion_mnist", help="run name")
    p.add_argument("--resume", action="store_true", help="keep the finished rows of this run")
    return p.parse_args(argv)


def summarise(rows: list[dict[str, Any]], regime: str, student: str, epochs: list[int]) -> dict[str, Any]:
    """Mean and spread of CE per epoch count, and the paired gap of each count to twice its epochs."""
    mine = select(rows, regime=regime, student=student, method="ce")
    by_e = {
        e: {r["seed"]: r["test_acc"] for r in mine if r["epochs"] == e and r["test_acc"] is not None}
        for e in epochs
    }
    stats = {}
    for e, accs in by_e.items():
        vals = list(accs.values())
        stats[e] = {
            "n": len(vals),
            "mean": statistics.fmean(vals) if vals else None,
            "sd": statistics.stdev(vals) if len(vals) > 1 else None,
        }
    gaps = {}
    for e in epochs:
        if 2 * e not in by_e:
            continue
        seeds = sorted(set(by_e[e]) & set(by_e[2 * e]))
        diffs = [by_e[2 * e][s] - by_e[e][s] for s in seeds]
        if diffs:
            gaps[e] = {
                "n": len(diffs),
                "gain_2x": statistics.fmean(diffs),
                "se": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None,
                "converged": statistics.fmean(diffs) < TOLERANCE,
            }
    shortest = next((e for e in sorted(gaps) if gaps[e]["converged"]), None)
    return {
        "regime": regime,
        "student": student,
        "ce": stats,
        "gap_to_2x": gaps,
        "shortest_converged": shortest,
    }


def stored_plan(
    rows: list[dict[str, Any]], plan: list[tuple[str, str, list[int]]]
) -> list[tuple[str, str, list[int]]]:
    """Every (regime, student) of this run's stored rows and of ``plan``, with all their epoch counts.

    The summary file covers the whole run, so a ``--resume`` call over one student does not drop the others.
    """
    pairs: dict[tuple[str, str], set[int]] = {}
    for regime, student, epochs in plan:
        pairs.setdefault((regime, student), set()).update(epochs)
    for r in rows:
        if r.get("method") == "ce":
            pairs.setdefault((r["regime"], r["student"]), set()).add(int(r["epochs"]))
    return [(regime, student, sorted(e)) for (regime, student), e in pairs.items()]


def render(summaries: list[dict[str, Any]]) -> str:
    """A plain-text table of the summaries."""
    lines = []
    for s in summaries:
        lines.append(
            f"{s['regime']}/{s['student']}: shortest converged schedule {s['shortest_converged']} epochs"
        )
        for e, st in sorted(s["ce"].items()):
            gap = s["gap_to_2x"].get(e)
            mean = f"{100 * st['mean']:.2f}" if st["mean"] is not None else "-"
            sd = f" ± {100 * st['sd']:.2f}" if st["sd"] is not None else ""
            more = ""
            if gap is not None:
                se = f" ± {100 * gap['se']:.2f} SE" if gap["se"] is not None else ""
                verdict = "converged" if gap["converged"] else "not converged"
                more = f"; 2x epochs gains {100 * gap['gain_2x']:+.2f}{se} ({verdict})"
            lines.append(f"  {e:4d} epochs: CE test {mean}{sd} (n={st['n']}){more}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; returns 0."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = Rows(out / f"{args.run}.json", args.resume)
    targs = table.parse_args([])
    pool = TrainPool(rows, args.jobs, args.threads if args.jobs > 1 else None, lambda m: print(m, flush=True))
    plan = []
    try:
        for regime in table._csv(args.regimes):
            base = table.REGIME_SCHEDULES[regime]["epochs"]
            epochs = [int(e) for e in table._csv(args.epochs)] if args.epochs else [base, 2 * base, 4 * base]
            for student in table._csv(args.students):
                exp = table.build_experiment(targs, regime, student)
                for e in epochs:
                    long = dataclasses.replace(
                        exp, student_train=dataclasses.replace(exp.student_train, epochs=e)
                    )
                    for seed in range(args.seeds):
                        pool.submit(long, regime, "ce", None, seed, "cpu", None)
                plan.append((regime, student, epochs))
        pool.drain()
    finally:
        pool.close()
    summaries = [summarise(rows.rows, r, s, e) for r, s, e in stored_plan(rows.rows, plan)]
    text = render(summaries)
    (out / f"{args.run}.summary.json").write_text(json.dumps(clean_json(summaries), indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
