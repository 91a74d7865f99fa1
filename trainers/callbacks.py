"""Callbacks for :class:`trainers.loop.Trainer`: divergence guard, early stopping, progress bar, logging.

Each is a callable ``fn(trainer)`` registered with ``trainer.add_callback(event, fn)``; :func:`attach`
registers one
on the events it declares in ``EVENTS``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainers.rejection import Rejected

if TYPE_CHECKING:
    from trainers.loop import Trainer

log = logging.getLogger("trainers")


def attach(trainer: Trainer, callback: Any) -> Any:
    """Register ``callback`` on each event named in its ``EVENTS`` attribute; returns the callback."""
    for event in callback.EVENTS:
        trainer.add_callback(event, getattr(callback, event))
    return callback


class DivergenceGuard:
    """Reject a run whose loss turns non-finite (``nan``, ``inf``) or rises far above its start (``diverge``).

    The start is the mean loss of the first ``warmup`` batches; the run diverges when an exponential moving
    average
    of the loss (factor ``ema``) exceeds ``ratio`` times the start.

    Args:
        ratio: Divergence threshold relative to the starting loss.
        warmup: Batches averaged into the starting loss.
        ema: Smoothing factor of the moving average (weight of the newest batch).
    """

    EVENTS = ("on_batch_end",)

    def __init__(self, ratio: float = 10.0, warmup: int = 5, ema: float = 0.1) -> None:
        if ratio <= 1:
            raise ValueError(f"DivergenceGuard ratio must be > 1, got {ratio!r}")
        if warmup < 1:
            raise ValueError(f"DivergenceGuard warmup must be >= 1, got {warmup!r}")
        self.ratio, self.warmup, self.ema = ratio, warmup, ema
        self._first: list[float] = []
        self._avg: float | None = None

    def on_batch_end(self, trainer: Trainer) -> None:
        """Check the latest loss."""
        loss, step = trainer.state.loss, trainer.state.step
        if math.isnan(loss):
            raise Rejected("nan", f"loss is NaN at step {step}")
        if math.isinf(loss):
            raise Rejected("inf", f"loss is infinite at step {step}")
        if len(self._first) < self.warmup:
            self._first.append(loss)
            self._avg = sum(self._first) / len(self._first)
            return
        start = sum(self._first) / len(self._first)
        self._avg = (1 - self.ema) * self._avg + self.ema * loss  # type: ignore[operator]
        if self._avg > self.ratio * max(abs(start), 1e-8):
            raise Rejected(
                "diverge",
                f"smoothed loss {self._avg:.4g} > {self.ratio:g} x starting loss {start:.4g} at step {step}",
            )


class EarlyStopping:
    """Reject (``early_stop``) when ``should_stop(step, val_acc)`` says so at a validation.

    Args:
        should_stop: Decision function, e.g. a comparison with completed trials' curves at the same step.
    """

    EVENTS = ("on_eval",)

    def __init__(self, should_stop: Callable[[int, float], bool]) -> None:
        self.should_stop = should_stop

    def on_eval(self, trainer: Trainer) -> None:
        """Apply the decision to the latest validation accuracy."""
        st = trainer.state
        if st.val_acc is not None and self.should_stop(st.step, st.val_acc):
            raise Rejected("early_stop", f"val_acc {st.val_acc:.4f} at step {st.step}")


class ProgressBar:
    """A tqdm progress bar over optimizer steps showing loss and validation accuracy."""

    EVENTS = ("on_batch_end", "on_eval", "on_train_end")

    def __init__(self, desc: str = "train", disable: bool = False) -> None:
        self.desc, self.disable = desc, disable
        self._bar: Any = None

    def on_batch_end(self, trainer: Trainer) -> None:
        """Advance one step."""
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=trainer.state.total_steps, desc=self.desc, disable=self.disable)
        self._bar.update(1)
        if trainer.state.step % 20 == 0:
            self._bar.set_postfix(loss=f"{trainer.state.loss:.3f}", refresh=False)

    def on_eval(self, trainer: Trainer) -> None:
        """Show the latest validation accuracy."""
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{trainer.state.loss:.3f}", val_acc=f"{trainer.state.val_acc:.4f}")

    def on_train_end(self, trainer: Trainer) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()


class LogMetrics:
    """Log the step, loss, terms and learning rate every ``every`` steps and each validation."""

    EVENTS = ("on_batch_end", "on_eval")

    def __init__(self, every: int = 100, logger: logging.Logger | None = None) -> None:
        self.every, self.log = every, logger or log

    def on_batch_end(self, trainer: Trainer) -> None:
        """Log the training loss."""
        st = trainer.state
        if st.step % self.every == 0:
            terms = " ".join(f"{k}={v:.4f}" for k, v in st.terms.items())
            self.log.info("step %d/%d loss=%.4f %s lr=%.4g", st.step, st.total_steps, st.loss, terms, st.lr)

    def on_eval(self, trainer: Trainer) -> None:
        """Log the validation accuracy."""
        st = trainer.state
        self.log.info("step %d val_acc=%.4f val_ce=%.4f", st.step, st.val_acc or 0.0, st.val_ce or 0.0)
