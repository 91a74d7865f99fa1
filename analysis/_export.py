"""Export a chosen trial: ``distiller.json``, ``experiment.json``, ``train_student.py`` and ``README.txt``.

The script is the fixed template ``train_student.py.template``; the only thing filled in is one JSON document
(as a Python string literal made by ``repr``), so nothing from storage ever becomes code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from analysis._load import study_json_attr
from analysis._out import make_folder, refuse_existing, write_file
from spaces import DistillerSpec
from study.sampler import trial_spec
from study.worker import CONFIG_ATTR
from trainers.config import ExperimentConfig, TrainConfig
from trainers.models import import_allowed, split_import_path

TEMPLATE = Path(__file__).with_name("train_student.py.template")
PLACEHOLDER = "__KDZERO_EXPORT_JSON__"
EXPORT_FILES = ("distiller.json", "experiment.json", "train_student.py", "README.txt")
"""The files an export writes into its folder (existing ones are replaced only with ``force``)."""
REPO_ROOT = Path(__file__).resolve().parents[1]
STUDENT_FILES = ("student.pt", "aligners.pt", "result.json")
"""What an export of the verified choice adds when the study holds its trained student."""


def study_experiment(study: optuna.Study) -> ExperimentConfig:
    """The study's ``ExperimentConfig``, read from the ``kdzero_config`` study user attr.

    Raises:
        ValueError: The attr is missing or lacks an ``experiment`` entry.
    """
    config = study_json_attr(study, CONFIG_ATTR)
    if not isinstance(config, dict) or "experiment" not in config:
        raise ValueError(
            f"study {study.study_name!r} has no 'kdzero_config' user attr with an 'experiment' entry "
            f"(found keys: {sorted(study.user_attrs)}); was it created by `python -m study search`?"
        )
    return ExperimentConfig.from_dict(config["experiment"])


def full_schedule(exp: ExperimentConfig) -> TrainConfig:
    """The full student schedule of an export: the study's own ``student_train``, ``max_steps`` cleared.

    Every proxy run was a prefix of exactly this schedule (the paper's 240-epoch CIFAR schedule lives in
    ``configs/paper.toml``).
    """
    return dataclasses.replace(exp.student_train, max_steps=None)


def checked_spec(trial: FrozenTrial) -> Any:
    """The trial's ``DistillerSpec`` rebuilt from its params, cross-checked with its ``spec`` user attr.

    Raises:
        ValueError: The params do not form a valid spec, or they disagree with the stored ``spec`` JSON.
    """
    repair = "python -m study status --check (and --repair) names and moves aside damaged rows"
    spec = trial_spec(trial)
    stored = trial.user_attrs.get("spec")
    if stored is not None:
        try:
            other = (
                DistillerSpec.from_json(stored)
                if isinstance(stored, str)
                else DistillerSpec.from_dict(stored)
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"trial {trial.number}: its stored 'spec' user attr is not a spec ({exc}); {repair}"
            ) from None
        if other != spec:
            raise ValueError(
                f"trial {trial.number}: the spec rebuilt from its params {spec.to_json()} differs from its "
                f"stored 'spec' user attr {other.to_json()}"
            )
    return spec


@dataclass(frozen=True)
class ExportResult:
    """Paths written by :func:`export_trial`."""

    out_dir: Path
    distiller: Path
    experiment: Path
    script: Path
    readme: Path


def render_script(meta: dict[str, Any]) -> str:
    """Fill the fixed template with one JSON document (``meta``) as a Python string literal."""
    template = TEMPLATE.read_text()
    if template.count(PLACEHOLDER) != 1:
        raise RuntimeError(f"{TEMPLATE} must contain {PLACEHOLDER} exactly once")
    return template.replace(PLACEHOLDER, repr(json.dumps(meta, sort_keys=True)))


def export_trial(
    study: optuna.Study,
    trial: FrozenTrial | None,
    out_dir: str | Path,
    *,
    kdzero_root: str | Path | None = None,
    force: bool = False,
) -> ExportResult:
    """Write the files that retrain the study's student with the trial's distiller for the full schedule.

    Args:
        study: The kdzero study (its ``kdzero_config`` gives the experiment).
        trial: A COMPLETE trial of that study, or ``None`` when the choice is plain CE training (the verified
            winner was the CE reference): ``distiller.json`` then holds ``null``.
        out_dir: Folder to write into (created if needed).
        kdzero_root: Checkout the script imports kdzero from by default; defaults to this checkout.
        force: Replace export files already in ``out_dir`` (else they are refused, and nothing is written).

    Returns:
        The paths written.

    Raises:
        ValueError: A trial or study that cannot be exported, ``out_dir`` a file or not writable, or export
            files already there without ``force``; one line naming the path.
    """
    spec = checked_spec(trial) if trial is not None else None
    exp = study_experiment(study)
    refused = [m for m in exp.import_paths() if not import_allowed(split_import_path(m)[0])]
    if refused:
        modules = sorted({split_import_path(m)[0] for m in refused})
        raise ValueError(
            f"study {study.study_name!r} names models by import path {refused}; the exported script would "
            f"import them, so allow it explicitly: --allow-import {' --allow-import '.join(modules)}"
        )
    exp = dataclasses.replace(exp, student_train=full_schedule(exp))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder: give the folder to export into")
    refuse_existing([out / name for name in EXPORT_FILES], force, "the export")
    make_folder(out, "the export folder")
    root = Path(kdzero_root).resolve() if kdzero_root is not None else REPO_ROOT
    meta = {
        "kdzero_root": str(root),
        "study": study.study_name,
        "trial": trial.number if trial is not None else None,
        "formula": spec.formula() if spec is not None else "ce",
        "allow_import": sorted({split_import_path(m)[0] for m in exp.import_paths()}),
    }
    paths = ExportResult(out, *(out / name for name in EXPORT_FILES))
    write_file(paths.distiller, (spec.to_json() if spec is not None else "null") + "\n")
    write_file(paths.experiment, json.dumps(exp.to_dict(), indent=2, sort_keys=True) + "\n")
    write_file(paths.script, render_script(meta), mode=0o755)
    write_file(paths.readme, _readme(meta, exp))
    return paths


def _readme(meta: dict[str, Any], exp: ExperimentConfig) -> str:
    sched = exp.student_train
    return (
        f"kdzero export of {'plain CE training' if meta['trial'] is None else 'trial ' + str(meta['trial'])} "
        f"from study {meta['study']!r}\n"
        f"distiller: {meta['formula']}\n"
        f"student {exp.student} <- teacher(s) {', '.join(t.model for t in exp.teacher_refs())} on "
        f"{exp.dataset.name}; full schedule {sched.epochs} "
        f"epochs, {sched.optimizer} lr {sched.lr}, batch {sched.batch_size}, {sched.schedule} schedule\n\n"
        "Files: distiller.json (the DistillerSpec), experiment.json (the ExperimentConfig with the full\n"
        "schedule), "
        "train_student.py (reads both at run time and calls kdzero's trainers.distill).\n\n"
        "The script needs the kdzero checkout importable. It adds --kdzero-root (or env KDZERO_ROOT,\n"
        "default "
        f"{meta['kdzero_root']}) to sys.path.\n\n"
        "Run (one process, or several with torchrun; a restarted run resumes from its checkpoint):\n"
        "    python train_student.py --device cuda --out result.json\n"
        "    torchrun --nproc_per_node 2 train_student.py --device cpu --out result.json\n"
        "It writes result.json (with world_size), result.student.pt (the student's state_dict) and\n"
        "result.aligners.pt (the distiller's aligners), and keeps result.ckpt.pt for resuming.\n"
        "Options: --epochs N (milestones scale with it), --seed S, --device cpu|cuda|auto, --data-root DIR,\n"
        "--cache-dir DIR, --kdzero-root DIR. The final test accuracy is written to --out as JSON.\n"
        "Exit status: 0 done (a warning when the student ends at chance level), 2 bad input, 4 the\n"
        "distiller was rejected during the run (NaN / infinite / diverging loss; the reason is printed).\n"
    )


def export_student(
    study: optuna.Study,
    trial: FrozenTrial | None,
    out_dir: str | Path,
    store_location: str,
    *,
    force: bool = False,
) -> list[Path]:
    """Write the choice's trained student: ``student.pt``, ``aligners.pt`` and ``result.json``.

    Only when the study's ``kdzero_student`` (the verification's full-schedule run of its choice, the seed
    with the best validation accuracy) is of ``trial`` (``None``: plain CE). The checkpoint is downloaded
    from the artifact store, checked against its content hash and read with ``weights_only=True``;
    ``result.json`` holds its validation accuracy and the test accuracy measured once, after the choice.

    Returns:
        The paths written (``[]`` when the study holds no trained student of ``trial``).

    Raises:
        ValueError: The checkpoint is missing or fails its hash check (named), or files exist (no ``force``).
    """
    import torch

    from study.artifacts import ArtifactError, fetch, open_store
    from study.verify import student

    record = student(study)
    key = "ce" if trial is None else str(trial.number)
    if record is None or str(record.get("key")) != key:
        return []
    out = Path(out_dir)
    paths = [out / name for name in STUDENT_FILES]
    refuse_existing(paths, force, "the export")
    tmp = out / ".student.ckpt.part"
    try:
        fetch(open_store(store_location), record["checkpoint"], tmp)
        saved = torch.load(tmp, map_location="cpu", weights_only=True)
    except ArtifactError as err:
        raise ValueError(
            f"the trained student of study {study.study_name!r}: {err} (in {store_location})"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise ValueError(f"the trained student of study {study.study_name!r} holds no model state_dict")
    torch.save(saved["model"], paths[0])
    torch.save(list(saved.get("distillers") or []), paths[1])
    result = {
        k: record.get(k)
        for k in ("formula", "seed", "fraction", "val_acc", "test_acc", "test_ce", "job", "trial")
    }
    result.update(
        study=study.study_name,
        source_trial=None if trial is None else trial.number,
        steps=int(saved.get("step", 0)),
        artifact_id=record["checkpoint"].get("artifact_id"),
        sha256=record["checkpoint"].get("sha256"),
    )
    write_file(paths[2], json.dumps(result, indent=2, sort_keys=True) + "\n")
    return paths
