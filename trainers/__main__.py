"""``python -m trainers models|teacher|distill``: list the zoo, train/cache a teacher, distill a student."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from spaces import short_repr

from .config import DataConfig, ExperimentConfig
from .distill import add_distill_arguments, main_distill
from .knowledge import KNOWLEDGE, KnowledgeExtractor, list_nodes
from .models import allow_imports, count_parameters, create_model, is_import_path, list_models, model_entry
from .runtime import add_runtime_arguments, apply_runtime
from .teacher import TEACHER_SAW_VAL, get_teacher


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--family", choices=("cifar", "small", "torchvision"), help="only this family")
    p.add_argument(
        "--params",
        action="store_true",
        help="also count parameters at num_classes=10 (builds each model; slow for torchvision)",
    )
    p.add_argument("--in-channels", type=int, default=3, help="input channels used by --params")
    p.set_defaults(func=main_models)


def main_models(args: argparse.Namespace) -> int:
    """Print ``name  family  [params]`` for every registered model."""
    for name in list_models(args.family):
        line = f"{name:28s} {model_entry(name).family:12s}"
        if args.params:
            line += f" {count_parameters(create_model(name, 10, args.in_channels)):>12,d}"
        print(line)
    return 0


def _add_teacher(sub: argparse._SubParsersAction) -> None:
    exp = ExperimentConfig()
    t = exp.teacher_train
    p = sub.add_parser("teacher", help="train (or load from the cache) a teacher and report its accuracy")
    p.add_argument(
        "--model",
        default=exp.teacher,
        help=f"zoo name or import path package.module:callable (default {exp.teacher})",
    )
    p.add_argument(
        "--checkpoint",
        help="a trained teacher's state_dict file: load it, check it and report its accuracy (never trained)",
    )
    p.add_argument("--kwargs", type=_json_object, default={}, help="builder keyword arguments as JSON")
    p.add_argument("--dataset", default=exp.dataset.name, help=f"data set name (default {exp.dataset.name})")
    p.add_argument("--epochs", type=int, default=t.epochs, help=f"epochs (default {t.epochs})")
    p.add_argument("--lr", type=float, default=t.lr, help=f"peak learning rate (default {t.lr})")
    p.add_argument(
        "--batch-size", type=int, default=t.batch_size, help=f"batch size (default {t.batch_size})"
    )
    p.add_argument("--schedule", choices=("cosine", "multistep", "constant"), default=t.schedule)
    p.add_argument("--milestones", type=int, nargs="*", default=None, help="multistep milestones (epochs)")
    p.add_argument(
        "--augment", action="store_true", help="random crop + horizontal flip of each training batch"
    )
    p.add_argument("--warmup-epochs", type=float, default=t.warmup_epochs, help="linear warm-up (epochs)")
    p.add_argument("--data-root", default=None, help="folder holding the data set")
    p.add_argument("--download", action="store_true", help="allow torchvision to download the data set")
    p.add_argument("--val-size", type=float, default=None, help="validation size: count (>= 1) or fraction")
    p.add_argument(
        "--cache-dir", default=None, help="cache folder (default $KDZERO_CACHE or ~/.cache/kdzero)"
    )
    p.add_argument("--out", default=None, help="also write the teacher's metadata JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runtime_arguments(p, seed_default=t.seed)
    p.set_defaults(func=main_teacher)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {short_repr(text)}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"width\": 32}}', got {short_repr(text)}"
        )
    return value


def main_teacher(args: argparse.Namespace) -> int:
    """Train or load the teacher; print val/test accuracy, seconds per epoch and the checkpoint path."""
    if is_import_path(args.model):  # named on this command line: the user allows it
        allow_imports([args.model])
    device = apply_runtime(args)
    exp = ExperimentConfig()
    data = exp.dataset.to_dict()
    data.update(name=args.dataset, root=args.data_root, download=args.download)
    if args.val_size is not None:
        data["val_size"] = int(args.val_size) if args.val_size >= 1 else float(args.val_size)
    changes = dict(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        schedule=args.schedule,
        seed=args.seed,
        augment=args.augment,
        warmup_epochs=args.warmup_epochs,
    )
    if args.milestones is not None:
        changes["milestones"] = tuple(args.milestones)
    train_cfg = dataclasses.replace(exp.teacher_train, **changes)
    data_cfg = DataConfig.from_dict(data)
    _, meta = get_teacher(
        args.model,
        data_cfg,
        train_cfg,
        cache_dir=args.cache_dir,
        device=device,
        progress=not args.no_progress,
        checkpoint=args.checkpoint,
        model_kwargs=args.kwargs,
    )
    if meta.get("checkpoint"):
        print(
            f"{args.model} on {args.dataset} (your checkpoint, identity {meta['identity']}): val acc "
            f"{meta['val_acc']:.4f}, test acc {meta['test_acc']:.4f}"
        )
        print(f"  note: {TEACHER_SAW_VAL}")
    else:
        origin = "loaded from cache" if meta["cached"] else "trained"
        print(
            f"{args.model} on {args.dataset} ({origin}): val acc {meta['val_acc']:.4f}, test acc "
            f"{meta['test_acc']:.4f}, {meta['sec_per_epoch']:.1f} s/epoch over {meta['epochs']} epochs "
            f"({meta['device']}, {meta['threads']} threads)"
        )
    print(f"checkpoint: {meta['path']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(meta, indent=2, sort_keys=True))
        print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------ distill (trainers/distill.py)
def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill", help="train a student with a distiller (or a known baseline) on the full schedule"
    )
    add_distill_arguments(p)
    p.set_defaults(func=main_distill)


def _add_nodes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nodes", help="list a model's candidate knowledge nodes with output shapes, and the automatic choice"
    )
    p.add_argument("model", help="zoo name or import path package.module:callable")
    p.add_argument("--kwargs", type=_json_object, default={}, help="builder keyword arguments as JSON")
    p.add_argument("--num-classes", type=int, default=10, help="classes (default 10)")
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
    p.add_argument("--image-size", type=int, default=28, help="input side in pixels (default 28)")
    p.set_defaults(func=main_nodes)


def main_nodes(args: argparse.Namespace) -> int:
    """Print every candidate node with its per-sample shape, then the automatic knowledge choice."""
    if is_import_path(args.model):  # named on this command line: the user allows it
        allow_imports([args.model])
    model = create_model(args.model, args.num_classes, args.in_channels, **args.kwargs)
    shape = (args.in_channels, args.image_size, args.image_size)
    ext = KnowledgeExtractor(model)
    shapes = ext.shapes(shape)
    how = "FX graph nodes" if ext.mode == "fx" else "module names (not FX-traceable: read with forward hooks)"
    print(f"{args.model}: candidate nodes for [experiment.knowledge], {how}")
    for name, out in list_nodes(model, shape):
        print(f"  {name:40s} {tuple(out)}")
    print("automatic choice:")
    for kind in KNOWLEDGE:
        print(f"  {kind:10s} {ext.nodes[kind]:40s} {shapes[kind]}")
    return 0


# One entry per subcommand: add a new command here.
SUBCOMMANDS = (_add_models, _add_teacher, _add_distill, _add_nodes)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m trainers`` parser with one subparser per command."""
    parser = argparse.ArgumentParser(prog="python -m trainers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad values exit with status 2 and the error message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `python -m trainers models | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except (ValueError, OSError) as err:  # bad values, missing or unwritable files, full disk
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
