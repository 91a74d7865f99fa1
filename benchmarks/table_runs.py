"""Full trainings and the proxy-fidelity set of the Table-3 benchmark (rows kept in a resumable JSON file)."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import table_methods as tm
from benchmarks import table_verify as tv
from benchmarks.table_methods import TeacherArchiveError
from benchmarks.table_stats import CONVERGENCE, HANDCRAFTED, rank_correlations, select
from study.sampler import trial_spec
from trainers.rejection import Rejected

PROXY_KEYS = ("ce", "sharpness_gap", "cka_gap", "fitness", "paper_sum", "proxy_acc", "verify_acc")
"""Proxy quantities of the fidelity set (``fitness``: ``study.fitness.scalarise``, the geometric mean of the
three objectives; ``paper_sum``: the paper's val_ce + sharpness_gap + cka_gap, reported beside it;
``verify_acc``: the validation accuracy of a verification-fidelity run on the searches' first verification
seed, ``table_methods.verify_seed``)."""


class Rows:
    """The run's rows, rewritten to ``<run>.json`` after every full training (resumable, thread-safe)."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path, self.resumed = path, resume
        self.rows: list[dict[str, Any]] = json.loads(path.read_text()) if resume and path.exists() else []
        self._lock = threading.Lock()

    def find(self, **where: Any) -> dict[str, Any] | None:
        """The row matching every field of ``where``, if any."""
        with self._lock:
            hits = select(self.rows, **where)
        return dict(hits[0]) if hits else None

    def twin(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """A row of the same training as ``key`` (:func:`row_key`) under another method's name, if any.

        The same spec, seed, schedule and teacher train to the same numbers (a full training is
        deterministic on a given thread count and code: the 10%/mlp rows of kd, rand-kd and kd-zero, one
        distiller, agree to the last digit; a change of rounding, as channels_last was, moves them within
        noise), so such a training is copied, not run again (:func:`copy_row`).
        """
        with self._lock:
            hits = [r for r in select(self.rows, **_training(key)) if "same_training_as" not in r]
        return dict(hits[0]) if hits else None

    def add(self, row: dict[str, Any]) -> None:
        """Append ``row`` and rewrite the file atomically."""
        with self._lock:
            self.rows.append(row)
            write_json(self.path, self.rows)


def _training(key: dict[str, Any]) -> dict[str, Any]:
    """What identifies a training whatever the method's name: ``key`` (:func:`row_key`) without ``method``."""
    return {k: v for k, v in key.items() if k != "method"}


def copy_row(
    rows: Rows, twin: dict[str, Any], key: dict[str, Any], checkpoints: Path | None, log: Any
) -> dict[str, Any]:
    """Store ``twin``'s row as ``key``'s (its method's): the same training, not run again.

    ``same_training_as`` names the method that ran it; its ``cpu_s`` and ``wall_s`` are what that training
    cost, and the table's cost means leave the copy out. A checkpoint of ``key`` begun before the copy rule
    is deleted (it would never be resumed).
    """
    row = {**twin, "method": key["method"], "same_training_as": twin["method"]}
    rows.add(row)
    forget_checkpoint(checkpoints, key)
    _log_row(row, log)
    return row


def write_json(path: Path, obj: Any, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON through a temporary file and an atomic rename (no reader sees half a file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=sort_keys))
    os.replace(tmp, path)


def row_key(
    exp: Any, regime: str, method: str, spec: Any, seed: int, teacher_id: str | None
) -> dict[str, Any]:
    """The fields that identify a full training among the rows.

    ``teacher_id`` is the content hash of the teacher's weights (``trainers.teacher.state_dict_hash``): a
    distiller trained from another teacher is another training. Plain CE (``spec`` None) uses no teacher, so
    its key holds ``None`` whatever is passed.
    """
    spec_d = spec.to_dict() if spec is not None else None
    return {
        "regime": regime,
        "student": exp.student,
        "method": method,
        "seed": seed,
        "spec": spec_d,
        "epochs": exp.student_train.epochs,
        "teacher_id": teacher_id if spec is not None else None,
    }


def current_rows(
    rows: list[dict[str, Any]],
    regime: str,
    student: str,
    specs: dict[str, Any],
    epochs: int,
    teacher_id: str | None,
) -> list[dict[str, Any]]:
    """The rows of one (regime, student) that belong to the current plan.

    A resumed run keeps every row it ever wrote, but a method's statistics use only the rows of its current
    spec, schedule and teacher: a verification that chose another distiller (e.g. after a change of the
    candidate rule), another ``--epochs``, or a distiller trained from another teacher (``teacher_id``),
    leaves older rows in the file as history, not in the table. ``ce-2x`` rows count at twice the epochs;
    ``extra`` (fidelity) rows at the schedule's epochs, matched by spec where they are used.
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
        if ok and (r["spec"] is None or r.get("teacher_id") == teacher_id):
            out.append(r)
    return out


def checkpoint_path(folder: Path, key: dict[str, Any]) -> Path:
    """Where the training identified by ``key`` (:func:`row_key`) keeps its per-epoch checkpoint."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return folder / f"{digest}.pt"


def forget_checkpoint(folder: Path | None, key: dict[str, Any]) -> None:
    """Delete the checkpoint and clock file of a training whose row is written."""
    if folder is None:
        return
    ckpt = checkpoint_path(folder, key)
    for path in (ckpt, ckpt.with_suffix(".clock.json")):
        path.unlink(missing_ok=True)


class _Clock:
    """CPU and wall seconds of a training that may span several processes (resumed from checkpoints).

    At the end of every epoch (just before the trainer writes its checkpoint) the accumulated seconds are
    stored under the step reached; a resumed training starts from the entry of the step it resumed from, so
    ``cpu_s`` counts every epoch once, whichever process ran it.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.saved: dict[str, dict[str, float]] = {}
        if path is not None and path.exists():
            try:
                self.saved = json.loads(path.read_text())
            except (OSError, ValueError):
                self.saved = {}
        self.c0, self.w0 = time.process_time(), time.perf_counter()
        self.prior = {"cpu_s": 0.0, "wall_s": 0.0}
        self.started = False
        self.known = True

    def start_at(self, step: int) -> None:
        """Count on from the seconds stored at ``step`` (0: a fresh run); ``known`` False when not stored."""
        if self.started:
            return
        self.started = True
        hit = self.saved.get(str(step)) if step else {"cpu_s": 0.0, "wall_s": 0.0}
        if hit is None:
            self.known = False
            return
        self.prior = {"cpu_s": float(hit["cpu_s"]), "wall_s": float(hit["wall_s"])}

    def totals(self) -> dict[str, float]:
        """Seconds so far: the stored prior plus this process's."""
        return {
            "cpu_s": self.prior["cpu_s"] + time.process_time() - self.c0,
            "wall_s": self.prior["wall_s"] + time.perf_counter() - self.w0,
        }

    def on_epoch_end(self, trainer: Any) -> None:
        """Store the seconds at the step the trainer's checkpoint is about to hold."""
        self.start_at(trainer.resumed_from)
        if self.path is None or trainer.rank != 0:
            return
        self.saved[str(trainer.state.step)] = self.totals()
        keep = sorted(self.saved, key=int)[-3:]  # the checkpoint's step is among the last entries
        self.saved = {k: self.saved[k] for k in keep}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.saved)


def run_training(
    exp: Any,
    regime: str,
    method: str,
    spec: Any,
    seed: int,
    device: str,
    checkpoints: Path | None = None,
    teacher_id: str | None = None,
) -> dict[str, Any]:
    """One full training through ``trainers.distill``; its row (``test_acc`` None when it failed).

    With ``checkpoints`` (a folder) the training saves its state there every epoch and, started again after
    an interruption, resumes from it (``trainers.loop.Trainer`` refuses a checkpoint of another run); the
    row's ``cpu_s`` and ``wall_s`` then add up every process's share and ``resumed_from_step`` says where it
    resumed. The caller deletes the checkpoint once the row is stored (:func:`forget_checkpoint`).

    Raises:
        TeacherArchiveError: The teacher the training loaded is not ``teacher_id`` (the row is not written).
    """
    from trainers.distill import distill

    key = row_key(exp, regime, method, spec, seed, teacher_id)
    ckpt = checkpoint_path(checkpoints, key) if checkpoints is not None else None
    clock = _Clock(ckpt.with_suffix(".clock.json") if ckpt is not None else None)
    try:
        res = distill(
            exp,
            spec,
            seed=seed,
            device=device,
            checkpoint=ckpt,
            callbacks={"on_epoch_end": [clock.on_epoch_end]},
        )
    except Rejected as exc:  # the divergence guard stopped the full run: a failed run, kept as such
        res = {"test_acc": None, "val_acc": None, "failed": str(exc)}
    used = res.get("teacher_identity")
    if spec is not None and used is not None and used != teacher_id:
        raise TeacherArchiveError(
            f"{regime}/{exp.student} {method} seed {seed} was trained from teacher {used}, not the "
            f"setting's teacher {teacher_id}: its row is not written"
        )
    resumed = int(res.get("resumed_from_step", 0) or 0)
    clock.start_at(resumed)
    spent = clock.totals()
    row = {
        **key,
        "teacher": exp.teacher,
        "test_acc": None if res["test_acc"] is None else float(res["test_acc"]),
        "val_acc": None if res["val_acc"] is None else float(res["val_acc"]),
        "wall_s": spent["wall_s"],
        # CPU seconds of the training's processes: unlike wall_s, not inflated on a shared machine
        "cpu_s": spent["cpu_s"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "formula": spec.formula() if spec is not None else "ce",
        # validation accuracy after each epoch: a verification run at a fraction of the schedule is this
        # run's prefix (same seed and learning rate at every step), so its accuracy is read off here
        "epoch_val_acc": [round(float(a), 6) for a in res.get("epoch_val_acc") or []],
    }
    if resumed:
        row["resumed_from_step"] = resumed
        if not clock.known:  # no stored seconds at the checkpoint's step: only this process's count
            row["seconds_partial"] = True
    if "failed" in res:
        row["failed"] = res["failed"]
    return row


def _log_row(row: dict[str, Any], log: Any) -> None:
    acc = "FAILED " + row["failed"] if "failed" in row else f"test {100 * row['test_acc']:.2f}%"
    ran = f"{row['wall_s']:.1f} s"
    if "same_training_as" in row:
        ran = f"the same training as {row['same_training_as']}'s, not run again"
    where = f"{row['regime']}/{row['student']} {row['method']:9s} seed {row['seed']}"
    log(f"  {where}: {acc} ({ran}) {row['formula']}")


def train_row(
    rows: Rows,
    exp: Any,
    regime: str,
    method: str,
    spec: Any,
    seed: int,
    device: str,
    log: Any,
    checkpoints: Path | None = None,
    teacher_id: str | None = None,
) -> dict[str, Any]:
    """One full training in this process (or its finished row when resuming; see :func:`run_training`)."""
    key = row_key(exp, regime, method, spec, seed, teacher_id)
    done = rows.find(**key)
    if done is not None:
        return done
    twin = rows.twin(key)
    if twin is not None:
        return copy_row(rows, twin, key, checkpoints, log)
    row = run_training(exp, regime, method, spec, seed, device, checkpoints, teacher_id)
    rows.add(row)
    forget_checkpoint(checkpoints, key)
    _log_row(row, log)
    return row


def _init_job(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class TrainPool:
    """Full trainings run by ``jobs`` spawned processes while the main process goes on (``jobs`` 1: inline).

    Each finished row is added to ``rows`` (and so to the JSON file) as soon as its process returns it;
    ``drain`` waits for every submitted training and re-raises the first error. Every training checkpoints
    each epoch into ``<rows file stem>-checkpoints/`` (see :func:`run_training`): a benchmark stopped midway
    and run again with ``--resume`` continues its unfinished trainings where they were. A run that does not
    resume deletes that folder first.

    Args:
        rows: Where finished rows go; a training whose row is already there is not submitted.
        jobs: Training processes.
        threads: Torch threads of each process (``None``: CPU cores // jobs).
        log: Progress lines.
    """

    def __init__(self, rows: Rows, jobs: int, threads: int | None, log: Any) -> None:
        self.rows, self.jobs, self.log = rows, jobs, log
        self.checkpoints = rows.path.with_name(rows.path.stem + "-checkpoints")
        if not rows.resumed:
            shutil.rmtree(self.checkpoints, ignore_errors=True)
        # row tag -> the training's future and an event its callback sets once its rows are written
        self._pending: dict[str, tuple[Future, threading.Event]] = {}
        self._followers: dict[str, list[dict[str, Any]]] = {}  # training -> keys of methods waiting for it
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        if jobs > 1:
            per = threads or max(1, (os.cpu_count() or 1) // jobs)
            self._executor = ProcessPoolExecutor(
                jobs, mp_context=mp.get_context("spawn"), initializer=_init_job, initargs=(per,)
            )

    def submit(
        self, exp: Any, regime: str, method: str, spec: Any, seed: int, device: str, teacher_id: str | None
    ) -> None:
        """Train ``method`` (``spec``) with ``seed`` unless its row exists or it is already submitted.

        ``teacher_id``: the identity of the cached teacher the training must load (refused otherwise).
        """
        key = row_key(exp, regime, method, spec, seed, teacher_id)
        tag = json.dumps(key, sort_keys=True)
        if tag in self._pending or self.rows.find(**key) is not None:
            return
        training = json.dumps(_training(key), sort_keys=True)
        with self._lock:
            if training in self._followers:  # the same training runs under another method: wait for it
                if key not in self._followers[training]:
                    self._followers[training].append(key)
                return
        if self._executor is None:
            train_row(
                self.rows, exp, regime, method, spec, seed, device, self.log, self.checkpoints, teacher_id
            )
            return
        twin = self.rows.twin(key)
        if twin is not None:
            copy_row(self.rows, twin, key, self.checkpoints, self.log)
            return
        with self._lock:
            self._followers[training] = []
        fut = self._executor.submit(
            run_training, exp, regime, method, spec, seed, device, self.checkpoints, teacher_id
        )
        written = threading.Event()
        fut.add_done_callback(lambda f: self._done(f, key, training, written))
        self._pending[tag] = (fut, written)

    def _done(self, fut: Future, key: dict[str, Any], training: str, written: threading.Event) -> None:
        try:
            with self._lock:
                followers = self._followers.pop(training, [])
            if fut.cancelled() or fut.exception() is not None:
                return
            row = fut.result()
            self.rows.add(row)
            forget_checkpoint(self.checkpoints, key)
            _log_row(row, self.log)
            for other in followers:
                copy_row(self.rows, row, other, self.checkpoints, self.log)
        finally:
            written.set()

    def drain(self) -> None:
        """Wait for every submitted training; the first failure is raised (its row is not written)."""
        pending = list(self._pending.values())
        self._pending.clear()
        for fut, written in pending:
            fut.result()
            written.wait()  # its callback has written its rows (and its followers' copies)

    def close(self) -> None:
        """Stop the processes (pending trainings are cancelled)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


FIDELITY_SEED = 0
"""Seed of the full trainings whose test accuracy the proxy objectives are ranked against."""


CACHE_TEACHER = "teacher_id"
"""Key of the fidelity cache naming the teacher that measured it (a string; every other value is a dict)."""


def load_fit_cache(path: Path, fit_cache: dict[str, dict[str, Any]], teacher_id: str | None) -> bool:
    """Merge the measurements a previous run of the table saved at ``path`` into ``fit_cache``.

    Values already in ``fit_cache`` (a study's own trial) win; saved ones fill what is missing (the proxy of a
    distiller that is no study trial, every ``verify_acc``), so a resumed run does not train them again. The
    scalarised values are computed again from the saved objectives (a file saved before the scalarisation
    changed holds the old ones). A file measured with another teacher than ``teacher_id`` is not read (its
    measurements are made again); a file from before the cache named its teacher is read.

    Returns:
        Whether the file was read.
    """
    if not path.exists():
        return False
    saved = json.loads(path.read_text())
    stamp = saved.pop(CACHE_TEACHER, None)
    if stamp is not None and stamp != teacher_id:
        return False
    for key, values in saved.items():
        fit_cache[key] = {**tm.with_scalars(values), **fit_cache.get(key, {})}
    return True


def plan_fidelity(
    args: argparse.Namespace,
    specs: dict,
    studies: dict,
    fit_cache: dict,
    evaluator: Any,
    verify_seed: int,
    cache_path: Path | None = None,
    teacher_id: str | None = None,
) -> list[tuple[str, str, Any]]:
    """The proxy-fidelity set: ``(source, method, spec)`` of known, tuned, random and searched distillers.

    The table's distillers come first; completed trials of the random and KD-Zero studies (one per distinct
    distiller: twins, equal in canonical form, are one point), spread evenly over their fitness ranking,
    follow (method ``extra``, trained with seed ``FIDELITY_SEED`` only) until ``--fidelity`` distillers are
    reached. Proxy objectives and verification accuracies missing from ``fit_cache`` are measured here (a
    verification run that a search's verification stage already made, same distiller, seed and fraction, is
    read from its study: :func:`~benchmarks.table_verify.verified_runs`), and saved to ``cache_path`` (when
    given) as each one is done, with the identity of the teacher that measured them (``teacher_id``, read back
    by :func:`load_fit_cache`). ``verify_seed``: the seed of the verification runs
    (:func:`~benchmarks.table_methods.verify_seed`).
    """
    chosen: list[tuple[str, str, Any]] = []
    seen: set[str] = set()
    searched = tv.verified_runs(studies, args.verify_fraction, verify_seed)

    def add(source: str, method: str, spec: Any) -> None:
        key = spec.to_json() if spec is not None else "ce"
        distiller = spec.canonical_key() if spec is not None else "ce"
        if distiller in seen:  # a twin (same canonical form) is the same distiller: one point
            return
        seen.add(distiller)
        measured = False
        if key not in fit_cache:
            fit_cache[key] = tm.evaluate_fitness(evaluator, spec)
            measured = True
        if "verify_acc" not in fit_cache[key]:
            done = searched.get(spec.canonical_key() if spec is not None else "ce")
            if done is not None:  # the same run, made by a search's verification stage: read, not run again
                fit_cache[key]["verify_acc"], fit_cache[key]["verify_from"] = done
            else:
                fit_cache[key]["verify_acc"] = tm.verify_accuracy(
                    evaluator, spec, args.verify_fraction, verify_seed
                )
            measured = True
        if measured and cache_path is not None:
            # NaN kept: only load_fit_cache reads it
            write_json(cache_path, {CACHE_TEACHER: teacher_id, **fit_cache}, sort_keys=True)
        chosen.append((source, method, spec))

    for method, spec in specs.items():
        add("known" if method in ("ce", *HANDCRAFTED) else method, method, spec)
    pool = [(name, t) for name in ("kd-zero", "rand-kd") for t in tm.completed(studies[name])]
    pool.sort(key=lambda p: tm.trial_fitness(p[1])["fitness"])
    distinct: list[tuple[str, Any]] = []
    taken = set(seen)
    for name, t in pool:  # one trial per distiller not chosen yet (twins share their twin's fitness)
        distiller = trial_spec(t).canonical_key()
        if distiller not in taken:
            taken.add(distiller)
            distinct.append((name, t))
    pool = distinct
    want = max(0, args.fidelity - len(chosen))
    if want and pool:
        n = min(want, len(pool))  # all of a pool smaller than the places left
        idx = sorted({round(i * (len(pool) - 1) / max(1, n - 1)) for i in range(n)})
        for i in idx:
            name, t = pool[i]
            add("search" if name == "kd-zero" else "random", "extra", trial_spec(t))
    return chosen


def fidelity_result(
    exp: Any,
    regime: str,
    chosen: list[tuple[str, str, Any]],
    fit_cache: dict,
    rows: Rows,
    teacher_id: str | None,
) -> dict[str, Any]:
    """Points (proxy objectives and full-training test accuracy) and their rank correlations."""
    points: list[dict[str, Any]] = []
    for source, method, spec in chosen:
        row = rows.find(**row_key(exp, regime, method, spec, FIDELITY_SEED, teacher_id))
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
