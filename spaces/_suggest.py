"""Optuna genes of a spec: ``suggest_spec`` (live trial), ``spec_to_params`` / ``spec_from_params``.

Gene names are stable (they are stored in study databases) and ALL are suggested in EVERY trial, each as a
categorical with fixed choices, so NSGA-II crossover can inherit every gene:

    knowledge, t1, t2, t3 (each: every op of TRANSFORMS), distance, calibration, weight (WEIGHTS), tau
    (TEMPERATURES).

``hard`` is suggested for every knowledge kind (the choices may not change between trials); on non-logits
knowledge ``build_distiller`` raises ``ValueError`` and the study records the trial as rejected (``invalid``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ._calibrations import CALIBRATIONS
from ._distances import DISTANCES, LOGITS_ONLY_DISTANCES
from ._spec import KNOWLEDGE, TEMPERATURES, WEIGHTS, DistillerSpec, canonical_chain
from ._transforms import TRANSFORMS

GENES: tuple[str, ...] = ("knowledge", "t1", "t2", "t3", "distance", "calibration", "weight", "tau")
"""Optuna parameter names of a spec, in order."""


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` that :func:`suggest_spec` uses."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        """Suggest one of ``choices`` for parameter ``name``."""


def suggest_spec(trial: TrialLike, knowledge: Sequence[str] = KNOWLEDGE) -> DistillerSpec:
    """Sample a spec with Optuna categorical suggestions for every gene.

    Args:
        trial: An ``optuna.Trial`` (anything with ``suggest_categorical``).
        knowledge: Knowledge kinds allowed; pass the same tuple in every trial of a study (its sorted order is
            the categorical's choice list).

    Returns:
        The sampled spec (which may be invalid to build, e.g. ``hard`` on feature knowledge).
    """
    kinds = sorted(set(knowledge)) if not isinstance(knowledge, str) else [knowledge]
    if not kinds:
        raise ValueError(f"knowledge must name at least one of {list(KNOWLEDGE)}, got {knowledge!r}")
    for k in kinds:
        if k not in KNOWLEDGE:
            raise ValueError(f"knowledge: unknown knowledge {k!r}; valid choices are {list(KNOWLEDGE)}")
    ops = list(TRANSFORMS.names())
    return DistillerSpec(
        knowledge=trial.suggest_categorical("knowledge", kinds),
        transforms=(
            trial.suggest_categorical("t1", ops),
            trial.suggest_categorical("t2", ops),
            trial.suggest_categorical("t3", ops),
        ),
        distance=trial.suggest_categorical("distance", list(DISTANCES.names())),
        calibration=trial.suggest_categorical("calibration", list(CALIBRATIONS.names())),
        weight=trial.suggest_categorical("weight", list(WEIGHTS)),
        tau=trial.suggest_categorical("tau", list(TEMPERATURES)),
    )


def spec_to_params(spec: DistillerSpec) -> dict[str, Any]:
    """The Optuna params of ``spec`` (for ``study.enqueue_trial``), keyed by :data:`GENES`.

    Args:
        spec: The spec.

    Returns:
        ``{"knowledge": ..., "t1": ..., ..., "tau": ...}``.
    """
    t1, t2, t3 = spec.transforms
    return {
        "knowledge": spec.knowledge,
        "t1": t1,
        "t2": t2,
        "t3": t3,
        "distance": spec.distance,
        "calibration": spec.calibration,
        "weight": spec.weight,
        "tau": spec.tau,
    }


def spec_from_params(params: Mapping[str, Any]) -> DistillerSpec:
    """Rebuild a spec from stored params (``FrozenTrial.params``); keys other than :data:`GENES` are ignored.

    Args:
        params: Mapping holding every gene of :data:`GENES`.

    Returns:
        The validated spec.

    Raises:
        ValueError: If a gene is missing (named) or a value is invalid.
    """
    missing = [g for g in GENES if g not in params]
    if missing:
        raise ValueError(f"params lack the gene(s) {missing}; a spec needs {list(GENES)}")
    return DistillerSpec(
        knowledge=params["knowledge"],
        transforms=(params["t1"], params["t2"], params["t3"]),
        distance=params["distance"],
        calibration=params["calibration"],
        weight=params["weight"],
        tau=params["tau"],
    )


@functools.cache
def distinct_chains(knowledge: str, distance: str | None = None) -> int:
    """Number of distinct transform chains (canonical forms) of three slots on ``knowledge``.

    Args:
        knowledge: Knowledge kind.
        distance: With ``kl`` / ``hard``, chains that differ only by the softmax the distance applies itself
            count once too; ``None`` (or another distance): no distribution rule (:func:`canonical_chain`:
            identity ops, repeats of an idempotent op and rectifiers of a non-negative output never count).
    """
    if knowledge not in KNOWLEDGE:
        raise ValueError(f"knowledge: unknown knowledge {knowledge!r}; valid choices are {list(KNOWLEDGE)}")
    ops = TRANSFORMS.names()
    seen = set()
    for t1 in ops:
        for t2 in ops:
            for t3 in ops:
                chain = (t1, t2, t3)
                seen.add(canonical_chain(knowledge, chain, distance))
    return len(seen)


def space_size(knowledge: Sequence[str] = KNOWLEDGE, *, distinct: bool = False) -> int:
    """Number of VALID gene combinations (``hard`` only counts on logits), or of distinct distillers.

    Args:
        knowledge: Knowledge kinds included.
        distinct: Count distinct candidates instead: chains that are equal in canonical form
            (:meth:`DistillerSpec.canonical`: identity ops, idempotent repeats and rectifiers of a
            non-negative output removed, and for ``kl`` / ``hard`` the softmax the distance applies itself)
            count once.

    Returns:
        sum over kinds and their valid distances of (``len(TRANSFORMS) ** 3``, or the distinct chains) *
        ``len(CALIBRATIONS) * len(WEIGHTS) * len(TEMPERATURES)``.
    """
    total = 0
    for k in sorted(set(knowledge)):
        if k not in KNOWLEDGE:
            raise ValueError(f"knowledge: unknown knowledge {k!r}; valid choices are {list(KNOWLEDGE)}")
        distances = [d for d in DISTANCES if k == "logits" or d not in LOGITS_ONLY_DISTANCES]
        if distinct:
            chains = sum(distinct_chains(k, d) for d in distances)
        else:
            chains = len(TRANSFORMS) ** 3 * len(distances)
        total += chains * len(CALIBRATIONS) * len(WEIGHTS) * len(TEMPERATURES)
    return total
