"""Callbacks for :class:`trainers.loop.Trainer`: divergence guard and progress display.

Each is a callable ``fn(trainer)`` registered with ``trainer.add_callback(event, fn)``; an object with an
``EVENTS`` attribute (the event names it handles, each a method) is registered by :func:`attach_callbacks`.
Early stopping against other trials lives with the search (``study.pruner.PercentileEarlyStop``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from tqdm.auto import tqdm

from trainers.rejection import Rejected

if TYPE_CHECKING:
    from trainers.loop import Trainer

# ``{"event": [fn, ...]}`` or objects with an ``EVENTS`` attribute.
Callbacks = Mapping[str, Sequence[Callable[["Trainer"], None]]] | Sequence[Any] | None


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


class DivergenceGuard:
    """Reject a run whose loss turns non-finite (``nan``, ``inf``) or rises far above its start (``diverge``).

    The start is the mean loss of the first ``warmup`` batches; the run diverges when an exponential moving
    average of the loss (factor ``ema``) exceeds ``ratio`` times the start.

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

    def state_dict(self) -> dict[str, Any]:
        """The starting losses and the moving average (kept in a run's checkpoint)."""
        return {"first": list(self._first), "avg": self._avg}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s values."""
        self._first = [float(v) for v in state["first"]]
        self._avg = None if state["avg"] is None else float(state["avg"])

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


class ProgressBar:
    """Progress over optimizer steps with the loss and the latest validation accuracy.

    On a terminal it is a tqdm bar. When the stream is not a terminal (output redirected to a file or a
    pipe) it prints plain lines instead, ``lines`` per run plus one per validation, so a log file holds
    readable lines rather than one long line of carriage returns.

    Args:
        desc: Label at the start of each line.
        disable: Show nothing.
        stream: Where to write (default ``sys.stderr``).
        lines: Plain lines per run when the stream is not a terminal (besides one per validation).
    """

    EVENTS = ("on_batch_end", "on_eval", "on_train_end")

    def __init__(
        self, desc: str = "train", disable: bool = False, stream: TextIO | None = None, lines: int = 10
    ) -> None:
        self.desc, self.disable, self.lines = desc, disable, max(1, lines)
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.plain = not (callable(isatty) and isatty())
        self._bar: Any = None
        self._start = time.perf_counter()

    def _line(self, trainer: Trainer, extra: str = "") -> None:
        st = trainer.state
        pct = 100.0 * st.step / max(1, st.total_steps)
        elapsed = time.perf_counter() - self._start
        print(
            f"{self.desc}: step {st.step}/{st.total_steps} ({pct:.0f}%) loss {st.loss:.4f}{extra} "
            f"[{elapsed:.0f} s]",
            file=self.stream,
            flush=True,
        )

    def on_batch_end(self, trainer: Trainer) -> None:
        """Advance one step."""
        if self.disable:
            return
        st = trainer.state
        if self.plain:
            every = max(1, math.ceil(st.total_steps / self.lines))
            if st.step == 1:
                self._start = time.perf_counter()
            if st.step % every == 0 and st.step < st.total_steps:
                self._line(trainer)
            return
        if self._bar is None:
            self._bar = tqdm(total=st.total_steps, desc=self.desc, file=self.stream)
        self._bar.update(1)
        if st.step % 20 == 0:
            self._bar.set_postfix(loss=f"{st.loss:.3f}", refresh=False)

    def on_eval(self, trainer: Trainer) -> None:
        """Show the latest validation accuracy."""
        if self.disable or trainer.state.val_acc is None:
            return
        if self.plain:
            self._line(trainer, f" val_acc {trainer.state.val_acc:.4f}")
        elif self._bar is not None:
            self._bar.set_postfix(loss=f"{trainer.state.loss:.3f}", val_acc=f"{trainer.state.val_acc:.4f}")

    def on_train_end(self, trainer: Trainer) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
