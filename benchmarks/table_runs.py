"""Full trainings and the proxy-fidelity set of the Table-3 benchmark (rows kept in a resumable JSON file)."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import table_methods as tm
from benchmarks.table_stats import HANDCRAFTED, rank_correlations, select
from trainers.rejection import Rejected

PROXY_KEYS = ("ce", "sharpness_gap", "cka_gap", "fitness", "proxy_acc")
"""Proxy quantities of the fidelity set (``fitness`` = val_ce + sharpness_gap + cka_gap)."""


class Rows:
    """The run's rows, rewritten to ``<run>.json`` after every full training (resumable)."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = json.loads(path.read_text()) if resume and path.exists() else []

    def find(self, **where: Any) -> dict[str, Any] | None:
        """The row matching every field of ``where``, if any."""
        hits = select(self.rows, **where)
        return dict(hits[0]) if hits else None

    def add(self, row: dict[str, Any]) -> None:
        """Append ``row`` and rewrite the file atomically."""
        self.rows.append(row)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.rows, indent=1))
        os.replace(tmp, self.path)


def train_row(
    rows: Rows, exp: Any, regime: str, method: str, spec: Any, seed: int, device: str, log: Any
) -> dict[str, Any]:
    """One full training through ``trainers.distill`` (or its finished row when resuming)."""
    from trainers.distill import distill

    spec_d = spec.to_dict() if spec is not None else None
    key = {"regime": regime, "student": exp.student, "method": method, "seed": seed, "spec": spec_d}
    done = rows.find(**key)
    if done is not None:
        return done
    t0 = time.perf_counter()
    try:
        res = distill(exp, spec, seed=seed, device=device)
    except Rejected as exc:  # the divergence guard stopped the full run: a failed run, kept as such
        res = {"test_acc": None, "val_acc": None, "wall_s": time.perf_counter() - t0, "failed": str(exc)}
    row = {
        **key,
        "teacher": exp.teacher,
        "test_acc": None if res["test_acc"] is None else float(res["test_acc"]),
        "val_acc": None if res["val_acc"] is None else float(res["val_acc"]),
        "epochs": exp.student_train.epochs,
        "wall_s": float(res["wall_s"]),
        "formula": spec.formula() if spec is not None else "ce",
    }
    if "failed" in res:
        row["failed"] = res["failed"]
    rows.add(row)
    acc = "FAILED " + row["failed"] if "failed" in row else f"test {100 * row['test_acc']:.2f}%"
    log(f"  {regime}/{exp.student} {method:9s} seed {seed}: {acc} ({row['wall_s']:.1f} s) {row['formula']}")
    return row


def build_fidelity(
    args: argparse.Namespace,
    exp: Any,
    regime: str,
    specs: dict,
    studies: dict,
    fit_cache: dict,
    evaluator: Any,
    rows: Rows,
    log: Any,
) -> dict[str, Any]:
    """Proxy objectives and full-training accuracy (first seed) of known, tuned, random, searched distillers.

    The table's distillers come first; completed trials of the random and KD-Zero studies, spread evenly over
    their fitness ranking, are fully trained (method ``extra``) until ``--fidelity`` distillers are reached.
    """
    seed = 0
    points: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(source: str, method: str, spec: Any) -> None:
        key = spec.to_json() if spec is not None else "ce"
        if key in seen:
            return
        seen.add(key)
        if key not in fit_cache:
            fit_cache[key] = tm.evaluate_fitness(evaluator, spec)
        row = train_row(rows, exp, regime, method, spec, seed, args.device, log)
        acc = math.nan if row["test_acc"] is None else row["test_acc"]
        points.append(
            {
                "source": source,
                "formula": row["formula"],
                "spec": row["spec"],
                "test_acc": acc,
                **{k: fit_cache[key][k] for k in PROXY_KEYS},
            }
        )

    for method, spec in specs.items():
        add("known" if method in ("ce", *HANDCRAFTED) else method, method, spec)
    pool = [(name, t) for name in ("kd-zero", "rand-kd") for t in tm.completed(studies[name])]
    pool = [(name, t) for name, t in pool if tm.trial_spec(t).to_json() not in seen]
    pool.sort(key=lambda p: tm.trial_fitness(p[1])["fitness"])
    want = max(0, args.fidelity - len(points))
    if want and pool:
        idx = sorted({round(i * (len(pool) - 1) / max(1, want - 1)) for i in range(min(want, len(pool)))})
        for i in idx:
            name, t = pool[i]
            add("search" if name == "kd-zero" else "random", "extra", tm.trial_spec(t))
    corr = rank_correlations({k: [p[k] for p in points] for k in PROXY_KEYS}, [p["test_acc"] for p in points])
    return {"points": points, "correlations": corr}


def clean_json(obj: Any) -> Any:
    """NaN / inf become None so the JSON is standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj
