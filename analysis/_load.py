"""Open a kdzero study read-only; read the values, user attrs and generations that ``study`` stores.

Storage conventions (docs/CONTRACTS.md): objectives ``val_ce``, ``sharpness_gap``, ``cka_gap`` (all
minimised, named through ``study.set_metric_names``); trial user attrs ``accuracy``, ``formula``, ``spec``,
``generation``, ``known``, ``reject_reason``; study user attrs ``kdzero_config`` and ``kdzero_shrinkage``
(read through ``study``: :func:`study.worker.stored_config`, :func:`study.shrinkage.published_weights`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from study.fitness import OBJECTIVES, scalarise
from study.sampler import trial_generation, trial_spec
from study.storage import parse_url, require_study_file
from study.worker import load_existing_study

SLOTS = ("knowledge", "t1", "t2", "t3", "distance", "calibration")


def load_study(storage: str | optuna.storages.BaseStorage, study_name: str) -> optuna.Study:
    """Open an existing study without creating anything.

    Args:
        storage: Storage URL (``sqlite:///kdzero.db``, ``postgresql://...``) or an Optuna storage object.
        study_name: Name of the study inside that storage.

    Returns:
        The loaded study.

    Raises:
        ValueError: The SQLite file does not exist, or the storage holds no study of that name (the message
            lists the study names it does hold).
        study.integrity.StudyDamagedError: The study holds rows Optuna cannot decode (each named, with the
            ``python -m study status --repair`` command).
    """
    if isinstance(storage, str):
        parse_url(storage)
        require_study_file(storage)
    return load_existing_study(storage, study_name)


def objective_index(study: optuna.Study) -> dict[str, int]:
    """Map each kdzero objective name to its index in ``trial.values``.

    Uses the metric names stored with ``study.set_metric_names``; a study without names is read in the
    contract order ``val_ce, sharpness_gap, cka_gap``.

    Raises:
        ValueError: The study has another number of objectives, or its metric names lack a kdzero one.
    """
    if len(study.directions) != len(OBJECTIVES):
        raise ValueError(
            f"study {study.study_name!r} has {len(study.directions)} objective(s); a kdzero study has "
            f"{len(OBJECTIVES)}: {list(OBJECTIVES)}"
        )
    names = study.metric_names
    if names is None:
        return {name: i for i, name in enumerate(OBJECTIVES)}
    missing = [n for n in OBJECTIVES if n not in names]
    if missing:
        raise ValueError(
            f"study {study.study_name!r} has metric names {list(names)}; missing kdzero objective(s) "
            f"{missing} (expected {list(OBJECTIVES)})"
        )
    return {name: names.index(name) for name in OBJECTIVES}


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """All COMPLETE trials, in trial-number order."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def require_complete(study: optuna.Study) -> list[FrozenTrial]:
    """Like :func:`complete_trials`, but a study without complete trials raises ``ValueError``."""
    trials = complete_trials(study)
    if not trials:
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        raise ValueError(
            f"study {study.study_name!r} has no COMPLETE trials yet (trials by state: {counts or 'none'})"
        )
    return trials


def trial_formula(trial: FrozenTrial) -> str:
    """The formula stored with the trial, else one rebuilt from its params with ``spaces``."""
    formula = trial.user_attrs.get("formula")
    if isinstance(formula, str) and formula:
        return formula
    try:
        return trial_spec(trial).formula()
    except ValueError:
        return "(unknown formula)"


def known_name(trial: FrozenTrial, known: dict[str, Any] | None = None) -> str | None:
    """Name of the known distiller this trial evaluates, or ``None``.

    The user attr ``known`` (set when the study enqueues generation 0) wins; otherwise a trial whose rebuilt
    spec equals an entry of ``spaces.KNOWN_DISTILLERS`` counts as that distiller.

    Args:
        trial: The trial.
        known: Name -> DistillerSpec table to compare against; defaults to ``spaces.KNOWN_DISTILLERS``.
    """
    name = trial.user_attrs.get("known")
    if isinstance(name, str) and name:
        return name
    if known is None:
        from spaces import KNOWN_DISTILLERS

        known = dict(KNOWN_DISTILLERS)
    if not known:
        return None
    try:
        spec = trial_spec(trial)
    except (ValueError, KeyError, TypeError):
        return None
    for key in sorted(known):
        if known[key] == spec:
            return key
    return None


def study_json_attr(study: optuna.Study, key: str) -> Any:
    """A study user attr stored as JSON text (or already a dict); ``None`` when absent.

    Raises:
        ValueError: The attr holds text that is not valid JSON.
    """
    raw = study.user_attrs.get(key)
    if raw is None or not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"study user attr {key!r} is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class TrialRow:
    """One complete trial as the tables show it.

    ``scalar`` is the scalarised fitness as the search prints it (``study.fitness.scalarise``: the geometric
    mean of ``val_ce``, ``sharpness_gap`` and ``cka_gap = 1 - CKA``).
    """

    number: int
    formula: str
    val_ce: float
    sharpness_gap: float
    cka_gap: float
    accuracy: float | None
    generation: int | None
    known: str | None

    @property
    def scalar(self) -> float:
        """Scalarised fitness (lower is better): ``study.fitness.scalarise`` of the three objectives."""
        return scalarise((self.val_ce, self.sharpness_gap, self.cka_gap))

    @property
    def cka(self) -> float:
        """Linear CKA between student and teacher features (``1 - cka_gap``)."""
        return 1.0 - self.cka_gap


def trial_row(trial: FrozenTrial, index: dict[str, int], known: dict[str, Any] | None = None) -> TrialRow:
    """Turn a COMPLETE trial into a :class:`TrialRow` (``index`` from :func:`objective_index`)."""
    values = trial.values
    acc = trial.user_attrs.get("accuracy")
    return TrialRow(
        number=trial.number,
        formula=trial_formula(trial),
        val_ce=float(values[index["val_ce"]]),
        sharpness_gap=float(values[index["sharpness_gap"]]),
        cka_gap=float(values[index["cka_gap"]]),
        accuracy=float(acc) if acc is not None else None,
        generation=trial_generation(trial),
        known=known_name(trial, known),
    )
