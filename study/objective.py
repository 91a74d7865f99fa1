"""The study objective: genes -> DistillerSpec -> loss rejection -> proxy run -> three objectives."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import optuna

from spaces import DistillerSpec, suggest_spec
from study._optuna import GENERATION_KEY, trial_id
from study.pruner import PercentileEarlyStop, error_detail, record_rejection
from study.sampler import SEED_ATTR, trial_spec
from study.storage import is_transient_error
from trainers import Rejected

OWN_ATTRS = (
    "generation",
    "known",
    "seeded_from",
    "weight_step",
    "wall_s",
    "cpu_s",
    "spec",
    "duplicate_of",
    SEED_ATTR,
)
"""User attrs of a trial that are its own, not copied from the finished twin whose results it reuses."""


class Evaluator(Protocol):
    """What the objective needs from ``trainers.ProxyEvaluator`` (tests pass fakes with the same methods)."""

    def evaluate(
        self,
        spec: DistillerSpec | None,
        callbacks: dict[str, list[Any]] | None = None,
        seed: int | None = None,
        *,
        fraction: float | None = None,
    ) -> Any:
        """Loss rejection, then the proxy run (or ``fraction`` of the full schedule); raises ``Rejected``.

        Returns a ``trainers.Fitness``.
        """


def _jsonable(value: Any) -> Any:
    """Floats that are not finite become strings, tuples become lists (storage user attrs are JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def finished_twin(trial: optuna.Trial, key: str) -> optuna.trial.FrozenTrial | None:
    """The first finished (COMPLETE or PRUNED by a rejection) trial computing the same distiller as ``key``.

    ``key`` is the trial's canonical spec (``DistillerSpec.canonical_key``): genes that differ only in
    operations that are the identity on the knowledge's shape, or in the softmax a distribution distance
    applies itself, make twins. The other trials' keys are computed again from their genes (not read from
    their stored ``canonical`` attr), so a study stored under an older canonical rule is read by the current
    one. Early-stopped trials are not twins (the decision depended on the trials finished at the time), nor
    are trials that failed with an error.
    """
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for other in trial.study.get_trials(deepcopy=False, states=states):
        if other.number == trial.number:
            continue
        try:
            if trial_spec(other).canonical_key() != key:
                continue
        except ValueError:  # not a distiller trial (e.g. no genes, no spec)
            continue
        if other.state == optuna.trial.TrialState.PRUNED and other.user_attrs.get("reject_reason") in (
            None,
            "early_stop",
            "error",
        ):
            continue
        return other
    return None


def record_cost(trial: optuna.Trial, start: float, cpu0: float) -> None:
    """Store a trial's cost: ``wall_s`` (perf counter) and ``cpu_s`` (this process's CPU time).

    CPU time is what a shared or paused machine does not inflate: benchmarks compare costs with it.
    """
    trial.set_user_attr("wall_s", time.perf_counter() - start)
    trial.set_user_attr("cpu_s", time.process_time() - cpu0)


class Objective:
    """Callable objective of the study; one per worker, holding its evaluator.

    Args:
        evaluator: ``trainers.ProxyEvaluator`` (or an object with the same ``check``/``evaluate``).
        knowledge: Knowledge kinds passed to ``spaces.suggest_spec``.
        pruner: Early stopping; ``None`` disables it.
        reference: Returns the CE reference's proxy accuracy once it has run (``None`` before), for the
            ``gain_vs_ce`` user attr.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        *,
        knowledge: Sequence[str] = ("logits",),
        pruner: PercentileEarlyStop | None = None,
        reference: Callable[[], float | None] | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.knowledge = tuple(knowledge)
        self.pruner = pruner
        self._reference = reference
        self._ref_acc: float | None = None

    def reference_accuracy(self) -> float | None:
        """The CE reference's proxy accuracy (read once it exists, then kept)."""
        if self._ref_acc is None and self._reference is not None:
            self._ref_acc = self._reference()
        return self._ref_acc

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        """Evaluate one trial; rejections and errors end it PRUNED with their reason."""
        start, cpu0 = time.perf_counter(), time.process_time()
        # Reading relative_params makes NSGA-II assign the generation, also to fully enqueued trials.
        _ = trial.relative_params
        generation = trial.storage.get_trial_system_attrs(trial_id(trial)).get(GENERATION_KEY)
        trial.set_user_attr("generation", generation)
        try:
            spec = suggest_spec(trial, knowledge=self.knowledge)
            trial.set_user_attr("spec", spec.to_json())
            trial.set_user_attr("formula", spec.formula())
            key = spec.canonical_key()
            trial.set_user_attr("canonical", key)
            twin = finished_twin(trial, key)
            if twin is not None:  # the same distiller finished before: same seed, same numbers; copy them
                for k, value in twin.user_attrs.items():
                    if k not in OWN_ATTRS:
                        trial.set_user_attr(k, value)
                trial.set_user_attr("duplicate_of", twin.number)
                record_cost(trial, start, cpu0)
                if twin.state == optuna.trial.TrialState.PRUNED:
                    raise optuna.TrialPruned(f"duplicate of trial {twin.number}")
                return tuple(twin.values)  # type: ignore[return-value]
            # evaluate() runs loss rejection (a few batches) before the proxy run, so no separate check here.
            # The known distillers of generation 0 are references: never stopped early, always measured.
            stop = self.pruner is not None and not trial.user_attrs.get("known")
            callbacks = {"on_eval": [self.pruner.on_eval(trial.study)]} if stop else None
            fitness = self.evaluator.evaluate(spec, callbacks=callbacks)
        except Rejected as exc:
            record_cost(trial, start, cpu0)
            reason = getattr(exc, "reason", None) or (exc.args[0] if exc.args else "invalid")
            detail = getattr(exc, "detail", None) or (exc.args[1] if len(exc.args) > 1 else "")
            raise record_rejection(trial, str(reason), str(detail)) from None
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken candidate must not crash the worker
            if is_transient_error(exc):  # the storage failed, not the candidate: the worker retries it
                raise
            record_cost(trial, start, cpu0)
            raise record_rejection(trial, "error", error_detail(exc)) from None
        values = (float(fitness.ce), float(fitness.sharpness_gap), float(fitness.cka_gap))
        for key, value in fitness.to_dict().items():
            trial.set_user_attr(key, _jsonable(value))
        trial.set_user_attr("accuracy", float(fitness.accuracy))
        ref = self.reference_accuracy()
        if ref is not None:
            trial.set_user_attr("gain_vs_ce", float(fitness.accuracy) - ref)
        trial.set_user_attr("curve", _jsonable(list(fitness.curve)))
        record_cost(trial, start, cpu0)
        if not all(math.isfinite(v) for v in values):
            raise record_rejection(trial, "nan", f"non-finite objectives {values}")
        return values
