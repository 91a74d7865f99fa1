"""The study objective: genes -> DistillerSpec -> loss rejection -> proxy run -> three objectives."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import optuna

from spaces import DistillerSpec, suggest_spec
from study.pruner import EarlyStoppingPruner, error_detail, record_rejection
from study.sampler import GENERATION_KEY
from study.storage import is_transient_error
from trainers import Rejected

OBJECTIVES = ("val_ce", "sharpness_gap", "cka_gap")


class Evaluator(Protocol):
    """What the objective needs from ``trainers.ProxyEvaluator`` (tests pass fakes with the same methods)."""

    def evaluate(self, spec: DistillerSpec, callbacks: dict[str, list[Any]] | None = None) -> Any:
        """Loss rejection, then the proxy run; returns a ``Fitness``, raises ``trainers.Rejected``."""


def _jsonable(value: Any) -> Any:
    """Floats that are not finite become strings, tuples become lists (storage user attrs are JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def complete_twin(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """The first COMPLETE trial of the study with exactly this trial's genes, if any."""
    params = trial.params
    for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if other.number != trial.number and other.params == params:
            return other
    return None


class Objective:
    """Callable objective of the study; one per worker, holding its evaluator.

    Args:
        evaluator: ``trainers.ProxyEvaluator`` (or an object with the same ``check``/``evaluate``).
        knowledge: Knowledge kinds passed to ``spaces.suggest_spec``.
        pruner: Early stopping; ``None`` disables it.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        *,
        knowledge: Sequence[str] = ("logits",),
        pruner: EarlyStoppingPruner | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.knowledge = tuple(knowledge)
        self.pruner = pruner

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        """Evaluate one trial; rejections and errors end it PRUNED with their reason."""
        start = time.perf_counter()
        # Reading relative_params makes NSGA-II assign the generation, also to fully enqueued trials.
        _ = trial.relative_params
        generation = trial.storage.get_trial_system_attrs(trial._trial_id).get(GENERATION_KEY)
        trial.set_user_attr("generation", generation)
        try:
            spec = suggest_spec(trial, knowledge=self.knowledge)
            trial.set_user_attr("spec", spec.to_json())
            trial.set_user_attr("formula", spec.formula())
            twin = complete_twin(trial)
            if twin is not None:  # NSGA-II re-proposed a finished candidate: same spec and seed, same numbers
                for key, value in twin.user_attrs.items():
                    if key not in ("generation", "known", "wall_s"):
                        trial.set_user_attr(key, value)
                trial.set_user_attr("duplicate_of", twin.number)
                trial.set_user_attr("wall_s", time.perf_counter() - start)
                return tuple(twin.values)  # type: ignore[return-value]
            # evaluate() runs loss rejection (a few batches) before the proxy run, so no separate check here.
            callbacks = {"on_eval": [self.pruner.on_eval(trial.study)]} if self.pruner is not None else None
            fitness = self.evaluator.evaluate(spec, callbacks=callbacks)
        except Rejected as exc:
            trial.set_user_attr("wall_s", time.perf_counter() - start)
            reason = getattr(exc, "reason", None) or (exc.args[0] if exc.args else "invalid")
            detail = getattr(exc, "detail", None) or (exc.args[1] if len(exc.args) > 1 else "")
            raise record_rejection(trial, str(reason), str(detail)) from None
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken candidate must not crash the worker
            if is_transient_error(exc):  # the storage failed, not the candidate: the worker retries it
                raise
            trial.set_user_attr("wall_s", time.perf_counter() - start)
            raise record_rejection(trial, "error", error_detail(exc)) from None
        values = (float(fitness.ce), float(fitness.sharpness_gap), float(fitness.cka_gap))
        for key, value in fitness.to_dict().items():
            trial.set_user_attr(key, _jsonable(value))
        trial.set_user_attr("accuracy", float(fitness.accuracy))
        trial.set_user_attr("curve", _jsonable(list(fitness.curve)))
        trial.set_user_attr("wall_s", time.perf_counter() - start)
        if not all(math.isfinite(v) for v in values):
            raise record_rejection(trial, "nan", f"non-finite objectives {values}")
        return values
