"""Proxy runs of distillers over several seeds and thread counts, on the setting of a stored study.

Measures how much a proxy verdict depends on the seed and on torch's intra-op thread count (float sums in
another order). Rows go to ``--out`` as JSON lines (appended)::

    python -m benchmarks.proxy_seeds \
        --study-db benchmarks/results/table3v4-fashion_mnist-10pct-cnn_tiny-rand-kd.db \
        --methods kd,ce --seeds 0,1,2,3,4 --threads 1,2 --out benchmarks/results/proxy-seeds.jsonl

``--summary`` reads those rows instead of training and prints, per thread count and fraction, each method's
proxy accuracy over seeds and what a proxy of k seeds (``proxy.seeds`` = k, the mean of k runs on the same
seeds for every candidate) would conclude, over every k-subset of the measured seeds: how often the method
passes issue 12's bar (proxy accuracy at least CE's minus 5 points) and, with ``--finals`` (a benchmarks.table
rows file), how often each pair of methods is ordered as their mean final test accuracies are.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from spaces import KNOWN_DISTILLERS
from study.worker import load_existing_study, stored_config
from trainers import Rejected
from trainers.proxy import ProxyEvaluator

BAR = 0.05
"""Issue 12's bar: a known distiller's proxy accuracy is at least CE's proxy accuracy minus 5 points."""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarise(
    rows: list[dict[str, Any]], finals: dict[str, float] | None = None, ks: tuple[int, ...] = (1, 2, 3)
) -> list[dict[str, Any]]:
    """Per (threads, fraction) group: per-method accuracies and the verdicts of k-seed proxies.

    A rejected run counts as accuracy 0 (the candidate is out). ``finals`` maps a method to its mean final
    test accuracy; pairs of methods that both have one are checked for order.
    """
    groups: dict[tuple[int, float, float], dict[str, dict[int, float]]] = {}
    for r in rows:
        acc = float(r["acc"]) if "acc" in r else 0.0
        key = (int(r["threads"]), float(r["fraction"]), float(r.get("warmup_epochs") or 0.0))
        groups.setdefault(key, {}).setdefault(r["method"], {})[int(r["seed"])] = acc
    out = []
    for (threads, fraction, warmup), by_method in sorted(groups.items()):
        ce = by_method.get("ce", {})
        methods = {}
        for name, accs in sorted(by_method.items()):
            seeds = sorted(accs)
            entry: dict[str, Any] = {
                "seeds": seeds,
                "acc": [accs[s] for s in seeds],
                "mean": _mean([accs[s] for s in seeds]),
                "min": min(accs.values()),
            }
            if name != "ce" and ce:
                common = sorted(set(accs) & set(ce))
                for k in ks:
                    subsets = list(itertools.combinations(common, k))
                    if not subsets:
                        continue
                    ok = [
                        _mean([accs[s] for s in sub]) >= _mean([ce[s] for s in sub]) - BAR for sub in subsets
                    ]
                    entry[f"passes_bar_k{k}"] = sum(ok) / len(ok)
            methods[name] = entry
        pairs = {}
        if finals:
            ranked = [m for m in by_method if m in finals]
            for a, b in itertools.combinations(sorted(ranked), 2):
                if finals[a] == finals[b]:
                    continue
                common = sorted(set(by_method[a]) & set(by_method[b]))
                want = finals[a] > finals[b]
                agree = {}
                for k in ks:
                    subsets = list(itertools.combinations(common, k))
                    if subsets:
                        hits = [
                            (_mean([by_method[a][s] for s in sub]) > _mean([by_method[b][s] for s in sub]))
                            == want
                            for sub in subsets
                        ]
                        agree[f"k{k}"] = sum(hits) / len(hits)
                pairs[f"{a} vs {b}"] = {"final_diff": finals[a] - finals[b], **agree}
        out.append(
            {
                "threads": threads,
                "fraction": fraction,
                "warmup_epochs": warmup or None,
                "methods": methods,
                "pairs": pairs,
            }
        )
    return out


def render(summary: list[dict[str, Any]]) -> str:
    """Plain-text lines of :func:`summarise`."""
    lines = []
    for g in summary:
        warm = g.get("warmup_epochs")
        warm_text = f", warm-up {warm:g} epochs" if warm else ""
        lines.append(f"threads {g['threads']}, fraction {g['fraction']:g}{warm_text}:")
        for name, e in g["methods"].items():
            accs = " ".join(f"{100 * a:.1f}" for a in e["acc"])
            bars = ", ".join(f"k={k[-1]} {100 * v:.0f}%" for k, v in e.items() if k.startswith("passes_bar"))
            more = f"; passes the CE-5 bar: {bars}" if bars else ""
            lines.append(f"  {name:8s} seeds {e['seeds']}: {accs} (mean {100 * e['mean']:.1f}){more}")
        for pair, p in g["pairs"].items():
            ks = ", ".join(f"k={k[1:]} {100 * v:.0f}%" for k, v in p.items() if k.startswith("k"))
            lines.append(f"  order {pair} (final {100 * p['final_diff']:+.2f} pt) right: {ks}")
    return "\n".join(lines)


def final_means(path: str) -> dict[str, float]:
    """Mean final test accuracy per method of a benchmarks.table rows file."""
    by: dict[str, list[float]] = {}
    for r in json.loads(Path(path).read_text()):
        if r.get("test_acc") is not None:
            by.setdefault(r["method"], []).append(float(r["test_acc"]))
    return {m: statistics.fmean(v) for m, v in by.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study-db", help="SQLite file of a benchmark study (its kdzero_config is used)")
    p.add_argument("--study", default="rand-kd", help="study name in --study-db (default rand-kd)")
    p.add_argument("--methods", default="kd,ce", help="known distiller names or ce (comma-separated)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="trial seeds (comma-separated)")
    p.add_argument("--threads", default="1", help="torch thread counts (comma-separated)")
    p.add_argument("--fraction", type=float, default=None, help="proxy fraction (default: the study's)")
    p.add_argument(
        "--warmup-epochs", type=float, help="the student schedule's warm-up instead of the study's (recorded)"
    )
    p.add_argument("--out", required=True, help="JSON lines file to append to (or to read with --summary)")
    p.add_argument("--summary", action="store_true", help="summarise the rows of --out instead of training")
    p.add_argument(
        "--finals", help="benchmarks.table rows (JSON) whose mean test accuracies order the methods"
    )
    args = p.parse_args(argv)
    if args.summary:
        rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
        print(render(summarise(rows, final_means(args.finals) if args.finals else None)))
        return 0
    if not args.study_db:
        p.error("--study-db is required unless --summary")
    study = load_existing_study(f"sqlite:///{args.study_db}", args.study)
    cfg = stored_config(study)  # the study's own reader of its stored configuration
    exp = cfg.experiment
    if args.warmup_epochs is not None:
        exp = dataclasses.replace(
            exp, student_train=dataclasses.replace(exp.student_train, warmup_epochs=args.warmup_epochs)
        )
    evaluator = ProxyEvaluator(exp, device="cpu")
    teacher_id = evaluator.parts.teacher_meta.get("identity")  # the checkpoint's content hash
    fraction = args.fraction or cfg.experiment.proxy.fraction
    with open(args.out, "a") as out:
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for name in args.methods.split(","):
                spec = None if name == "ce" else KNOWN_DISTILLERS[name]
                for seed in (int(s) for s in args.seeds.split(",")):
                    t0 = time.process_time()
                    row: dict = {
                        "method": name,
                        "seed": seed,
                        "threads": threads,
                        "fraction": fraction,
                        "teacher": teacher_id,
                        "warmup_epochs": exp.student_train.warmup_epochs,
                    }
                    try:
                        fit = evaluator.evaluate(spec, seed=seed, fraction=fraction)
                        row.update(acc=fit.accuracy, curve=[list(c) for c in fit.curve])
                    except Rejected as exc:
                        row["rejected"] = f"{exc.reason}: {exc.detail}"
                    row["cpu_s"] = round(time.process_time() - t0, 2)
                    print(json.dumps(row), flush=True)
                    out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
