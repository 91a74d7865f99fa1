"""The one training loop: teacher training, proxy runs and full distillation runs (minGPT-style callbacks).

Loss per batch: ``ce_weight * CE(student_logits, y) + sum_i distiller_i(f_s^i, f_t^i)`` (paper Eq. 3 for
several teachers). Knowledge comes from :class:`trainers.knowledge.KnowledgeExtractor`; the teacher's side is
read from a :class:`trainers.output_cache.TeacherOutputCache` by item index when given (no augmentation), else
computed live.

Schedule: the learning rate is set per optimizer step from the FULL schedule, ``epochs * steps_per_epoch``
steps (``steps_per_epoch`` of the full run's training split, ``schedule_steps_per_epoch`` when a proxy trains
on a subset). ``max_steps`` only says where a run stops: a proxy run is the full run's first ``max_steps``
steps, warm-up included, with exactly the learning rate the full run has at those steps (it is never a
compressed copy).

Augmentation (``TrainConfig.augment``) is a property of the run, not of the data set: random crop (zero
padding of ``H // 8`` pixels) and horizontal flip are applied to each training batch, seeded by the run's
seed. A teacher can train with it on in-memory tensors while students train on the same tensors without it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from spaces import KNOWLEDGE
from trainers.config import TrainConfig
from trainers.data import Batch, augment_batch, iterate_batches, tensor_view
from trainers.knowledge import KnowledgeExtractor
from trainers.metrics import evaluate_split
from trainers.output_cache import TeacherOutputCache
from trainers.runtime import autocast

EVENTS = ("on_batch_end", "on_eval", "on_epoch_end", "on_train_end")


class StopTraining(Exception):
    """Raised by a callback to end training early and normally (``run()`` still returns a result)."""


@dataclass
class TrainState:
    """What callbacks read during training."""

    step: int = 0
    epoch: int = 0
    loss: float = float("nan")
    terms: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    val_acc: float | None = None
    val_ce: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    epoch_val_acc: list[float] = field(default_factory=list)
    total_steps: int = 0


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.run`."""

    val_acc: float | None
    curve: list[tuple[int, float]]
    steps: int
    epochs: int
    wall_s: float
    epoch_val_acc: list[float]
    terms: dict[str, float]
    val_ce: float | None = None
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {
            "val_acc": self.val_acc,
            "val_ce": self.val_ce,
            "curve": [list(p) for p in self.curve],
            "steps": self.steps,
            "epochs": self.epochs,
            "wall_s": self.wall_s,
            "epoch_val_acc": list(self.epoch_val_acc),
            "terms": dict(self.terms),
            "stopped": self.stopped,
        }


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based) of the full schedule of ``total`` steps.

    Linear warm-up over ``warmup_epochs / epochs * total`` steps, then ``cosine`` (to 0 at ``total``),
    ``multistep`` (x ``gamma`` at each milestone epoch) or ``constant``. A run cut short by ``max_steps``
    reads the same factors: ``total`` is always the full schedule's length.
    """
    warm = cfg.warmup_epochs / cfg.epochs * total
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        span = max(total - warm, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * min(max(step - warm, 0.0) / span, 1.0)))
    if cfg.schedule == "multistep":
        passed = sum(1 for m in cfg.milestones if step >= m / cfg.epochs * total)
        return cfg.gamma**passed
    return 1.0


class Trainer:
    """Train ``model`` with CE plus optional distiller loss(es); callbacks add the variations.

    Args:
        model: The student (or the teacher, when training a teacher) returning logits ``(N, K)``.
        train_data: Items ``(x, y, index)``; in-memory splits use the fast path (see :func:`tensor_view`).
        cfg: Schedule, optimizer, seed, validation frequency.
        val_data: Validation split for periodic accuracy (``curve``), optional.
        distiller: One distiller module ``(f_s, f_t, *, logits_s, logits_t, labels) -> (loss, terms)`` or a
            list, one per teacher. Their parameters (aligners) are optimised with the student.
        teacher: Teacher module or list (frozen by the caller, e.g. ``FrozenTeacher``); used live unless
            cached.
        teacher_cache: :class:`~trainers.output_cache.TeacherOutputCache` (or list, one per teacher) holding
            the teacher's knowledge of the training split, read with ``rows("train", kind, index)``.
        knowledge: Knowledge kind (``logits``, ``embedding``, ``feature``) or a list, one per distiller.
        device: Torch device.
        eval_steps: Validate every this many steps (overrides ``cfg.eval_every``); always at the last step
            too.
        schedule_steps_per_epoch: Steps per epoch of the full run's schedule when this run trains on a subset
            (a proxy); ``None``: this run's own steps per epoch.
        checkpoint: Save the run's state here at the end of every epoch and at the run's last step (rank 0,
            atomically) and resume from it when the file exists: model, distillers (aligners), optimizer,
            step, curve, the global RNG (CPU and CUDA), the distillers' own RNGs, the augmentation
            generator's position inside its epoch and the state of callbacks registered with
            :meth:`track_state`. A run stopped at ``max_steps`` and resumed with a larger one is the same run
            as one trained to the larger one in one go (a stop inside an epoch resumes at the next batch of
            that epoch's order).
        checkpoint_key: Identifies the run; a checkpoint written by another run (another key) is refused.
        eval_at: Validate at these steps too (where a run is cut short and continued later: a one-go run given
            the same steps records the same curve).

    Under ``torchrun`` (an initialised ``torch.distributed`` process group of N ranks) every rank draws the
    same global batches of ``cfg.batch_size`` (same seeded order and augmentation) and trains on its N-th
    share of each: the global batch is split across ranks, so N processes follow the single-process schedule
    step by step. Gradients of the student and the distillers' parameters are averaged across ranks after
    each backward pass, buffers (BatchNorm statistics) follow rank 0, and the logged loss is the mean over
    ranks, so every rank's callbacks see the same values.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        cfg: TrainConfig,
        *,
        val_data: Dataset | None = None,
        distiller: nn.Module | Sequence[nn.Module] | None = None,
        teacher: nn.Module | Sequence[nn.Module] | None = None,
        teacher_cache: TeacherOutputCache | Sequence[TeacherOutputCache] | None = None,
        knowledge: str | Sequence[str] = "logits",
        device: str | torch.device = "cpu",
        eval_steps: int | None = None,
        schedule_steps_per_epoch: int | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_key: str = "",
        eval_at: Sequence[int] = (),
    ) -> None:
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_key = checkpoint_key
        self.resumed_from = 0
        self.eval_at = frozenset(int(s) for s in eval_at)
        self._states: dict[str, Any] = {}
        self._aug: torch.Generator | None = None
        self._resume_aug: torch.Tensor | None = None
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        if self.world > 1 and (cfg.batch_size % self.world or cfg.batch_size < self.world):
            raise ValueError(
                f"batch size {cfg.batch_size} cannot be split across {self.world} processes: under torchrun "
                "the batch size is the global one, and must be a multiple of the number of processes"
            )
        if schedule_steps_per_epoch is not None and schedule_steps_per_epoch < 1:
            raise ValueError(f"schedule_steps_per_epoch must be >= 1, got {schedule_steps_per_epoch!r}")
        self.schedule_steps_per_epoch = schedule_steps_per_epoch
        self.model, self.train_data, self.cfg, self.val_data = model, train_data, cfg, val_data
        self.device = torch.device(device)
        self.distillers = _as_list(distiller)
        self.teachers = _as_list(teacher)
        caches = _as_list(teacher_cache)
        kinds = [knowledge] * len(self.distillers) if isinstance(knowledge, str) else list(knowledge)
        for k in kinds:
            if k not in KNOWLEDGE:
                raise ValueError(f"unknown knowledge kind {k!r}; valid kinds are {list(KNOWLEDGE)}")
        if len(kinds) != len(self.distillers):
            raise ValueError(f"got {len(kinds)} knowledge kinds for {len(self.distillers)} distillers")
        if self.distillers:
            if caches and len(caches) != len(self.distillers):
                raise ValueError(f"got {len(caches)} teacher caches for {len(self.distillers)} distillers")
            if not caches and len(self.teachers) != len(self.distillers):
                raise ValueError(
                    f"got {len(self.teachers)} teachers for {len(self.distillers)} distillers; "
                    "give one teacher (or one teacher cache) per distiller"
                )
        self.kinds, self.caches = kinds, caches
        self.eval_steps = eval_steps
        self.callbacks: dict[str, list[Callable[[Trainer], None]]] = {e: [] for e in EVENTS}
        self.state = TrainState()
        self._view = tensor_view(train_data)
        self._val_view = tensor_view(val_data) if val_data is not None else None
        if self._view is not None:
            self._view = tuple(t.to(self.device) for t in self._view)  # type: ignore[assignment]
        if self._val_view is not None:
            self._val_view = tuple(t.to(self.device) for t in self._val_view)  # type: ignore[assignment]
        self._student_ext: KnowledgeExtractor | None = None
        self._teacher_ext: dict[int, Any] = {}
        self.model.to(self.device)
        # Memory layout only (same values, up to float rounding): convolutions and max-pooling in NHWC run
        # ~1.5-2x faster on CPU for the small students than in NCHW, and no slower with cuDNN.
        self.channels_last = any(isinstance(m, nn.Conv2d) for m in self.model.modules())
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        for d in self.distillers:
            d.to(self.device)
        if self.world > 1 and self.num_train < self.world:
            raise ValueError(
                f"{self.world} processes for {self.num_train} training samples: use at most "
                f"{self.num_train} processes"
            )

    # ----------------------------------------------------------------- callbacks
    def add_callback(self, event: str, fn: Callable[[Trainer], None]) -> None:
        """Register ``fn(trainer)`` for ``event`` (one of :data:`EVENTS`)."""
        if event not in self.callbacks:
            raise ValueError(f"unknown event {event!r}; valid events are {list(EVENTS)}")
        self.callbacks[event].append(fn)

    def trigger(self, event: str) -> None:
        """Call every callback registered for ``event`` in registration order."""
        for fn in self.callbacks[event]:
            fn(self)

    def track_state(self, name: str, obj: Any) -> None:
        """Keep ``obj``'s state (``state_dict()`` / ``load_state_dict(d)``, plain data) in the checkpoint.

        A stateful callback (the divergence guard's starting loss and moving average) then continues a resumed
        run as it would have gone on in one go.
        """
        if name in self._states:
            raise ValueError(f"state {name!r} is tracked already")
        self._states[name] = obj

    # ----------------------------------------------------------------- sizes
    @property
    def num_train(self) -> int:
        """Number of training items."""
        return len(self._view[1]) if self._view is not None else len(self.train_data)  # type: ignore[arg-type]

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (a partial last batch is dropped when there is a full batch)."""
        n, bs = self.num_train, self.cfg.batch_size
        return max(n // bs, 1) if n >= bs else 1

    @property
    def schedule_steps(self) -> int:
        """Length of the full schedule the learning rate follows: ``epochs`` x full-run steps per epoch."""
        return self.cfg.epochs * (self.schedule_steps_per_epoch or self.steps_per_epoch)

    @property
    def total_steps(self) -> int:
        """Length of this run: the full schedule, or its first ``max_steps`` steps."""
        full = self.schedule_steps
        return min(full, self.cfg.max_steps) if self.cfg.max_steps else full

    # ----------------------------------------------------------------- data and knowledge
    def train_batches(
        self, epoch: int, start: int = 0, aug_state: torch.Tensor | None = None
    ) -> Iterator[Batch]:
        """The training batches of ``epoch``, shuffled by a generator seeded with ``(seed, epoch)``.

        Args:
            epoch: The epoch (0-based).
            start: Skip the epoch's first ``start`` batches (a run resumed inside an epoch).
            aug_state: State of the augmentation generator after those batches (from the checkpoint).
        """
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        drop = self.num_train >= self.cfg.batch_size
        batches = iterate_batches(
            self.train_data,
            self.cfg.batch_size,
            shuffle=True,
            generator=gen,
            drop_last=drop,
            device=self.device,
            view=self._view,
        )
        if start:  # the order is drawn up front; skipped batches are sliced (view) or loaded and dropped
            batches = itertools.islice(batches, start, None)
        if self.cfg.augment:
            aug = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch + 7_777_777)
            if aug_state is not None:
                aug.set_state(aug_state)
            self._aug = aug
            batches = ((augment_batch(x, aug), y, i) for x, y, i in batches)
        if self.world == 1:
            return batches
        return (self._shard(b) for b in batches)

    def _shard(self, batch: Batch) -> Batch:
        """This rank's share of a global batch: rows ``rank * n / world`` to ``(rank + 1) * n / world``."""
        n = len(batch[1])
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        return batch[0][lo:hi], batch[1][lo:hi], batch[2][lo:hi]  # (N, ...) -> (N / world, ...)

    def _student_knowledge(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if all(k == "logits" for k in self.kinds):
            return {"logits": self.model(x)}
        if self._student_ext is None:
            self._student_ext = KnowledgeExtractor(self.model)
        self._student_ext.train(self.model.training)  # the extractor picks its traced graph by its own mode
        return self._student_ext(x)

    @torch.no_grad()
    def _teacher_knowledge(self, i: int, x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        kind = self.kinds[i]
        if self.caches:
            cache = self.caches[i]
            out = {"logits": cache.rows("train", "logits", index).to(self.device)}
            if kind != "logits":
                out[kind] = cache.rows("train", kind, index).to(self.device)
            return out
        teacher = self.teachers[i]
        teacher.eval()
        if kind == "logits":
            return {"logits": teacher(x).float()}
        if i not in self._teacher_ext:
            self._teacher_ext[i] = KnowledgeExtractor(teacher).eval()
        return {k: v.float() for k, v in self._teacher_ext[i](x).items()}

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.cfg.amp)

    def batch_losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """CE and summed distiller loss of one batch (graph kept for backward).

        Returns:
            ``(ce, kd, terms)``: scalar CE on labels (unweighted), scalar sum of distiller losses (0 without
            distillers), and the named terms (distiller terms prefixed ``t{i}.`` when there are several).
        """
        x, y, index = batch
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # (N, C, H, W) with NHWC strides
        with self._autocast():
            ks = self._student_knowledge(x)
            logits_s = ks["logits"].float()  # (N, K)
            ce = F.cross_entropy(logits_s, y)
            kd = torch.zeros((), device=self.device)
            terms: dict[str, torch.Tensor] = {"ce": ce}
            for i, distiller in enumerate(self.distillers):
                kt = self._teacher_knowledge(i, x, index)
                kind = self.kinds[i]
                loss_i, terms_i = distiller(
                    ks[kind].float(),
                    kt[kind].float(),
                    logits_s=logits_s,
                    logits_t=kt["logits"].float(),
                    labels=y,
                )
                kd = kd + loss_i.float()
                prefix = f"t{i}." if len(self.distillers) > 1 else ""
                terms.update({prefix + k: v for k, v in terms_i.items()})
        return ce, kd, terms

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Accuracy and mean CE of the student on ``val_data`` (``trainers.metrics.evaluate_split``)."""
        if self.val_data is None:
            raise ValueError("validate() needs val_data")
        m = evaluate_split(
            self.model,
            self.val_data,
            batch_size=1024,
            device=self.device,
            amp=self.cfg.amp,
            view=self._val_view,
        )
        return m["accuracy"], m["ce"]

    def _eval_now(self) -> None:
        acc, ce = self.validate()
        self.state.val_acc, self.state.val_ce = acc, ce
        self.state.curve.append((self.state.step, acc))
        self.trigger("on_eval")

    # ----------------------------------------------------------------- the loop
    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        # Weight decay on weights only (ndim > 1), not on biases and normalisation parameters.
        cfg = self.cfg
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        return torch.optim.AdamW(groups, lr=cfg.lr)

    def _average_gradients(self, params: list[nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """Average gradients (one flat all-reduce) and the loss over ranks; returns the mean loss."""
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(grads[0].dtype)])  # (P + 1,)
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-1]

    def _state(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        st = self.state
        return {
            "key": self.checkpoint_key,
            "model": self.model.state_dict(),
            "distillers": [d.state_dict() for d in self.distillers],
            "optimizer": opt.state_dict(),
            "step": st.step,
            "epoch": st.epoch,
            "curve": [list(p) for p in st.curve],
            "epoch_val_acc": list(st.epoch_val_acc),
            "val_acc": st.val_acc,
            "val_ce": st.val_ce,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "aug": self._aug.get_state()
            if self._aug is not None and st.step % self.steps_per_epoch
            else None,
            "states": {name: obj.state_dict() for name, obj in self._states.items()},
            "generators": [g.get_state() if g is not None else None for g in self._generators()],
        }

    def _generators(self) -> list[torch.Generator | None]:
        """The distillers' own RNGs (random transforms built with a ``generator``), one per distiller."""
        return [
            g if isinstance(g := getattr(d, "generator", None), torch.Generator) else None
            for d in self.distillers
        ]

    def _save(self, opt: torch.optim.Optimizer) -> None:
        """Write the checkpoint (rank 0; to a temporary file moved into place)."""
        if self.checkpoint is None or self.rank != 0:
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
        torch.save(self._state(opt), tmp)
        os.replace(tmp, self.checkpoint)

    def _resume(self, opt: torch.optim.Optimizer) -> None:
        """Continue from the checkpoint when it exists (read with ``weights_only=True``)."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return
        try:
            saved = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - a torn or foreign file
            raise ValueError(
                f"checkpoint {str(self.checkpoint)!r} is unreadable ({type(err).__name__}); delete it to "
                "start over"
            ) from err
        if not isinstance(saved, dict) or saved.get("key") != self.checkpoint_key:
            raise ValueError(
                f"checkpoint {str(self.checkpoint)!r} belongs to another run (another distiller, schedule or "
                "seed); delete it or give another --checkpoint"
            )
        self.model.load_state_dict(saved["model"])
        for d, sd in zip(self.distillers, saved["distillers"], strict=True):
            d.load_state_dict(sd)
        opt.load_state_dict(saved["optimizer"])
        st = self.state
        st.step, st.epoch = int(saved["step"]), int(saved["epoch"])
        st.curve = [(int(a), float(b)) for a, b in saved["curve"]]
        st.epoch_val_acc = [float(a) for a in saved["epoch_val_acc"]]
        st.val_acc, st.val_ce = saved["val_acc"], saved["val_ce"]
        if saved.get("rng") is not None:
            torch.set_rng_state(saved["rng"])
        if saved.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        self._resume_aug = saved.get("aug")
        for g, state in zip(self._generators(), saved.get("generators") or [], strict=False):
            if g is not None and state is not None:
                g.set_state(state)
        for name, obj in self._states.items():
            if name in saved.get("states", {}):
                obj.load_state_dict(saved["states"][name])
        self.resumed_from = st.step

    def run(self) -> TrainResult:
        """Train for ``total_steps`` steps, validating every ``eval_steps`` (or ``cfg.eval_every`` epochs).

        Returns:
            The :class:`TrainResult`. ``Rejected`` raised by a callback propagates; ``StopTraining`` ends the
            run.
        """
        cfg, st = self.cfg, self.state
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        seen: set[int] = set()
        params = []
        for module in (self.model, *self.distillers):
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        opt = self._optimizer(params)
        modules = (self.model, *self.distillers)
        if self.world > 1:  # every rank starts from rank 0's weights (aligners included)
            for module in modules:
                for t in (*module.parameters(), *module.buffers()):
                    dist.broadcast(t.data, 0)
        self._resume(opt)
        total = st.total_steps = self.total_steps
        horizon = self.schedule_steps
        spe = self.steps_per_epoch
        every = self.eval_steps or max(1, round(cfg.eval_every * spe))
        self.model.train()
        for d in self.distillers:
            d.train()
        stopped = False
        last_eval = -1
        saved_at = st.step
        try:
            while st.step < total:
                start = st.step - st.epoch * spe  # batches of this epoch trained before a resume
                aug_state, self._resume_aug = (self._resume_aug if start else None), None
                for batch in self.train_batches(st.epoch, start, aug_state):
                    factor = lr_factor(st.step, horizon, cfg)
                    for g in opt.param_groups:
                        g["lr"] = cfg.lr * factor
                    ce, kd, terms = self.batch_losses(batch)
                    loss = cfg.ce_weight * ce + kd
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.world > 1:
                        loss = self._average_gradients(params, loss.detach())
                    opt.step()
                    if self.world > 1:
                        for module in modules:  # BatchNorm statistics follow rank 0, as DDP's
                            for b in module.buffers():
                                dist.broadcast(b.data, 0)
                    st.step += 1
                    st.lr = cfg.lr * factor
                    st.loss = float(loss.detach())
                    st.terms = {k: float(v.detach()) for k, v in terms.items()}
                    self.trigger("on_batch_end")
                    if self.val_data is not None and (
                        st.step % every == 0 or st.step == total or st.step in self.eval_at
                    ):
                        self._eval_now()
                        last_eval = st.step
                    if st.step >= total:
                        break
                if st.step < (st.epoch + 1) * spe:  # stopped inside the epoch (max_steps): not an epoch
                    break
                st.epoch += 1
                if last_eval == st.step and st.val_acc is not None:
                    st.epoch_val_acc.append(st.val_acc)
                self.trigger("on_epoch_end")
                self._save(opt)
                saved_at = st.step
            if saved_at != st.step:  # the run's last step, inside an epoch: where a longer run continues
                self._save(opt)
        except StopTraining:
            stopped = True
        self.trigger("on_train_end")
        return TrainResult(
            val_acc=st.val_acc,
            curve=list(st.curve),
            steps=st.step,
            epochs=st.epoch,
            wall_s=time.perf_counter() - t0,
            epoch_val_acc=list(st.epoch_val_acc),
            terms=dict(st.terms),
            val_ce=st.val_ce,
            stopped=stopped,
        )
