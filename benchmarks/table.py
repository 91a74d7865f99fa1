"""Table 3 of KD-Zero on Fashion-MNIST: handcrafted distillers, tuned KD, random and searched distillers.

Usage (from the repository root)::

    python -m benchmarks.table                      # full mode: hours on 2 CPU cores (see the README section)
    python -m benchmarks.table --quick              # minutes: tiny data, epochs, budgets, one seed
    python -m benchmarks.table --quick --dataset digits --teacher cnn_tiny --students cnn_tiny

For each regime (``full`` training split, ``10pct``: a seeded 10% subset, ``DataConfig.subset=0.1``) and
student, every method is trained through ``trainers.distill`` with the same schedule and seeds:

* ``ce``, ``kd``, ``dist``, ``at``, ``fitnets`` with their published hyperparameters (feature-map methods are
  skipped, with the reason, when the student has no 4-D feature); ``ce-2x``: CE with twice the epochs, which
  shows whether the schedule lets CE converge;
* ``kd-tuned`` / ``dist-tuned``: KD's / DIST's tau and W tuned by TPE on the proxy fitness
  ``val_ce + sharpness_gap + cka_gap``; ``kd-zero``: a real ``study.run_search`` of N trials (NSGA-II) and its
  verified final selection; ``rand-kd``: the same search with a random sampler (same generation 0, budget and
  verification). All use the same proxy evaluator: the full run's first 5% of steps.

The benchmark's teacher (default ``resnet20``, 15 epochs, SGD lr 0.1, cosine, random crop + flip) is trained
once on the whole training split and cached; student schedules per regime are in :data:`REGIME_SCHEDULES`.

Writes ``<out>/<run>.json`` (the rows), ``<out>/<run>.summary.json`` (statistics, fidelity, search cost,
targets), ``<out>/<run>.md`` (printed too), ``<out>/<run>-fidelity.html``, the studies' SQLite files and
``<out>/<run>-<regime>-<student>-fidelity-cache.json`` (the fidelity set's proxy and verification runs).
``--resume`` keeps finished rows, studies and those measurements of the same run name.

The teacher is trained (and cached) on the whole training split in both regimes: the subset limits the
student only. It is archived in ``--teacher-archive`` (default ``benchmarks/teachers/``, committed) and
restored from there into an empty cache: retraining it on another machine gives other weights. Rows name their
teacher (``teacher_id``, the content hash of its weights); a setting made with a teacher no longer at hand is
frozen (reported from its finished studies and rows, nothing trained). ``--jobs N`` runs the full trainings in
N processes while the main process runs the searches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import table_methods as tm  # noqa: E402
from benchmarks import table_report as tr  # noqa: E402
from benchmarks import table_verify as tv  # noqa: E402
from benchmarks.table_runs import (  # noqa: E402
    FIDELITY_SEED,
    PROXY_KEYS,  # noqa: F401
    Rows,
    TeacherArchiveError,  # noqa: F401 - raised here, re-exported for callers of the table
    TrainPool,
    clean_json,
    current_rows,
    fidelity_result,
    load_fit_cache,
    plan_fidelity,
    row_key,
)
from benchmarks.table_stats import (  # noqa: E402
    CONVERGENCE,
    HANDCRAFTED,
    best_rival,
    check_targets,
    convergence_gap,
    prefix_rank_correlations,
    select,
    summarise_setting,
)
from study.sampler import trial_spec  # noqa: E402

REGIMES = ("full", "10pct")
VERIFY_FRACTION = 0.25
"""Verification runs train this fraction of the full schedule (the search's default)."""
SUBSET_FRACTION = 0.1
REGIME_SCHEDULES = {
    "full": {"epochs": 320, "warmup_epochs": 1.0},
    "10pct": {"epochs": 160, "warmup_epochs": 2.0},
}
"""Student schedule per regime (SGD lr 0.05, cosine, batch 128): long enough for CE to converge, measured by
``python -m benchmarks.convergence`` (results/convergence-fashion_mnist.summary.json): on 10% of the split
cnn_tiny gains +2.21 points from 40 to 80 epochs, +0.49 from 80 to 160 and -0.15 from 160 to 320 (2 seeds
each); the MLP has converged at 40 epochs. In the full regime the MLP has converged at 20 epochs, but
cnn_tiny gains +0.85 from 20 to 40 epochs, +0.52 from 40 to 80, +0.53 +- 0.30 SE from 80 to 160 and
+0.31 +- 0.15 SE from 160 to 320 (2 seeds each): 160 is not converged by the 0.3-point rule, so the full
regime trains 320 epochs, and the table's own ``ce-2x`` rows (640 epochs, 5 seeds) check that."""
TEACHER = "resnet20"
TEACHER_SCHEDULE = {"epochs": 15, "lr": 0.1, "warmup_epochs": 0.2, "augment": True}
TEACHER_COMMAND = (
    "python -m trainers teacher --model resnet20 --dataset fashion_mnist --epochs 15 --lr 0.1 --augment "
    "--warmup-epochs 0.2"
)
"""The benchmark teacher: this command trains (and caches) the same checkpoint."""
RESULTS = Path(__file__).resolve().parent / "results"
TEACHERS = Path(__file__).resolve().parent / "teachers"
"""Where the benchmark's teachers are archived (committed, ~1 MB each), named as in the teacher cache."""
ROW_KEYS = (
    "regime",
    "student",
    "teacher",
    "method",
    "seed",
    "test_acc",
    "val_acc",
    "epochs",
    "wall_s",
    "spec",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` fills tiny defaults for every option left unset."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny data, epochs, budgets and one seed (minutes)")
    p.add_argument("--out", default=str(RESULTS), help=f"results folder (default {RESULTS})")
    p.add_argument("--run", help="run name (default table3-<dataset> or quick-<dataset>)")
    p.add_argument("--dataset", default="fashion_mnist", help="data set name (default fashion_mnist)")
    p.add_argument("--teacher", help=f"teacher model (default {TEACHER}; quick: resnet8)")
    p.add_argument("--students", help="comma-separated students (default cnn_tiny,mlp)")
    p.add_argument("--regimes", help=f"comma-separated regimes among {REGIMES} (default all)")
    p.add_argument("--seeds", type=int, help="seeds per method (default 5; quick 1)")
    per_regime = ", ".join(f"{r} {s['epochs']}" for r, s in REGIME_SCHEDULES.items())
    p.add_argument(
        "--epochs", type=int, help=f"student epochs of every regime (default: {per_regime}; quick 2)"
    )
    p.add_argument(
        "--teacher-epochs", type=int, help=f"teacher epochs (default {TEACHER_SCHEDULE['epochs']}; quick 5)"
    )
    p.add_argument(
        "--budget",
        type=int,
        help="proxy trials N of kd-tuned, dist-tuned, rand-kd and kd-zero (default 48; quick 4)",
    )
    p.add_argument("--verify-top", type=int, help="distinct candidates verified (default 5; quick 2)")
    p.add_argument("--verify-seeds", type=int, help="seeds of each verification run (default 2; quick 1)")
    p.add_argument(
        "--verify-rungs",
        default="0.25",
        help="the searches' verification rungs, fractions of the schedule (default 0.25: one rung, as the "
        "table's searches so far; 0.25,0.5,1.0: the rung plan)",
    )
    p.add_argument(
        "--seed-weight-steps",
        default="",
        help="loss-scale variants of the known distillers in the generation 0 of rand-kd and kd-zero "
        "(search.seed_weight_steps: comma-separated steps on the weight grid, written "
        "--seed-weight-steps=-1,-2; default none, the paper's generation 0); those searches then have study "
        "files of their own, <stem>-<name>-wsteps-1-2.db",
    )
    p.add_argument("--population", type=int, default=8, help="NSGA-II population of kd-zero (default 8)")
    p.add_argument("--fidelity", type=int, help="distillers in the proxy-fidelity set (default 12; quick 4)")
    p.add_argument(
        "--proxy-steps", type=int, help="proxy length in steps (default: 5%% of the schedule; quick 10)"
    )
    p.add_argument(
        "--train-size", type=int, help="training samples of the full regime (default all; quick 2000)"
    )
    p.add_argument(
        "--val-size", type=int, help="validation samples (default 5000; quick 1000 / 300 on digits)"
    )
    p.add_argument("--cache-dir", help="teacher cache folder (default $KDZERO_CACHE or ~/.cache/kdzero)")
    p.add_argument(
        "--teacher-archive",
        help=f"folder of archived teachers, restored into an empty cache (default {TEACHERS}; quick: "
        "<out>/<run>-teacher)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (of each training process with --jobs)")
    p.add_argument(
        "--jobs", type=int, default=1, help="full trainings run in this many processes (default 1)"
    )
    p.add_argument("--resume", action="store_true", help="keep the finished rows and studies of this run")
    p.add_argument("--readme", action="store_true", help="also replace the table section of README.md")
    args = p.parse_args(argv)
    q = args.quick
    digits = args.dataset == "digits"
    args.students = _csv(args.students or "cnn_tiny,mlp")
    args.regimes = _csv(args.regimes or ",".join(REGIMES))
    bad = [r for r in args.regimes if r not in REGIMES]
    if bad:
        raise ValueError(f"unknown regime(s) {bad}; valid regimes are {list(REGIMES)}")
    args.seeds = _default(args.seeds, 1 if q else 5)
    args.budget = _default(args.budget, 4 if q else 48)
    args.verify_top = _default(args.verify_top, 2 if q else 5)
    args.verify_seeds = _default(args.verify_seeds, 1 if q else 2)
    args.verify_fraction = (
        VERIFY_FRACTION  # the fidelity set's verification accuracy is read at this fraction
    )
    args.verify_rungs = tuple(float(f) for f in str(args.verify_rungs).split(","))
    args.seed_weight_steps = parse_weight_steps(args.seed_weight_steps)
    args.fidelity = _default(args.fidelity, 4 if q else 12)
    if q:
        args.epochs = _default(args.epochs, 2)
        args.proxy_steps = _default(args.proxy_steps, 10)
        args.train_size = _default(args.train_size, None if digits else 2000)
        args.val_size = _default(args.val_size, 300 if digits else 1000)
    for name in (
        "seeds",
        "budget",
        "epochs",
        "teacher_epochs",
        "proxy_steps",
        "train_size",
        "val_size",
        "population",
        "jobs",
        "verify_seeds",
    ):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "population" else 1):
            low = 2 if name == "population" else 1
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    args.run = args.run or f"{'quick' if q else 'table3'}-{args.dataset}"
    if args.teacher_archive is None:
        args.teacher_archive = str(Path(args.out) / f"{args.run}-teacher") if q else str(TEACHERS)
    return args


def parse_weight_steps(text: str) -> tuple[int, ...]:
    """``--seed-weight-steps`` text (e.g. ``"-1,-2"``) as ``search.seed_weight_steps``, validated by it.

    Raises:
        ValueError: Not comma-separated ints, or steps ``SearchConfig`` refuses; the message names the text.
    """
    from study.config import SearchConfig

    try:
        steps = tuple(int(k) for k in _csv(text))
        SearchConfig(seed_weight_steps=steps)
    except ValueError as exc:
        raise ValueError(f"--seed-weight-steps {text!r}: {exc}") from None
    return steps


def weight_steps_tag(steps: tuple[int, ...]) -> str:
    """Name part of a search with loss-scale variants in generation 0: ``(-1, -2)`` -> ``wsteps-1-2``."""
    return f"wsteps{''.join(str(k) for k in steps)}"


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_experiment(args: argparse.Namespace, regime: str, student: str) -> Any:
    """The ``ExperimentConfig`` of one (regime, student): defaults, with the command line's overrides."""
    from trainers.config import DataConfig, ExperimentConfig, ProxyConfig

    base = ExperimentConfig()
    full = args.train_size
    subset: int | float | None = full
    if regime == "10pct":
        subset = SUBSET_FRACTION if full is None else max(1, int(round(SUBSET_FRACTION * full)))
    data = DataConfig(name=args.dataset, val_size=args.val_size or base.dataset.val_size, subset=subset)
    student_train = dataclasses.replace(base.student_train, **REGIME_SCHEDULES[regime])
    teacher_train = dataclasses.replace(base.teacher_train, **TEACHER_SCHEDULE)
    teacher = args.teacher or TEACHER
    if args.quick:  # the smoke preset's schedule: AdamW converges in a few epochs on tiny data
        quick = {"batch_size": 64, "warmup_epochs": 0.0, "optimizer": "adamw", "lr": 0.003}
        student_train = dataclasses.replace(student_train, **quick)
        teacher_train = dataclasses.replace(base.teacher_train, **quick, epochs=5)
        teacher = args.teacher or base.teacher
    if args.epochs is not None:
        student_train = dataclasses.replace(student_train, epochs=args.epochs)
    if args.teacher_epochs is not None:
        teacher_train = dataclasses.replace(teacher_train, epochs=args.teacher_epochs)
    proxy = base.proxy
    if args.proxy_steps is not None:
        proxy = dataclasses.replace(proxy, steps=args.proxy_steps, evals=2 if args.quick else proxy.evals)
    if args.quick:
        proxy = dataclasses.replace(proxy, reject_batches=1)
    return ExperimentConfig(
        dataset=data,
        teacher=teacher,
        student=student,
        teacher_train=teacher_train,
        student_train=student_train,
        proxy=ProxyConfig(**dataclasses.asdict(proxy)),
        cache_dir=args.cache_dir,
    )


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def pin_teacher(exp: Any, splits: Any, archive: Path | None, root: Path) -> Path | None:
    """Restore a run's archived teacher into the cache when the cache lacks it.

    A benchmark that spans several machines (sessions) must train every row with the same teacher; retraining
    it on a new machine costs the better part of an hour and need not give the same weights (measured: the
    benchmark teacher retrained on another machine with the same command, seed and thread count reached
    93.77% test instead of 93.53%). The first run archives the checkpoint it trained
    (:func:`archive_teacher`); a later run on an empty cache copies it back, so
    :func:`trainers.teacher.get_teacher` loads it (checking architecture and shapes) instead of training.

    Returns:
        The archived checkpoint's path (``None`` without an archive folder).
    """
    from trainers.teacher import teacher_key, teacher_path

    if archive is None:
        return None
    data = dataclasses.replace(exp.dataset, subset=None)  # the teacher learns from the whole split
    key = teacher_key(exp.teacher, data, exp.teacher_train, splits.num_classes, splits.in_channels)
    cached = teacher_path(root, exp.teacher, key)
    kept = archive / cached.name
    if kept.is_file() and kept.with_suffix(".json").is_file() and not cached.exists():
        _copy_atomic(kept.with_suffix(".json"), cached.with_suffix(".json"))
        _copy_atomic(kept, cached)  # last: get_teacher serves the cache once the checkpoint exists
    return kept


def archive_teacher(kept: Path | None, meta: dict[str, Any]) -> str | None:
    """Archive the teacher just loaded or trained, or refuse it when the run archived another one.

    Args:
        kept: :func:`pin_teacher`'s path (``None``: no archive).
        meta: :func:`trainers.teacher.get_teacher`'s metadata (``path``, ``identity``).

    Returns:
        The archived teacher's identity (content hash of its weights), or ``None`` without an archive.

    Raises:
        TeacherArchiveError: The cache holds a teacher with other weights than the archived one.
    """
    import torch

    from trainers.teacher import state_dict_hash

    if kept is None:
        return None
    cached = Path(meta["path"])
    if not kept.is_file():
        _copy_atomic(cached.with_suffix(".json"), kept.with_suffix(".json"))
        _copy_atomic(cached, kept)
    archived = state_dict_hash(torch.load(kept, map_location="cpu", weights_only=True))
    if archived != meta["identity"]:
        raise TeacherArchiveError(
            f"the cached teacher {cached} (identity {meta['identity']}) is not the teacher this run's rows "
            f"were made with ({kept}, identity {archived}): delete {cached} and its .json to use the "
            "archived one, or start another --run"
        )
    return archived


def load_setting(
    exp: Any, device: str, archive: Path | None = None
) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The data and the cached (or trained) teacher of one setting.

    Args:
        exp: The setting's ``ExperimentConfig``.
        device: ``cpu`` or ``cuda[:N]``.
        archive: The folder of archived teachers (``--teacher-archive``): restored into an empty cache,
            written after a first training, and compared with the cached teacher.

    Returns:
        ``(splits, teacher meta, student knowledge shapes, teacher knowledge shapes)``; the meta has
        ``identity``, the content hash of the teacher's weights.
    """
    from trainers.data import load_dataset
    from trainers.knowledge import KnowledgeExtractor
    from trainers.models import create_model
    from trainers.teacher import default_cache_dir, get_teacher

    root = Path(exp.cache_dir).expanduser() if exp.cache_dir else default_cache_dir()
    splits = load_dataset(exp.dataset)
    kept = pin_teacher(exp, splits, archive, root)
    teacher, meta = get_teacher(
        exp.teacher,
        exp.dataset,
        exp.teacher_train,
        cache_dir=root,
        device=device,
        splits=splits,
        progress=False,
    )
    archive_teacher(kept, meta)
    shape = (splits.in_channels, splits.image_size, splits.image_size)  # (C, H, W) of one image
    student = create_model(exp.student, splits.num_classes, splits.in_channels)
    return splits, meta, KnowledgeExtractor(student).shapes(shape), KnowledgeExtractor(teacher).shapes(shape)


SETTING_STUDIES = ("kd-tuned", "dist-tuned", "rand-kd", "kd-zero")
"""The studies of one (regime, student), each in its file (:func:`study_path`)."""
SEARCHES = ("rand-kd", "kd-zero")
"""The setting's studies that are searches (``study.run_search``, verified selection)."""


def study_path(stem: Path, name: str, seed_weight_steps: tuple[int, ...] = ()) -> Path:
    """File of the setting study ``name``: ``<out>/<run>-<regime>-<student>-<name>.db``.

    A search whose generation 0 holds loss-scale variants (``seed_weight_steps``) is another search, not a
    continuation (generation 0 is part of a study's identity), so it has a file of its own,
    ``...-<name>-wsteps-1-2.db``; the tuned rivals do not depend on it.
    """
    if name in SEARCHES and seed_weight_steps:
        return Path(f"{stem}-{name}-{weight_steps_tag(seed_weight_steps)}.db")
    return Path(f"{stem}-{name}.db")


def recorded_teacher(stem: Path, seed_weight_steps: tuple[int, ...] = ()) -> dict[str, Any] | None:
    """The teacher a setting's existing studies were searched with (``kdzero_teacher``), or ``None``.

    Read without creating anything: a study file or study that does not exist yet is skipped.
    ``seed_weight_steps``: the searches' generation 0, which names their files (:func:`study_path`).

    Raises:
        TeacherArchiveError: Two studies of the setting recorded different teachers.
    """
    import optuna

    from study.worker import TEACHER_ATTR

    found: dict[str, dict[str, Any]] = {}
    for name in SETTING_STUDIES:
        path = study_path(stem, name, seed_weight_steps)
        if not path.is_file():
            continue
        url = f"sqlite:///{path}"
        if name not in {s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False)}:
            continue
        rec = optuna.load_study(study_name=name, storage=url).user_attrs.get(TEACHER_ATTR)
        if isinstance(rec, dict) and rec.get("identity"):
            found[name] = rec
    ids = {r["identity"] for r in found.values()}
    if len(ids) > 1:
        raise TeacherArchiveError(
            f"the studies of {stem.name} were searched with different teachers: "
            + ", ".join(f"{k} {v['identity']}" for k, v in found.items())
        )
    return next(iter(found.values()), None)


class _NoMeasurement:
    """The proxy evaluator of a setting whose teacher is gone: every measurement is refused, naming why."""

    def __init__(self, why: str) -> None:
        self.why = why

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        raise TeacherArchiveError(f"{self.why}; a proxy measurement is missing")


def open_setting(
    args: argparse.Namespace, regime: str, student: str, pool: TrainPool, out: Path, log: Any
) -> dict[str, Any]:
    """Load one (regime, student) and submit the trainings that need no selection: CE, handcrafted, ``ce-2x``.

    :func:`main` opens every setting before it plans any, so those trainings fill the pool while the
    searches of the first setting run in this process.
    """
    exp = build_experiment(args, regime, student)
    splits, meta, s_shapes, t_shapes = load_setting(exp, args.device, Path(args.teacher_archive))
    stem = out / f"{args.run}-{regime}-{student}"
    # The setting's teacher: the one its studies were searched with, else the cached one. A setting made
    # with a teacher that is no longer at hand (another machine, before the run archived its teacher) is
    # frozen: its finished studies and rows are read, and nothing is trained or measured again.
    made = recorded_teacher(stem, args.seed_weight_steps)
    teacher = made if made is not None else meta
    ident = str(teacher["identity"])
    frozen = ident != meta["identity"]
    why = (
        f"setting {regime}/{student} was made with teacher {ident}, which is not at hand (the cached one is "
        f"{meta['identity']}): it can only be reported from its finished studies and rows"
    )
    log(
        f"[{regime}/{student}] {len(splits.train)} train samples; teacher {exp.teacher} test "
        f"{100 * float(teacher['test_acc']):.2f}% (identity {ident})" + (f"; FROZEN: {why}" if frozen else "")
    )

    def submit(e: Any, method: str, spec: Any, seed: int) -> None:
        if not frozen:
            pool.submit(e, regime, method, spec, seed, args.device, ident)
        elif pool.rows.find(**row_key(e, regime, method, spec, seed, ident)) is None:
            epochs = e.student_train.epochs
            raise TeacherArchiveError(f"{why}; its {method} seed {seed} row ({epochs} epochs) is missing")

    specs, skipped = tm.handcrafted_plan(("ce", *HANDCRAFTED), s_shapes, t_shapes)
    seeds = list(range(args.seeds))
    for method, spec in specs.items():  # handcrafted trainings start while the searches run
        for seed in seeds:
            submit(exp, method, spec, seed)
    long = dataclasses.replace(
        exp, student_train=dataclasses.replace(exp.student_train, epochs=2 * exp.student_train.epochs)
    )
    for seed in seeds:  # is the schedule long enough? CE with twice the epochs
        submit(long, CONVERGENCE, None, seed)
    return {
        "regime": regime,
        "student": student,
        "exp": exp,
        "splits": splits,
        "s_shapes": s_shapes,
        "stem": stem,
        "teacher": teacher,
        "ident": ident,
        "frozen": frozen,
        "why": why,
        "submit": submit,
        "specs": specs,
        "skipped": skipped,
        "seeds": seeds,
    }


def plan_setting(args: argparse.Namespace, opened: dict[str, Any], out: Path, log: Any) -> dict[str, Any]:
    """Selections (the three searches), proxy objectives, and the full trainings of one opened setting.

    ``opened`` is :func:`open_setting`'s; the trainings are submitted to its pool, and :func:`finish_setting`
    reads their rows once it is drained.
    """
    from trainers.proxy import ProxyEvaluator

    regime, student, exp, s_shapes = opened["regime"], opened["student"], opened["exp"], opened["s_shapes"]
    stem, teacher, ident, frozen, why = (opened[k] for k in ("stem", "teacher", "ident", "frozen", "why"))
    submit, specs, skipped, seeds = (opened[k] for k in ("submit", "specs", "skipped", "seeds"))
    splits = opened["splits"]
    kinds = tm.knowledge_kinds(s_shapes)
    # Verification runs that another search of the setting has made are read, not trained again.
    evaluator = (
        _NoMeasurement(why)
        if frozen
        else tv.SharedVerification(ProxyEvaluator(exp, device=args.device), stem, exp, ident)
    )
    n = args.budget
    record = {k: teacher.get(k) for k in ("identity", "model", "val_acc", "test_acc")}

    def search(sampler: str, name: str) -> Any:
        path = study_path(stem, name, args.seed_weight_steps)
        if frozen:
            return tm.finished_search(path, name, n, why)
        return tm.kdzero_search(
            exp,
            evaluator,
            n,
            path,
            kinds,
            population=args.population,
            sampler=sampler,
            verify_top=args.verify_top,
            verify_seeds=args.verify_seeds,
            verify_rungs=args.verify_rungs,
            seed_weight_steps=args.seed_weight_steps,
            threads=args.threads,
            echo=lambda s: log("    " + s.splitlines()[0]),
        )

    def tune(name: str) -> Any:
        if frozen:
            return tm.finished_search(study_path(stem, name), name, n, why)
        return tm.tune_known(evaluator, name, n, study_path(stem, name), echo=log, teacher=record)

    makers = {
        "kd-tuned": lambda: tune("kd-tuned"),
        "dist-tuned": lambda: tune("dist-tuned"),
        "rand-kd": lambda: search("random", "rand-kd"),
        "kd-zero": lambda: search("nsga2", "kd-zero"),
    }
    studies: dict[str, Any] = {}
    # Each method's full trainings are submitted as soon as its study has chosen, so the tuned rivals' rows
    # train in the pool while the searches run in this process.
    for method, make in makers.items():
        study = studies[method] = make()
        if method in SEARCHES:  # the verified winner (None: plain CE won the verification)
            found, spec = tm.verified_choice(study)
            if not found:
                skipped[method] = f"its search of {n} trials produced no verified choice"
                continue
            specs[method] = spec
        else:
            best = tm.best_trial(study)
            if best is None:
                skipped[method] = f"none of its {n} proxy trials passed rejection"
                continue
            specs[method] = trial_spec(best)
        for seed in seeds:
            submit(exp, method, specs[method], seed)
    fit_cache: dict[str, dict[str, float]] = {}
    for study in studies.values():
        for t in tm.completed(study):
            fit_cache.setdefault(trial_spec(t).to_json(), tm.trial_fitness(t))
    cache_path = Path(f"{stem}-fidelity-cache.json")  # what the fidelity set measured: kept for --resume
    if args.resume:
        if not load_fit_cache(cache_path, fit_cache, ident) and cache_path.exists():
            log(f"    {cache_path.name} was measured with another teacher than {ident}: not read")
    chosen = plan_fidelity(args, specs, studies, fit_cache, evaluator, tm.verify_seed(exp), cache_path, ident)
    for _source, method, spec in chosen:
        submit(exp, method, spec, FIDELITY_SEED)
    return {
        "exp": exp,
        "regime": regime,
        "student": student,
        "train_size": len(splits.train),
        "teacher_test_acc": float(teacher["test_acc"]),
        "teacher_identity": ident,
        "frozen": frozen,
        "kinds": kinds,
        "specs": specs,
        "skipped": skipped,
        "studies": studies,
        "chosen": chosen,
        "fit_cache": fit_cache,
        "budget": n,
    }


def plan_rows(plan: dict[str, Any], rows: Rows) -> list[dict[str, Any]]:
    """The rows of a planned (regime, student) that belong to its current specs and schedule."""
    return current_rows(
        rows.rows,
        plan["regime"],
        plan["student"],
        plan["specs"],
        plan["exp"].student_train.epochs,
        plan["teacher_identity"],
    )


def finish_setting(plan: dict[str, Any], rows: Rows) -> dict:
    """Statistics, fidelity and search cost of one planned (regime, student) whose trainings are done."""
    exp, regime, student = plan["exp"], plan["regime"], plan["student"]
    specs, studies = plan["specs"], plan["studies"]
    n = plan["budget"]
    mine = plan_rows(plan, rows)
    fidelity = fidelity_result(exp, regime, plan["chosen"], plan["fit_cache"], rows, plan["teacher_identity"])
    # Costs in CPU seconds when every row and trial recorded them (a shared machine does not inflate them),
    # wall seconds otherwise. With one torch thread per process (--threads 1) both agree on an idle machine.
    clock = "cpu" if all("cpu_s" in r for r in mine) else "wall"
    key = "cpu_s" if clock == "cpu" else "wall_s"
    ce_s = statistics.fmean(r[key] for r in select(mine, method="ce"))
    ok = [  # each training once: a copied row (same_training_as) is another method's training
        r[key]
        for r in mine
        if r["method"] not in ("ce", "extra", CONVERGENCE)
        and r["test_acc"] is not None
        and "same_training_as" not in r
    ]
    dist_s = statistics.fmean(ok) if ok else ce_s
    search_s, search_clock = tm.study_cost_s(studies["kd-zero"])
    verify_s, verify_clock = tm.verification_cost_s(studies["kd-zero"])
    if clock == "cpu" and "wall" in (search_clock, verify_clock):
        clock = "mixed"  # old studies without cpu_s: ratios compare wall with CPU seconds
    outcomes = tm.candidate_breakdown(studies["kd-zero"], dist_s)
    trained = [v for k, v in outcomes.items() if k != "twin"]
    n_trained = sum(v["n"] for v in trained)
    trained_units = sum(v["n"] * v["mean_units"] for v in trained) / n_trained if n_trained else math.nan
    cost = {
        "clock": clock,
        "search_s": search_s,
        "verify_s": verify_s,
        "ce_run_s": ce_s,
        "distill_run_s": dist_s,
        "search_units": search_s / ce_s,
        "verify_units": verify_s / dist_s,
        "candidate_units": search_s / n / dist_s,
        "naive_s": n * dist_s,
        "naive_units": n * dist_s / ce_s,
        "acceleration": n * dist_s / search_s if search_s > 0 else math.nan,
        "kd_tuned_s": tm.study_cost_s(studies["kd-tuned"])[0],
        "dist_tuned_s": tm.study_cost_s(studies["dist-tuned"])[0],
        "rand_kd_s": tm.study_cost_s(studies["rand-kd"])[0],
        "n_trials": n,
        "outcomes": outcomes,
        "candidate_units_trained": trained_units,  # twins (never trained) left out
        "search_verify_ce_units": (search_s + verify_s) / ce_s,
        "verify_per_rung": tm.verification_cost_per_rung(studies["kd-zero"], dist_s),
        "rejected": {k: len([t for t in s.trials if t.state.name == "PRUNED"]) for k, s in studies.items()},
    }
    table_rows = [r for r in mine if r["method"] != "extra"]
    ce_mean = statistics.fmean(float(r["test_acc"]) for r in select(mine, method="ce"))
    trains = []
    for m in HANDCRAFTED:
        ran = select(table_rows, method=m)
        if ran and all(r["test_acc"] is not None for r in ran):
            if statistics.fmean(float(r["test_acc"]) for r in ran) > 0.5 * ce_mean:
                trains.append(m)
    fit = plan["fit_cache"]
    proxy_check = {
        "ce": fit.get("ce", {}).get("proxy_acc"),
        "known": {m: fit.get(specs[m].to_json(), {}).get("proxy_acc") for m in HANDCRAFTED if m in specs},
        "trains": trains,
    }
    return {
        "regime": regime,
        "student": student,
        "train_size": plan["train_size"],
        "teacher_test_acc": plan["teacher_test_acc"],
        "teacher_identity": plan["teacher_identity"],
        "frozen": plan["frozen"],  # made with a teacher no longer at hand: read, not trained
        "knowledge": list(plan["kinds"]),
        "formulas": {m: (s.formula() if s is not None else "ce") for m, s in specs.items()},
        "skipped": plan["skipped"],
        "best_handcrafted": best_rival(table_rows),
        "convergence": convergence_gap(table_rows)._asdict(),
        "proxy_check": proxy_check,
        "summary": [
            {**s._asdict(), "vs_ce": s.vs_ce._asdict(), "vs_best": s.vs_best._asdict()}
            for s in summarise_setting(table_rows)
        ],
        "search_cost": cost,
        "prefix_fidelity": prefix_rank_correlations(mine, exp.student_train.epochs),
        "fidelity": fidelity,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        for old in [*out.glob(f"{args.run}-*.db"), *out.glob(f"{args.run}-*-fidelity-cache.json")]:
            old.unlink()
    rows = Rows(out / f"{args.run}.json", args.resume)

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.perf_counter()
    pool = TrainPool(rows, args.jobs, args.threads if args.jobs > 1 else None, log)
    try:
        opened = [open_setting(args, r, s, pool, out, log) for r in args.regimes for s in args.students]
        plans = [plan_setting(args, o, out, log) for o in opened]
        pool.drain()
    finally:
        pool.close()
    settings = {f"{p['regime']}/{p['student']}": finish_setting(p, rows) for p in plans}
    exp0 = build_experiment(args, args.regimes[0], args.students[0])
    report: dict[str, Any] = {
        "meta": {
            "command": tr.command_line(argv),
            "date": tr.today(),
            "machine": tr.machine(),
            "quick": args.quick,
            "dataset": args.dataset,
            "teacher": exp0.teacher,
            "epochs": {
                r: build_experiment(args, r, args.students[0]).student_train.epochs for r in args.regimes
            },
            "teacher_command": TEACHER_COMMAND if not args.quick else None,
            "teacher_identity": sorted({p["teacher_identity"] for p in plans}),
            "teacher_archive": args.teacher_archive,
            "seeds": list(range(args.seeds)),
            "budget": args.budget,
            "search": {
                "population": args.population,
                "seed_weight_steps": list(args.seed_weight_steps),
                "verify_top": args.verify_top,
                "verify_seeds": args.verify_seeds,
                "verify_fraction": args.verify_fraction,
                "verify_rungs": list(args.verify_rungs),
            },
            "proxy": json.dumps(exp0.proxy.to_dict()),
            "student_train": exp0.student_train.to_dict(),
            "teacher_train": exp0.teacher_train.to_dict(),
            "handcrafted": tr.handcrafted_notes(),
            "total_s": time.perf_counter() - t0,
        },
        "settings": settings,
    }
    # The targets read the rows of each setting's current plan, as its statistics do: a verification that
    # chose another distiller since (or another --epochs) leaves older rows in the file as history only.
    by_setting = {
        (p["regime"], p["student"]): [r for r in plan_rows(p, rows) if r["method"] != "extra"] for p in plans
    }
    corr = {(s["regime"], s["student"]): s["fidelity"]["correlations"] for s in settings.values()}
    checks = {(s["regime"], s["student"]): s["proxy_check"] for s in settings.values()}
    costs = {(s["regime"], s["student"]): s["search_cost"] for s in settings.values()}
    report["targets"] = check_targets(
        by_setting, corr, cnn_student="cnn_tiny", subset_regime="10pct", proxy_check=checks, costs=costs
    )
    md = tr.render_markdown(report)
    html = tr.fidelity_figure(report, out / f"{args.run}-fidelity.html")
    report["meta"]["figure"] = str(html) if html else None
    (out / f"{args.run}.summary.json").write_text(json.dumps(clean_json(report), indent=1))
    (out / f"{args.run}.md").write_text(md)
    print(md)
    if args.readme:
        tr.replace_readme_section(Path(__file__).resolve().parents[1] / "README.md", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
