"""Typed configuration of data, training and proxy runs, passed as arguments (never a global)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from spaces import NODE_KNOWLEDGE, short_repr

from .models._registry import is_import_path, split_import_path

T = TypeVar("T")

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "multistep")


def require(cond: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``cond``: config validation that names the bad value."""
    if not cond:
        raise ValueError(message)


_SCALARS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "None": (type(None),),
}


def check_type(value: Any, annotation: str, where: str) -> None:
    """Refuse ``value`` unless it fits a field annotation (``int``, ``float | None``, ``tuple[str, ...]``).

    ``bool`` is not accepted where a number is expected (TOML ``true`` is not a count).

    Raises:
        ValueError: Naming the field, the expected type and the value.
    """
    allowed: list[type] = []
    for part in (p.strip() for p in annotation.split("|")):
        base = part.split("[", 1)[0]
        if base in ("tuple", "list"):
            allowed += [tuple, list]
        elif base == "dict":
            allowed.append(dict)
        elif base in _SCALARS:
            allowed += list(_SCALARS[base])
        else:
            return  # an annotation this check does not know: the dataclass validates it
    numeric = annotation.replace(" ", "") not in ("bool", "bool|None")
    if (isinstance(value, bool) and numeric and bool not in allowed) or not isinstance(value, tuple(allowed)):
        raise ValueError(f"{where} must be {annotation.replace('None', 'null')}, got {short_repr(value)}")


def from_mapping(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build a flat config dataclass from a dict; unknown keys and mistyped values are refused by name.

    Lists become tuples.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}: {short_repr(data)}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {short_repr(unknown)}; valid keys are {sorted(names)}")
    kwargs = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            value = data[f.name]
            check_type(value, str(f.type), f"{where}.{f.name}")
            if isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class DataConfig:
    """Which data set and how it is split.

    Args:
        name: Registered data set name (``fashion_mnist``, ``digits``, ``cifar10``, ``cifar100``,
            ``imagefolder``).
        root: Folder holding the data set files; ``None`` searches the standard places.
        val_size: Validation samples carved from the training split (int) or a fraction of it (float < 1).
        subset: Keep only this many (int) or this fraction (float <= 1) of the remaining training split,
            seeded.
        split_seed: Seed of the validation carve and of the subset.
        download: Allow torchvision to download the data set (never needed for offline sets).
        augment: Random crop + flip on the training split; ``None`` uses the data set's default.
        image_size: Side of the (square) images; only ``imagefolder`` resizes (default 32), the built-in sets
            have a fixed size and refuse another.
        val_indices: A file naming the validation split yourself: positions in the original training set
            (a JSON list, or integers separated by white space or commas). It wins over ``val_size``; use it
            when your teacher was trained without those images, so its validation accuracy stays honest.
    """

    name: str = "fashion_mnist"
    root: str | None = None
    val_size: int | float = 5000
    subset: int | float | None = None
    split_seed: int = 0
    download: bool = False
    augment: bool | None = None
    image_size: int | None = None
    val_indices: str | None = None

    def __post_init__(self) -> None:
        require(
            self.val_indices is None or (isinstance(self.val_indices, str) and bool(self.val_indices)),
            f"data.val_indices must be a file path, got {short_repr(self.val_indices)}",
        )
        require(
            self.image_size is None or (isinstance(self.image_size, int) and self.image_size >= 1),
            f"data.image_size must be None or an int >= 1, got {short_repr(self.image_size)}",
        )
        require(
            isinstance(self.name, str) and bool(self.name),
            f"data.name must be a non-empty string, got {short_repr(self.name)}",
        )
        require(
            isinstance(self.val_size, (int, float))
            and not isinstance(self.val_size, bool)
            and self.val_size > 0,
            f"data.val_size must be a positive int or a fraction in (0, 1), got {short_repr(self.val_size)}",
        )
        if isinstance(self.val_size, float):
            require(
                self.val_size < 1, f"data.val_size as a fraction must be < 1, got {short_repr(self.val_size)}"
            )
        if self.subset is not None:
            require(
                isinstance(self.subset, (int, float))
                and not isinstance(self.subset, bool)
                and self.subset > 0,
                f"data.subset must be a positive int or a fraction in (0, 1], got {short_repr(self.subset)}",
            )
            if isinstance(self.subset, float):
                require(
                    self.subset <= 1, f"data.subset as a fraction must be <= 1, got {short_repr(self.subset)}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``val_indices`` only when set, so hashes of older configs stay the same)."""
        d = dataclasses.asdict(self)
        if d["val_indices"] is None:
            d.pop("val_indices")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return from_mapping(cls, data, "data")


AMP_KEY_VALUE = True
"""``amp`` as content hashes see it (``TrainConfig.key_dict``): its default when those keys were made."""


@dataclass(frozen=True)
class TrainConfig:
    """One training schedule, shared by teacher training, proxy runs and full student runs.

    Args:
        epochs: Number of epochs of the full schedule.
        max_steps: Stop after this many optimizer steps (proxy runs); ``None`` runs all epochs.
        batch_size: Mini-batch size.
        optimizer: ``sgd`` or ``adamw``.
        lr: Peak learning rate.
        momentum: SGD momentum.
        weight_decay: Weight decay.
        schedule: ``cosine``, ``multistep`` (paper: x``gamma`` at ``milestones`` epochs) or ``constant``.
        milestones: Epochs at which multistep decays the learning rate.
        gamma: Multistep decay factor.
        warmup_epochs: Linear learning-rate warm-up length in epochs (may be fractional).
        ce_weight: Weight of the cross-entropy term on labels.
        amp: Mixed precision (bf16 autocast) when the device is CUDA. Off by default: on an H200 it made
            every training step of kdzero's models slower (x0.66 to x0.99, ``scripts/gpu_amp_check.py``).
            An execution setting like the device: it is no part of any identity (:meth:`key_dict`).
        seed: Seed of initialisation, shuffling and random transforms.
        eval_every: Validate every this many epochs (float; 0.25 validates four times per epoch).
        augment: Random crop + horizontal flip of each training batch (a property of the run, so a teacher
            can train with it on in-memory tensors while its students do not).
    """

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 1.0
    ce_weight: float = 1.0
    amp: bool = False
    seed: int = 0
    eval_every: float = 1.0
    augment: bool = False

    def __post_init__(self) -> None:
        require(
            isinstance(self.augment, bool),
            f"train.augment must be true or false, got {short_repr(self.augment)}",
        )
        require(
            isinstance(self.epochs, int) and self.epochs >= 1,
            f"train.epochs must be an int >= 1, got {short_repr(self.epochs)}",
        )
        require(
            self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
            f"train.max_steps must be None or an int >= 1, got {short_repr(self.max_steps)}",
        )
        require(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            f"train.batch_size must be an int >= 1, got {short_repr(self.batch_size)}",
        )
        require(
            self.optimizer in OPTIMIZERS,
            f"train.optimizer must be one of {OPTIMIZERS}, got {short_repr(self.optimizer)}",
        )
        require(
            self.schedule in SCHEDULES,
            f"train.schedule must be one of {SCHEDULES}, got {short_repr(self.schedule)}",
        )
        require(
            isinstance(self.lr, (int, float)) and self.lr > 0,
            f"train.lr must be > 0, got {short_repr(self.lr)}",
        )
        require(
            self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {short_repr(self.weight_decay)}"
        )
        require(
            self.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {short_repr(self.warmup_epochs)}"
        )
        require(self.ce_weight >= 0, f"train.ce_weight must be >= 0, got {short_repr(self.ce_weight)}")
        require(self.eval_every > 0, f"train.eval_every must be > 0, got {short_repr(self.eval_every)}")
        require(
            all(isinstance(m, int) and m >= 1 for m in self.milestones),
            f"train.milestones must be positive ints, got {short_repr(self.milestones)}",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def key_dict(self) -> dict[str, Any]:
        """What identifies the schedule in content hashes (teacher cache, checkpoints).

        :meth:`to_dict` with ``amp`` at its former default ``True`` whatever it is, so keys made before
        ``amp`` left the identity stay valid and runs with and without autocast share them.
        """
        return {**self.to_dict(), "amp": AMP_KEY_VALUE}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return from_mapping(cls, data, "train")


MAX_PROXY_SEEDS = 16
"""Most proxy runs per candidate (``ProxyConfig.seeds``): beyond it a proxy costs more than a verification."""


@dataclass(frozen=True)
class ProxyConfig:
    """Where a proxy run stops (paper: after 5% of the full schedule's steps) and what it trains on.

    A proxy run is the full student run cut short: the same schedule, learning rate, warm-up and seed, stopped
    after ``fraction`` of the full schedule's optimizer steps (so it scales with the data regime).

    Args:
        fraction: Fraction of the full schedule's steps (``student_train.epochs`` x steps per epoch of the
            whole training split) a proxy run trains.
        steps: Fixed number of optimizer steps instead of ``fraction`` (wins when set).
        subset: Train the proxy on this many (int) or this fraction (float) of the training split, seeded (the
            learning rate still follows the full run's schedule).
        reject_batches: Batches evaluated by loss rejection before the proxy run.
        explode_ratio: Reject when the distiller loss exceeds this multiple of the cross-entropy.
        evals: Validation checkpoints during a proxy run (the pruner compares trials at these).
        seeds: Proxy runs per candidate, with consecutive seeds from the trial seed; the fitness is their mean
            (a distiller that collapses on one seed in k is scored by its expected result, not by that one
            draw). Each run costs a full proxy run.
        max_tensor_mb: Refuse (rejection ``invalid``, before anything trains) a distiller whose transform
            chain makes a tensor larger than this many MiB (float32) for one training batch: ``bmm`` after
            ``local_r1`` on a 64x7x7 feature map needs 4.8 GiB per tensor at batch 128, and such a candidate
            would take the worker's memory instead of being pruned. Applies to every run (proxy, verification,
            full training).
    """

    fraction: float = 0.05
    steps: int | None = None
    subset: int | float | None = None
    reject_batches: int = 3
    explode_ratio: float = 100.0
    evals: int = 4
    seeds: int = 1
    max_tensor_mb: float = 1024.0

    def __post_init__(self) -> None:
        require(0 < self.fraction <= 1, f"proxy.fraction must be in (0, 1], got {short_repr(self.fraction)}")
        require(
            isinstance(self.max_tensor_mb, (int, float))
            and not isinstance(self.max_tensor_mb, bool)
            and self.max_tensor_mb > 0,
            f"proxy.max_tensor_mb must be a number > 0, got {short_repr(self.max_tensor_mb)}",
        )
        require(
            self.steps is None or (isinstance(self.steps, int) and self.steps >= 1),
            f"proxy.steps must be None or an int >= 1, got {short_repr(self.steps)}",
        )
        require(
            self.reject_batches >= 1,
            f"proxy.reject_batches must be >= 1, got {short_repr(self.reject_batches)}",
        )
        require(
            self.explode_ratio > 0, f"proxy.explode_ratio must be > 0, got {short_repr(self.explode_ratio)}"
        )
        require(
            isinstance(self.evals, int) and self.evals >= 1,
            f"proxy.evals must be an int >= 1, got {short_repr(self.evals)}",
        )
        require(
            isinstance(self.seeds, int)
            and not isinstance(self.seeds, bool)
            and 1 <= self.seeds <= MAX_PROXY_SEEDS,
            f"proxy.seeds must be an int in [1, {MAX_PROXY_SEEDS}], got {short_repr(self.seeds)}",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProxyConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return from_mapping(cls, data, "proxy")


def _check_model(role: str, name: object, kwargs: object) -> None:
    require(
        isinstance(name, str) and bool(name),
        f"experiment.{role} must be a zoo name or 'package.module:callable', got {short_repr(name)}",
    )
    if is_import_path(name):
        split_import_path(str(name))  # the syntax only: importing needs this process's allowance
    require(
        isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs),
        f"experiment.{role}_kwargs must be a table of keyword arguments, got {short_repr(kwargs)}",
    )
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(
            f"experiment.{role}_kwargs must hold plain values, got {short_repr(kwargs)}"
        ) from None


@dataclass(frozen=True)
class TeacherRef:
    """One teacher of an experiment: its builder, optional checkpoint and builder arguments."""

    model: str
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def _teacher_entry(i: int, entry: object) -> dict[str, Any]:
    where = f"experiment.teachers[{i}]"
    if not isinstance(entry, dict):
        raise ValueError(
            f"{where} must be a table like {{model = ..., checkpoint = ...}}, got {short_repr(entry)}"
        )
    unknown = sorted(set(entry) - {"model", "checkpoint", "kwargs"})
    require(
        not unknown,
        f"{where}: unknown key(s) {short_repr(unknown)}; valid keys are ['checkpoint', 'kwargs', 'model']",
    )
    require("model" in entry, f"{where} needs a model (zoo name or 'package.module:callable')")
    _check_model(f"teachers[{i}]", entry["model"], entry.get("kwargs", {}))
    ckpt = entry.get("checkpoint")
    require(
        ckpt is None or (isinstance(ckpt, str) and bool(ckpt)),
        f"{where}.checkpoint must be a file path, got {short_repr(ckpt)}",
    )
    return {"model": entry["model"], "checkpoint": ckpt, "kwargs": dict(entry.get("kwargs", {}))}


@dataclass(frozen=True)
class ExperimentConfig:
    """A teacher-student pair on one data set, with the schedules of teacher, full student and proxy runs.

    Args:
        dataset: Data set and its split.
        teacher: Zoo name or import path ``package.module:callable`` of the teacher's builder.
        student: Zoo name or import path of the student's builder.
        teacher_kwargs: Extra keyword arguments of the teacher's builder.
        student_kwargs: Extra keyword arguments of the student's builder.
        teacher_checkpoint: A trained teacher's ``state_dict`` file, as saved by
            ``torch.save(model.state_dict(), path)``; the teacher is then loaded, never trained.
            ``None``: kdzero trains the teacher with ``teacher_train`` (once, cached).
        teacher_train: The teacher's schedule when kdzero trains it.
        student_train: The full student schedule (proxy runs are its prefix).
        proxy: Where proxy runs stop.
        cache_dir: Folder of teacher checkpoints and teacher-output caches.
        knowledge: Node names overriding the automatic knowledge layers,
            ``{"student": {"embedding": ..., "feature": ...}, "teacher": {...}}`` (the teacher's apply to
            every teacher).
        teachers: Several teachers (paper Eq. 3), ``({"model", "checkpoint", "kwargs"}, ...)``: the student
            learns from the sum over teachers of the same distiller, one aligner per teacher. When given, the
            single-teacher fields ``teacher_checkpoint`` / ``teacher_kwargs`` must be left unset and
            ``teacher`` names the first teacher.
    """

    dataset: DataConfig = field(default_factory=DataConfig)
    teacher: str = "resnet8"
    student: str = "cnn_tiny"
    # resnet8 on Fashion-MNIST: 3 epochs fit the ~5 min teacher budget on 2 CPU cores
    teacher_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, warmup_epochs=0.2))
    student_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, warmup_epochs=0.5))
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    cache_dir: str | None = None
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    student_kwargs: dict[str, Any] = field(default_factory=dict)
    teacher_checkpoint: str | None = None
    knowledge: dict[str, dict[str, str]] = field(default_factory=dict)
    teachers: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        require(
            isinstance(self.teachers, (tuple, list)),
            f"experiment.teachers must be a list of tables, got {short_repr(self.teachers)}",
        )
        object.__setattr__(self, "teachers", tuple(_teacher_entry(i, t) for i, t in enumerate(self.teachers)))
        if self.teachers:
            require(
                self.teacher_checkpoint is None and not self.teacher_kwargs,
                "experiment: with `teachers`, give each teacher's checkpoint and kwargs in its own table "
                "(teacher_checkpoint / teacher_kwargs must be left unset)",
            )
            require(
                self.teacher == self.teachers[0]["model"],
                f"experiment.teacher {short_repr(self.teacher)} differs from the first of `teachers` "
                f"({self.teachers[0]['model']!r}); give only `teachers`",
            )
        _check_model("teacher", self.teacher, self.teacher_kwargs)
        _check_model("student", self.student, self.student_kwargs)
        require(
            isinstance(self.knowledge, dict) and set(self.knowledge) <= {"student", "teacher"},
            "experiment.knowledge must be a table with 'student' and/or 'teacher' tables, got "
            f"{short_repr(self.knowledge)}",
        )
        for role, nodes in self.knowledge.items():
            require(
                isinstance(nodes, dict)
                and set(nodes) <= set(NODE_KNOWLEDGE)
                and all(isinstance(v, str) and v for v in nodes.values()),
                f"experiment.knowledge.{role} must map 'embedding' / 'feature' to node names "
                f"(`python -m trainers nodes MODEL` lists them), got {short_repr(nodes)}",
            )
        require(
            self.teacher_checkpoint is None
            or (isinstance(self.teacher_checkpoint, str) and bool(self.teacher_checkpoint)),
            f"experiment.teacher_checkpoint must be a file path, got {short_repr(self.teacher_checkpoint)}",
        )

    def teacher_refs(self) -> list[TeacherRef]:
        """Every teacher, in order (one unless ``teachers`` lists several)."""
        if self.teachers:
            return [TeacherRef(t["model"], t["checkpoint"], dict(t["kwargs"])) for t in self.teachers]
        return [TeacherRef(self.teacher, self.teacher_checkpoint, dict(self.teacher_kwargs))]

    def import_paths(self) -> list[str]:
        """The models given as import paths (what a process must be allowed to import), in order."""
        names = [t.model for t in self.teacher_refs()] + [self.student]
        return list(dict.fromkeys(m for m in names if is_import_path(m)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {
            "dataset": self.dataset.to_dict(),
            "teacher": self.teacher,
            "student": self.student,
            "teacher_kwargs": dict(self.teacher_kwargs),
            "student_kwargs": dict(self.student_kwargs),
            "teacher_checkpoint": self.teacher_checkpoint,
            "knowledge": {k: dict(v) for k, v in self.knowledge.items()},
            "teachers": [dict(t) for t in self.teachers],
            "teacher_train": self.teacher_train.to_dict(),
            "student_train": self.student_train.to_dict(),
            "proxy": self.proxy.to_dict(),
            "cache_dir": self.cache_dir,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"experiment: expected a mapping, got {type(data).__name__}")
        known = {
            "dataset",
            "teacher",
            "student",
            "teacher_kwargs",
            "student_kwargs",
            "teacher_checkpoint",
            "knowledge",
            "teachers",
            "teacher_train",
            "student_train",
            "proxy",
            "cache_dir",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"experiment: unknown key(s) {short_repr(unknown)}; valid keys are {sorted(known)}"
            )
        default = cls()
        teachers = data.get("teachers", [])
        first = teachers[0].get("model") if teachers and isinstance(teachers[0], dict) else None
        return cls(
            dataset=DataConfig.from_dict(data.get("dataset", {})),
            teacher=data.get("teacher", first or default.teacher),
            student=data.get("student", default.student),
            teacher_train=TrainConfig.from_dict(data.get("teacher_train", default.teacher_train.to_dict())),
            student_train=TrainConfig.from_dict(data.get("student_train", default.student_train.to_dict())),
            proxy=ProxyConfig.from_dict(data.get("proxy", {})),
            cache_dir=data.get("cache_dir"),
            teacher_kwargs=data.get("teacher_kwargs", {}),
            student_kwargs=data.get("student_kwargs", {}),
            teacher_checkpoint=data.get("teacher_checkpoint"),
            knowledge=data.get("knowledge", {}),
            teachers=tuple(teachers) if isinstance(teachers, (list, tuple)) else teachers,
        )


def config_hash(*parts: Any) -> str:
    """Stable 16-hex-digit content hash of JSON-able parts.

    Dataclasses are converted with ``key_dict`` where they have one (:meth:`TrainConfig.key_dict`), else
    ``to_dict``.
    """
    norm = [
        p.key_dict() if hasattr(p, "key_dict") else p.to_dict() if hasattr(p, "to_dict") else p for p in parts
    ]
    blob = json.dumps(norm, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
