"""Command line: ``python -m analysis pareto|export|report --storage URL --study NAME ...``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import SQLAlchemyError

from analysis._load import TrialRow, load_study
from analysis._select import SELECTIONS, pareto_rows, select_choice
from study.storage import mask_url

DEFAULT_STORAGE = "sqlite:///kdzero.db"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"storage URL (default {DEFAULT_STORAGE})")
    p.add_argument("--study", required=True, help="study name")


def _choice(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--select",
        choices=SELECTIONS,
        default=None,
        help="verified = the winner of the verification stage (default when the study has one), "
        "scalar = lowest geometric mean of val_ce, sharpness_gap and cka_gap on the Pareto front, "
        "accuracy = highest proxy validation accuracy on the front",
    )
    p.add_argument("--trial", type=int, default=None, help="use this trial number instead of a rule")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the three sub-commands."""
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pareto", help="table of the Pareto-front trials, sorted by the selection rule")
    _common(p)
    p.add_argument("--select", choices=SELECTIONS, default="scalar", help="sort rule (first row = selected)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p = sub.add_parser("export", help="write distiller.json, experiment.json, train_student.py, README.txt")
    _common(p)
    _choice(p)
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace export files already in --out (default: refuse and name them)",
    )
    p.add_argument("--kdzero-root", default=None, help="checkout the script imports (default: this one)")
    p.add_argument(
        "--artifacts",
        help="the study's artifact store, where its trained student is (default: beside the SQLite file)",
    )
    p.add_argument(
        "--allow-import",
        action="append",
        default=[],
        metavar="PREFIX",
        help="allow the exported script to import the study's models from this module "
        "(needed when the stored config names models by import path; also "
        "KDZERO_ALLOW_IMPORT)",
    )
    p = sub.add_parser("report", help="one self-contained offline HTML report")
    _common(p)
    _choice(p)
    p.add_argument(
        "--top-k", type=int, default=20, help="top trials counted in the operation-frequency figure"
    )
    p.add_argument("--importance-trees", type=int, default=16, help="trees of the fANOVA importance forest")
    p.add_argument("--out", required=True, help="HTML file to write (its folder is created if needed)")
    p.add_argument("--force", action="store_true", help="replace --out when it exists (default: refuse)")
    return parser


def row_dict(r: TrialRow) -> dict:
    """A row as JSON-able dict, with the derived CKA and scalarised fitness."""
    return {
        "number": r.number,
        "formula": r.formula,
        "val_ce": r.val_ce,
        "sharpness_gap": r.sharpness_gap,
        "cka": r.cka,
        "cka_gap": r.cka_gap,
        "scalar": r.scalar,
        "accuracy": r.accuracy,
        "generation": r.generation,
        "known": r.known,
    }


def format_table(rows: list[TrialRow]) -> str:
    """Plain-text table of Pareto rows."""
    head = ["trial", "formula", "val_ce", "sharpness_gap", "cka_gap", "scalar", "val acc", "gen", "known"]
    body = [
        [
            str(r.number),
            r.formula,
            f"{r.val_ce:.4f}",
            f"{r.sharpness_gap:.4f}",
            f"{r.cka_gap:.4f}",
            f"{r.scalar:.4f}",
            "" if r.accuracy is None else f"{r.accuracy:.4f}",
            "" if r.generation is None else str(r.generation),
            r.known or "",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; errors print ``error: ...`` to stderr and return 2."""
    args = build_parser().parse_args(argv)
    try:
        study = load_study(args.storage, args.study)
        if args.command == "pareto":
            rows = pareto_rows(study, args.select)
            if args.json:
                print(json.dumps([row_dict(r) for r in rows], indent=2))
            else:
                print(format_table(rows))
        elif args.command == "export":
            from analysis._export import export_student, export_trial, study_experiment
            from study.artifacts import location
            from trainers.models import allow_imports

            allow_imports(args.allow_import)
            trial = select_choice(study, args.select, args.trial)
            res = export_trial(study, trial, args.out, kdzero_root=args.kdzero_root, force=args.force)
            where = location(args.storage, args.artifacts, study_experiment(study).cache_dir)
            trained = export_student(study, trial, args.out, where, force=args.force)
            what = "plain CE training (the verified winner)" if trial is None else f"trial {trial.number}"
            print(f"exported {what} to {res.out_dir}:")
            for path in (res.distiller, res.experiment, res.script, res.readme, *trained):
                print(f"  {path}")
            if trained:
                print("the trained student (the verification's full run of the choice) is student.pt")
            print(f"retrain from scratch: python {res.script} --out {res.out_dir / 'retrained.json'}")
        else:
            from analysis._report import write_report

            path = write_report(
                study,
                args.out,
                select=args.select,
                trial=args.trial,
                top_k=args.top_k,
                importance_trees=args.importance_trees,
                force=args.force,
            )
            print(f"report written to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --out, a full disk
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (SQLAlchemyError, StorageInternalError) as exc:  # storage unreachable: one line, password masked
        root = exc.__cause__ if isinstance(exc, StorageInternalError) and exc.__cause__ else exc
        first = str(getattr(root, "orig", None) or root).strip().splitlines()[0]
        print(
            f"error: storage {mask_url(args.storage)} failed ({type(exc).__name__}: {mask_url(first)})",
            file=sys.stderr,
        )
        return 3
    return 0
