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
  known distillers (default 1) and the CE reference are trained again for ``verify_fraction`` of the full
  schedule on the whole training split, with ``verify_seeds`` seeds other than the search's. The best by
  mean validation accuracy is the study's choice, stored as the study user attr ``kdzero_verified``.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from spaces import DistillerSpec
from study._optuna import storage_of
from study.config import StudyConfig
from study.fitness import non_dominated_fronts, scalarised
from study.sampler import trial_spec
from study.storage import with_retry

SIDE_SUFFIX = ":verify"
VERIFIED_ATTR = "kdzero_verified"
PLAN_ATTR = "kdzero_verify_plan"
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


def _jobs(side: optuna.Study) -> dict[str, list[FrozenTrial]]:
    out: dict[str, list[FrozenTrial]] = {}
    for t in side.get_trials(deepcopy=False):
        job = t.user_attrs.get("job")
        if isinstance(job, str):
            out.setdefault(job, []).append(t)
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
    return _enqueue(side, attrs, _jobs(side))


def reference(side: optuna.Study) -> FrozenTrial | None:
    """The COMPLETE CE reference trial, if it has run."""
    for t in _jobs(side).get(REFERENCE_JOB, []):
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
    """Enqueue the verification jobs (idempotent: jobs already in the companion study are kept).

    A plan belongs to the finished search trials it was made from and to the candidate rule
    (:data:`PLAN_RULE`): a resumed search with a larger target, or a study planned by an older rule, plans
    again when it is over (candidates verified before keep their finished jobs).

    Returns:
        The job names of the plan, also stored as the study user attr ``kdzero_verify_plan``
        (``{"finished": <finished trials>, "rule": PLAN_RULE, "breadth": [top, seeds], "jobs": [...]}``).
    """
    current = planned_jobs(study, cfg)
    if current is not None:
        return current
    done = _finished(study)
    existing = _jobs(side)
    jobs: list[str] = []
    fraction = cfg.search.verify_fraction
    for number, spec in candidates(study, cfg):
        for seed in verify_seeds(cfg):
            name = f"verify:{'ce' if number is None else number}:{seed}"
            jobs.append(name)
            _enqueue(
                side,
                {
                    "job": name,
                    "role": "verify",
                    "spec": spec.to_json() if spec is not None else None,
                    "formula": spec.formula() if spec is not None else CE_FORMULA,
                    "seed": seed,
                    "fraction": fraction,
                    "source_trial": number,
                },
                existing,
            )
    plan = {"finished": done, "rule": PLAN_RULE, "breadth": _breadth(cfg), "jobs": jobs}
    with_retry(lambda: study.set_user_attr(PLAN_ATTR, plan))
    return jobs


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
    ``verify_known``: a finished search rerun with a broader verification plans again and keeps the runs it
    already has.
    """
    plan = study.user_attrs.get(PLAN_ATTR)
    if not isinstance(plan, dict) or not isinstance(plan.get("jobs"), list):
        return None
    if plan.get("finished") != _finished(study) or plan.get("rule", 1) != PLAN_RULE:
        return None
    if cfg is not None and plan.get("breadth", _breadth(cfg)) != _breadth(cfg):
        return None
    return list(plan["jobs"])


def plan_done(side: optuna.Study, plan: Sequence[str]) -> bool:
    """Whether every planned job has a finished (COMPLETE or PRUNED) trial."""
    return finished_jobs(side, plan) == len(plan)


def finished_jobs(side: optuna.Study, plan: Sequence[str]) -> int:
    """How many planned jobs have a finished (COMPLETE or PRUNED) trial."""
    jobs = _jobs(side)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    return sum(any(t.state in finished for t in jobs.get(name, [])) for name in plan)


def verified_table(side: optuna.Study, plan: Sequence[str]) -> list[dict[str, Any]]:
    """The verification's result, best first: one row per candidate.

    A row is ``{"trial", "formula", "spec", "seeds", "val_acc", "val_acc_std", "seed_val_acc", "rejected"}``.
    ``val_acc`` is the mean over the seeds whose run completed, ``val_acc_std`` their sample standard
    deviation (ddof 1; 0 with one seed), ``seed_val_acc`` each of those runs' accuracy, in the order of
    ``seeds`` (so that candidates can be compared seed by seed); a candidate with a rejected (diverged) run
    ranks after the others.
    """
    jobs = _jobs(side)
    groups: dict[str, dict[str, Any]] = {}
    for name in plan:
        trials = jobs.get(name, [])
        done = next((t for t in trials if t.state == TrialState.COMPLETE), None)
        pruned = next((t for t in trials if t.state == TrialState.PRUNED), None)
        first = done or pruned or (trials[0] if trials else None)
        if first is None:
            continue
        key = name.split(":")[1]
        g = groups.setdefault(
            key,
            {
                "trial": first.user_attrs.get("source_trial"),
                "formula": first.user_attrs.get("formula"),
                "spec": first.user_attrs.get("spec"),
                "seeds": [],
                "accs": [],
                "rejected": 0,
            },
        )
        if done is not None and done.value is not None:
            g["seeds"].append(done.user_attrs.get("seed"))
            g["accs"].append(float(done.value))
        elif pruned is not None:
            g["rejected"] += 1
    rows = []
    for g in groups.values():
        accs = g.pop("accs")
        g["val_acc"] = statistics.fmean(accs) if accs else None
        g["val_acc_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
        g["seed_val_acc"] = accs
        rows.append(g)
    rows.sort(key=lambda r: (r["rejected"] > 0, -(r["val_acc"] if r["val_acc"] is not None else -1.0)))
    return rows


def finish_verification(study: optuna.Study, side: optuna.Study) -> list[dict[str, Any]] | None:
    """Write ``kdzero_verified`` when the plan is done; returns the table (``None`` while jobs remain)."""
    plan = planned_jobs(study)
    if plan is None or not plan_done(side, plan):
        return None
    table = verified_table(side, plan)
    with_retry(lambda: study.set_user_attr(VERIFIED_ATTR, json.dumps(table)))
    return table


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


class SideObjective:
    """Runs one job of the companion study with the worker's evaluator.

    An evaluator may answer a job with a run it has already made (the same distiller up to its canonical
    form, seed, fraction, experiment and teacher; ``benchmarks.table`` does so across the searches of one
    setting): its result then carries ``reused = {"source": str, "cpu_s": float, "wall_s": float}``, and
    the job stores ``same_training_as`` = the source and that run's cost, so the search's reported cost is
    what training the job costs.

    Args:
        evaluator: ``trainers.ProxyEvaluator`` (or a fake with ``evaluate(spec, seed=, fraction=)``).
    """

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator

    def __call__(self, trial: optuna.Trial) -> float:
        """Train the job's run; rejections end the job PRUNED with the reason."""
        from study.objective import record_cost
        from study.pruner import error_detail, record_rejection
        from study.storage import is_transient_error
        from trainers import Rejected

        start, cpu0 = time.perf_counter(), time.process_time()
        attrs = trial.user_attrs
        if "job" not in attrs:  # another worker popped the job first and Optuna made an empty trial
            trial.set_user_attr("stray", True)
            raise optuna.TrialPruned("no job: another worker took it")
        spec = DistillerSpec.from_json(attrs["spec"]) if attrs.get("spec") else None
        try:
            fitness = self.evaluator.evaluate(spec, seed=attrs.get("seed"), fraction=attrs.get("fraction"))
        except Rejected as exc:
            record_cost(trial, start, cpu0)
            raise record_rejection(trial, exc.reason, exc.detail) from None
        except Exception as exc:  # noqa: BLE001 - a broken job must not crash the worker
            if is_transient_error(exc):
                raise
            record_cost(trial, start, cpu0)
            raise record_rejection(trial, "error", error_detail(exc)) from None
        trial.set_user_attr("accuracy", float(fitness.accuracy))
        trial.set_user_attr("val_ce", float(fitness.ce))
        trial.set_user_attr("steps", int(getattr(fitness, "steps", 0) or 0))
        accs = getattr(fitness, "seed_accuracies", None) or [fitness.accuracy]
        trial.set_user_attr("seed_accuracies", [float(a) for a in accs])  # the CE reference's proxy seeds
        reused = getattr(fitness, "reused", None)
        if isinstance(reused, dict):  # the evaluator answered with a run it had made: that run's cost
            trial.set_user_attr("same_training_as", str(reused["source"]))
            trial.set_user_attr("wall_s", float(reused["wall_s"]))
            trial.set_user_attr("cpu_s", float(reused["cpu_s"]))
        else:
            record_cost(trial, start, cpu0)
        return float(fitness.accuracy)
