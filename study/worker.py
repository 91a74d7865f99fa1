"""One worker process: load the study from storage, build its evaluator once, run trials to the target."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna.trial import TrialState

from study import verify
from study._optuna import storage_of, study_id, trial_id
from study.artifacts import location, prepare_store
from study.config import StudyConfig
from study.integrity import readable
from study.objective import Evaluator, Objective
from study.pruner import PercentileEarlyStop
from study.sampler import SEED_ATTR, build_sampler, claim_seed_slots, slot_seed
from study.storage import fail_stale, is_transient_error, make_storage, mask_url, with_retry
from study.verify_jobs import SideObjective, finish_student
from trainers.config import ExperimentConfig

CONFIG_ATTR = "kdzero_config"
TARGET_ATTR = "kdzero_target"
TEACHER_ATTR = "kdzero_teacher"
PREDICTIONS_ATTR = "kdzero_teacher_predictions"
"""The study's teacher's validation predictions (base64 of uint16), its fingerprint for retrained copies."""
AGREEMENT_MIN = 0.98
"""A teacher retrained on another machine (``--train-teacher``) must agree with the study's on this share of
validation predictions ..."""
ACCURACY_TOLERANCE = 0.01
"""... and be within this much of its validation accuracy; otherwise the worker refuses it."""
"""The study's teacher ``{"identity", "model", "val_acc", "path", ...}``, stored by the first process."""
EvaluatorFactory = Callable[[ExperimentConfig, str], Evaluator]
log = logging.getLogger("kdzero.study")


@dataclass(frozen=True)
class WorkerArgs:
    """How one worker joins a study.

    Args:
        storage: Storage URL.
        study: Study name.
        index: Worker index (names the worker in messages and in ``KDZERO_WORKER``).
        device: Torch device of this worker.
        threads: Torch intra-op threads; ``None`` leaves torch's default.
        n_trials: Study-wide target of finished trials; ``None`` reads the one the search stored in the study.
        deadline: Wall-clock time (``time.time()``) after which no trial starts; ``None`` = no limit.
        heartbeat_interval: Seconds between heartbeats.
        grace_period: Seconds without heartbeat before a running trial is failed and retried.
        max_retry: Retries of a failed trial.
        cache_dir: Overrides the experiment's cache folder (a machine-local path).
        data_root: Overrides the data set folder (a machine-local path).
        refresh_s: Shrinkage weights and early-stopping references are re-read this often.
        max_outage_s: A storage that stays locked or unreachable longer than this ends the worker.
        verify: Run the verification stage once the search is over (``False``: stop after the search).
        teacher_checkpoint: Overrides the teacher checkpoint path (this machine's copy of the teacher).
        train_teacher: Train the teacher here when this machine has no copy of the study's; it is accepted
            only if its validation predictions agree with the study's teacher (:data:`AGREEMENT_MIN`,
            :data:`ACCURACY_TOLERANCE`).
        seed_slot: The sampler seed slot of this worker (:func:`study.sampler.claim_seed_slots`, claimed by
            its parent ``study search``); ``None``: the worker claims one, so that no two worker processes
            of a study share a sampler seed.
        artifacts: The study's artifact store (a folder, ``file://`` or ``s3://`` URL: verification
            checkpoints and the trained student); ``None``: :func:`study.artifacts.default_location`.
    """

    storage: str
    study: str
    index: int = 0
    device: str = "cpu"
    threads: int | None = None
    n_trials: int | None = None
    deadline: float | None = None
    heartbeat_interval: int = 20
    grace_period: int = 60
    max_retry: int = 2
    cache_dir: str | None = None
    data_root: str | None = None
    refresh_s: float = 5.0
    max_outage_s: float = 300.0
    verify: bool = True
    teacher_checkpoint: str | None = None
    train_teacher: bool = False
    seed_slot: int | None = None
    artifacts: str | None = None


class TeacherMismatchError(ValueError):
    """This process's teacher is not the teacher the study started with."""


def worker_experiment(cfg: StudyConfig, args: WorkerArgs) -> ExperimentConfig:
    """The stored experiment with this machine's paths (cache, data, teacher checkpoint) laid over it."""
    exp = cfg.experiment
    if args.cache_dir is not None:
        exp = replace(exp, cache_dir=args.cache_dir)
    if args.data_root is not None:
        exp = replace(exp, dataset=replace(exp.dataset, root=args.data_root))
    if args.teacher_checkpoint is not None:
        exp = replace(exp, teacher_checkpoint=args.teacher_checkpoint)
    return exp


def check_imports(exp: ExperimentConfig) -> None:
    """Refuse, before any trial, models given by import path whose module this process may not import.

    Zoo names need no allowance. An allowed module is imported here, so a missing module or attribute is
    reported now too.

    Raises:
        ValueError: Naming the model, its module and the ``--allow-import`` flag.
    """
    from trainers.models import check_model_name

    for name in exp.import_paths():
        check_model_name(name)


def encode_predictions(predictions: list[int]) -> str:
    """Validation predictions as base64 of little-endian uint16 (compact enough for a study attribute)."""
    return base64.b64encode(np.asarray(predictions, dtype="<u2").tobytes()).decode()


def decode_predictions(text: str) -> np.ndarray:
    """Inverse of :func:`encode_predictions`."""
    return np.frombuffer(base64.b64decode(text), dtype="<u2")


def teacher_predictions(evaluator: Any) -> list[int] | None:
    """Every teacher's predicted classes on the validation split (read from the output cache when there)."""
    parts = getattr(evaluator, "parts", None)
    if parts is None or not getattr(parts, "teachers", None):
        return None
    from trainers.metrics import split_predictions

    out: list[int] = []
    for teacher, cache in zip(parts.teachers, parts.caches, strict=True):
        if cache is not None and cache.has("val", "logits"):
            out += np.asarray(cache.get("val", "logits")).argmax(1).tolist()
        else:
            out += split_predictions(teacher, parts.val, getattr(evaluator, "device", "cpu"))
    return out


def require_study_teacher(study: optuna.Study, exp: ExperimentConfig, train_teacher: bool) -> None:
    """Refuse, before any teacher is trained, to train a teacher silently when the study already has one.

    A machine whose cache lacks the study's teacher (and that is given no checkpoint) would train its own, and
    the same seed does not give the same teacher on another machine. It must copy the study's checkpoint
    (``--teacher-checkpoint``) or ask for ``--train-teacher`` (checked against the study's predictions).

    Raises:
        TeacherMismatchError: Naming the study's teacher file and both flags.
    """
    stored = study.user_attrs.get(TEACHER_ATTR)
    if not isinstance(stored, dict) or train_teacher or stored.get("checkpoint"):
        return
    refs = exp.teacher_refs()
    if any(ref.checkpoint for ref in refs):
        return  # a file is given: its identity is checked once it is loaded
    from trainers.teacher import default_cache_dir, teacher_path

    root = exp.cache_dir or default_cache_dir()
    keys = stored.get("cache_keys") or []
    missing = [
        ref.model
        for ref, key in zip(refs, keys, strict=False)
        if not teacher_path(root, ref.model, key).exists()
    ]
    if missing:
        raise TeacherMismatchError(
            f"this machine has no copy of the teacher study {study.study_name!r} started with "
            f"({', '.join(missing)}, identity {stored.get('identity')}, saved at {stored.get('path')} on the "
            "machine that trained it): copy that file here and pass --teacher-checkpoint PATH, or pass "
            "--train-teacher to train one here (accepted only if it agrees with the study's teacher on "
            f">= {AGREEMENT_MIN:.0%} of validation predictions and is within "
            f"{100 * ACCURACY_TOLERANCE:.0f} point of its validation accuracy)"
        )


def record_teacher(
    study: optuna.Study,
    meta: dict[str, Any],
    exp: ExperimentConfig,
    predictions: list[int] | None = None,
    *,
    retrained: bool = False,
) -> str | None:
    """Store the study's teacher identity when it has none; refuse a teacher with another identity.

    Args:
        study: The main study.
        meta: The teacher's metadata (``identity``: content hash of its ``state_dict``).
        exp: The experiment this process runs (names the model and the checkpoint in the message).
        predictions: This teacher's validation predictions (stored as the study's fingerprint, or compared).
        retrained: The teacher was trained here on purpose (``--train-teacher``): another identity is
            accepted when its predictions agree with the study's (:data:`AGREEMENT_MIN`,
            :data:`ACCURACY_TOLERANCE`).

    Returns:
        A line to show when a retrained teacher was accepted, else ``None``.

    Raises:
        TeacherMismatchError: The study started with another teacher (its identity, model and path named).
    """
    identity = meta.get("identity")
    if not identity:
        return None
    stored = study.user_attrs.get(TEACHER_ATTR)
    if not stored:
        metas = meta.get("teachers") or [meta]
        record = {
            "identity": identity,
            "model": ", ".join(ref.model for ref in exp.teacher_refs()),
            "val_acc": meta.get("val_acc"),
            "test_acc": meta.get("test_acc"),
            "path": meta.get("path"),
            "checkpoint": bool(meta.get("checkpoint")),
            "cache_keys": [m.get("hash") for m in metas],
            "teachers": [
                {"model": ref.model, "val_acc": m.get("val_acc"), "checkpoint": bool(m.get("checkpoint"))}
                for ref, m in zip(exp.teacher_refs(), metas, strict=False)
            ],
        }
        with_retry(lambda: study.set_user_attr(TEACHER_ATTR, record))
        if predictions is not None:
            with_retry(lambda: study.set_user_attr(PREDICTIONS_ATTR, encode_predictions(predictions)))
        return None
    if stored.get("identity") == identity:
        return None
    theirs = study.user_attrs.get(PREDICTIONS_ATTR)
    if retrained and predictions is not None and theirs is not None:
        ref = decode_predictions(theirs)
        mine = np.asarray(predictions)
        agree = float((ref == mine).mean()) if len(ref) == len(mine) else 0.0
        acc, their_acc = meta.get("val_acc"), stored.get("val_acc")
        close = (
            isinstance(acc, float)
            and isinstance(their_acc, float)
            and abs(acc - their_acc) <= ACCURACY_TOLERANCE
        )
        summary = (
            f"agrees with the study's teacher on {agree:.1%} of validation predictions, val acc {acc} vs "
            f"{their_acc}"
        )
        if agree >= AGREEMENT_MIN and close:
            return f"teacher retrained here (identity {identity}) {summary}: accepted"
        raise TeacherMismatchError(
            f"the teacher trained here (identity {identity}) {summary}, outside the tolerance "
            f"(>= {AGREEMENT_MIN:.0%} agreement, within {100 * ACCURACY_TOLERANCE:.0f} point): copy the "
            f"study's checkpoint ({stored.get('path')}) and pass --teacher-checkpoint PATH"
        )
    raise TeacherMismatchError(
        f"this process's teacher {exp.teacher!r} (identity {identity}, from {meta.get('path')}) is not "
        f"the teacher study {study.study_name!r} started with (identity {stored.get('identity')}, "
        f"val acc {stored.get('val_acc')}, from {stored.get('path')}): copy that checkpoint to this "
        "machine and pass --teacher-checkpoint PATH, so every worker distils from the same teacher"
    )


def default_evaluator(exp: ExperimentConfig, device: str) -> Evaluator:
    """``trainers.ProxyEvaluator`` for the experiment on ``device``."""
    from trainers import ProxyEvaluator

    return ProxyEvaluator(exp, device=device)


def stored_config(study: optuna.Study) -> StudyConfig:
    """The configuration stored in a study's ``kdzero_config`` user attr.

    Raises:
        ValueError: The study was not created by ``python -m study search``.
    """
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise ValueError(
            f"study {study.study_name!r} has no {CONFIG_ATTR!r} user attr; create it with "
            "`python -m study search` first"
        )
    return StudyConfig.from_dict(json.loads(raw) if isinstance(raw, str) else raw)


def load_existing_study(
    storage: Any, name: str, sampler: optuna.samplers.BaseSampler | None = None
) -> optuna.Study:
    """Load a study by name, with a clear error listing the studies in the storage when it is missing.

    Raises:
        ValueError: No study of that name (the names there listed).
        study.integrity.StudyDamagedError: A stored row Optuna cannot decode (named, with the repair command).
    """
    try:
        study = with_retry(lambda: optuna.load_study(study_name=name, storage=storage, sampler=sampler))
        return readable(study)
    except KeyError:
        names = sorted(
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        )
        if isinstance(storage, str):
            url = mask_url(storage)
        else:
            url = mask_url(storage.url) if hasattr(storage, "url") else type(storage).__name__
        raise ValueError(f"no study named {name!r} in {url!r}; studies there: {names or '(none)'}") from None


def scratch_folder(exp: ExperimentConfig, args: WorkerArgs) -> str:
    """This machine's folder for checkpoint files while a verification job runs (under the cache folder)."""
    from trainers.teacher import default_cache_dir

    root = exp.cache_dir or str(default_cache_dir())
    return os.path.join(os.path.expanduser(root), "verify", f"worker-{os.getpid()}")


def count_states(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    """Number of trials of the study in the given states."""
    return len(storage_of(study).get_all_trials(study_id(study), deepcopy=False, states=states))


def run_worker(
    args: WorkerArgs,
    evaluator_factory: EvaluatorFactory | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> int:
    """Run search trials until the study holds ``n_trials`` finished trials (or the deadline), then verify.

    Before each trial the worker fails stale trials (their worker died; retried with the same genes) and
    counts finished + running trials, so the target is never overrun by more than (workers - 1) trials and a
    worker that finds the target reached waits for running trials, which may come back to be retried. Jobs
    waiting in the companion study (:mod:`study.verify`: the CE reference, verification runs) are taken first.
    When the search is over, the first worker to get there plans the verification; every worker runs its jobs,
    and the last one writes ``kdzero_verified``. The deadline stops new search trials, not verification.

    Args:
        args: How to join the study.
        evaluator_factory: ``(experiment, device) -> evaluator``; ``None`` builds ``trainers.ProxyEvaluator``.
        on_trial: Called after each trial with the study and the finished trial (progress display).

    Returns:
        The number of trials this worker ran.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    storage = make_storage(
        args.storage,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        max_retry=args.max_retry,
    )
    first = load_existing_study(storage, args.study)
    cfg = stored_config(first)
    exp = worker_experiment(cfg, args)
    check_imports(exp)  # before any trial: never import a module because the stored config names it
    store = prepare_store(
        location(args.storage, args.artifacts, exp.cache_dir)
    )  # a store that cannot be written ends it now
    if evaluator_factory is None:  # the real evaluator reads the data: missing files end the worker now
        from trainers.data import check_data
        from trainers.runtime import resolve_device

        resolve_device(args.device)  # a GPU this machine lacks ends the worker before its first trial
        check_data(exp.dataset)
    slot = args.seed_slot if args.seed_slot is not None else claim_seed_slots(first)
    seed = slot_seed(cfg.search, slot)
    sampler = build_sampler(cfg.search, worker_index=slot, refresh_s=args.refresh_s)
    study = load_existing_study(storage, args.study, sampler)
    require_study_teacher(study, exp, args.train_teacher)  # before a teacher could be trained here
    target = args.n_trials or int(study.user_attrs.get(TARGET_ATTR, {}).get("n_trials") or cfg.n_trials)
    evaluator = (evaluator_factory or default_evaluator)(exp, args.device)
    meta = getattr(getattr(evaluator, "parts", None), "teacher_meta", None)
    if meta:
        note = record_teacher(study, meta, exp, teacher_predictions(evaluator), retrained=args.train_teacher)
        if note:
            print(f"worker {args.index}: {note}", file=sys.stderr)
    pruner = PercentileEarlyStop(
        cfg.search.early_stop_percentile, cfg.search.early_stop_warmup, args.refresh_s
    )
    side = verify.open_side_study(storage, args.study)

    def reference() -> float | None:
        ref = verify.reference(side)
        return float(ref.value) if ref is not None and ref.value is not None else None

    objective = Objective(evaluator, knowledge=cfg.search.knowledge, pruner=pruner, reference=reference)
    side_objective = SideObjective(evaluator, store, scratch_folder(exp, args))
    current: list[int] = []
    current_study: list[optuna.Study] = []

    def tracked(trial: optuna.Trial) -> tuple[float, float, float]:
        current[:] = [trial_id(trial)]
        trial.set_user_attr(SEED_ATTR, seed)
        return objective(trial)

    def tracked_side(trial: optuna.Trial) -> float:
        current[:] = [trial_id(trial)]
        return side_objective(trial)

    callbacks = [on_trial] if on_trial is not None else None
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    ran, backoff, outage_start, pending = 0, 0.2, None, None
    while True:
        try:
            with_retry(lambda: fail_stale(study))
            with_retry(lambda: fail_stale(side))
            outage_start = None
            if pending is not None:  # a trial cut by a storage outage: retry its candidate
                _retry_failed(*pending)
                pending = None
            current.clear()
            current_study.clear()
            if verify.waiting(side):  # the CE reference and verification jobs come first
                current_study[:] = [side]
                _optimize(side, tracked_side, None, current, current_study)
                ran, backoff = ran + 1, 0.2
                continue
            finished = count_states(study, finished_states)
            running = count_states(study, (TrialState.RUNNING,))
            searching = finished < target and (args.deadline is None or time.time() < args.deadline)
            if searching:
                if finished + running >= target:
                    time.sleep(min(2.0, args.heartbeat_interval))  # a running trial may fail and be retried
                    continue
                current_study[:] = [study]
                _optimize(study, tracked, callbacks, current, current_study)
                ran, backoff = ran + 1, 0.2
                continue
            # the search is over (target or deadline): verification, once the last search trial is in
            if running or cfg.search.verify_top == 0 or args.verify is False:
                if running and args.verify is not False and cfg.search.verify_top > 0:
                    time.sleep(min(2.0, args.heartbeat_interval))
                    continue
                break
            if not count_states(study, (TrialState.COMPLETE,)):
                break
            plan = verify.plan_verification(study, side, cfg)
            if verify.waiting(side):
                continue
            if verify.running(side) or not verify.plan_done(side, plan):
                time.sleep(min(2.0, args.heartbeat_interval))  # another worker's job may fail and come back
                continue
            if verify.advance_verification(study, side, cfg):  # the next rung's jobs
                continue
            table = verify.finish_verification(study, side)
            if table is not None:
                finish_student(study, side, table, store, evaluator)
            break
        except Exception as exc:
            if not is_transient_error(exc):
                raise
            if current and current_study:
                pending = (current_study[0], current.pop())
            outage_start = outage_start or time.monotonic()
            if time.monotonic() - outage_start > args.max_outage_s:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("worker %d: storage unavailable (%s); retrying in %.1f s", args.index, first, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
    return ran


def _optimize(
    study: optuna.Study,
    func: Callable[[optuna.Trial], Any],
    callbacks: list[Any] | None,
    current: list[int],
    current_study: list[optuna.Study],
) -> None:
    """One trial of ``study``; on Ctrl-C the running trial is re-enqueued before the interrupt goes on."""
    try:
        study.optimize(func, n_trials=1, callbacks=callbacks, gc_after_trial=False)
    except KeyboardInterrupt:
        old = None
        with contextlib.suppress(ValueError):  # not the main thread: signals cannot be set
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this
        try:
            if current:
                _retry_failed(current_study[0], current[0])
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
        raise


def _retry_failed(study: optuna.Study, failed_id: int) -> None:
    """Enqueue again a trial cut by Ctrl-C or a storage outage once Optuna marked it FAIL.

    The retry is the storage's stale-trial callback (same genes, ``failed_trial`` / ``retry_history`` system
    attrs, at most ``max_retry`` times). A trial left RUNNING is retried by the heartbeat mechanism instead.
    """
    storage = storage_of(study)
    trial = storage.get_trial(failed_id)
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if trial.state == TrialState.FAIL and callback is not None:
        callback(study, trial)


def _first_sigint(signum: int, frame: Any) -> None:
    """The first SIGINT interrupts the worker; later ones (a second Ctrl-C, the parent's nudge) are ignored.

    Without this, a second SIGINT landing while Optuna records the interrupted trial as FAIL, before the
    worker re-enqueues it, would end the worker with the candidate failed and not queued again.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def worker_main(args: WorkerArgs, evaluator_factory: EvaluatorFactory | None = None) -> None:
    """Entry point of a spawned worker process (quiet logging, one torch thread pool per worker).

    Ctrl-C (SIGINT) ends the worker quietly with exit status 130; its running trial is failed and retried.
    A storage that stays unreachable ends it with one error line and exit status 3.
    """
    os.environ.setdefault("KDZERO_WORKER", str(args.index))
    with contextlib.suppress(ValueError):  # not the main thread: signals cannot be set
        signal.signal(signal.SIGINT, _first_sigint)
    try:
        run_worker(args, evaluator_factory)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except ValueError as exc:  # refused before its first trial (import not allowed, another teacher, ...)
        print(f"worker {args.index}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        # the storage stayed unreachable past max_outage_s
        root = exc.__cause__ or exc
        first = str(getattr(root, "orig", None) or root).strip().splitlines()[0]
        print(
            f"worker {args.index}: error: storage {mask_url(args.storage)} unavailable "
            f"({type(exc).__name__}: {first}); the study is kept, rerun to continue",
            file=sys.stderr,
        )
        raise SystemExit(3) from None
