"""The search's pruner: loss rejection and early stopping of proxy runs, recorded as PRUNED trials.

Optuna cannot prune multi-objective trials (``trial.report`` raises), so this component plays that role: an
``on_eval`` callback compares the run's validation accuracy with completed trials at the same step and raises
``trainers.Rejected("early_stop", ...)``; the objective turns any rejection into ``optuna.TrialPruned``
with the reason in user attrs (``reject_reason``, ``reject_detail``), shown by optuna-dashboard.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from trainers import Rejected, Trainer


def curve_steps(curve: Any) -> dict[int, float]:
    """``{step: val_acc}`` of a stored curve (a list of ``[step, val_acc]`` pairs)."""
    out: dict[int, float] = {}
    for point in curve or ():
        step, acc = point[0], point[1]
        out[int(step)] = float(acc)
    return out


class PercentileEarlyStop:
    """Early stopping of a proxy run against the curves of the study's completed trials.

    Not an Optuna pruner (Optuna cannot prune multi-objective trials): a training callback that stops a run
    whose validation accuracy falls below a percentile of completed trials' accuracies at the same step.

    Args:
        percentile: A run whose validation accuracy at a step is below this percentile of completed trials'
            accuracies at that step is stopped.
        warmup: No early stopping until this many trials have completed.
        refresh_s: Completed curves are re-read from storage at most this often (cached per worker).
    """

    def __init__(self, percentile: float = 25.0, warmup: int = 4, refresh_s: float = 10.0) -> None:
        if not 0 <= percentile < 100:
            raise ValueError(f"percentile must be in [0, 100), got {percentile!r}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup!r}")
        self.percentile = percentile
        self.warmup = warmup
        self.refresh_s = refresh_s
        self._curves: list[dict[int, float]] = []
        self._stamp = -float("inf")

    def reference(self, study: optuna.Study) -> list[dict[int, float]]:
        """Curves of completed trials (from the ``curve`` user attr), cached for ``refresh_s`` seconds."""
        now = time.monotonic()
        if now - self._stamp >= self.refresh_s:
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._curves = [curve_steps(t.user_attrs.get("curve")) for t in trials]
            self._stamp = now
        return self._curves

    def threshold(self, study: optuna.Study, step: int) -> tuple[float, int] | None:
        """``(accuracy threshold, number of reference trials)`` at ``step``, or ``None`` while warming up."""
        curves = self.reference(study)
        if len(curves) < self.warmup:
            return None
        accs = [c[step] for c in curves if step in c]
        if len(accs) < self.warmup:
            return None
        return float(np.percentile(accs, self.percentile)), len(accs)

    def on_eval(self, study: optuna.Study) -> Callable[[Trainer], None]:
        """An ``on_eval`` training callback raising ``Rejected("early_stop", ...)`` below the threshold."""

        def callback(trainer: Trainer) -> None:
            state = trainer.state
            if state.val_acc is None:
                return
            found = self.threshold(study, int(state.step))
            if found is None:
                return
            thr, n = found
            if state.val_acc < thr:
                raise Rejected(
                    "early_stop",
                    f"val_acc {state.val_acc:.4f} at step {state.step} is below the "
                    f"{self.percentile:g}th percentile {thr:.4f} of {n} completed trials",
                )

        return callback


def record_rejection(trial: optuna.Trial, reason: str, detail: str) -> optuna.TrialPruned:
    """Store the rejection reason in the trial's user attrs and return the ``TrialPruned`` to raise."""
    trial.set_user_attr("reject_reason", reason)
    trial.set_user_attr("reject_detail", detail)
    return optuna.TrialPruned(f"{reason}: {detail}")


def error_detail(exc: BaseException) -> str:
    """The last line of an exception's traceback (``ValueError: ...``)."""
    lines = traceback.format_exception_only(type(exc), exc)
    return lines[-1].strip() if lines else repr(exc)
