"""Build kdzero-shaped Optuna studies for the analysis tests (storage conventions of docs/CONTRACTS.md)."""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

OBJECTIVES = ["val_ce", "sharpness_gap", "cka_gap"]

# plain params for tests that do not rebuild a distiller (selection, tables): the spaces parameter names
PLAIN_DISTS = {
    "knowledge": CategoricalDistribution(["embedding", "feature", "logits"]),
    "t1": CategoricalDistribution(["no", "softmax_c", "norm_hw"]),
    "t2": CategoricalDistribution(["no", "softmax_c", "norm_hw"]),
    "t3": CategoricalDistribution(["no", "softmax_c", "norm_hw"]),
    "distance": CategoricalDistribution(["kl", "l2", "cosine"]),
    "calibration": CategoricalDistribution(["no", "focal"]),
    "weight": FloatDistribution(0.1, 10.0),
    "tau": FloatDistribution(1.0, 8.0),
}


def new_study(
    storage: str | None = None,
    name: str = "kd",
    metric_names: list[str] | None = None,
    config: dict | None = None,
) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, directions=["minimize"] * 3)
    study.set_metric_names(metric_names or OBJECTIVES)
    if config is not None:
        study.set_user_attr("kdzero_config", json.dumps(config))
    return study


def plain_params(i: int) -> dict[str, Any]:
    """Deterministic plain params varying with i."""
    ops = ["no", "softmax_c", "norm_hw"]
    return {
        "knowledge": ["logits", "embedding", "feature"][i % 3],
        "t1": ops[i % 3],
        "t2": ops[(i // 3) % 3],
        "t3": ops[(i + 1) % 3],
        "distance": ["kl", "l2", "cosine"][i % 3],
        "calibration": ["no", "focal"][i % 2],
        "weight": 1.0 + i % 5,
        "tau": 1.0 + i % 4,
    }


def add(
    study: optuna.Study,
    values: list[float] | None,
    *,
    params: dict[str, Any] | None = None,
    distributions: dict | None = None,
    state: TrialState = TrialState.COMPLETE,
    attrs: dict[str, Any] | None = None,
    order: list[str] | None = None,
) -> None:
    """Add one trial; ``values`` are given in OBJECTIVES order and re-ordered to the study's metric names."""
    params = params if params is not None else plain_params(len(study.trials))
    distributions = distributions or {k: PLAIN_DISTS[k] for k in params}
    if values is not None and order is not None:
        values = [values[OBJECTIVES.index(n)] for n in order]
    attrs = dict(attrs or {})
    attrs.setdefault("formula", f"formula-{len(study.trials)}")
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            values=values if state == TrialState.COMPLETE else None,
            params=params,
            distributions=distributions,
            user_attrs=attrs,
        )
    )


def spec_trial_args(spec) -> tuple[dict[str, Any], dict]:
    """Params and Optuna distributions of a spec, exactly as ``spaces.suggest_spec`` suggests them."""
    from spaces import spec_to_params, suggest_spec

    fixed = optuna.trial.FixedTrial(spec_to_params(spec))
    assert suggest_spec(fixed) == spec
    return fixed.params, fixed.distributions


def add_spec(
    study: optuna.Study,
    spec,
    values: list[float] | None,
    *,
    state: TrialState = TrialState.COMPLETE,
    attrs: dict[str, Any] | None = None,
    with_spec_attrs: bool = True,
) -> None:
    """Add a trial of ``spec`` carrying the user attrs the study objective writes."""
    params, dists = spec_trial_args(spec)
    attrs = dict(attrs or {})
    if with_spec_attrs:
        attrs.setdefault("spec", spec.to_json())
        attrs.setdefault("formula", spec.formula())
    add(study, values, params=params, distributions=dists, state=state, attrs=attrs)
