"""Full trainings and the proxy-fidelity set of the Table-3 benchmark (rows kept in a resumable JSON file)."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import table_methods as tm
from benchmarks.table_stats import CONVERGENCE, HANDCRAFTED, rank_correlations, select
from study.sampler import trial_spec
from trainers.rejection import Rejected

PROXY_KEYS = ("ce", "sharpness_gap", "cka_gap", "fitness", "proxy_acc", "verify_acc")
"""Proxy quantities of the fidelity set (``fitness`` = val_ce + sharpness_gap + cka_gap; ``verify_acc``: the
validation accuracy of a verification-fidelity run, seed 1)."""


class Rows:
    """The run's rows, rewritten to ``<run>.json`` after every full training (resumable, thread-safe)."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = json.loads(path.read_text()) if resume and path.exists() else []
        self._lock = threading.Lock()

    def find(self, **where: Any) -> dict[str, Any] | None:
        """The row matching every field of ``where``, if any."""
        with self._lock:
            hits = select(self.rows, **where)
        return dict(hits[0]) if hits else None

    def add(self, row: dict[str, Any]) -> None:
        """Append ``row`` and rewrite the file atomically."""
        with self._lock:
            self.rows.append(row)
            write_json(self.path, self.rows)


def write_json(path: Path, obj: Any, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON through a temporary file and an atomic rename (no reader sees half a file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=sort_keys))
    os.replace(tmp, path)


def row_key(exp: Any, regime: str, method: str, spec: Any, seed: int) -> dict[str, Any]:
    """The fields that identify a full training among the rows."""
    spec_d = spec.to_dict() if spec is not None else None
    return {
        "regime": regime,
        "student": exp.student,
        "method": method,
        "seed": seed,
        "spec": spec_d,
        "epochs": exp.student_train.epochs,
    }


def current_rows(
    rows: list[dict[str, Any]], regime: str, student: str, specs: dict[str, Any], epochs: int
) -> list[dict[str, Any]]:
    """The rows of one (regime, student) that belong to the current plan.

    A resumed run keeps every row it ever wrote, but a method's statistics use only the rows of its current
    spec and schedule: a verification that chose another distiller (e.g. after a change of the candidate
    rule), or another ``--epochs``, leaves older rows in the file as history, not in the table. ``ce-2x``
    rows count at twice the epochs; ``extra`` (fidelity) rows at the schedule's epochs, matched by spec
    where they are used.
    """
    want = {m: (s.to_dict() if s is not None else None) for m, s in specs.items()}
    out = []
    for r in rows:
        if r["regime"] != regime or r["student"] != student:
            continue
        m = r["method"]
        if m == CONVERGENCE:
            ok = r["spec"] is None and r["epochs"] == 2 * epochs
        elif m == "extra":
            ok = r["epochs"] == epochs
        else:
            ok = m in want and r["spec"] == want[m] and r["epochs"] == epochs
        if ok:
            out.append(r)
    return out


def run_training(exp: Any, regime: str, method: str, spec: Any, seed: int, device: str) -> dict[str, Any]:
    """One full training through ``trainers.distill``; its row (``test_acc`` None when it failed)."""
    from trainers.distill import distill

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        res = distill(exp, spec, seed=seed, device=device)
    except Rejected as exc:  # the divergence guard stopped the full run: a failed run, kept as such
        res = {"test_acc": None, "val_acc": None, "wall_s": time.perf_counter() - t0, "failed": str(exc)}
    row = {
        **row_key(exp, regime, method, spec, seed),
        "teacher": exp.teacher,
        "test_acc": None if res["test_acc"] is None else float(res["test_acc"]),
        "val_acc": None if res["val_acc"] is None else float(res["val_acc"]),
        "wall_s": float(res["wall_s"]),
        # CPU seconds of this process: unlike wall_s, not inflated on a shared machine or a paused job
        "cpu_s": time.process_time() - c0,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "formula": spec.formula() if spec is not None else "ce",
    }
    if "failed" in res:
        row["failed"] = res["failed"]
    return row


def _log_row(row: dict[str, Any], log: Any) -> None:
    acc = "FAILED " + row["failed"] if "failed" in row else f"test {100 * row['test_acc']:.2f}%"
    log(
        f"  {row['regime']}/{row['student']} {row['method']:9s} seed {row['seed']}: {acc} "
        f"({row['wall_s']:.1f} s) {row['formula']}"
    )


def train_row(
    rows: Rows, exp: Any, regime: str, method: str, spec: Any, seed: int, device: str, log: Any
) -> dict[str, Any]:
    """One full training in this process (or its finished row when resuming)."""
    done = rows.find(**row_key(exp, regime, method, spec, seed))
    if done is not None:
        return done
    row = run_training(exp, regime, method, spec, seed, device)
    rows.add(row)
    _log_row(row, log)
    return row


def _init_job(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class TrainPool:
    """Full trainings run by ``jobs`` spawned processes while the main process goes on (``jobs`` 1: inline).

    Each finished row is added to ``rows`` (and so to the JSON file) as soon as its process returns it;
    ``drain`` waits for every submitted training and re-raises the first error.

    Args:
        rows: Where finished rows go; a training whose row is already there is not submitted.
        jobs: Training processes.
        threads: Torch threads of each process (``None``: CPU cores // jobs).
        log: Progress lines.
    """

    def __init__(self, rows: Rows, jobs: int, threads: int | None, log: Any) -> None:
        self.rows, self.jobs, self.log = rows, jobs, log
        self._pending: dict[str, Future] = {}
        self._executor: ProcessPoolExecutor | None = None
        if jobs > 1:
            per = threads or max(1, (os.cpu_count() or 1) // jobs)
            self._executor = ProcessPoolExecutor(
                jobs, mp_context=mp.get_context("spawn"), initializer=_init_job, initargs=(per,)
            )

    def submit(self, exp: Any, regime: str, method: str, spec: Any, seed: int, device: str) -> None:
        """Train ``method`` (``spec``) with ``seed`` unless its row exists or it is already submitted."""
        key = row_key(exp, regime, method, spec, seed)
        tag = json.dumps(key, sort_keys=True)
        if tag in self._pending or self.rows.find(**key) is not None:
            return
        if self._executor is None:
            train_row(self.rows, exp, regime, method, spec, seed, device, self.log)
            return
        fut = self._executor.submit(run_training, exp, regime, method, spec, seed, device)
        fut.add_done_callback(self._done)
        self._pending[tag] = fut

    def _done(self, fut: Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        row = fut.result()
        self.rows.add(row)
        _log_row(row, self.log)

    def drain(self) -> None:
        """Wait for every submitted training; the first failure is raised (its row is not written)."""
        futures = list(self._pending.values())
        self._pending.clear()
        for fut in futures:
            fut.result()

    def close(self) -> None:
        """Stop the processes (pending trainings are cancelled)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


FIDELITY_SEED = 0
"""Seed of the full trainings whose test accuracy the proxy objectives are ranked against."""


def load_fit_cache(path: Path, fit_cache: dict[str, dict[str, Any]]) -> None:
    """Merge the measurements a previous run of the table saved at ``path`` into ``fit_cache``.

    Values already in ``fit_cache`` (a study's own trial) win; saved ones fill what is missing (the proxy of a
    distiller that is no study trial, every ``verify_acc``), so a resumed run does not train them again.
    """
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    for key, values in saved.items():
        fit_cache[key] = {**values, **fit_cache.get(key, {})}


def plan_fidelity(
    args: argparse.Namespace,
    specs: dict,
    studies: dict,
    fit_cache: dict,
    evaluator: Any,
    cache_path: Path | None = None,
) -> list[tuple[str, str, Any]]:
    """The proxy-fidelity set: ``(source, method, spec)`` of known, tuned, random and searched distillers.

    The table's distillers come first; completed trials of the random and KD-Zero studies, spread evenly over
    their fitness ranking, follow (method ``extra``, trained with seed ``FIDELITY_SEED`` only) until
    ``--fidelity`` distillers are reached. Proxy objectives and verification accuracies missing from
    ``fit_cache`` are measured here, and saved to ``cache_path`` (when given) as each one is done.
    """
    chosen: list[tuple[str, str, Any]] = []
    seen: set[str] = set()

    def add(source: str, method: str, spec: Any) -> None:
        key = spec.to_json() if spec is not None else "ce"
        if key in seen:
            return
        seen.add(key)
        measured = False
        if key not in fit_cache:
            fit_cache[key] = tm.evaluate_fitness(evaluator, spec)
            measured = True
        if "verify_acc" not in fit_cache[key]:
            fit_cache[key]["verify_acc"] = tm.verify_accuracy(evaluator, spec, args.verify_fraction)
            measured = True
        if measured and cache_path is not None:
            write_json(cache_path, fit_cache, sort_keys=True)  # NaN kept: only load_fit_cache reads it
        chosen.append((source, method, spec))

    for method, spec in specs.items():
        add("known" if method in ("ce", *HANDCRAFTED) else method, method, spec)
    pool = [(name, t) for name in ("kd-zero", "rand-kd") for t in tm.completed(studies[name])]
    pool = [(name, t) for name, t in pool if trial_spec(t).to_json() not in seen]
    pool.sort(key=lambda p: tm.trial_fitness(p[1])["fitness"])
    want = max(0, args.fidelity - len(chosen))
    if want and pool:
        idx = sorted({round(i * (len(pool) - 1) / max(1, want - 1)) for i in range(min(want, len(pool)))})
        for i in idx:
            name, t = pool[i]
            add("search" if name == "kd-zero" else "random", "extra", trial_spec(t))
    return chosen


def fidelity_result(
    exp: Any, regime: str, chosen: list[tuple[str, str, Any]], fit_cache: dict, rows: Rows
) -> dict[str, Any]:
    """Points (proxy objectives and full-training test accuracy) and their rank correlations."""
    points: list[dict[str, Any]] = []
    for source, method, spec in chosen:
        row = rows.find(**row_key(exp, regime, method, spec, FIDELITY_SEED))
        acc = math.nan if row is None or row["test_acc"] is None else row["test_acc"]
        key = spec.to_json() if spec is not None else "ce"
        points.append(
            {
                "source": source,
                "formula": spec.formula() if spec is not None else "ce",
                "spec": spec.to_dict() if spec is not None else None,
                "test_acc": acc,
                **{k: fit_cache[key].get(k, math.nan) for k in PROXY_KEYS},
            }
        )
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
