"""Proxy evaluation of one candidate distiller: loss rejection, a short training run, fitness on validation.

Proxy length: ``ProxyConfig.steps`` optimizer steps, or else ``ceil(fraction * student_train.epochs *
steps_per_epoch)`` (paper: 5% of the full schedule), on the whole training split or a seeded subset
(``ProxyConfig.subset``, the same subset for every trial). The learning-rate schedule of ``student_train`` is
compressed to the proxy length (see :mod:`trainers.loop`). Validation runs ``ProxyConfig.evals`` times.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from trainers.callbacks import DivergenceGuard
from trainers.config import ExperimentConfig, TrainConfig
from trainers.loop import Trainer
from trainers.metrics import evaluate_split
from trainers.output_cache import TeacherOutputCache
from trainers.rejection import ProbeReport, Rejected, RejectionRules, check_trainer

Callbacks = Mapping[str, Sequence[Callable[[Trainer], None]]] | Sequence[Any] | None


@dataclass
class Fitness:
    """Result of one proxy trial; the objectives are ``(ce, sharpness_gap, cka_gap)``, all minimised."""

    ce: float
    sharpness_gap: float
    cka_gap: float
    accuracy: float
    cka: float
    curve: list[tuple[int, float]]
    wall_s: float
    reject_s: float
    train_s: float
    steps: int
    terms: dict[str, float] = field(default_factory=dict)
    formula: str | None = None

    @property
    def objectives(self) -> tuple[float, float, float]:
        """``(val_ce, sharpness_gap, cka_gap)`` in the study's objective order."""
        return self.ce, self.sharpness_gap, self.cka_gap

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["curve"] = [[int(s), float(a)] for s, a in self.curve]
        return d


def attach_callbacks(trainer: Trainer, callbacks: Callbacks) -> None:
    """Register ``{"event": [fn, ...]}`` or a list of callback objects with an ``EVENTS`` attribute."""
    if not callbacks:
        return
    if isinstance(callbacks, Mapping):
        for event, fns in callbacks.items():
            for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
                trainer.add_callback(event, fn)
        return
    for cb in callbacks:
        for event in cb.EVENTS:
            trainer.add_callback(event, getattr(cb, event))


def _default_build(spec: Any, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    from spaces import build_distiller

    return build_distiller(spec, student_shape, teacher_shape)


class ProxyEvaluator:
    """Evaluates candidate distillers for one experiment; built once per worker process.

    Loads the data set, gets the frozen teacher (trained and cached if needed), fills the teacher-output cache
    (validation split always; training split when it has no random augmentation) and reads knowledge shapes.

    Args:
        exp: The experiment.
        device: Torch device.
        use_cache: Read the teacher's outputs from the on-disk cache (``False``: teacher runs live).
    """

    def __init__(self, exp: ExperimentConfig, device: str = "cpu", *, use_cache: bool = True) -> None:
        from trainers.data import load_dataset
        from trainers.teacher import default_cache_dir, get_teacher

        root = Path(exp.cache_dir).expanduser() if exp.cache_dir else default_cache_dir()
        splits = load_dataset(exp.dataset)
        teacher, meta = get_teacher(
            exp.teacher, exp.dataset, exp.teacher_train, cache_dir=root, device=device, splits=splits
        )
        cache = None
        if use_cache:
            cache = TeacherOutputCache(root, TeacherOutputCache.make_key(meta["hash"], exp.dataset))
        self._setup(
            exp,
            train=splits.train,
            val=splits.val,
            teacher=teacher,
            input_shape=(splits.in_channels, splits.image_size, splits.image_size),
            num_classes=splits.num_classes,
            augment=bool(splits.augment),
            cache=cache,
            device=device,
        )

    @classmethod
    def from_parts(
        cls,
        exp: ExperimentConfig,
        *,
        train: Dataset,
        val: Dataset,
        teacher: nn.Module,
        input_shape: tuple[int, int, int],
        num_classes: int,
        student_factory: Callable[[], nn.Module] | None = None,
        distiller_factory: Callable[..., nn.Module] | None = None,
        cache: TeacherOutputCache | None = None,
        augment: bool = False,
        device: str = "cpu",
    ) -> ProxyEvaluator:
        """An evaluator over given parts (tests, benchmarks): no data loading, no teacher cache folder needed.

        Args:
            exp: The experiment (schedules and proxy settings are read from it).
            train: Training split, items ``(x, y, index)``.
            val: Validation split.
            teacher: The teacher (frozen here).
            input_shape: ``(C, H, W)`` of an input.
            num_classes: Number of classes.
            student_factory: Builds a fresh student (called after seeding); default
                ``create_model(exp.student)``.
            distiller_factory: ``(spec, student_shape, teacher_shape) -> nn.Module``; default
                ``spaces.build_distiller``.
            cache: Teacher-output cache, or ``None`` to run the teacher live.
            augment: Whether ``train`` applies random augmentation (then the train split is never cached).
            device: Torch device.
        """
        self = cls.__new__(cls)
        self._setup(
            exp,
            train=train,
            val=val,
            teacher=teacher,
            input_shape=input_shape,
            num_classes=num_classes,
            augment=augment,
            cache=cache,
            device=device,
            student_factory=student_factory,
            distiller_factory=distiller_factory,
        )
        return self

    def _setup(
        self,
        exp: ExperimentConfig,
        *,
        train: Dataset,
        val: Dataset,
        teacher: nn.Module,
        input_shape: tuple[int, int, int],
        num_classes: int,
        augment: bool,
        cache: TeacherOutputCache | None,
        device: str,
        student_factory: Callable[[], nn.Module] | None = None,
        distiller_factory: Callable[..., nn.Module] | None = None,
    ) -> None:
        from trainers.knowledge import KnowledgeExtractor

        self.exp, self.device = exp, device
        self.train_full, self.val = train, val
        self.input_shape, self.num_classes, self.augment = tuple(input_shape), num_classes, augment
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.to(device)
        self.cache = cache
        self._student_factory = student_factory
        self._build = distiller_factory or _default_build
        self.train = self._proxy_subset(train)
        self.teacher_shapes = KnowledgeExtractor(teacher).shapes(self.input_shape)
        if tuple(self.teacher_shapes["logits"]) != (num_classes,):
            raise ValueError(
                f"the teacher predicts {self.teacher_shapes['logits'][0]} classes but the data set and "
                f"student have num_classes={num_classes}; train the teacher on the same data set"
            )
        self.rules = RejectionRules(explode_ratio=exp.proxy.explode_ratio)
        if cache is not None:
            cache.build(teacher, "val", val, ("logits", "embedding"), device=device)

    def _proxy_subset(self, train: Dataset) -> Dataset:
        sub = self.exp.proxy.subset
        if sub is None:
            return train
        n = len(train)  # type: ignore[arg-type]
        k = min(n, sub if isinstance(sub, int) else max(1, int(round(sub * n))))
        gen = torch.Generator().manual_seed(self.exp.dataset.split_seed + 7919)
        return Subset(train, torch.randperm(n, generator=gen)[:k].tolist())

    # ----------------------------------------------------------------- building one trial
    def new_student(self, seed: int) -> nn.Module:
        """A freshly initialised student, seeded."""
        torch.manual_seed(seed)
        if self._student_factory is not None:
            return self._student_factory()
        from trainers.models import create_model

        return create_model(self.exp.student, num_classes=self.num_classes, in_channels=self.input_shape[0])

    def proxy_config(self, seed: int | None = None) -> TrainConfig:
        """The student schedule cut to the proxy length (``max_steps``), with the trial seed."""
        base = self.exp.student_train
        spe = max(len(self.train) // base.batch_size, 1)  # type: ignore[arg-type]
        steps = self.exp.proxy.steps or max(1, math.ceil(self.exp.proxy.fraction * base.epochs * spe))
        return dataclasses.replace(base, max_steps=steps, seed=base.seed if seed is None else seed)

    def build_trainer(self, spec: Any, seed: int | None = None) -> Trainer:
        """Student + distiller + trainer of one proxy trial (``spec=None``: plain CE training).

        Raises:
            Rejected: ``invalid`` when the distiller cannot be built for these shapes.
        """
        cfg = self.proxy_config(seed)
        student = self.new_student(cfg.seed).to(self.device)
        distiller, kind, cache = None, "logits", None
        if spec is not None:
            from trainers.knowledge import KnowledgeExtractor

            kind = spec.knowledge
            s_shape = KnowledgeExtractor(student).shapes(self.input_shape)[kind]
            try:
                distiller = self._build(spec, tuple(s_shape), tuple(self.teacher_shapes[kind]))
            except ValueError as err:
                raise Rejected("invalid", str(err)) from err
            if self.cache is not None and not self.augment:
                self.cache.build(self.teacher, "train", self.train_full, ("logits", kind), device=self.device)
                cache = self.cache
        eval_steps = max(1, cfg.max_steps // self.exp.proxy.evals)  # type: ignore[operator]
        return Trainer(
            student,
            self.train,
            cfg,
            val_data=self.val,
            distiller=distiller,
            teacher=self.teacher if distiller is not None and cache is None else None,
            teacher_cache=cache,
            knowledge=kind,
            device=self.device,
            eval_steps=eval_steps,
        )

    # ----------------------------------------------------------------- public API
    def check(self, spec: Any, seed: int | None = None) -> ProbeReport:
        """Loss rejection of ``spec`` on ``ProxyConfig.reject_batches`` batches (no optimizer step).

        Raises:
            Rejected: ``invalid``, ``nan``, ``inf``, ``explode`` or ``collapse``.
        """
        return check_trainer(self.build_trainer(spec, seed), self.exp.proxy.reject_batches, self.rules)

    def evaluate(self, spec: Any, callbacks: Callbacks = None, seed: int | None = None) -> Fitness:
        """Rejection check, proxy run and fitness on the validation split.

        Args:
            spec: A ``DistillerSpec`` (``None``: CE-only student, no check).
            callbacks: ``{"on_eval": [fn, ...]}`` or callback objects (e.g. early stopping by the pruner).
            seed: Trial seed (default ``student_train.seed``): same spec + seed gives the same numbers on CPU.

        Returns:
            The :class:`Fitness`.

        Raises:
            Rejected: From the check, the divergence guard or a callback.
        """
        t0 = time.perf_counter()
        trainer = self.build_trainer(spec, seed)
        reject_s = 0.0
        if spec is not None:
            check_trainer(trainer, self.exp.proxy.reject_batches, self.rules)
            reject_s = time.perf_counter() - t0
        trainer.add_callback("on_batch_end", DivergenceGuard().on_batch_end)
        attach_callbacks(trainer, callbacks)
        result = trainer.run()
        outputs = self.cache.outputs("val") if self.cache is not None else None
        metrics = evaluate_split(
            trainer.model, self.val, outputs, teacher=None if outputs else self.teacher, device=self.device
        )
        formula = spec.formula() if spec is not None and hasattr(spec, "formula") else None
        return Fitness(
            ce=metrics["ce"],
            sharpness_gap=metrics["sharpness_gap"],
            cka_gap=metrics["cka_gap"],
            accuracy=metrics["accuracy"],
            cka=metrics["cka"],
            curve=result.curve,
            wall_s=time.perf_counter() - t0,
            reject_s=reject_s,
            train_s=result.wall_s,
            steps=result.steps,
            terms=result.terms,
            formula=formula,
        )
