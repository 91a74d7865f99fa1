"""The verification's successive-halving rule: who goes on from one rung to the next, and what rungs cost.

A rung is a fraction of the full schedule (``search.verify_rungs``). Every verified distiller runs the
first rung on every verification seed; after each rung, :func:`promote` picks who continues, from their
checkpoints, to the next one. Pure functions of the rung's result rows (no Optuna, no files), so that
every worker that finds a rung finished computes the same promotion.

The rule, for the rows of one rung (one per distiller, plain CE included, in plan order: the ranked
candidates, the known distillers, CE):

1. A distiller with a rejected run at this rung (it diverged, or failed) stops here: the diverged seed has
   no checkpoint to continue, and a run that diverges on one seed is not a choice. This holds for the best
   known distiller and CE as well; the report then names the rung where they stopped.
2. Of the others (CE aside), the ``keep`` best by mean validation accuracy over the seeds go on (``None``:
   ``ceil(n / 2)`` of the ``n`` distillers that ran the rung, rejected ones included in ``n``). Equal means
   are broken by plan order: the earlier planned (the better ranked by the search) goes on.
3. The best known distiller of this rung (by the same order) and plain CE go on as well, whatever their
   rank, so that the last rung holds the choice, the best known distiller and CE on the same seeds: the
   margins are computed from those runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def job_name(key: str, seed: int, fraction: float) -> str:
    """Name of a verification job: distiller key (source trial number or ``ce``), seed and rung fraction."""
    return f"verify:{key}:{seed}@{fraction:g}"


def parse_job(name: str) -> tuple[str, str, float] | None:
    """``(key, seed, fraction)`` of a :func:`job_name`; ``None`` for another job (the CE reference)."""
    parts = name.split(":")
    if len(parts) != 3 or parts[0] != "verify" or "@" not in parts[2]:
        return None
    seed, _, fraction = parts[2].partition("@")
    try:
        return parts[1], seed, float(fraction)
    except ValueError:
        return None


def rung_index(rungs: Sequence[float], fraction: float) -> int:
    """Position of ``fraction`` in the rung plan (by tolerance: names carry ``%g`` of the fraction)."""
    for i, f in enumerate(rungs):
        if math.isclose(f, fraction, rel_tol=1e-6):
            return i
    raise ValueError(f"fraction {fraction!r} is not a rung of {list(rungs)}")


def promote(rows: Sequence[Mapping[str, Any]], keep: int | None) -> list[str]:
    """The keys of the distillers that go on to the next rung (the module's rule), in plan order.

    Args:
        rows: One per distiller of the rung, in plan order: ``{"key", "val_acc", "rejected", "known", "ce"}``
            (``val_acc``: mean over the seeds, ``None`` when no run completed; ``known``: the known
            distiller's name or ``None``; ``ce``: the plain CE reference).
        keep: Distillers (CE aside) that go on by rank; ``None``: ``ceil(n / 2)``.

    Returns:
        Keys of the promoted rows, in plan order.
    """
    order = {str(r["key"]): i for i, r in enumerate(rows)}
    alive = [r for r in rows if not r.get("rejected") and r.get("val_acc") is not None]
    distillers = [r for r in rows if not r.get("ce")]
    k = math.ceil(len(distillers) / 2) if keep is None else keep
    ranked = sorted(
        (r for r in alive if not r.get("ce")), key=lambda r: (-float(r["val_acc"]), order[str(r["key"])])
    )
    chosen = {str(r["key"]) for r in ranked[:k]}
    known = [r for r in ranked if r.get("known")]
    if known:
        chosen.add(str(known[0]["key"]))
    chosen.update(str(r["key"]) for r in alive if r.get("ce"))
    return sorted(chosen, key=order.__getitem__)


def trained_fraction(fraction: float, steps: int, resumed_from: int) -> float:
    """Share of the full schedule a job trained: its rung's ``fraction`` less what its checkpoint held."""
    if steps <= 0:
        return 0.0
    return fraction * (steps - resumed_from) / steps


def rung_costs(jobs: Sequence[Mapping[str, Any]], rungs: Sequence[float]) -> list[dict[str, Any]]:
    """The verification's cost per rung, in full-schedule runs, from its finished jobs' user attrs.

    Args:
        jobs: User attrs of the finished verification jobs (``fraction``, ``trained_fraction`` where recorded,
            else the whole ``fraction``: a job of before continuation, or one that trained from scratch;
            ``cpu_s``).
        rungs: The rung plan.

    Returns:
        One ``{"fraction", "jobs", "full_runs", "cpu_s"}`` per rung; ``full_runs`` is the sum of the trained
        fractions (a run continued from 0.25 to 0.5 counts 0.25).
    """
    out = [{"fraction": float(f), "jobs": 0, "full_runs": 0.0, "cpu_s": 0.0} for f in rungs]
    for attrs in jobs:
        fraction = attrs.get("fraction")
        if not isinstance(fraction, (int, float)):
            continue
        try:
            row = out[rung_index(rungs, float(fraction))]
        except ValueError:
            continue
        row["jobs"] += 1
        row["full_runs"] += float(attrs.get("trained_fraction", fraction))
        row["cpu_s"] += float(attrs.get("cpu_s") or 0.0)
    return out
