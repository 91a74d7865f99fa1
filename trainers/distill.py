"""Full distillation run: the teacher from the cache, the student trained through the one loop, test accuracy.

``python -m trainers distill --distiller spec.json --teacher resnet8 --student cnn_tiny --dataset
fashion_mnist``
or ``--baseline kd`` (a known distiller; ``ce`` trains without a distiller). Prints the test accuracy and
writes a
JSON result with ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from trainers.callbacks import Callbacks, ProgressBar, attach_callbacks
from trainers.config import DataConfig, ExperimentConfig
from trainers.metrics import evaluate_split
from trainers.run import assemble_run, load_parts
from trainers.runtime import add_runtime_arguments, apply_runtime


def resolve_spec(distiller: str | None = None, baseline: str | None = None) -> Any:
    """The ``DistillerSpec`` of a JSON file / JSON text (``distiller``) or of a known ``baseline`` name.

    Returns ``None`` for ``baseline="ce"`` (plain cross-entropy).

    Raises:
        ValueError: Both or neither given, or an unknown baseline name (the message lists the valid ones).
    """
    from spaces import KNOWN_DISTILLERS, DistillerSpec

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
    text = Path(distiller).read_text() if Path(distiller).is_file() else distiller  # type: ignore[arg-type]
    return DistillerSpec.from_json(text)


def distill(
    exp: ExperimentConfig,
    spec: Any = None,
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
        "wall_s", "train_s"}``.
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
        "--distiller", help="DistillerSpec JSON file (or JSON text), e.g. an exported distiller.json"
    )
    which.add_argument(
        "--baseline", help="known distiller name (kd, dist, at, fitnets, pkd, cwd, wsld) or ce"
    )
    parser.add_argument("--config", help="ExperimentConfig JSON file; the options below override it")
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
    return parser


def experiment_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The ExperimentConfig of ``--config`` (or the defaults) with the command-line overrides applied."""
    exp = (
        ExperimentConfig.from_dict(json.loads(Path(args.config).read_text()))
        if args.config
        else ExperimentConfig()
    )
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
    """Run ``python -m trainers distill`` from parsed arguments; prints the test accuracy. Returns 0."""
    from trainers.models import allow_imports

    device = apply_runtime(args)
    exp = experiment_from_args(args)
    allow_imports(exp.import_paths())  # named on this command line or in the config file it gave
    spec = resolve_spec(args.distiller, args.baseline)
    res = distill(
        exp,
        spec,
        seed=args.seed,
        device=str(device),
        epochs=args.epochs,
        progress=not args.no_progress,
        out=args.out,
    )
    print(
        f"{res['formula']}: test accuracy {res['test_acc']:.4f} "
        f"(val {res['val_acc']:.4f}, {res['wall_s']:.1f} s)"
    )
    if args.out:
        print(f"wrote {args.out}")
    return 0
