"""The Pareto front of a kdzero study and the rules that pick "the best trial" from it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from analysis._load import TrialRow, objective_index, require_complete, trial_row

SELECTIONS = ("verified", "scalar", "accuracy")


def _check_select(select: str) -> None:
    if select not in SELECTIONS:
        raise ValueError(f"unknown selection rule {select!r}; valid rules are {list(SELECTIONS)}")


def _sort_key(select: str) -> Callable[[TrialRow], tuple]:
    if select in ("scalar", "verified"):
        return lambda r: (r.scalar, r.number)
    # accuracy: highest first, trials without an accuracy last, then the scalarised fitness breaks ties
    return lambda r: (
        -(r.accuracy if r.accuracy is not None and math.isfinite(r.accuracy) else -math.inf),
        r.scalar,
        r.number,
    )


def sort_rows(rows: list[TrialRow], select: str = "scalar") -> list[TrialRow]:
    """Order rows by a selection rule: ``scalar`` ascending or ``accuracy`` descending.

    Args:
        rows: Rows to order.
        select: ``scalar`` (``study.fitness.scalarise``, lowest first) or ``accuracy`` (highest first).

    Returns:
        A new sorted list; ties break on the scalarised fitness, then the trial number.
    """
    _check_select(select)
    return sorted(rows, key=_sort_key(select))


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The COMPLETE trials that no other complete trial dominates, one per distinct distiller.

    Twins (trials whose specs are equal in canonical form, e.g. differing only in operations that do nothing
    on the knowledge's shape) are listed once, by their best-ranked trial.

    Raises:
        ValueError: The study has no complete trials.
    """
    from study.verify import distinct_front

    require_complete(study)
    objective_index(study)
    return distinct_front(study)


def pareto_rows(
    study: optuna.Study, select: str = "scalar", known: dict[str, Any] | None = None
) -> list[TrialRow]:
    """The Pareto front as table rows, sorted by the selection rule (first row = the selected trial).

    Args:
        study: A kdzero study.
        select: ``scalar`` or ``accuracy`` (see :func:`sort_rows`).
        known: Name -> DistillerSpec table for marking known distillers (default ``spaces.KNOWN_DISTILLERS``).
    """
    _check_select(select)
    index = objective_index(study)
    rows = [trial_row(t, index, known) for t in pareto_trials(study)]
    return sort_rows(rows, select)


def all_rows(study: optuna.Study, known: dict[str, Any] | None = None) -> list[TrialRow]:
    """Every COMPLETE trial as a row, in trial-number order (raises ``ValueError`` when there are none)."""
    index = objective_index(study)
    return [trial_row(t, index, known) for t in require_complete(study)]


def get_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` of the study, which must exist and be COMPLETE.

    Raises:
        ValueError: No such trial, or it is not COMPLETE (the message gives its state and rejection reason).
    """
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    if number not in by_number:
        span = f"0..{max(by_number)}" if by_number else "none"
        raise ValueError(
            f"trial {number} does not exist in study {study.study_name!r} (trial numbers: {span})"
        )
    trial = by_number[number]
    if trial.state != TrialState.COMPLETE:
        reason = trial.user_attrs.get("reject_reason")
        why = f", reject_reason={reason!r}" if reason else ""
        raise ValueError(
            f"trial {number} of study {study.study_name!r} is {trial.state.name}{why}; "
            "choose a COMPLETE trial"
        )
    return trial


def verified_rows(study: optuna.Study) -> list[dict[str, Any]] | None:
    """The study's ``kdzero_verified`` table (best first), or ``None`` before the verification finished."""
    from study.verify import verified

    return verified(study)


def select_choice(
    study: optuna.Study, select: str | None = None, trial: int | None = None
) -> FrozenTrial | None:
    """The study's choice: a trial, or ``None`` when the verified winner is plain CE training (no distiller).

    Args:
        study: A kdzero study.
        select: ``verified`` (the winner of the verification stage), ``scalar`` (lowest scalarised fitness,
            the geometric mean of the three objectives, on the Pareto front) or ``accuracy`` (highest proxy
            validation accuracy on the front);
            ``None``: ``verified`` when the study has been verified, else ``scalar``.
        trial: An explicit trial number; wins over ``select``.

    Raises:
        ValueError: Unknown rule, no complete trials, ``verified`` on a study without verification, or an
            explicit trial that is missing or not COMPLETE.
    """
    if select is not None:
        _check_select(select)
    if trial is not None:
        return get_trial(study, trial)
    if select in (None, "verified"):
        table = verified_rows(study)
        if table:
            number = table[0].get("trial")
            return None if number is None else get_trial(study, int(number))
        if select == "verified":
            raise ValueError(
                f"study {study.study_name!r} has no verified choice yet (user attr 'kdzero_verified'): let "
                "`python -m study search` finish its verification stage, or use --select scalar"
            )
        select = "scalar"
    best = pareto_rows(study, select, known={})[0]
    return get_trial(study, best.number)


def select_trial(study: optuna.Study, select: str | None = None, trial: int | None = None) -> FrozenTrial:
    """Pick a distiller trial to export or report (see :func:`select_choice`).

    When the verified winner is plain CE training, this returns the best verified distiller trial instead;
    :func:`select_choice` tells the two apart.

    Returns:
        The chosen COMPLETE trial.

    Raises:
        ValueError: Unknown rule, no complete trials, or an explicit trial that is missing or not COMPLETE.
    """
    choice = select_choice(study, select, trial)
    if choice is not None:
        return choice
    table = verified_rows(study) or []
    for row in table:
        if row.get("trial") is not None:
            return get_trial(study, int(row["trial"]))
    best = pareto_rows(study, "scalar", known={})[0]
    return get_trial(study, best.number)
