"""Does a short *whole* schedule rank distillers better than the same-cost prefix of the full one?

The verification stage trains each candidate for a fraction ``f`` of the full schedule: the full run's prefix,
stopped while the learning rate is still high. This trains the distillers of a table setting's fidelity set
with a schedule of their own, ``f x epochs`` long (the same cost), whose cosine decay runs to its end (the
warm-up keeps its length in epochs), and compares how well each ranks the distillers' full-training test
accuracy (Kendall tau over the fidelity set, as ``benchmarks.table`` reports for the prefix)::

    python -m benchmarks.short_schedule --run table3v4-fashion_mnist --regime 10pct --student cnn_tiny
        --fraction 0.25 --seeds 0,1 --threads 1

Runs are kept in ``<run>-short-schedule.json`` as they finish (``--summary`` reports without training); the
prefix's figures come from the table's ``<run>.summary.json`` (``verify_acc``: the prefix run on the
verification seed). ``--table-args`` passes the table's own options when the run was made with others than
the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.setting_cli import parse_setting_args, setting_parser, table_namespace
from benchmarks.table_runs import clean_json, write_json
from benchmarks.table_stats import rank_correlations
from spaces import DistillerSpec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; a bad value is refused naming it."""
    p = setting_parser(
        "python -m benchmarks.short_schedule", __doc__.splitlines()[0], "10pct", "fidelity set is trained"
    )
    p.add_argument("--fraction", type=float, default=0.25, help="length of the short schedule (default 0.25)")
    p.add_argument(
        "--methods",
        help="comma-separated table methods trained instead of the fidelity set (test accuracy: mean over "
        "the table's seeds), e.g. ce,kd,dist,at,kd-tuned for a setting whose fidelity set is not done",
    )
    args = parse_setting_args(p, argv)
    args.methods = [m for m in (args.methods or "").split(",") if m]
    if not 0.0 < args.fraction <= 1.0:
        p.error(f"--fraction must be in (0, 1], got {args.fraction}")
    return args


def short_experiment(exp: Any, fraction: float) -> Any:
    """``exp`` with a student schedule of ``ceil(fraction x epochs)`` epochs (warm-up kept in epochs)."""
    st = exp.student_train
    return dataclasses.replace(
        exp, student_train=dataclasses.replace(st, epochs=math.ceil(fraction * st.epochs))
    )


def method_points(
    rows: list[dict[str, Any]], regime: str, student: str, methods: list[str], epochs: int
) -> list[dict[str, Any]]:
    """Points of table methods: each one's current spec (its last row) and mean test accuracy over its seeds.

    Raises:
        LookupError: A method has no finished row of the schedule (named).
    """
    points = []
    for m in methods:
        mine = [
            r
            for r in rows
            if (r["regime"], r["student"], r["method"], r["epochs"]) == (regime, student, m, epochs)
        ]
        if not mine:
            raise LookupError(f"no {regime}/{student} {m} row of {epochs} epochs")
        spec = mine[-1]["spec"]
        accs = [r["test_acc"] for r in mine if r["spec"] == spec and r["test_acc"] is not None]
        points.append(
            {
                "formula": mine[-1]["formula"],
                "spec": spec,
                "test_acc": statistics.fmean(accs) if accs else None,
                "verify_acc": None,
                "teacher_id": mine[-1].get("teacher_id"),
                "method": m,
                "seeds": len(accs),
            }
        )
    return points


def summarise(
    points: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    seeds: list[int],
    prefix: dict[tuple[str, int], float] | None = None,
    verify_seed: int = 1,
) -> dict[str, Any]:
    """Kendall tau against test accuracy of the prefix and of the short schedule, per seed and their means.

    Args:
        points: Distillers (``formula``, ``spec``, ``test_acc``, ``verify_acc``: ``benchmarks.table`` summary
            points, or :func:`method_points`).
        runs: Short-schedule runs (``spec``, ``seed``, ``val_acc``; ``None`` when rejected).
        seeds: Seeds reported.
        prefix: Prefix runs of the same length found in the setting's studies, by (canonical spec key or
            ``"ce"``, seed); a point's ``verify_acc`` stands for its prefix on ``verify_seed`` where none is.
        verify_seed: The seed of ``verify_acc``.

    Returns:
        ``{"n": points, "correlations": rank_correlations entries by name, "points": [...]}``; a distiller
        whose run was rejected (or is missing) counts as nan and is left out of that correlation.
    """
    short = {(json.dumps(r["spec"], sort_keys=True), r["seed"]): r["val_acc"] for r in runs}
    prefix = prefix or {}

    def value(v: float | None) -> float:
        return math.nan if v is None else float(v)

    def mean(vals: list[float]) -> float:
        return statistics.fmean(vals) if all(math.isfinite(v) for v in vals) else math.nan

    table = []
    for p in points:
        key = json.dumps(p["spec"], sort_keys=True)
        ckey = DistillerSpec.from_dict(p["spec"]).canonical_key() if p["spec"] is not None else "ce"
        pre = [value(prefix.get((ckey, s), p.get("verify_acc") if s == verify_seed else None)) for s in seeds]
        sho = [value(short.get((key, s))) for s in seeds]
        table.append(
            {
                "formula": p["formula"],
                "test_acc": value(p["test_acc"]),
                **{f"prefix seed {s}": v for s, v in zip(seeds, pre, strict=True)},
                **{f"short seed {s}": v for s, v in zip(seeds, sho, strict=True)},
                "prefix mean": mean(pre),
                "short mean": mean(sho),
            }
        )
    names = [*[f"{k} seed {s}" for k in ("prefix", "short") for s in seeds], "prefix mean", "short mean"]
    corr = rank_correlations({n: [t[n] for t in table] for n in names}, [t["test_acc"] for t in table])
    return {"n": len(table), "correlations": corr, "points": table}


def study_prefix(
    out: Path, run: str, regime: str, student: str, exp: Any, teacher: str, fraction: float, seeds: list[int]
) -> dict[tuple[str, int], float]:
    """Prefix runs at ``fraction`` that the setting's searches verified (any study file of the setting).

    Returns:
        ``{(canonical spec key or "ce", seed): validation accuracy}``.
    """
    from benchmarks.table_verify import SharedVerification, verification_runs

    shared = SharedVerification(None, out / f"{run}-{regime}-{student}", exp, teacher)
    sources = shared.sources(pattern=f"{run}-*{regime}-{student}-*.db")
    return {
        (key, seed): float(t.value)
        for seed in seeds
        for key, (t, _where) in verification_runs(sources, fraction, seed).items()
    }


def render(summary: dict[str, Any], title: str) -> str:
    """The summary as markdown: the points, then the Kendall tau of each quantity."""
    names = list(summary["correlations"])
    lines = [f"#### {title}", "", "| distiller | test % | " + " | ".join(f"{n} %" for n in names) + " |"]
    lines.append("|" + "---|" * (2 + len(names)))

    def pct(v: float) -> str:
        return "-" if not math.isfinite(v) else f"{100 * v:.2f}"

    for t in summary["points"]:
        lines.append(
            f"| `{t['formula']}` | {pct(t['test_acc'])} | " + " | ".join(pct(t[n]) for n in names) + " |"
        )
    taus = ", ".join(
        f"{n} {c['kendall_tau']:.3f} (n {c['n']})" if math.isfinite(c["kendall_tau"]) else f"{n} n/a"
        for n, c in summary["correlations"].items()
    )
    lines += ["", f"Kendall tau against test accuracy: {taus}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Train the fidelity set with the short schedule (unless ``--summary``), then report."""
    import torch

    from benchmarks import table
    from spaces import DistillerSpec
    from trainers import Rejected
    from trainers.proxy import ProxyEvaluator

    args = parse_args(argv)
    targs, err = table_namespace(args)
    if targs is None:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    source = out / f"{args.run}.summary.json"
    setting = f"{args.regime}/{args.student}"
    report = json.loads(source.read_text()) if source.is_file() else {}
    full = table.build_experiment(targs, args.regime, args.student)
    if args.methods:
        rows_path = out / f"{args.run}.json"
        rows = json.loads(rows_path.read_text()) if rows_path.is_file() else []
        try:
            points = method_points(rows, args.regime, args.student, args.methods, full.student_train.epochs)
        except LookupError as exc:
            print(f"error: {exc} in {rows_path}", file=sys.stderr)
            return 2
    else:
        fid = (report.get("settings", {}).get(setting) or {}).get("fidelity")
        if not fid:
            print(
                f"error: {source} has no fidelity set of {setting} (--methods trains table methods)",
                file=sys.stderr,
            )
            return 2
        points = fid["points"]
    path = out / f"{args.run}-short-schedule.json"
    runs: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
    exp = short_experiment(full, args.fraction)
    epochs = exp.student_train.epochs

    def mine(r: dict[str, Any]) -> bool:
        return (r["regime"], r["student"], r["epochs"]) == (args.regime, args.student, epochs)

    want = (report.get("settings", {}).get(setting) or {}).get("teacher_identity")
    want = want or next((p["teacher_id"] for p in points if p.get("teacher_id")), None)
    ident: str | None = want
    if not args.summary:
        torch.set_num_threads(args.threads)
        ident = str(table.load_setting(exp, args.device, Path(targs.teacher_archive))[1]["identity"])
        if want and want != ident:
            print(
                f"error: {setting} was measured with teacher {want}; the cached one is {ident}",
                file=sys.stderr,
            )
            return 2
        evaluator = ProxyEvaluator(exp, device=args.device)
        for seed in args.seeds:
            for p in points:
                done = {(json.dumps(r["spec"], sort_keys=True), r["seed"]) for r in runs if mine(r)}
                if (json.dumps(p["spec"], sort_keys=True), seed) in done:
                    continue
                spec = DistillerSpec.from_dict(p["spec"]) if p["spec"] is not None else None
                t0 = time.process_time()
                try:
                    acc: float | None = float(evaluator.evaluate(spec, seed=seed, fraction=1.0).accuracy)
                    why = None
                except Rejected as exc:
                    acc, why = None, f"{exc.reason}: {exc.detail}"
                row = {"regime": args.regime, "student": args.student, "epochs": epochs, "seed": seed,
                       "spec": p["spec"], "formula": p["formula"], "val_acc": acc,
                       "cpu_s": time.process_time() - t0, "teacher_id": ident}  # fmt: skip
                if why:
                    row["rejected"] = why
                runs.append(row)
                write_json(path, runs)
                shown = "rejected " + why if why else f"val {100 * acc:.2f}%"
                print(
                    f"{setting} {epochs} epochs seed {seed}: {shown} ({row['cpu_s']:.0f} CPU s) "
                    + p["formula"]
                )
    found = {}
    if ident is not None:
        found = study_prefix(out, args.run, args.regime, args.student, full, ident, args.fraction, args.seeds)
    summary = summarise(points, [r for r in runs if mine(r)], args.seeds, found)
    title = (
        f"{args.run}, {setting}: a whole {epochs}-epoch schedule ({args.fraction:g} of the full one) against "
        "the prefix of the full schedule"
    )
    print(render(summary, title))
    key = f"{setting}@{args.fraction:g}" + (f"/{','.join(args.methods)}" if args.methods else "")
    summ_path = out / f"{args.run}-short-schedule.summary.json"
    old = json.loads(summ_path.read_text()) if summ_path.is_file() else {}
    write_json(summ_path, {**old, key: clean_json(summary)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
