"""Proxy evaluation of one candidate distiller: loss rejection, a short training run, fitness on validation.

A proxy run is the full student run cut short (:func:`trainers.run.assemble_run` builds both): it stops after
``ProxyConfig.steps`` optimizer steps, or else ``ceil(fraction x epochs x steps_per_epoch)`` of the full run
(paper: 5% of the full schedule), with the full run's learning rate at every step it runs, on the whole
training split or a seeded subset (``ProxyConfig.subset``, the same for every trial). Validation runs
``ProxyConfig.evals`` times. With ``ProxyConfig.seeds`` = k > 1 a candidate gets k proxy runs with consecutive
seeds and the mean of their measurements (:func:`mean_fitness`). Verification runs are the same runs stopped
later, on the whole split.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from spaces import DistillerSpec
from trainers.callbacks import Callbacks, attach_callbacks
from trainers.config import ExperimentConfig, TrainConfig
from trainers.loop import Trainer
from trainers.metrics import evaluate_split
from trainers.output_cache import TeacherOutputCache
from trainers.rejection import ProbeReport, Rejected, RejectionRules, check_trainer
from trainers.run import RunParts, assemble_run, fraction_steps, load_parts, new_student, seeded_subset


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
    seed_accuracies: list[float] = field(default_factory=list)
    resumed_from: int = 0
    """Step the run continued from (its checkpoint); ``steps - resumed_from`` steps were trained here."""

    @property
    def objectives(self) -> tuple[float, float, float]:
        """``(val_ce, sharpness_gap, cka_gap)`` in the study's objective order."""
        return self.ce, self.sharpness_gap, self.cka_gap

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["curve"] = [[int(s), float(a)] for s, a in self.curve]
        return d


def mean_fitness(fits: list[Fitness]) -> Fitness:
    """One candidate's fitness from its proxy runs on several seeds: the mean of every measurement.

    Objectives, accuracy, CKA and loss terms are averaged; the curve is averaged at each evaluation step;
    times and steps add up (they are the candidate's cost); ``seed_accuracies`` lists each run's accuracy.
    """
    if not fits:
        raise ValueError("mean_fitness needs at least one Fitness")
    n = len(fits)

    def mean(values: list[float]) -> float:
        return sum(values) / n

    curves = [dict(f.curve) for f in fits]
    steps = sorted(set(curves[0]).intersection(*curves[1:]))
    terms = sorted(set(fits[0].terms).intersection(*(f.terms for f in fits[1:])))
    return Fitness(
        ce=mean([f.ce for f in fits]),
        sharpness_gap=mean([f.sharpness_gap for f in fits]),
        cka_gap=mean([f.cka_gap for f in fits]),
        accuracy=mean([f.accuracy for f in fits]),
        cka=mean([f.cka for f in fits]),
        curve=[(s, mean([c[s] for c in curves])) for s in steps],
        wall_s=sum(f.wall_s for f in fits),
        reject_s=sum(f.reject_s for f in fits),
        train_s=sum(f.train_s for f in fits),
        steps=sum(f.steps for f in fits),
        terms={k: mean([f.terms[k] for f in fits]) for k in terms},
        formula=fits[0].formula,
        seed_accuracies=[acc for f in fits for acc in (f.seed_accuracies or [f.accuracy])],
    )


class ProxyEvaluator:
    """Evaluates candidate distillers for one experiment; built once per worker process.

    Loads the data set, gets the frozen teacher (trained and cached if needed), fills the teacher-output cache
    (validation split always; training split when the run has no random augmentation) and reads knowledge
    shapes, all through :func:`trainers.run.load_parts`.

    Args:
        exp: The experiment.
        device: Torch device.
        use_cache: Read the teacher's outputs from the on-disk cache (``False``: teacher runs live).
    """

    def __init__(self, exp: ExperimentConfig, device: str = "cpu", *, use_cache: bool = True) -> None:
        self._setup(exp, load_parts(exp, device, use_cache=use_cache), device)

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
        parts = RunParts(
            train=train,
            val=val,
            test=None,
            teacher=teacher.to(device),
            input_shape=tuple(input_shape),  # type: ignore[arg-type]
            num_classes=num_classes,
            data_augment=augment,
            cache=cache,
            student_factory=student_factory,
            distiller_factory=distiller_factory,
        )
        if cache is not None:
            cache.build(parts.teacher, "val", val, ("logits", "embedding"), device=device)
        self = cls.__new__(cls)
        self._setup(exp, parts, device)
        return self

    def _setup(self, exp: ExperimentConfig, parts: RunParts, device: str) -> None:
        self.exp, self.parts, self.device = exp, parts, device
        self.train_full, self.val = parts.train, parts.val
        self.input_shape, self.num_classes = parts.input_shape, parts.num_classes
        self.teacher, self.cache = parts.teacher, parts.cache
        self.teacher_shapes = parts.teacher_shapes
        self.train = seeded_subset(parts.train, exp.proxy.subset, exp.dataset.split_seed)
        self.rules = RejectionRules(explode_ratio=exp.proxy.explode_ratio)

    # ----------------------------------------------------------------- building one trial
    def new_student(self, seed: int) -> nn.Module:
        """A freshly initialised student, seeded."""
        return new_student(self.exp, self.parts, seed)

    def proxy_steps(self) -> int:
        """Length of a proxy run: ``ProxyConfig.steps``, or ``fraction`` of the full schedule's steps."""
        return self.exp.proxy.steps or fraction_steps(self.exp, self.parts, self.exp.proxy.fraction)

    def proxy_config(self, seed: int | None = None) -> TrainConfig:
        """The full student schedule with the proxy's stopping point (``max_steps``) and the trial seed."""
        base = self.exp.student_train
        return dataclasses.replace(
            base, max_steps=self.proxy_steps(), seed=base.seed if seed is None else seed
        )

    def build_trainer(
        self,
        spec: DistillerSpec | None,
        seed: int | None = None,
        *,
        fraction: float | None = None,
        rungs: Sequence[float] | None = None,
        checkpoint: str | Path | None = None,
    ) -> Trainer:
        """Student + distiller + trainer of one run (``spec=None``: plain CE training).

        Args:
            spec: The candidate, or ``None``.
            seed: Trial seed (default ``student_train.seed``).
            fraction: Stop at this fraction of the full schedule, on the whole training split (verification
                runs); ``None``: a proxy run.
            rungs: The verification's rung plan (fractions) when ``fraction`` is one of its rungs: validation
                then runs ``proxy.evals`` times per first rung and at every rung boundary, so a run continued
                rung by rung records the curve of a run trained to ``fraction`` in one go. ``None``:
                ``proxy.evals`` times up to ``fraction``.
            checkpoint: The run's checkpoint file: resumed from when it exists, written at the end.

        Raises:
            Rejected: ``invalid`` when the distiller cannot be built for these shapes.
        """
        evals, eval_at = self.exp.proxy.evals, ()
        if fraction is None:
            steps, train = self.proxy_steps(), self.train
            every = max(1, steps // evals)
        else:
            steps, train = fraction_steps(self.exp, self.parts, fraction), None
            plan = tuple(rungs) if rungs else (fraction,)
            every = max(1, fraction_steps(self.exp, self.parts, plan[0]) // evals)
            eval_at = tuple(fraction_steps(self.exp, self.parts, f) for f in plan if f < fraction)
        return assemble_run(
            self.exp,
            self.parts,
            spec,
            seed=seed,
            max_steps=steps,
            train=train,
            device=self.device,
            eval_steps=every,
            checkpoint=checkpoint,
            eval_at=eval_at,
        )

    def fitness_metrics(self, model: nn.Module) -> dict[str, float]:
        """Paper Eq. 2's measurements of a trained student on the validation split.

        With several teachers (Eq. 3) the sharpness and CKA gaps are averaged over the teachers.
        """
        teachers = self.parts.teachers or [self.teacher]
        caches = self.parts.caches or [self.cache]
        runs = []
        for teacher, cache in zip(teachers, caches, strict=True):
            outputs = cache.outputs("val") if cache is not None else None
            live = None if outputs else teacher
            runs.append(evaluate_split(model, self.val, outputs, teacher=live, device=self.device))
        metrics = dict(runs[0])
        for key in ("sharpness_gap", "cka", "cka_gap"):
            metrics[key] = sum(r[key] for r in runs) / len(runs)
        return metrics

    def test_metrics(self, checkpoint: str | Path) -> dict[str, float] | None:
        """Accuracy and CE on the test split of the student in a run's checkpoint (``None``: no test split).

        The checkpoint is read with ``weights_only=True``; only the student's weights are used.
        """
        if self.parts.test is None:
            return None
        saved = torch.load(checkpoint, map_location=self.device, weights_only=True)
        model = self.new_student(self.exp.student_train.seed).to(self.device)
        model.load_state_dict(saved["model"])
        m = evaluate_split(model, self.parts.test, device=self.device)
        return {"accuracy": float(m["accuracy"]), "ce": float(m["ce"])}

    # ----------------------------------------------------------------- public API
    def check(self, spec: DistillerSpec | None, seed: int | None = None) -> ProbeReport:
        """Loss rejection of ``spec`` on ``ProxyConfig.reject_batches`` batches (no optimizer step).

        Raises:
            Rejected: ``invalid``, ``nan``, ``inf``, ``explode`` or ``collapse``.
        """
        return check_trainer(self.build_trainer(spec, seed), self.exp.proxy.reject_batches, self.rules)

    def evaluate(
        self,
        spec: DistillerSpec | None,
        callbacks: Callbacks = None,
        seed: int | None = None,
        *,
        fraction: float | None = None,
        rungs: Sequence[float] | None = None,
        checkpoint: str | Path | None = None,
    ) -> Fitness:
        """Rejection check, proxy run and fitness on the validation split.

        Args:
            spec: A ``DistillerSpec`` (``None``: CE-only student, no check).
            callbacks: ``{"on_eval": [fn, ...]}`` or callback objects (e.g. early stopping by the pruner).
            seed: Trial seed (default ``student_train.seed``): same spec + seed gives the same numbers on CPU.
                A proxy with ``ProxyConfig.seeds`` = k runs seeds ``seed .. seed + k - 1``.
            fraction: Train this fraction of the full schedule on the whole training split instead of a proxy
                run (the verification stage: one run, its own seed).
            rungs: The rung plan ``fraction`` belongs to (:meth:`build_trainer`).
            checkpoint: Continue the run from this checkpoint when the file exists (no rejection check: the
                run passed it when it started), and write its state there at the end.

        Returns:
            The :class:`Fitness` (the mean over the proxy's seeds, :func:`mean_fitness`).

        Raises:
            Rejected: From the check, the divergence guard or a callback, in any of the seeds' runs (the
                detail names the seed when there are several).
        """
        k = self.exp.proxy.seeds if fraction is None else 1
        if k == 1:
            return self._evaluate_one(spec, callbacks, seed, fraction, rungs, checkpoint)
        if checkpoint is not None:
            raise ValueError("a checkpoint belongs to one run: a proxy of several seeds cannot take one")
        base = self.exp.student_train.seed if seed is None else seed
        fits = []
        for s in range(base, base + k):
            try:
                fits.append(self._evaluate_one(spec, callbacks, s, fraction, None, None))
            except Rejected as exc:
                raise Rejected(exc.reason, f"seed {s} of {base}..{base + k - 1}: {exc.detail}") from None
        return mean_fitness(fits)

    def _evaluate_one(
        self,
        spec: DistillerSpec | None,
        callbacks: Callbacks,
        seed: int | None,
        fraction: float | None,
        rungs: Sequence[float] | None,
        checkpoint: str | Path | None,
    ) -> Fitness:
        """One run of :meth:`evaluate`: rejection check, training, fitness."""
        t0 = time.perf_counter()
        trainer = self.build_trainer(spec, seed, fraction=fraction, rungs=rungs, checkpoint=checkpoint)
        reject_s = 0.0
        continued = checkpoint is not None and Path(checkpoint).exists()
        if spec is not None and not continued:
            check_trainer(trainer, self.exp.proxy.reject_batches, self.rules)
            reject_s = time.perf_counter() - t0
        attach_callbacks(trainer, callbacks)
        result = trainer.run()
        metrics = self.fitness_metrics(trainer.model)
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
            seed_accuracies=[metrics["accuracy"]],
            resumed_from=trainer.resumed_from,
        )
