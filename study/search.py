"""The main job: create or resume a study, seed it, prepare the teacher, run worker processes, report."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from study import verify
from study.artifacts import location, prepare_store
from study.config import BUDGET_KEYS, StudyConfig, identity_diff
from study.fitness import OBJECTIVES
from study.integrity import readable
from study.report import final_report, progress_line, summarise
from study.sampler import build_sampler, claim_seed_slots, slot_seed
from study.storage import is_transient_error, make_storage, mask_url, with_retry
from study.worker import (
    CONFIG_ATTR,
    TARGET_ATTR,
    EvaluatorFactory,
    WorkerArgs,
    check_imports,
    record_teacher,
    require_study_teacher,
    run_worker,
    stored_config,
    teacher_predictions,
    worker_main,
)
from trainers.teacher import TEACHER_SAW_VAL

SEEDED_ATTR = "kdzero_seeded"


class ConfigMismatch(ValueError):
    """A study name reused with a different configuration."""


def open_study(cfg: StudyConfig) -> optuna.Study:
    """Create the study, or load it and refuse it when its stored configuration differs from ``cfg``.

    Stores ``kdzero_config`` (experiment + search settings), the objective names and the trial target.

    Raises:
        ConfigMismatch: The study exists with another configuration; the message shows the difference.
        study.integrity.StudyDamagedError: The study holds rows Optuna cannot decode (named).
    """
    run = cfg.run
    storage = make_storage(
        run.storage,
        heartbeat_interval=run.heartbeat_interval,
        grace_period=run.grace_period,
        max_retry=run.max_retry,
    )
    study = with_retry(
        lambda: optuna.create_study(
            storage=storage,
            study_name=run.study,
            directions=["minimize"] * len(OBJECTIVES),
            sampler=build_sampler(cfg.search),
            load_if_exists=True,
        )
    )
    readable(study)  # a row Optuna cannot decode is named here, not deep inside a worker
    if CONFIG_ATTR in study.user_attrs:
        old = stored_config(study)
        stored = old.identity()
        wanted = cfg.identity()
        if stored != wanted:
            raise ConfigMismatch(
                f"study {run.study!r} in {mask_url(run.storage)} was created with a different configuration; "
                f"use another --study name or the stored configuration. Difference:\n"
                f"{identity_diff(stored, wanted)}"
            )
        sizes = {path[-1]: getattr(cfg.search, path[-1]) for path in BUDGET_KEYS if path[0] == "search"}
        if any(getattr(old.search, k) != v for k, v in sizes.items()):  # e.g. a broader verification
            verify.note_plan_breadth(study, old)  # a plan stored before plans recorded their breadth
            raw = json.loads(old.stored_json())
            raw["search"].update(sizes)
            with_retry(lambda: study.set_user_attr(CONFIG_ATTR, json.dumps(raw, sort_keys=True)))
    else:
        with_retry(lambda: study.set_user_attr(CONFIG_ATTR, cfg.stored_json()))
        with_retry(lambda: study.set_metric_names(list(OBJECTIVES)))
    with_retry(lambda: study.set_user_attr(TARGET_ATTR, {"n_trials": cfg.n_trials}))
    side = verify.open_side_study(storage, run.study)
    verify.enqueue_reference(side, cfg)
    return study


def enqueue_known(study: optuna.Study, cfg: StudyConfig) -> int:
    """Enqueue the known distillers (whose knowledge the search allows) once per study, as generation 0.

    Then their loss-scale variants of ``search.seed_weight_steps`` (user attr ``seeded_from``: the known
    distiller's name, ``weight_step``: the step), known distiller by known distiller; a variant whose weight
    falls off the ``WEIGHTS`` grid, or whose canonical form equals an enqueued distiller's, is skipped.

    Returns:
        How many were enqueued now (0 on a rerun, or when ``search.seed_known`` is false).
    """
    if not cfg.search.seed_known or study.user_attrs.get(SEEDED_ATTR):
        return 0
    from spaces import KNOWN_DISTILLERS, spec_to_params

    known = [
        (name, KNOWN_DISTILLERS[name])
        for name in sorted(KNOWN_DISTILLERS)
        if KNOWN_DISTILLERS[name].knowledge in cfg.search.knowledge
    ]
    jobs: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"known": name}, spec_to_params(spec)) for name, spec in known
    ]
    seen = {s.canonical_key() for _, s in known}
    for name, spec in known:
        for step in cfg.search.seed_weight_steps:
            variant = spec.weight_step(step)
            if variant is not None and variant.canonical_key() not in seen:
                seen.add(variant.canonical_key())
                jobs.append(({"seeded_from": name, "weight_step": step}, spec_to_params(variant)))
    for attrs, params in jobs:
        with_retry(lambda p=params, a=attrs: study.enqueue_trial(p, user_attrs=a, skip_if_exists=True))
    with_retry(lambda: study.set_user_attr(SEEDED_ATTR, True))
    return len(jobs)


def prepare_teacher(cfg: StudyConfig, device: str) -> Any:
    """Train (or load from the cache) the teacher and fill the teacher-output cache, once, before any worker.

    Returns:
        The ``trainers.ProxyEvaluator`` built on the way (reused when there is a single in-process worker).
    """
    from trainers import ProxyEvaluator

    return ProxyEvaluator(cfg.experiment, device=device)


def worker_args(
    cfg: StudyConfig,
    deadline: float | None = None,
    refresh_s: float = 5.0,
    train_teacher: bool = False,
    first_slot: int = 0,
) -> list[WorkerArgs]:
    """One :class:`WorkerArgs` per worker: devices round-robin, ``run.threads`` or cores // workers.

    Worker ``i`` gets the sampler seed slot ``first_slot + i`` (:func:`study.sampler.claim_seed_slots`).
    """
    run = cfg.run
    n = run.n_workers
    threads = run.threads or max(1, (os.cpu_count() or 1) // n)
    return [
        WorkerArgs(
            storage=run.storage,
            study=run.study,
            index=i,
            device=run.devices[i % len(run.devices)],
            threads=threads,
            n_trials=cfg.n_trials,
            deadline=deadline,
            heartbeat_interval=run.heartbeat_interval,
            grace_period=run.grace_period,
            max_retry=run.max_retry,
            refresh_s=refresh_s,
            cache_dir=cfg.experiment.cache_dir,
            data_root=cfg.experiment.dataset.root,
            teacher_checkpoint=cfg.experiment.teacher_checkpoint,
            train_teacher=train_teacher,
            seed_slot=first_slot + i,
            artifacts=location(cfg.run.storage, cfg.run.artifacts, cfg.experiment.cache_dir),
        )
        for i in range(n)
    ]


def run_search(
    cfg: StudyConfig,
    *,
    evaluator_factory: EvaluatorFactory | None = None,
    prepare: Callable[[StudyConfig, str], Any] | None = prepare_teacher,
    echo: Callable[[str], Any] = print,
    poll_s: float = 3.0,
    refresh_s: float = 5.0,
    train_teacher: bool = False,
) -> optuna.Study:
    """Run (or resume) a search to its study-wide trial target with ``cfg.run.n_workers`` worker processes.

    Args:
        cfg: The configuration.
        evaluator_factory: ``(experiment, device) -> evaluator`` built once in each worker; ``None`` uses
            ``trainers.ProxyEvaluator``. Must be importable by name (workers are spawned processes).
        prepare: Run once in the parent before the workers (teacher, teacher-output cache); ``None``: skip.
        echo: Where progress lines and the final report go.
        poll_s: Seconds between progress lines.
        refresh_s: Workers re-read shrinkage weights and early-stopping references this often.
        train_teacher: Train the teacher here even when the study has one this machine lacks (checked against
            the study's teacher; see :func:`study.worker.record_teacher`).

    Returns:
        The study (loaded in the parent).
    """
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_imports(cfg.experiment)  # a bad or unallowed model is refused before the study is touched
    if prepare is not None or evaluator_factory is None:  # the data is read: missing files touch nothing
        from trainers.data import DataNotFoundError, check_data
        from trainers.runtime import resolve_device

        try:
            for device in cfg.run.devices:  # a GPU this machine lacks: refused before the study is created
                resolve_device(device, "--devices")
        except ValueError as exc:
            raise ValueError(f"{exc}. Nothing was stored in {mask_url(cfg.run.storage)}.") from None
        try:
            check_data(cfg.experiment.dataset)
        except DataNotFoundError as exc:
            raise DataNotFoundError(f"{exc} Nothing was stored in {mask_url(cfg.run.storage)}.") from None
    try:  # an artifact store that cannot be written: refused before the study is created
        prepare_store(location(cfg.run.storage, cfg.run.artifacts, cfg.experiment.cache_dir))
    except ValueError as exc:
        raise ValueError(f"{exc}. Nothing was stored in {mask_url(cfg.run.storage)}.") from None
    study = open_study(cfg)
    seeded = enqueue_known(study, cfg)
    run = cfg.run
    target = cfg.n_trials
    seeded_what = "known distillers"
    if cfg.search.seed_weight_steps:
        seeded_what = "distillers (the known ones and their loss-scale variants)"
    echo(
        f"study {run.study!r} in {mask_url(run.storage)}: target {target} finished trials, {run.n_workers} "
        f"worker(s) on {', '.join(run.devices)}" + (f"; enqueued {seeded} {seeded_what}" if seeded else "")
    )
    started = time.time()
    deadline = started + run.timeout if run.timeout else None
    if prepare is not None:
        require_study_teacher(study, cfg.experiment, train_teacher)
        echo("preparing the teacher and its output cache (once, before the workers) ...")
        t_prep = time.perf_counter()
        prepared = prepare(cfg, run.devices[0])
        meta = getattr(getattr(prepared, "parts", None), "teacher_meta", None) or {}
        if meta:
            nan = float("nan")
            refs = cfg.experiment.teacher_refs()
            for ref, m in zip(refs, meta.get("teachers") or [meta], strict=False):
                if m.get("checkpoint"):
                    how = f"your checkpoint {m.get('path')}, identity {m.get('identity')}"
                elif m.get("cached"):
                    how = "from the cache"
                else:
                    how = f"trained in {m.get('train_s', 0):.0f} s"
                echo(
                    f"teacher {ref.model}: val acc {m.get('val_acc', nan):.4f}, test acc "
                    f"{m.get('test_acc', nan):.4f} ({how})"
                )
            echo(f"teacher outputs cached; ready in {time.perf_counter() - t_prep:.0f} s")
            if any(m.get("checkpoint") for m in meta.get("teachers") or [meta]):
                echo(f"  note: {TEACHER_SAW_VAL}")
            for m in meta.get("teachers") or [meta]:
                _warn_weak_teacher(m, echo)
            note = record_teacher(
                study, meta, cfg.experiment, teacher_predictions(prepared), retrained=train_teacher
            )
            if note:
                echo(note)
        if run.n_workers == 1 and evaluator_factory is None and prepared is not None:
            evaluator_factory = _reuse(prepared)
        del prepared
    done_before = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    # A study that has reached its target samples nothing new: rerunning it (to verify, or to read it back)
    # claims no seed slot, so that a finished study is not written to.
    first_slot = claim_seed_slots(study, run.n_workers) if done_before < target else 0
    if first_slot:
        seeds = [slot_seed(cfg.search, first_slot + i) for i in range(run.n_workers)]
        echo(
            f"sampler seeds {seeds}: other processes have run workers on this study (seed slots "
            f"0-{first_slot - 1} taken), so these workers propose other candidates"
        )
    args = worker_args(cfg, deadline, refresh_s, train_teacher, first_slot)
    n = len(args)
    rate_start = time.time()
    if n == 1:

        def on_trial(s: optuna.Study, _t: Any) -> None:
            echo(progress_line(summarise(s), target, started, deadline, done_before, rate_start))

        run_worker(args[0], evaluator_factory, on_trial=on_trial)
    else:
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(target=worker_main, args=(a, evaluator_factory), name=f"kdzero-worker-{a.index}")
            for a in args
        ]
        for p in procs:
            p.start()
        # The parent notes a Ctrl-C itself: a KeyboardInterrupt raised where a library swallows it (inside a
        # storage call, a callback) must still end the search as interrupted, never with exit status 0.
        interrupted: list[bool] = []

        def on_sigint(_signum: int, _frame: Any) -> None:
            interrupted.append(True)
            raise KeyboardInterrupt

        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGINT, on_sigint)
        try:
            last: Any = None
            while any(p.is_alive() for p in procs):
                for p in procs:
                    p.join(timeout=poll_s / len(procs))
                try:
                    summary = summarise(study)
                except Exception as exc:  # storage briefly unreachable: the workers wait for it, so do we
                    if not is_transient_error(exc):
                        raise
                    continue
                line = progress_line(summary, target, started, deadline, done_before, rate_start)
                key = (summary.states, summary.verify_jobs)
                if key != last:
                    echo(line)
                    last = key
            if interrupted or any(p.exitcode == 130 for p in procs):
                raise KeyboardInterrupt  # a Ctrl-C that reached the workers ends the search as interrupted
        except KeyboardInterrupt:
            echo("interrupted: stopping workers (rerun the same command to resume)")
            # Workers fail and re-enqueue their running trial on SIGINT (a Ctrl-C in the terminal sends it
            # to them too); terminate only those that do not stop (their trials go stale and are retried).
            for p in procs:
                p.join(timeout=3)
            for p in procs:
                if p.is_alive() and p.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGINT)
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
                    p.join()
            raise
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        bad = [p for p in procs if p.exitcode != 0]
        if bad:
            echo(f"warning: {len(bad)} worker(s) exited with codes {[p.exitcode for p in bad]}")
    echo(final_report(study, cfg))
    return study


def _warn_weak_teacher(meta: dict[str, Any], echo: Callable[[str], Any]) -> None:
    """Warn about a teacher at chance level: distilling from it cannot help the student."""
    classes, acc = meta.get("num_classes"), meta.get("val_acc")
    if isinstance(classes, int) and classes > 1 and isinstance(acc, float) and acc <= 1.5 / classes:
        echo(
            f"warning: the teacher's validation accuracy {acc:.4f} is at chance level for {classes} classes "
            "(untrained weights, or a checkpoint of another data set or preprocessing?)"
        )


def _reuse(evaluator: Any) -> EvaluatorFactory:
    def factory(_exp: Any, _device: str) -> Any:
        return evaluator

    return factory


def describe(cfg: StudyConfig) -> str:
    """The configuration as indented JSON (the storage URL masked)."""
    d = cfg.to_dict()
    d["run"]["storage"] = mask_url(cfg.run.storage)
    return json.dumps(d, indent=1, sort_keys=True)
