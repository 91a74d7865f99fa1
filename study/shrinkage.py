"""Search-space shrinkage (KD-Zero): op choices that were often rejected are drawn less often.

For every categorical gene and choice, ``weight = (1 + completed) / (1 + completed + rejected)``, floored at
``floor > 0``, counted over the trials in storage so that every worker agrees. A wrapper sampler draws the
categorical genes that NSGA-II samples independently (first generation, mutation, genes not inherited)
from these weights; everything else is NSGA-II unchanged.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

WEIGHTS_ATTR = "kdzero_shrinkage"


def choice_key(value: Any) -> str:
    """Stable string key of a categorical choice (JSON text, so ``1`` and ``"1"`` differ)."""
    return json.dumps(value)


def count_choices(trials: Iterable[FrozenTrial], reasons: Sequence[str]) -> dict[str, dict[str, list[int]]]:
    """Count, per categorical gene and choice, completed and rejected trials: ``{name: {key: [done, rej]}}``.

    Args:
        trials: Trials of the study (any states; only COMPLETE and PRUNED count).
        reasons: ``reject_reason`` user attrs that count as rejections (others, e.g. ``error``, are ignored).
    """
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for t in trials:
        if t.state == TrialState.COMPLETE:
            col = 0
        elif t.state == TrialState.PRUNED and t.user_attrs.get("reject_reason") in reasons:
            col = 1
        else:
            continue
        for name, dist in t.distributions.items():
            if isinstance(dist, CategoricalDistribution) and len(dist.choices) > 1:
                counts[name][choice_key(t.params[name])][col] += 1
    return {k: dict(v) for k, v in counts.items()}


def published_weights(study: optuna.Study) -> dict[str, dict[str, float]]:
    """The weights the sampler last published in the study (user attr ``kdzero_shrinkage``; empty if none).

    Raises:
        ValueError: The attribute is not a ``{gene: {choice: weight}}`` mapping (a dict or its JSON text).
    """
    data = study.user_attrs.get(WEIGHTS_ATTR)
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"study user attr {WEIGHTS_ATTR!r} is not valid JSON: {exc}") from None
    if not data:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        shown = repr(data)
        shown = shown if len(shown) <= 200 else shown[:200] + f"... ({len(shown)} chars)"
        raise ValueError(f"study user attr {WEIGHTS_ATTR!r} must map gene -> {{choice: weight}}, got {shown}")
    return {str(g): {str(c): float(w) for c, w in ws.items()} for g, ws in data.items()}


def shrinkage_weights(
    trials: Iterable[FrozenTrial], reasons: Sequence[str], floor: float
) -> dict[str, dict[str, float]]:
    """Weight of each seen (gene, choice): ``max(floor, (1 + done) / (1 + done + rejected))``; unseen: 1."""
    return {
        name: {key: max(floor, (1 + done) / (1 + done + rej)) for key, (done, rej) in sorted(per.items())}
        for name, per in sorted(count_choices(trials, reasons).items())
    }


class ShrinkageSampler(BaseSampler):
    """Wraps a sampler (NSGA-II) and draws independently sampled categorical genes from shrinkage weights.

    Args:
        base: The wrapped sampler; relative sampling (crossover), generations and hooks are its own.
        reasons: Rejection reasons that count against a choice.
        floor: Smallest weight (> 0).
        refresh_s: Weights are recomputed from storage at most this often (seconds).
        seed: Seed of the weighted draws.
        publish: Store the weights in the study user attr ``kdzero_shrinkage`` when they change.
    """

    def __init__(
        self,
        base: BaseSampler,
        *,
        reasons: Sequence[str],
        floor: float = 0.05,
        refresh_s: float = 5.0,
        seed: int | None = None,
        publish: bool = True,
    ) -> None:
        if not 0 < floor <= 1:
            raise ValueError(f"floor must be in (0, 1], got {floor!r}")
        self.base = base
        self._reasons = tuple(reasons)
        self._floor = floor
        self.refresh_s = refresh_s
        self._rng = np.random.default_rng(seed)
        self._publish = publish
        self._weights: dict[str, dict[str, float]] = {}
        self._stamp = -float("inf")

    def weights(self, study: optuna.Study) -> dict[str, dict[str, float]]:
        """Current weights, recomputed from storage when older than ``refresh_s``."""
        now = time.monotonic()
        if now - self._stamp >= self.refresh_s:
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            new = shrinkage_weights(trials, self._reasons, self._floor)
            if self._publish and new != self._weights and new:
                try:
                    study.set_user_attr(WEIGHTS_ATTR, new)
                except Exception:  # noqa: BLE001 - publishing is a report, never worth failing a trial
                    pass
            self._weights, self._stamp = new, now
        return self._weights

    def probabilities(self, study: optuna.Study, name: str, dist: CategoricalDistribution) -> np.ndarray:
        """Probability of each choice of a categorical gene under the current weights."""
        per = self.weights(study).get(name, {})
        w = np.array([per.get(choice_key(c), 1.0) for c in dist.choices], dtype=float)
        return w / w.sum()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """Delegated to the wrapped sampler."""
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Delegated to the wrapped sampler (NSGA-II crossover + mutation of inherited genes)."""
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """Categorical genes with several choices: drawn from the shrinkage weights; others: base sampler."""
        if isinstance(param_distribution, CategoricalDistribution) and len(param_distribution.choices) > 1:
            p = self.probabilities(study, param_name, param_distribution)
            return param_distribution.choices[int(self._rng.choice(len(p), p=p))]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Delegated to the wrapped sampler."""
        self.base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        """Delegated to the wrapped sampler."""
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Reseed the wrapped sampler and the weighted draws."""
        self.base.reseed_rng()
        self._rng = np.random.default_rng()
