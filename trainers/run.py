"""One function assembles every student run: proxy trials, verification runs, ``trainers distill``, exports.

:func:`load_parts` loads what every run of an experiment shares (splits, the frozen teacher, its output cache,
knowledge shapes); :func:`assemble_run` builds the :class:`~trainers.loop.Trainer` of one run from them. A
proxy run is the full run with ``max_steps`` set (and optionally a seeded subset of the training split): the
same seed, initialisation, learning-rate schedule, divergence guard and teacher outputs, so its first steps
are the full run's first steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from spaces import DistillerSpec, build_distiller
from trainers.callbacks import DivergenceGuard
from trainers.config import ExperimentConfig, config_hash
from trainers.data import load_dataset
from trainers.knowledge import FrozenTeacher, KnowledgeExtractor, set_knowledge_nodes
from trainers.loop import Trainer
from trainers.models import create_model
from trainers.output_cache import TeacherOutputCache
from trainers.rejection import Rejected
from trainers.teacher import default_cache_dir, get_teacher

DIVERGENCE_RATIO = 10.0
"""The one divergence threshold of every student run: smoothed loss above 10x its starting value."""

DistillerFactory = Callable[[Any, tuple[int, ...], tuple[int, ...]], nn.Module]


def _default_build(
    spec: DistillerSpec | None, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]
) -> nn.Module:
    return build_distiller(spec, student_shape, teacher_shape)


def _check_tensor_size(
    spec: DistillerSpec, distillers: list[nn.Module], batch_size: int, limit_mb: float
) -> None:
    """Refuse a distiller whose transform chain makes a tensor over ``limit_mb`` MiB for one batch.

    Raises:
        Rejected: ``invalid``, naming the size, the batch and the limit (``proxy.max_tensor_mb``).
    """
    for d in distillers:
        peak = getattr(d, "peak_elements", None)  # a user's distiller_factory may build other modules
        if peak is None:
            continue
        mb = peak(batch_size) * 4 / 2**20  # float32
        if mb > limit_mb:
            raise Rejected(
                "invalid",
                f"{spec.formula()} makes a {mb:,.0f} MiB tensor per batch of {batch_size} "
                f"(limit proxy.max_tensor_mb = {limit_mb:g})",
            )


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps per epoch over ``n_train`` items (a partial last batch is dropped, as in the loop)."""
    return max(n_train // batch_size, 1) if n_train >= batch_size else 1


@dataclass
class RunParts:
    """What every run of one experiment shares.

    Args:
        train: The full run's training split (items ``(x, y, index)``). val: Validation split (carved from the
        training data). test: Test split (final evaluation only), or ``None``. teacher: The frozen teacher, or
        ``None`` for plain CE runs. input_shape: ``(C, H, W)`` of one input. num_classes: Number of classes.
        data_augment: The training split applies its own random item transforms (then no train cache). cache:
        Teacher-output cache, or ``None`` (the teacher runs live). teacher_meta: The teacher checkpoint's
        sidecar (hash, accuracies), when known. student_factory: Builds a fresh student (called after
        seeding); ``None``: ``create_model``. distiller_factory: ``(spec, student_shape, teacher_shape) ->
        nn.Module``; ``None``: ``build_distiller``.
    """

    train: Dataset
    val: Dataset
    test: Dataset | None
    teacher: nn.Module | None
    input_shape: tuple[int, int, int]
    num_classes: int
    data_augment: bool = False
    cache: TeacherOutputCache | None = None
    teacher_meta: dict[str, Any] = field(default_factory=dict)
    student_factory: Callable[[], nn.Module] | None = None
    distiller_factory: DistillerFactory | None = None
    teacher_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    teachers: list[nn.Module] = field(default_factory=list)
    caches: list[TeacherOutputCache | None] = field(default_factory=list)
    teacher_metas: list[dict[str, Any]] = field(default_factory=list)
    all_teacher_shapes: list[dict[str, tuple[int, ...]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.teacher is None:
            return
        if not self.teachers:  # one teacher: the lists hold it
            self.teachers, self.caches, self.teacher_metas = [self.teacher], [self.cache], [self.teacher_meta]
        self.teacher, self.cache = self.teachers[0], self.caches[0]
        self.all_teacher_shapes = []
        for i, teacher in enumerate(self.teachers):
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            shapes = {k: tuple(v) for k, v in KnowledgeExtractor(teacher).shapes(self.input_shape).items()}
            if shapes["logits"] != (self.num_classes,):
                which = f"teacher {i + 1}" if len(self.teachers) > 1 else "the teacher"
                raise ValueError(
                    f"{which} predicts {shapes['logits'][0]} classes but the data set and student have "
                    f"num_classes={self.num_classes}; train the teacher on the same data set"
                )
            self.all_teacher_shapes.append(shapes)
        self.teacher_shapes = self.all_teacher_shapes[0]


def load_parts(
    exp: ExperimentConfig,
    device: str = "cpu",
    *,
    teacher: bool = True,
    use_cache: bool = True,
    progress: bool = False,
) -> RunParts:
    """Load the splits and the frozen teacher (trained and cached once if needed) of an experiment.

    Args:
        exp: The experiment.
        device: Torch device of the teacher.
        teacher: Load the teacher (``False``: plain CE runs only).
        use_cache: Give runs the on-disk teacher-output cache (validation split filled now).
        progress: Progress bar while a teacher must be trained.

    Returns:
        The :class:`RunParts`.
    """
    splits = load_dataset(exp.dataset)
    input_shape = (splits.in_channels, splits.image_size, splits.image_size)
    models: list[nn.Module] = []
    metas: list[dict[str, Any]] = []
    caches: list[TeacherOutputCache | None] = []
    if teacher:
        root = Path(exp.cache_dir).expanduser() if exp.cache_dir else default_cache_dir()
        nodes = exp.knowledge.get("teacher") or None
        for ref in exp.teacher_refs():
            model, meta = get_teacher(
                ref.model,
                exp.dataset,
                exp.teacher_train,
                cache_dir=root,
                device=device,
                splits=splits,
                progress=progress,
                checkpoint=ref.checkpoint,
                model_kwargs=ref.kwargs,
            )
            set_knowledge_nodes(model.model if isinstance(model, FrozenTeacher) else model, nodes)
            cache = None
            if use_cache:  # keyed on the weights: a changed checkpoint is never served stale outputs
                key = TeacherOutputCache.make_key(meta["identity"], exp.dataset, nodes)
                cache = TeacherOutputCache(root, key)
            models.append(model.to(device))
            metas.append(dict(meta))
            caches.append(cache)
    combined: dict[str, Any] = dict(metas[0]) if metas else {}
    if len(metas) > 1:  # several teachers: one identity for the study, every teacher's record kept
        combined.update(identity="+".join(m["identity"] for m in metas), teachers=metas)
    parts = RunParts(
        train=splits.train,
        val=splits.val,
        test=splits.test,
        teacher=models[0] if models else None,
        input_shape=input_shape,
        num_classes=splits.num_classes,
        data_augment=bool(splits.augment),
        cache=caches[0] if caches else None,
        teacher_meta=combined,
        teachers=models,
        caches=caches,
        teacher_metas=metas,
    )
    for model, cache in zip(parts.teachers, parts.caches, strict=True):
        if cache is not None:
            cache.build(model, "val", parts.val, ("logits", "embedding"), device=device)
    return parts


def seeded_subset(train: Dataset, subset: int | float | None, seed: int) -> Dataset:
    """The same seeded subset of ``train`` for every run (``None``: ``train`` itself)."""
    if subset is None:
        return train
    n = len(train)  # type: ignore[arg-type]
    k = min(n, subset if isinstance(subset, int) else max(1, int(round(subset * n))))
    gen = torch.Generator().manual_seed(seed + 7919)
    return Subset(train, torch.randperm(n, generator=gen)[:k].tolist())


def fraction_steps(exp: ExperimentConfig, parts: RunParts, fraction: float) -> int:
    """``ceil(fraction x full schedule steps)``: where a run stopped at ``fraction`` of the full run ends."""
    cfg = exp.student_train
    full = cfg.epochs * steps_per_epoch(len(parts.train), cfg.batch_size)  # type: ignore[arg-type]
    return max(1, math.ceil(fraction * full))


def new_student(exp: ExperimentConfig, parts: RunParts, seed: int) -> nn.Module:
    """A freshly initialised student, seeded."""
    torch.manual_seed(seed)
    if parts.student_factory is not None:
        return parts.student_factory()
    model = create_model(
        exp.student, num_classes=parts.num_classes, in_channels=parts.input_shape[0], **exp.student_kwargs
    )
    return set_knowledge_nodes(model, exp.knowledge.get("student"))


def assemble_run(
    exp: ExperimentConfig,
    parts: RunParts,
    spec: DistillerSpec | None = None,
    *,
    seed: int | None = None,
    max_steps: int | None = None,
    train: Dataset | None = None,
    device: str = "cpu",
    eval_steps: int | None = None,
    epochs: int | None = None,
    checkpoint: str | Path | None = None,
    eval_at: tuple[int, ...] = (),
) -> Trainer:
    """The trainer of one student run: seeded student, distiller, teacher (outputs), schedule, guard.

    Args:
        exp: The experiment (its ``student_train`` is the full schedule).
        parts: Shared parts from :func:`load_parts` (or built by hand in tests and benchmarks).
        spec: ``DistillerSpec``, or ``None`` for plain cross-entropy training.
        seed: Seed of initialisation, shuffling and augmentation (default ``student_train.seed``).
        max_steps: Stop after this many steps of the full schedule (proxy and verification runs).
        train: Train on this subset of ``parts.train`` (the learning rate still follows the full schedule).
        device: Torch device.
        eval_steps: Validate every this many steps (default: ``student_train.eval_every`` epochs).
        epochs: Override the full schedule's epochs (a full run of another length).
        checkpoint: Save the run's state here every epoch and at its last step, and resume from it (keyed on
            the run: schedule, seed, distiller, student and teacher identity; not on ``max_steps``, so a run
            cut short continues to a later stop as the same run).
        eval_at: Validate at these steps too (the rung boundaries of a verification run).

    Returns:
        The :class:`~trainers.loop.Trainer`, with the divergence guard attached.

    Raises:
        Rejected: ``invalid`` when the distiller cannot be built for these knowledge shapes.
    """
    base = exp.student_train
    cfg = dataclasses.replace(
        base,
        seed=base.seed if seed is None else seed,
        max_steps=max_steps,
        epochs=epochs or base.epochs,
    )
    student = new_student(exp, parts, cfg.seed).to(device)
    distillers: list[nn.Module] = []
    kind = "logits"
    caches: list[TeacherOutputCache] = []
    if spec is not None:
        if parts.teacher is None:
            raise ValueError("a distiller run needs a teacher: load the parts with teacher=True")
        kind = spec.knowledge
        s_shape = tuple(KnowledgeExtractor(student).shapes(parts.input_shape)[kind])
        torch.manual_seed(cfg.seed)
        build = parts.distiller_factory or _default_build
        try:  # paper Eq. 3: the same distiller against every teacher, one aligner each
            distillers = [build(spec, s_shape, shapes[kind]) for shapes in parts.all_teacher_shapes]
        except ValueError as err:
            raise Rejected("invalid", str(err)) from err
        _check_tensor_size(spec, distillers, cfg.batch_size, exp.proxy.max_tensor_mb)
        if all(c is not None for c in parts.caches) and not parts.data_augment and not cfg.augment:
            for model, cache in zip(parts.teachers, parts.caches, strict=True):
                assert cache is not None
                cache.build(model, "train", parts.train, ("logits", kind), device=device)
                caches.append(cache)
    data = parts.train if train is None else train
    spe_full = steps_per_epoch(len(parts.train), cfg.batch_size)  # type: ignore[arg-type]
    trainer = Trainer(
        student,
        data,
        cfg,
        val_data=parts.val,
        distiller=distillers or None,
        teacher=parts.teachers if distillers and not caches else None,
        teacher_cache=caches or None,
        knowledge=[kind] * len(distillers) if distillers else "logits",
        device=device,
        eval_steps=eval_steps,
        schedule_steps_per_epoch=spe_full,
        checkpoint=checkpoint,
        eval_at=eval_at,
        checkpoint_key=config_hash(
            dataclasses.replace(cfg, max_steps=None),  # where the run stops is not what the run is
            spec.to_dict() if spec is not None else None,
            exp.student,
            exp.student_kwargs,
            parts.teacher_meta.get("identity"),
            None if train is None else len(train),  # type: ignore[arg-type]
        ),
    )
    guard = DivergenceGuard(ratio=DIVERGENCE_RATIO)
    trainer.add_callback("on_batch_end", guard.on_batch_end)
    trainer.track_state("divergence_guard", guard)
    return trainer
