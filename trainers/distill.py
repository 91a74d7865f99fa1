"""Full distillation run: the teacher from the cache, the student trained through the one loop, test accuracy.

``python -m trainers distill --distiller spec.json --teacher resnet8 --student cnn_tiny --dataset
fashion_mnist`` or ``--baseline kd`` (a known distiller; ``ce`` trains without a distiller). Prints the test
accuracy and writes a JSON result with ``--out``.

Exit status: 0 done (a warning on stderr when the student ends at chance level), 2 bad input (one line naming
the value), 4 (:data:`EXIT_REJECTED`) the distiller was rejected during the run (reason and detail on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from spaces import KNOWN_DISTILLERS, DistillerSpec, read_data_file
from trainers.callbacks import Callbacks, ProgressBar, attach_callbacks
from trainers.config import DataConfig, ExperimentConfig
from trainers.metrics import evaluate_split
from trainers.models import allow_imports
from trainers.rejection import Rejected
from trainers.run import assemble_run, load_parts
from trainers.runtime import add_runtime_arguments, apply_runtime

EXIT_REJECTED = 4
"""Exit status of ``python -m trainers distill`` and an exported ``train_student.py`` whose distiller was
rejected (``nan``, ``inf``, ``diverge``, ``invalid``...; see ``trainers.rejection.REASONS``)."""
CHANCE_FACTOR = 1.5
"""A run ends "at chance level" when its validation accuracy is below this many times 1 / classes."""


def resolve_spec(distiller: str | None = None, baseline: str | None = None) -> DistillerSpec | None:
    """The ``DistillerSpec`` of a JSON file / JSON text (``distiller``) or of a known ``baseline`` name.

    Returns ``None`` for ``baseline="ce"`` (plain cross-entropy).

    ``distiller`` is JSON text when it starts with ``{``, else a file read through ``spaces.read_data_file``.

    Raises:
        ValueError: Both or neither given, an unknown baseline name (the message lists the valid ones), a
            missing, oversized, binary or malformed spec file (named), or an invalid spec.
    """
    if (distiller is None) == (baseline is None):
        raise ValueError("give exactly one of --distiller (spec JSON) or --baseline (a known distiller name)")
    if baseline is not None:
        if baseline == "ce":
            return None
        if baseline not in KNOWN_DISTILLERS:
            raise ValueError(
                f"unknown baseline {baseline!r}; valid baselines are {['ce', *sorted(KNOWN_DISTILLERS)]}"
            )
        return KNOWN_DISTILLERS[baseline]
    text = str(distiller)
    if text.lstrip().startswith("{") and not Path(text).is_file():
        return DistillerSpec.from_json(text)
    return DistillerSpec.from_file(text)


def rejection_message(err: Rejected, spec: DistillerSpec | None = None) -> str:
    """One line telling the user the run's distiller was rejected, with the reason and its detail."""
    formula = spec.formula() if spec is not None and hasattr(spec, "formula") else "the distiller"
    return (
        f"error: distiller rejected ({err.reason}): {err.detail or 'no detail'}; the run of {formula} was "
        f"stopped (exit status {EXIT_REJECTED})"
    )


def chance_warning(report: dict[str, Any]) -> str | None:
    """A warning line when a finished run's validation accuracy is at chance level, else ``None``.

    Chance is ``1 / num_classes``; the run is at chance below :data:`CHANCE_FACTOR` times it.
    """
    classes, acc = report.get("num_classes"), report.get("val_acc")
    if not classes or acc is None or acc >= CHANCE_FACTOR / classes:
        return None
    formula = report.get("formula") or "this distiller"
    hint = "the learning rate" if formula == "ce" else "the distiller's weight and the learning rate"
    return (
        f"warning: validation accuracy {acc:.4f} is at chance level (1/{classes} classes = "
        f"{1 / classes:.4f}): the student learned nothing with {formula}; check {hint}"
    )


def distill(
    exp: ExperimentConfig,
    spec: DistillerSpec | None = None,
    *,
    seed: int | None = None,
    device: str = "cpu",
    epochs: int | None = None,
    callbacks: Callbacks = None,
    progress: bool = False,
    use_cache: bool = True,
    out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    weights: str | Path | None = None,
    aligners: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``exp.student`` with distiller ``spec`` (``None``: CE only) for the full student schedule.

    Args:
        exp: The experiment (data set, teacher, student, schedules, cache folder).
        spec: ``DistillerSpec`` or ``None``.
        seed: Seed of the student's initialisation and shuffling (default ``student_train.seed``).
        device: Torch device.
        epochs: Override ``student_train.epochs``.
        callbacks: Extra callbacks (``{"event": [fn]}`` or callback objects).
        progress: Show tqdm progress bars (the student's, and the teacher's when it must be trained).
        use_cache: Read the teacher's outputs from the teacher-output cache when the data has no augmentation.
        out: Write the result as JSON here.
        checkpoint: Save the run's state here every epoch; a restarted run resumes from it.
        weights: Write the trained student's ``state_dict`` here.
        aligners: Write the distiller's ``state_dict`` (its aligners) here (default, with ``weights``:
            ``<weights stem>.aligners.pt``).

    Under ``torchrun`` every rank trains its share of each global batch (see :class:`~trainers.loop.Trainer`)
    and only rank 0 writes files.

    Returns:
        ``{"spec", "formula", "config", "seed", "epoch_val_acc", "curve", "val_acc", "test_acc", "test_ce",
        "teacher_identity", "wall_s", "train_s", ...}``.
    """
    t0 = time.perf_counter()
    cfg = exp.student_train
    cfg = dataclasses.replace(cfg, seed=cfg.seed if seed is None else seed, epochs=epochs or cfg.epochs)
    parts = load_parts(exp, device, teacher=spec is not None, use_cache=use_cache, progress=progress)
    trainer = assemble_run(
        dataclasses.replace(exp, student_train=cfg),
        parts,
        spec,
        seed=cfg.seed,
        device=device,
        checkpoint=checkpoint,
    )
    student = trainer.model
    if progress:
        attach_callbacks(trainer, [ProgressBar(desc=f"distill {exp.student}")])
    attach_callbacks(trainer, callbacks)
    result = trainer.run()
    test = evaluate_split(student, parts.test, None, device=device)  # type: ignore[arg-type]
    report = {
        "spec": spec.to_dict() if spec is not None else None,
        "formula": spec.formula() if spec is not None else "ce",
        "config": dataclasses.replace(exp, student_train=cfg).to_dict(),
        "seed": cfg.seed,
        "epoch_val_acc": result.epoch_val_acc,
        "curve": [list(p) for p in result.curve],
        "val_acc": result.val_acc,
        "test_acc": test["accuracy"],
        "test_ce": test["ce"],
        "steps": result.steps,
        "resumed_from_step": trainer.resumed_from,
        "world_size": trainer.world,
        "num_classes": parts.num_classes,
        # content hash of the teacher's weights (None for CE, which loads no teacher)
        "teacher_identity": parts.teacher_meta.get("identity") if spec is not None else None,
        "train_s": result.wall_s,
        "wall_s": time.perf_counter() - t0,
    }
    if trainer.rank != 0:
        return report
    if weights is not None:
        path = Path(weights)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in student.state_dict().items()}, path)
        report["weights"] = str(path)
        if trainer.distillers:
            where = Path(aligners) if aligners is not None else path.with_name(path.stem + ".aligners.pt")
            states = [{k: v.detach().cpu() for k, v in d.state_dict().items()} for d in trainer.distillers]
            several = {f"teacher{i}": s for i, s in enumerate(states)}  # Eq. 3: one aligner per teacher
            torch.save(states[0] if len(states) == 1 else several, where)
            report["aligners"] = str(where)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))
    return report


def add_distill_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``distill`` options to ``parser`` (used by ``python -m trainers distill``)."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--distiller",
        help="DistillerSpec JSON file (at most 1 MiB), e.g. an exported distiller.json, or JSON text "
        "starting with '{'",
    )
    which.add_argument(
        "--baseline", help="known distiller name (kd, dist, at, fitnets, pkd, cwd, wsld) or ce"
    )
    parser.add_argument(
        "--config", help="ExperimentConfig JSON file (at most 1 MiB); the options below override it"
    )
    parser.add_argument("--teacher", help="teacher: zoo name or import path package.module:callable")
    parser.add_argument("--student", help="student: zoo name or import path package.module:callable")
    parser.add_argument(
        "--teacher-checkpoint", help="a trained teacher's state_dict file (the teacher is never trained)"
    )
    parser.add_argument("--dataset", help="data set name")
    parser.add_argument("--data-root", help="data set folder")
    parser.add_argument("--subset", type=float, help="training subset: a count (>= 1) or a fraction (< 1)")
    parser.add_argument("--epochs", type=int, help="student epochs")
    add_runtime_arguments(parser)
    parser.add_argument("--cache-dir", help="teacher / teacher-output cache folder")
    parser.add_argument("--out", help="write the JSON result here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.epilog = (
        f"Exit status: 0 done (a warning on stderr when validation accuracy ends below {CHANCE_FACTOR:g} / "
        f"classes, i.e. at chance level); 2 bad input; {EXIT_REJECTED} the distiller was rejected during the "
        "run (NaN / infinite / diverging loss, or it cannot be built), with its reason on stderr."
    )
    return parser


def experiment_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The ExperimentConfig of ``--config`` (or the defaults) with the command-line overrides applied."""
    exp = ExperimentConfig()
    if args.config:
        raw = read_data_file(args.config, "config file", "JSON")
        try:
            exp = ExperimentConfig.from_dict(raw)
        except ValueError as err:
            raise ValueError(f"config file {args.config!r}: {err}") from None
    data: dict[str, Any] = {}
    if args.dataset:
        data["name"] = args.dataset
    if args.data_root:
        data["root"] = args.data_root
    if args.subset is not None:
        data["subset"] = int(args.subset) if args.subset >= 1 else float(args.subset)
    if data:
        exp = dataclasses.replace(exp, dataset=DataConfig.from_dict({**exp.dataset.to_dict(), **data}))
    changes: dict[str, Any] = {}
    if args.teacher:
        changes["teacher"] = args.teacher
    if args.student:
        changes["student"] = args.student
    if args.cache_dir:
        changes["cache_dir"] = args.cache_dir
    if getattr(args, "teacher_checkpoint", None):
        changes["teacher_checkpoint"] = args.teacher_checkpoint
    return dataclasses.replace(exp, **changes)


def main_distill(args: argparse.Namespace) -> int:
    """Run ``python -m trainers distill`` from parsed arguments; prints the test accuracy.

    Returns:
        0, or :data:`EXIT_REJECTED` when the distiller was rejected during the run (one line on stderr).
    """
    device = apply_runtime(args)
    exp = experiment_from_args(args)
    allow_imports(exp.import_paths())  # named on this command line or in the config file it gave
    spec = resolve_spec(args.distiller, args.baseline)
    try:
        res = distill(
            exp,
            spec,
            seed=args.seed,
            device=str(device),
            epochs=args.epochs,
            progress=not args.no_progress,
            out=args.out,
        )
    except Rejected as err:
        print(rejection_message(err, spec), file=sys.stderr)
        return EXIT_REJECTED
    print(
        f"{res['formula']}: test accuracy {res['test_acc']:.4f} "
        f"(val {res['val_acc']:.4f}, {res['wall_s']:.1f} s)"
    )
    warning = chance_warning(res)
    if warning:
        print(warning, file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}")
    return 0
