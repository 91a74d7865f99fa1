"""The companion study of a search: the CE reference and the verification of the final choice.

Trials that are not candidates live in a second study of the same storage, named ``<study>:verify``
(single objective: validation accuracy, maximised), so they are never NSGA-II parents, never on the Pareto
front, and count neither in shrinkage nor in the trial budget; optuna-dashboard lists it next to the search.
Each of its trials is a *job* enqueued with user attrs (``job``, ``role``, ``spec``, ``seed``, ``fraction``,
``source_trial``) and run by whichever worker pops it:

* ``role = "ce_reference"``: plain cross-entropy training at the proxy's fidelity and seed, enqueued when the
  search starts; every search trial stores ``gain_vs_ce`` = its proxy accuracy minus this one.
* ``role = "verify"``: after the search, the top-k distinct candidates (:func:`ranked_candidates`: the Pareto
  front first, then the next non-dominated fronts, each by scalarised fitness), the ``verify_known`` best
  known distillers (default 1) and the CE reference are trained again on the whole training split, with
  ``verify_seeds`` seeds other than the search's, in a successive-halving tournament over the real schedule
  (``search.verify_rungs``, :mod:`study.rungs`): every one to the first rung, then the better half (and
  always the best known distiller and CE) on to the next rung, continuing from the previous rung's
  checkpoint (a job's ``parent_job``; checkpoints in the study's artifact store, :mod:`study.artifacts`),
  up to the last rung. The best by mean validation accuracy at the last rung is the study's choice, stored
  as the study user attr ``kdzero_verified``; its runs there are the trained students (``kdzero_student``:
  the seed with the best validation accuracy).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from spaces import DistillerSpec
from study._optuna import storage_of
from study.config import StudyConfig
from study.fitness import non_dominated_fronts, scalarised
from study.rungs import job_name, parse_job, promote, rung_costs, rung_index
from study.sampler import trial_spec
from study.storage import with_retry

SIDE_SUFFIX = ":verify"
VERIFIED_ATTR = "kdzero_verified"
PLAN_ATTR = "kdzero_verify_plan"
STUDENT_ATTR = "kdzero_student"
LEGACY_RUNGS = (0.25,)
"""The rung plan of plans stored before rungs (one rung, the default ``verify_fraction`` of then)."""
REFERENCE_JOB = "ce_reference"
CE_FORMULA = "ce"
PLAN_RULE = 3
"""Version of the candidate rule a stored plan was made with; a plan of an older rule is made again (its
finished jobs are kept). 1: the Pareto front only (fewer than k candidates when the front is small); 2:
:func:`ranked_candidates`, topped up from the next fronts, each front by the sum of the objectives; 3: the
same, each front (and the best known distiller) by their geometric mean (``study.fitness.scalarise``)."""


def side_name(study_name: str) -> str:
    """Name of the companion study of ``study_name``."""
    return study_name + SIDE_SUFFIX


def open_side_study(storage: Any, study_name: str) -> optuna.Study:
    """Create or load the companion study (validation accuracy, maximised) of ``study_name``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _open_side(storage, study_name)


def _open_side(storage: Any, study_name: str) -> optuna.Study:
    side = with_retry(
        lambda: optuna.create_study(
            storage=storage,
            study_name=side_name(study_name),
            direction="maximize",
            load_if_exists=True,
        )
    )
    if side.metric_names is None:
        with_retry(lambda: side.set_metric_names(["val_acc"]))
    return side


def load_side_study(study: optuna.Study) -> optuna.Study | None:
    """The companion study of ``study`` in the same storage, or ``None`` if it has none (none is created)."""
    try:
        return optuna.load_study(study_name=side_name(study.study_name), storage=storage_of(study))
    except KeyError:
        return None


def jobs_by_name(side: optuna.Study) -> dict[str, list[FrozenTrial]]:
    """The companion study's trials by job name, oldest first.

    A verification job stored before rungs is named ``verify:<key>:<seed>``; it is found under that name (its
    plan's) and under its rung name (:func:`study.rungs.job_name`, with its stored fraction), so that a rung
    plan made for the same study reuses it.
    """
    out: dict[str, list[FrozenTrial]] = {}
    for t in side.get_trials(deepcopy=False):
        job = t.user_attrs.get("job")
        if not isinstance(job, str):
            continue
        out.setdefault(job, []).append(t)
        fraction = t.user_attrs.get("fraction")
        if t.user_attrs.get("role") == "verify" and "@" not in job and isinstance(fraction, (int, float)):
            _, key, seed = job.split(":", 2)
            out.setdefault(job_name(key, int(seed), float(fraction)), []).append(t)
    return out


def _enqueue(side: optuna.Study, attrs: dict[str, Any], existing: dict[str, list[FrozenTrial]]) -> bool:
    if attrs["job"] in existing:
        return False
    with_retry(lambda: side.enqueue_trial({}, user_attrs=attrs))
    existing[attrs["job"]] = []
    return True


def enqueue_reference(side: optuna.Study, cfg: StudyConfig) -> bool:
    """Enqueue the CE reference job once (proxy fidelity, the search's seed). Returns whether it was new."""
    attrs = {
        "job": REFERENCE_JOB,
        "role": "ce_reference",
        "spec": None,
        "formula": CE_FORMULA,
        "seed": cfg.experiment.student_train.seed,
        "fraction": None,
        "source_trial": None,
    }
    return _enqueue(side, attrs, jobs_by_name(side))


def reference(side: optuna.Study) -> FrozenTrial | None:
    """The COMPLETE CE reference trial, if it has run."""
    for t in jobs_by_name(side).get(REFERENCE_JOB, []):
        if t.state == TrialState.COMPLETE:
            return t
    return None


def waiting(side: optuna.Study) -> int:
    """Jobs not yet taken by a worker."""
    return len(side.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def running(side: optuna.Study) -> int:
    """Jobs being run now."""
    return len(side.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def verify_seeds(cfg: StudyConfig) -> list[int]:
    """Seeds of the verification runs: the ``verify_seeds`` seeds after the search's own."""
    base = cfg.experiment.student_train.seed
    return [base + 1 + i for i in range(cfg.search.verify_seeds)]


def _spec_or_none(trial: FrozenTrial) -> DistillerSpec | None:
    try:
        return trial_spec(trial)
    except ValueError:
        return None


def distinct_front(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front, best scalarised first, one trial per distinct distiller (canonical form)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    return list(_distinct(study.best_trials, set()))


def _distinct(trials: Iterable[FrozenTrial], seen: set[str]) -> Iterator[FrozenTrial]:
    """``trials`` best scalarised first, skipping distillers (canonical form) already in ``seen``."""
    for t in sorted(trials, key=lambda t: (scalarised(t), t.number)):
        spec = _spec_or_none(t)
        key = spec.canonical_key() if spec is not None else f"#{t.number}"
        if key not in seen:
            seen.add(key)
            yield t


def ranked_candidates(study: optuna.Study, limit: int) -> list[FrozenTrial]:
    """The ``limit`` best distinct complete trials: Pareto front first, then the next fronts.

    Trials are taken front by front (non-domination rank of the three objectives, as NSGA-II ranks them),
    by scalarised fitness within a front, one per distinct distiller (canonical form), until ``limit`` are
    found or no complete trial is left. When the search converges its front can hold fewer than ``limit``
    distinct distillers; the next fronts fill the verification up instead of leaving it short.
    """
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and len(t.values) == len(study.directions)
    ]
    signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    points = [[s * v for s, v in zip(signs, t.values)] for t in complete]
    seen: set[str] = set()
    out: list[FrozenTrial] = []
    for front in non_dominated_fronts(points):
        out.extend(itertools.islice(_distinct((complete[i] for i in front), seen), limit - len(out)))
        if len(out) >= limit:
            break
    return out


def candidates(study: optuna.Study, cfg: StudyConfig) -> list[tuple[int | None, DistillerSpec | None]]:
    """What the verification trains: top-k distinct trials, the best known distiller(s), the CE reference.

    The top-k are :func:`ranked_candidates` (``k = search.verify_top``); the known distillers are the
    ``search.verify_known`` best by scalarised fitness among those of generation 0 that completed their
    proxy (default 1), each unless it is already one of the top-k.

    Returns:
        ``[(trial number, spec), ...]``; the CE reference is ``(None, None)``.
    """
    out: list[tuple[int | None, DistillerSpec | None]] = []
    keys: set[str] = set()
    for t in ranked_candidates(study, cfg.search.verify_top):
        spec = _spec_or_none(t)
        if spec is not None:
            out.append((t.number, spec))
            keys.add(spec.canonical_key())
    known = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("known") and _spec_or_none(t) is not None
    ]
    # the ``verify_known`` best known distillers that completed their proxy, best scalarised first, one per
    # distinct distiller; one already among the candidates takes its place in the count
    for best in itertools.islice(_distinct(known, set()), cfg.search.verify_known):
        spec = _spec_or_none(best)
        if spec is not None and spec.canonical_key() not in keys:  # _distinct: once among the known
            out.append((best.number, spec))
    out.append((None, None))
    return out


def plan_verification(study: optuna.Study, side: optuna.Study, cfg: StudyConfig) -> list[str]:
    """Enqueue the first rung's verification jobs (idempotent: jobs already in the companion study are kept).

    A plan belongs to the finished search trials it was made from, to the candidate rule (:data:`PLAN_RULE`),
    to the verification's breadth and to its rung plan: a resumed search with a larger target, a broader
    verification or another rung plan plans again when it is over (runs verified before keep their finished
    jobs). Later rungs are added by :func:`advance_verification`.

    Returns:
        The job names of the plan so far, also stored as the study user attr ``kdzero_verify_plan``
        (``{"finished", "rule", "breadth": [top, seeds], "rungs", "keep", "jobs": [...]}``).
    """
    current = planned_jobs(study, cfg)
    if current is not None:
        return current
    done = _finished(study)
    existing = jobs_by_name(side)
    jobs: list[str] = []
    rungs = [float(f) for f in cfg.search.verify_rungs]
    known_names = _known_names(study)
    for number, spec in candidates(study, cfg):
        key = "ce" if number is None else str(number)
        for seed in verify_seeds(cfg):
            name = job_name(key, seed, rungs[0])
            jobs.append(name)
            _enqueue(side, _job_attrs(name, number, spec, seed, rungs, 0, known_names), existing)
    plan = {
        "finished": done,
        "rule": PLAN_RULE,
        "breadth": _breadth(cfg),
        "rungs": rungs,
        "keep": cfg.search.verify_keep,
        "jobs": jobs,
    }
    with_retry(lambda: study.set_user_attr(PLAN_ATTR, plan))
    return jobs


def _job_attrs(
    name: str,
    number: int | None,
    spec: DistillerSpec | None,
    seed: int,
    rungs: list[float],
    rung: int,
    known_names: Mapping[int, str],
    parent: str | None = None,
) -> dict[str, Any]:
    return {
        "job": name,
        "role": "verify",
        "spec": spec.to_json() if spec is not None else None,
        "formula": spec.formula() if spec is not None else CE_FORMULA,
        "seed": seed,
        "fraction": rungs[rung],
        "rung": rung,
        "rungs": rungs,
        "source_trial": number,
        "known": known_names.get(number) if number is not None else None,
        "parent_job": parent,
    }


def _known_names(study: optuna.Study) -> dict[int, str]:
    """``{trial number: known distiller name}`` of generation 0's known distillers."""
    return {
        t.number: str(t.user_attrs["known"])
        for t in study.get_trials(deepcopy=False)
        if isinstance(t.user_attrs.get("known"), str)
    }


def advance_verification(study: optuna.Study, side: optuna.Study, cfg: StudyConfig) -> list[str]:
    """Enqueue the next rung when the current one is finished (:func:`study.rungs.promote` picks who goes on).

    Idempotent: every worker that finds the rung finished computes the same promotion, and jobs already in
    the companion study are not enqueued again.

    Returns:
        The next rung's job names (added to the stored plan), or ``[]`` when the plan is not finished yet or
        its last rung is done.
    """
    plan_jobs = planned_jobs(study, cfg)
    plan = study.user_attrs.get(PLAN_ATTR)
    if plan_jobs is None or not isinstance(plan, dict) or not plan_done(side, plan_jobs):
        return []
    rungs = [float(f) for f in plan.get("rungs", LEGACY_RUNGS)]
    by_rung = _by_rung(plan_jobs, rungs)
    last = max(by_rung)
    if last + 1 >= len(rungs):
        return []
    known_names = _known_names(study)
    rows = _rung_rows(side, by_rung[last], known_names)
    promoted = set(promote(rows, plan.get("keep")))
    existing = jobs_by_name(side)
    new: list[str] = []
    for name in by_rung[last]:
        parsed = parse_job(name)
        parent = next((t for t in existing.get(name, []) if t.state == TrialState.COMPLETE), None)
        if parsed is None or parsed[0] not in promoted or parent is None:
            continue
        attrs = parent.user_attrs
        spec = DistillerSpec.from_json(attrs["spec"]) if attrs.get("spec") else None
        child = job_name(parsed[0], int(parsed[1]), rungs[last + 1])
        new.append(child)
        _enqueue(
            side,
            _job_attrs(
                child, attrs.get("source_trial"), spec, int(parsed[1]), rungs, last + 1, known_names, name
            ),
            existing,
        )
    if new:
        updated = {**plan, "jobs": [*plan_jobs, *new]}
        with_retry(lambda: study.set_user_attr(PLAN_ATTR, updated))
    return new


def _by_rung(jobs: Sequence[str], rungs: Sequence[float]) -> dict[int, list[str]]:
    """The plan's jobs grouped by rung index (plan order kept)."""
    out: dict[int, list[str]] = {}
    for name in jobs:
        parsed = parse_job(name)
        if parsed is not None:
            out.setdefault(rung_index(rungs, parsed[2]), []).append(name)
    return out or {0: []}


def _rung_rows(
    side: optuna.Study, jobs: Sequence[str], known_names: Mapping[int, str]
) -> list[dict[str, Any]]:
    """One row per distiller of one rung, in plan order, for :func:`study.rungs.promote`.

    Which rows are known distillers is read from the search's trials (``known_names``), not only from the
    jobs: jobs stored before the rungs do not say.
    """
    return [
        {**row, "ce": row["trial"] is None, "known": row.get("known") or known_names.get(row["trial"])}
        for row in _table(side, jobs)
    ]


def verification_cost(study: optuna.Study, side: optuna.Study) -> list[dict[str, Any]] | None:
    """The verification's cost so far, per rung, in full-schedule runs (:func:`study.rungs.rung_costs`).

    ``None`` before a plan exists. Jobs answered from another run (``same_training_as``) count what that
    run trained.
    """
    plan = study.user_attrs.get(PLAN_ATTR)
    if not isinstance(plan, dict) or not isinstance(plan.get("jobs"), list):
        return None
    rungs = [float(f) for f in plan.get("rungs", LEGACY_RUNGS)]
    jobs = jobs_by_name(side)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    attrs = [
        t.user_attrs
        for name in plan["jobs"]
        for t in jobs.get(name, [])[:]
        if t.state in finished and not t.user_attrs.get("duplicate_of")
    ]
    return rung_costs(attrs, rungs)


def note_plan_breadth(study: optuna.Study, cfg: StudyConfig) -> None:
    """Record ``cfg``'s breadth in a stored plan that has none (made before plans recorded it).

    Called with the configuration the plan was made under, before a rerun stores another one, so that a
    broader verification asked of an older study is seen as such and planned again.
    """
    plan = study.user_attrs.get(PLAN_ATTR)
    if isinstance(plan, dict) and "breadth" not in plan:
        with_retry(lambda: study.set_user_attr(PLAN_ATTR, {**plan, "breadth": _breadth(cfg)}))


def _breadth(cfg: StudyConfig) -> list[int]:
    """What a plan verifies, besides the trials it was made from: ``[verify_top, verify_seeds]``.

    ``verify_known`` is appended when it is not the default 1, so that plans stored before it existed (and
    every plan of the default) keep their breadth and are not planned again.
    """
    breadth = [cfg.search.verify_top, cfg.search.verify_seeds]
    return breadth if cfg.search.verify_known == 1 else [*breadth, cfg.search.verify_known]


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def planned_jobs(study: optuna.Study, cfg: StudyConfig | None = None) -> list[str] | None:
    """The job names of the current verification plan.

    ``None`` when the study is not planned yet, or was planned for fewer finished trials or by an older
    candidate rule (:data:`PLAN_RULE`), or (given ``cfg``) for another ``verify_top`` / ``verify_seeds`` /
    ``verify_known`` / ``verify_rungs`` / ``verify_keep``: a finished search rerun with another verification
    plans again and keeps the runs it already has.
    """
    plan = study.user_attrs.get(PLAN_ATTR)
    if not isinstance(plan, dict) or not isinstance(plan.get("jobs"), list):
        return None
    if plan.get("finished") != _finished(study) or plan.get("rule", 1) != PLAN_RULE:
        return None
    if cfg is not None:
        if plan.get("breadth", _breadth(cfg)) != _breadth(cfg):
            return None
        rungs = [float(f) for f in plan.get("rungs", LEGACY_RUNGS)]
        if rungs != [float(f) for f in cfg.search.verify_rungs] or plan.get("keep") != cfg.search.verify_keep:
            return None
    return list(plan["jobs"])


def plan_done(side: optuna.Study, plan: Sequence[str]) -> bool:
    """Whether every planned job has a finished (COMPLETE or PRUNED) trial."""
    return finished_jobs(side, plan) == len(plan)


def finished_jobs(side: optuna.Study, plan: Sequence[str]) -> int:
    """How many planned jobs have a finished (COMPLETE or PRUNED) trial, a duplicate's aside."""
    jobs = jobs_by_name(side)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    return sum(
        any(t.state in finished and "duplicate_of" not in t.user_attrs for t in jobs.get(name, []))
        for name in plan
    )


def _table(side: optuna.Study, plan: Sequence[str]) -> list[dict[str, Any]]:
    """One row per distiller of ``plan``'s jobs (one rung's, or a legacy plan's), in plan order.

    A row is ``{"key", "trial", "formula", "spec", "known", "fraction", "seeds", "val_acc", "val_acc_std",
    "seed_val_acc", "rejected", "jobs"}``: ``val_acc`` is the mean over the seeds whose run completed,
    ``val_acc_std`` their sample standard deviation (ddof 1; 0 with one seed), ``seed_val_acc`` each of those
    runs' accuracy in the order of ``seeds``, ``jobs`` ``{seed: job name}`` of those runs.
    """
    jobs = jobs_by_name(side)
    groups: dict[str, dict[str, Any]] = {}
    for name in plan:
        trials = jobs.get(name, [])
        done = next((t for t in trials if t.state == TrialState.COMPLETE), None)
        pruned = next(
            (t for t in trials if t.state == TrialState.PRUNED and not t.user_attrs.get("duplicate_of")), None
        )
        first = done or pruned or (trials[0] if trials else None)
        if first is None:
            continue
        key = name.split(":")[1]
        g = groups.setdefault(
            key,
            {
                "key": key,
                "trial": first.user_attrs.get("source_trial"),
                "formula": first.user_attrs.get("formula"),
                "spec": first.user_attrs.get("spec"),
                "known": first.user_attrs.get("known"),
                "fraction": first.user_attrs.get("fraction"),
                "seeds": [],
                "accs": [],
                "rejected": 0,
                "jobs": {},
            },
        )
        if done is not None and done.value is not None:
            g["seeds"].append(done.user_attrs.get("seed"))
            g["accs"].append(float(done.value))
            g["jobs"][str(done.user_attrs.get("seed"))] = name
        elif pruned is not None:
            g["rejected"] += 1
    rows = []
    for g in groups.values():
        accs = g.pop("accs")
        g["val_acc"] = statistics.fmean(accs) if accs else None
        g["val_acc_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
        g["seed_val_acc"] = accs
        rows.append(g)
    return rows


def verified_table(side: optuna.Study, plan: Sequence[str]) -> list[dict[str, Any]]:
    """The verification's result, best first: one row per distiller, at the last rung it ran.

    Rows are those of :func:`_table` at the row's last rung, with ``rung`` (its index), ``fraction`` and
    ``history`` (``[{"fraction", "val_acc", "seed_val_acc", "seeds", "rejected"}, ...]``, one per rung it
    ran). Order: the rows of the last rung reached first, then by the rung each reached (later first); within
    a rung, a row with a rejected (diverged) run after the others, then by mean validation accuracy.
    """
    parsed = [parse_job(n) for n in plan]
    fractions = sorted({p[2] for p in parsed if p is not None})
    by_rung = {
        f: [n for n, p in zip(plan, parsed, strict=True) if p is not None and p[2] == f] for f in fractions
    }
    if not by_rung:  # a plan of names this module does not write
        by_rung = {0.0: list(plan)}
    rows: dict[str, dict[str, Any]] = {}
    for i, f in enumerate(sorted(by_rung)):
        for row in _table(side, by_rung[f]):
            step = {k: row[k] for k in ("fraction", "val_acc", "seed_val_acc", "seeds", "rejected")}
            history = [*rows.get(row["key"], {}).get("history", []), step]
            rows[row["key"]] = {**row, "rung": i, "history": history}
    table = list(rows.values())
    table.sort(
        key=lambda r: (-r["rung"], r["rejected"] > 0, -(r["val_acc"] if r["val_acc"] is not None else -1.0))
    )
    return table


def finish_verification(study: optuna.Study, side: optuna.Study) -> list[dict[str, Any]] | None:
    """Write ``kdzero_verified`` (and ``kdzero_student``) when the plan is done; ``None`` while jobs remain.

    ``kdzero_student`` names the choice's trained student: the run of the first row at its last rung with the
    best validation accuracy over the seeds (``{"key", "formula", "seed", "job", "fraction", "val_acc",
    "checkpoint"}``, ``checkpoint`` the artifact record of :mod:`study.artifacts`); none when that row has no
    run with a checkpoint.
    """
    plan = planned_jobs(study)
    if plan is None or not plan_done(side, plan):
        return None
    table = verified_table(side, plan)
    with_retry(lambda: study.set_user_attr(VERIFIED_ATTR, json.dumps(table)))
    student = chosen_student(side, table)
    if student is not None:
        with_retry(lambda: study.set_user_attr(STUDENT_ATTR, student))
    return table


def chosen_student(side: optuna.Study, table: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The trained student of the table's choice (see :func:`finish_verification`), or ``None``."""
    if not table or not table[0].get("jobs"):
        return None
    row, jobs = table[0], jobs_by_name(side)
    best: dict[str, Any] | None = None
    for seed, name in row["jobs"].items():
        done = next((t for t in jobs.get(name, []) if t.state == TrialState.COMPLETE), None)
        record = done.user_attrs.get("checkpoint") if done is not None else None
        if done is None or not isinstance(record, dict) or done.value is None:
            continue
        if best is None or float(done.value) > best["val_acc"]:
            best = {
                "key": row["key"],
                "formula": row["formula"],
                "spec": row["spec"],
                "seed": int(seed),
                "job": name,
                "trial": done.number,
                "fraction": row["fraction"],
                "val_acc": float(done.value),
                "checkpoint": record,
            }
    return best


def student(study: optuna.Study) -> dict[str, Any] | None:
    """The stored ``kdzero_student`` record of a study, or ``None``."""
    value = study.user_attrs.get(STUDENT_ATTR)
    return value if isinstance(value, dict) else None


class PairedDiff(NamedTuple):
    """Mean of per-seed differences ``a_s - b_s`` over the seeds both ran, and its standard error."""

    mean: float  # nan when n = 0
    se: float  # std(diffs, ddof=1) / sqrt(n); nan when n < 2
    n: int


def paired_by_seed(a: Mapping[Any, float], b: Mapping[Any, float]) -> PairedDiff:
    """Paired difference ``a - b`` over the seeds (keys) both have: mean, standard error and count."""
    diffs = [a[s] - b[s] for s in a if s in b]
    n = len(diffs)
    if n == 0:
        return PairedDiff(math.nan, math.nan, 0)
    se = statistics.stdev(diffs) / math.sqrt(n) if n >= 2 else math.nan
    return PairedDiff(statistics.fmean(diffs), se, n)


def seed_accuracies(row: Mapping[str, Any]) -> dict[Any, float]:
    """``{seed: val_acc}`` of a :func:`verified_table` row; empty without ``seed_val_acc``."""
    accs, seeds = row.get("seed_val_acc"), row.get("seeds") or []
    if not isinstance(accs, list) or len(accs) != len(seeds):
        return {}
    return dict(zip(seeds, accs, strict=True))


def verified(study: optuna.Study) -> list[dict[str, Any]] | None:
    """The stored ``kdzero_verified`` table of a study, or ``None``."""
    raw = study.user_attrs.get(VERIFIED_ATTR)
    if raw is None:
        return None
    try:
        table = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return None
    return table if isinstance(table, list) else None
