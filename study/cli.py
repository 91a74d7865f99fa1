"""Command line: ``python -m study search|worker|status``."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from optuna.exceptions import ExperimentalWarning, StorageInternalError
from sqlalchemy.exc import SQLAlchemyError

from study.config import PRESETS, load_config, read_config_file
from study.storage import check_study_name, make_storage, mask_url, parse_url, require_study_file
from trainers.models import ALLOW_ENV, allow_imports, is_import_path


def _devices(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise argparse.ArgumentTypeError(
            f"--devices needs a comma-separated list like cuda:0,cuda:1, got {text!r}"
        )
    return devices


def _int_at_least(low: int, note: str = "") -> Any:
    """An argparse type: a whole number >= ``low`` (``note`` explains the bound in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}{note}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0, " (0 = one per core)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


MAX_WORKERS_PER_CORE = 4
"""More worker processes than cores x this are refused unless ``--force-workers``."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study", description="KD-Zero distiller search on Optuna.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="run or resume a search (default: Fashion-MNIST, configs/default.toml)")
    s.add_argument("--config", help="TOML or JSON file with [experiment], [search], [run] tables")
    s.add_argument(
        "--preset", choices=PRESETS, default="default", help="starting configuration (default: default)"
    )
    s.add_argument(
        "--storage", help="SQLAlchemy URL (sqlite:///kdzero.db, postgresql://..., mysql+pymysql://...)"
    )
    s.add_argument("--study", help="study name")
    s.add_argument("--workers", type=_count, help="worker processes (0 = one per core)")
    s.add_argument(
        "--force-workers",
        action="store_true",
        help=f"allow more than {MAX_WORKERS_PER_CORE} worker processes per CPU core",
    )
    s.add_argument(
        "--threads", type=_positive_int, help="torch threads per worker (default: cores // workers)"
    )
    s.add_argument(
        "--devices", type=_devices, help="devices for the workers, round-robin, e.g. cuda:0,cuda:1"
    )
    s.add_argument("--n-trials", type=_positive_int, help="study-wide target of finished trials")
    s.add_argument("--timeout", type=_seconds, help="seconds after which no new trial starts")
    s.add_argument("--seed", type=int, help="sampler seed")
    s.add_argument("--cache-dir", help="folder of teacher checkpoints and teacher-output caches")
    s.add_argument(
        "--artifacts",
        help="the study's artifact store (verification checkpoints, the trained student): a folder, file:// "
        "or s3://bucket/prefix (default: a folder beside the SQLite file)",
    )
    s.add_argument("--data-root", help="folder holding the data set files")
    _add_model_arguments(s)
    _add_train_teacher(s)
    s.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")

    w = sub.add_parser("worker", help="join an existing study (its configuration is stored in it)")
    w.add_argument("--storage", required=True)
    w.add_argument("--study", required=True)
    w.add_argument("--device", default="cpu")
    w.add_argument("--threads", type=_positive_int, help="torch threads of this worker")
    w.add_argument(
        "--n-trials", type=_positive_int, help="study-wide target (default: the one stored by `search`)"
    )
    w.add_argument("--timeout", type=_seconds, help="seconds after which no new trial starts")
    w.add_argument(
        "--index",
        type=_int_at_least(0),
        default=0,
        help="worker index (names the worker; its sampler seed is claimed from the study, never shared)",
    )
    w.add_argument("--cache-dir")
    w.add_argument("--artifacts", help="the study's artifact store (as for search; shared across machines)")
    w.add_argument("--data-root")
    _add_model_arguments(w)
    _add_train_teacher(w)

    st = sub.add_parser(
        "status", help="counts per state and generation, rejection reasons, weights, best trials"
    )
    st.add_argument("--storage", required=True)
    st.add_argument("--study", required=True)
    st.add_argument(
        "--fail-stale", action="store_true", help="first mark trials whose heartbeat stopped as FAIL"
    )
    st.add_argument("--top", type=_positive_int, default=5, help="Pareto trials to list")
    damage = st.add_mutually_exclusive_group()
    damage.add_argument(
        "--check",
        action="store_true",
        help="list stored rows Optuna cannot decode (and spec attrs that are not specs); exit 1 if any",
    )
    damage.add_argument(
        "--repair",
        action="store_true",
        help="back the database up (SQLite: <file>.bak-<time>), then move the damaged rows aside into the "
        "table kdzero_damaged_rows so that the study loads and the search resumes",
    )
    return p


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher-checkpoint",
        help="a trained teacher's state_dict file (never trained; on another machine: its copy of the "
        "study's teacher)",
    )
    p.add_argument(
        "--allow-import",
        action="append",
        default=[],
        metavar="PREFIX",
        help="allow model builders from this module (and below it) to be imported; repeatable "
        f"(also {ALLOW_ENV}, comma-separated). A config file given on the command line allows its models",
    )


def _add_train_teacher(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--train-teacher",
        action="store_true",
        help="train the teacher here when this machine lacks the study's (accepted only if its validation "
        "predictions agree with the study's teacher); default: refuse and name the checkpoint to copy",
    )


def _file_import_paths(path: str | None) -> list[str]:
    """Models a config file names by import path (the user passed the file, so they are allowed)."""
    if path is None:
        return []
    exp = read_config_file(path).get("experiment", {})
    if not isinstance(exp, dict):
        return []
    names = [exp.get("teacher"), exp.get("student")]
    teachers = exp.get("teachers")
    if isinstance(teachers, list):  # several teachers (Eq. 3)
        names += [t.get("model") for t in teachers if isinstance(t, dict)]
    return [n for n in names if is_import_path(n)]


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    run: dict[str, Any] = {}
    for key in ("storage", "study", "workers", "threads", "n_trials", "timeout", "artifacts"):
        value = getattr(a, key)
        if value is not None:
            run[key] = value
    if a.devices is not None:
        run["devices"] = a.devices
    out: dict[str, Any] = {"run": run}
    if a.seed is not None:
        out["search"] = {"seed": a.seed}
    exp: dict[str, Any] = {}
    if a.cache_dir is not None:
        exp["cache_dir"] = a.cache_dir
    if a.data_root is not None:
        exp["dataset"] = {"root": a.data_root}
    if a.teacher_checkpoint is not None:
        exp["teacher_checkpoint"] = a.teacher_checkpoint
    if exp:
        out["experiment"] = exp
    return out


def _check_or_repair(storage: Any, name: str, repair: bool) -> int:
    """``status --check`` (exit 1 when rows are damaged) or ``status --repair`` (exit 0 once it loads)."""
    from study.integrity import MOVED_TABLE, find_damaged
    from study.integrity import repair as move_aside
    from study.worker import load_existing_study

    if not repair:
        rows = find_damaged(storage, name)
        for row in rows:
            print(f"damaged: {row.line()}")
        if rows:
            print(
                f"study {name!r}: {len(rows)} damaged row(s); --repair backs the database up and moves them "
                "aside"
            )
            return 1
        print(f"study {name!r}: no damaged rows")
        return 0
    result = move_aside(storage, name)
    if not result.rows:
        print(f"study {name!r}: no damaged rows, nothing changed")
        return 0
    for row in result.rows:
        print(f"moved aside: {row.line()}")
    load_existing_study(storage, name)  # raises if anything is still unreadable
    backup = f"the database was copied to {result.backup} first; " if result.backup else ""
    print(
        f"study {name!r}: {backup}the {len(result.rows)} row(s) are kept in the table {MOVED_TABLE} of the "
        "same database; the study loads again (rerun the search to resume it)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    a = _parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    try:
        if a.command == "search":
            from study.search import describe, run_search

            allow_imports([*a.allow_import, *_file_import_paths(a.config)])
            cfg = load_config(a.preset, a.config, _overrides(a))
            parse_url(cfg.run.storage)
            cores = os.cpu_count() or 1
            if cfg.run.n_workers > MAX_WORKERS_PER_CORE * cores and not a.force_workers:
                raise ValueError(
                    f"{cfg.run.n_workers} workers is more than {MAX_WORKERS_PER_CORE} per CPU core ({cores} "
                    "cores); each worker is a process with its own copy of the data: pass --force-workers to "
                    "run that many"
                )
            if a.print_config:
                print(describe(cfg))
                return 0
            run_search(cfg, train_teacher=a.train_teacher)
        elif a.command == "worker":
            from study.worker import WorkerArgs, run_worker

            parse_url(a.storage)
            check_study_name(a.study, "--study")
            allow_imports(a.allow_import)
            deadline = time.time() + a.timeout if a.timeout else None
            n = run_worker(
                WorkerArgs(
                    storage=a.storage,
                    study=a.study,
                    index=a.index,
                    device=a.device,
                    threads=a.threads,
                    n_trials=a.n_trials,
                    deadline=deadline,
                    cache_dir=a.cache_dir,
                    data_root=a.data_root,
                    teacher_checkpoint=a.teacher_checkpoint,
                    train_teacher=a.train_teacher,
                    artifacts=a.artifacts,
                )
            )
            print(f"worker {a.index}: ran {n} trial(s) in study {a.study!r} ({mask_url(a.storage)})")
        else:
            import optuna

            from study.report import format_summary, summarise
            from study.storage import fail_stale
            from study.worker import load_existing_study, stored_config

            check_study_name(a.study, "--study")
            require_study_file(a.storage)  # status only reads: never create or write a database
            storage = make_storage(a.storage)
            if a.check or a.repair:
                return _check_or_repair(storage, a.study, a.repair)
            study = load_existing_study(storage, a.study)
            if a.fail_stale:
                optuna.logging.set_verbosity(optuna.logging.WARNING)
                fail_stale(study)
            try:
                cfg = stored_config(study)
            except ValueError:
                cfg = None
            print(format_summary(summarise(study, cfg), top=a.top))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; running trials were marked for retry: rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:  # unwritable folder, full disk, missing file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (SQLAlchemyError, StorageInternalError) as exc:  # storage unreachable; the study is kept
        url = getattr(a, "storage", None)
        where = f" {mask_url(url)}" if url else ""
        root = exc.__cause__ if isinstance(exc, StorageInternalError) and exc.__cause__ else exc
        first = str(getattr(root, "orig", None) or root).strip().splitlines()[0]
        print(
            f"error: storage{where} failed ({type(exc).__name__}: {first}); the study is kept, "
            "rerun the same command to continue",
            file=sys.stderr,
        )
        return 3
    return 0
