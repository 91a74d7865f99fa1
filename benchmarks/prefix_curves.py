"""Learning curves of a table run's full trainings: when do distillers rank as they do at the end?

A proxy or verification run stopped after a fraction ``f`` of the schedule is the full run's prefix (same
seed, the same learning rate at every step), so the validation accuracy a full run records after each epoch
is what such a run would measure, at every ``f`` at once. ``benchmarks.table`` keeps that curve in its rows
since 2026-12-05 (``epoch_val_acc``); this retrains chosen rows made before, with the same spec, seed,
schedule, teacher and thread count, keeps their curves in ``<run>-curves.json``, and reports, per fraction,
each method's mean validation accuracy and the paired differences between methods next to their test
accuracy, and whether the retrained run reproduced the table's row::

    python -m benchmarks.prefix_curves --run table3v4-fashion_mnist --regime full --student cnn_tiny
        --methods kd,dist,ce --seeds 0,1 --threads 1

It resumes: finished rows are kept, and an interrupted training continues from its per-epoch checkpoint
(``<run>-curves-checkpoints/``). ``--summary`` only reports. ``--table-args`` passes the table's own options
(``--quick --dataset digits ...``) when the run was made with other than the defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.setting_cli import parse_setting_args, setting_parser, table_namespace
from benchmarks.table_runs import Rows, clean_json, row_key, train_row, write_json
from benchmarks.table_stats import PREFIX_FRACTIONS, paired_difference


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; a bad value is refused naming it."""
    p = setting_parser(
        "python -m benchmarks.prefix_curves", __doc__.splitlines()[0], "full", "rows are retrained"
    )
    p.add_argument("--methods", default="kd,dist,ce", help="comma-separated methods (default kd,dist,ce)")
    args = parse_setting_args(p, argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if not args.methods:
        p.error("--methods: give at least one method")
    return args


def table_row(
    rows: list[dict[str, Any]], regime: str, student: str, method: str, seed: int, epochs: int
) -> dict:
    """The table's row of one training: the last one written for it at the schedule's length.

    Raises:
        LookupError: The run has no such row (named).
    """
    hits = [
        r
        for r in rows
        if (r["regime"], r["student"], r["method"], r["seed"], r["epochs"])
        == (regime, student, method, seed, epochs)
    ]
    if not hits:
        raise LookupError(f"the run has no {regime}/{student} {method} seed {seed} row of {epochs} epochs")
    return hits[-1]


def summarise(
    curves: list[dict[str, Any]], table: list[dict[str, Any]], methods: list[str], epochs: int
) -> dict[str, Any]:
    """Per fraction: mean validation accuracy per method and paired differences per pair of methods.

    Args:
        curves: The retrained rows (each with ``epoch_val_acc``).
        table: The table's rows, to compare the retrained test accuracy with.
        methods: Methods in display order.
        epochs: Length of the schedule.

    Returns:
        ``{"fractions": [...], "methods": {m: {"seeds", "val": {f: mean}, "test", "stored_test",
        "max_repro_diff"}}, "pairs": {"a - b": {f or "test": PairedDiff dict}}}``.
    """
    names = [f"{100 * f:g}%" for f in PREFIX_FRACTIONS]
    index = [max(1, math.ceil(f * epochs - 1e-9)) - 1 for f in PREFIX_FRACTIONS]
    per: dict[str, dict[int, dict[str, float]]] = {}  # method -> seed -> {fraction name or "test": value}
    out_m: dict[str, Any] = {}
    for m in methods:
        mine = [
            r
            for r in curves
            if r["method"] == m
            and r.get("test_acc") is not None
            and len(r.get("epoch_val_acc") or []) == epochs
        ]
        if not mine:
            continue
        per[m] = {
            r["seed"]: {
                **{n: r["epoch_val_acc"][i] for n, i in zip(names, index, strict=True)},
                "test_acc": r["test_acc"],
            }
            for r in mine
        }
        stored = {
            r["seed"]: table_row(table, r["regime"], r["student"], m, r["seed"], epochs)["test_acc"]
            for r in mine
        }
        diffs = [abs(r["test_acc"] - stored[r["seed"]]) for r in mine if stored[r["seed"]] is not None]
        out_m[m] = {
            "seeds": sorted(per[m]),
            "val": {n: statistics.fmean(v[n] for v in per[m].values()) for n in names},
            "test": statistics.fmean(v["test_acc"] for v in per[m].values()),
            "stored_test": statistics.fmean(s for s in stored.values() if s is not None)
            if any(s is not None for s in stored.values())
            else None,
            "max_repro_diff": max(diffs) if diffs else None,
        }
    flat = [{"method": m, "seed": seed, **v} for m, seeds in per.items() for seed, v in seeds.items()]
    pairs: dict[str, Any] = {}
    for a, b in itertools.combinations(list(per), 2):
        pairs[f"{a} - {b}"] = {
            n: paired_difference(flat, a, b, key="test_acc" if n == "test" else n)._asdict()
            for n in [*names, "test"]
        }
    return {"fractions": names, "methods": out_m, "pairs": pairs}


def render(summary: dict[str, Any], title: str) -> str:
    """The summary as markdown: one line per fraction, validation % per method and paired differences."""
    methods = list(summary["methods"])
    pairs = list(summary["pairs"])

    def diff(d: dict[str, Any]) -> str:
        if not d["n"]:
            return "-"
        se = "" if math.isnan(d["se"]) else f" ± {100 * d['se']:.2f}"
        return f"{100 * d['mean']:+.2f}{se}"

    head = ["fraction of the schedule", *[f"{m} val %" for m in methods], *pairs]
    lines = [f"#### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in summary["fractions"]:
        cells = [f"{100 * summary['methods'][m]['val'][n]:.2f}" for m in methods]
        lines.append("| " + " | ".join([n, *cells, *[diff(summary["pairs"][p][n]) for p in pairs]]) + " |")
    cells = [f"{100 * summary['methods'][m]['test']:.2f}" for m in methods]
    lines.append(
        "| " + " | ".join(["test (end)", *cells, *[diff(summary["pairs"][p]["test"]) for p in pairs]]) + " |"
    )
    lines.append("")
    for m, s in summary["methods"].items():
        repro = (
            "no stored row"
            if s["max_repro_diff"] is None
            else f"largest |retrained - table| {100 * s['max_repro_diff']:.2f} pt"
        )
        lines.append(f"- {m}: seeds {s['seeds']}; test {100 * s['test']:.2f}% retrained; {repro}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Retrain the asked rows with their curves (unless ``--summary``), then report."""
    import torch

    from benchmarks import table
    from spaces import DistillerSpec

    args = parse_args(argv)
    targs, err = table_namespace(args)
    if targs is None:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    source = out / f"{args.run}.json"
    if not source.is_file():
        print(f"error: no rows of run {args.run!r}: {source} does not exist", file=sys.stderr)
        return 2
    rows_table = json.loads(source.read_text())
    exp = table.build_experiment(targs, args.regime, args.student)
    epochs = exp.student_train.epochs
    try:
        wanted = [
            (m, s, table_row(rows_table, args.regime, args.student, m, s, epochs))
            for s in args.seeds
            for m in args.methods
        ]
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    curves = Rows(out / f"{args.run}-curves.json", resume=True)
    if not args.summary:
        torch.set_num_threads(args.threads)
        meta = table.load_setting(exp, args.device, Path(targs.teacher_archive))[1]
        ident = str(meta["identity"])
        checkpoints = out / f"{args.run}-curves-checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        for method, seed, stored in wanted:
            spec = DistillerSpec.from_json(json.dumps(stored["spec"])) if stored["spec"] is not None else None
            if spec is not None and stored.get("teacher_id") not in (None, ident):
                print(
                    f"error: the {method} seed {seed} row was trained from teacher {stored['teacher_id']}, "
                    f"and the cached teacher is {ident}",
                    file=sys.stderr,
                )
                return 2
            key = row_key(exp, args.regime, method, spec, seed, ident)
            if curves.find(**key) is None:
                print(
                    f"training {args.regime}/{args.student} {method} seed {seed} ({epochs} epochs) ...",
                    flush=True,
                )
            train_row(curves, exp, args.regime, method, spec, seed, args.device, print, checkpoints, ident)
    mine = [r for r in curves.rows if r["regime"] == args.regime and r["student"] == args.student]
    summary = summarise(mine, rows_table, args.methods, epochs)
    title = (
        f"{args.run}, {args.regime}/{args.student}: validation accuracy along the full runs ({epochs} epochs)"
    )
    text = render(summary, title)
    path = out / f"{args.run}-curves.summary.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**report, f"{args.regime}/{args.student}": clean_json(summary)})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
