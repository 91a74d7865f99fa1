"""How each method of the Table-3 benchmark picks its distiller: published, TPE-tuned, random, searched.

Every selection uses the same proxy evaluator (``trainers.ProxyEvaluator``) and the same validation fitness,
the geometric mean of ``val_ce``, ``sharpness_gap`` and ``cka_gap`` (``study.fitness.scalarise``); rejected
candidates count toward the trial budget. ``kd-zero`` and ``rand-kd`` are both ``study.run_search`` with the
same generation 0 (the known distillers), budget and verified final selection; only the sampler differs
(NSGA-II with shrinkage, or random). Studies live in SQLite files, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from spaces import KNOWN_DISTILLERS, TEMPERATURES, WEIGHTS, DistillerSpec
from study._optuna import storage_of, trial_id
from study.config import RunConfig, SearchConfig, StudyConfig
from study.fitness import SCALARISATION, paper_sum, scalarise
from study.report import summarise
from study.search import run_search
from study.worker import TEACHER_ATTR
from trainers.config import ExperimentConfig
from trainers.rejection import Rejected

TUNED_BASE = {"kd-tuned": "kd", "dist-tuned": "dist"}
"""Tuned rivals and the known distiller whose tau and W TPE tunes."""
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TeacherArchiveError(RuntimeError):
    """A training, row, study or setting would mix two teachers (content hashes of their weights)."""


SAMPLER_METHOD = {"nsga2": "kd-zero", "random": "rand-kd", "tpe": "tpe-kd"}
"""Method (and study name) of each search sampler."""


def knowledge_kinds(student_shapes: dict[str, tuple[int, ...]]) -> tuple[str, ...]:
    """Knowledge kinds a student can be distilled on: ``feature`` only when it is a 4-D map ``(C, H, W)``."""
    kinds = ["embedding", "logits"]
    if len(student_shapes.get("feature", ())) == 3:
        kinds.append("feature")
    return tuple(sorted(kinds))


def handcrafted_plan(
    methods: tuple[str, ...],
    student_shapes: dict[str, tuple[int, ...]],
    teacher_shapes: dict[str, tuple[int, ...]],
) -> tuple[dict[str, DistillerSpec | None], dict[str, str]]:
    """Specs of ``ce`` and the published distillers that apply to this pair, and why the others were skipped.

    Args:
        methods: Method names among ``ce`` and ``KNOWN_DISTILLERS``.
        student_shapes: ``KnowledgeExtractor(student).shapes(...)``.
        teacher_shapes: The teacher's shapes.

    Returns:
        ``({method: spec or None for ce}, {skipped method: reason})``.
    """
    specs: dict[str, DistillerSpec | None] = {}
    skipped: dict[str, str] = {}
    for m in methods:
        if m == "ce":
            specs[m] = None
            continue
        if m not in KNOWN_DISTILLERS:
            raise ValueError(f"unknown handcrafted method {m!r}; valid ones are {['ce', *KNOWN_DISTILLERS]}")
        spec = KNOWN_DISTILLERS[m]
        s, t = tuple(student_shapes[spec.knowledge]), tuple(teacher_shapes[spec.knowledge])
        if spec.knowledge == "feature" and (len(s) != 3 or len(t) != 3):
            skipped[m] = f"needs a 4-D feature map (N, C, H, W); student feature is {s}, teacher {t}"
            continue
        specs[m] = spec
    return specs, skipped


def _fitness_attrs(trial: optuna.Trial, fit: Any) -> None:
    for key in ("ce", "sharpness_gap", "cka_gap"):
        trial.set_user_attr(key, float(getattr(fit, key)))
    trial.set_user_attr("accuracy", float(fit.accuracy))


def open_local_study(
    path: Path, name: str, sampler: optuna.samplers.BaseSampler, directions: list[str]
) -> optuna.Study:
    """Create or load study ``name`` in the SQLite file ``path``."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        storage=f"sqlite:///{path}",
        study_name=name,
        sampler=sampler,
        directions=directions,
        load_if_exists=True,
    )


def _remaining(study: optuna.Study, budget: int) -> int:
    return max(0, budget - len(study.get_trials(deepcopy=False, states=FINISHED)))


def _fail_interrupted(study: optuna.Study, budget: int) -> list[tuple[dict[str, Any], bool]]:
    """Fail the trials an interrupted run left RUNNING and enqueue their points again (within ``budget``).

    A tuned rival's study is driven by one process, the table's main one, so on entry nothing of it can be
    running: a RUNNING trial is one whose process was stopped (a session's end, Ctrl-C, a kill). Left alone
    it would stay RUNNING forever, and when it was the enqueued published point, that point would never be
    trained.

    Trials finished after the interrupted one may have used up the budget: its point is then not queued
    (a queued trial would wait forever).

    Returns:
        ``(parameters, queued again)`` per failed trial.
    """
    out = []
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage_of(study).set_trial_state_values(trial_id(t), state=TrialState.FAIL)
        point = dict(t.params or t.system_attrs.get("fixed_params") or {})  # queued, not yet suggested
        if not point:
            continue
        queued = _remaining(study, budget) > waiting
        if queued:
            study.enqueue_trial(point)
            waiting += 1
        out.append((point, queued))
    return out


def _finished_twin(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """The first finished trial of ``study`` with ``trial``'s parameters, if any."""
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        if t.number != trial.number and t.params == trial.params:
            return t
    return None


def _as_twin(trial: optuna.Trial, twin: FrozenTrial) -> float:
    """End ``trial`` as its finished ``twin`` ended (same value, attributes, or rejection), training nothing.

    The trial still counts toward the budget, as a retrained twin would have: only the compute is saved.
    """
    trial.set_user_attr("twin_of", twin.number)
    for key in ("ce", "sharpness_gap", "cka_gap", "accuracy", "reject_reason"):
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    if twin.state == TrialState.PRUNED:
        reason = twin.user_attrs.get("reject_reason", "rejected")
        raise optuna.TrialPruned(f"as trial {twin.number}: {reason}")
    return float(twin.values[0])


SCALARISATION_ATTR = "kdzero_scalarisation"
"""User attr of a tuned rival's study: the scalarisation (``study.fitness.SCALARISATION``) its values use."""


def tune_known(
    evaluator: Any,
    method: str,
    budget: int,
    path: Path,
    seed: int = 0,
    echo: Callable[[str], None] = print,
    teacher: dict[str, Any] | None = None,
) -> optuna.Study:
    """A known distiller's tau and W tuned by TPE over ``TEMPERATURES x WEIGHTS`` (its ops kept).

    ``method`` is a key of :data:`TUNED_BASE` (``kd-tuned``: KD, ``dist-tuned``: DIST). Minimises the
    scalarised fitness (``study.fitness.scalarise``); a rejected candidate ends PRUNED and counts
    toward ``budget``. TPE proposes points it has already seen (the grid has ``len(TEMPERATURES) *
    len(WEIGHTS)`` points): such a trial counts toward the budget too but is not trained again; it takes its
    finished twin's value (user attr ``twin_of``).

    The study records the scalarisation its values are in (user attr :data:`SCALARISATION_ATTR`); a study
    tuned on another one (or before studies recorded it) is tuned again from scratch, since TPE's choices
    followed the old values, and ``echo`` says so.

    ``teacher`` (``{"identity", "model", "val_acc", "test_acc"}``) is stored as the study's ``kdzero_teacher``
    when it has none, as a search stores its teacher; a study that recorded another teacher is refused.

    Raises:
        TeacherArchiveError: The study was tuned with another teacher.
    """
    base = KNOWN_DISTILLERS[TUNED_BASE[method]]
    study = open_local_study(path, method, optuna.samplers.TPESampler(seed=seed), ["minimize"])
    stored = study.user_attrs.get(SCALARISATION_ATTR)
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    if finished and stored != SCALARISATION:
        echo(
            f"study {method!r} in {path} was tuned on the {stored or 'sum'} scalarisation of the proxy "
            f"fitness, not the {SCALARISATION}: tuning it again from scratch ({len(finished)} finished "
            "trials dropped)"
        )
        optuna.delete_study(study_name=method, storage=f"sqlite:///{path}")
        study = open_local_study(path, method, optuna.samplers.TPESampler(seed=seed), ["minimize"])
    study.set_user_attr(SCALARISATION_ATTR, SCALARISATION)
    if teacher is not None:
        stored_teacher = study.user_attrs.get(TEACHER_ATTR)
        if stored_teacher is None:
            study.set_user_attr(TEACHER_ATTR, teacher)
        elif stored_teacher.get("identity") != teacher.get("identity"):
            raise TeacherArchiveError(
                f"study {method!r} in {path} was tuned with teacher {stored_teacher.get('identity')}, not "
                f"{teacher.get('identity')}"
            )
    # the published point first, so TPE starts from it
    if not study.trials:
        study.enqueue_trial({"weight": base.weight, "tau": base.tau})
    for point, queued in _fail_interrupted(study, budget):
        again = "queued again" if queued else "not queued again: the budget is reached"
        echo(f"study {method!r} in {path}: a trial at {point} was interrupted; failed, {again}")

    def objective(trial: optuna.Trial) -> float:
        spec = dataclasses.replace(
            base,
            weight=trial.suggest_categorical("weight", list(WEIGHTS)),
            tau=trial.suggest_categorical("tau", list(TEMPERATURES)),
        )
        trial.set_user_attr("spec", spec.to_json())
        twin = _finished_twin(study, trial)
        if twin is not None:  # the proxy is deterministic: the same (W, tau) would train to the same values
            return _as_twin(trial, twin)
        try:
            fit = evaluator.evaluate(spec)
        except Rejected as exc:
            trial.set_user_attr("reject_reason", exc.reason)
            raise optuna.TrialPruned(str(exc)) from None
        _fitness_attrs(trial, fit)
        value = scalarise((fit.ce, fit.sharpness_gap, fit.cka_gap))
        if not math.isfinite(value):
            trial.set_user_attr("reject_reason", "nan")
            raise optuna.TrialPruned("non-finite fitness")
        return value

    study.optimize(objective, n_trials=_remaining(study, budget))
    return study


def kdzero_search(
    exp: ExperimentConfig,
    evaluator: Any,
    budget: int,
    path: Path,
    knowledge: tuple[str, ...],
    *,
    population: int,
    seed: int = 0,
    sampler: str = "nsga2",
    verify_top: int = 5,
    verify_seeds: int = 2,
    verify_rungs: tuple[float, ...] = (0.25,),
    verify_known: int = 1,
    seed_weight_steps: tuple[int, ...] = (),
    threads: int | None = None,
    echo: Callable[[str], Any] = print,
) -> optuna.Study:
    """A real search (``study.run_search``, one in-process worker): ``budget`` trials, then verification.

    ``sampler="nsga2"`` is KD-Zero; ``"random"`` is the rand-kd baseline with the same generation 0, budget
    and verified selection; ``seed_weight_steps``: loss-scale variants of the known distillers added to
    generation 0 (``search.seed_weight_steps``). ``threads``: torch threads of the search's worker (``None``:
    the study's default, CPU cores // workers); the table passes its ``--threads`` so that proxy trials run
    with the same thread
    count as the full trainings (and do not oversubscribe the cores those use).
    """
    pop = max(2, min(population, budget))
    cfg = StudyConfig(
        experiment=exp,
        search=SearchConfig(
            population=pop,
            generations=max(1, math.ceil(budget / pop)),
            knowledge=knowledge,
            seed=seed,
            sampler=sampler,
            verify_top=verify_top,
            verify_seeds=verify_seeds,
            verify_rungs=tuple(verify_rungs),
            verify_known=verify_known,
            seed_weight_steps=seed_weight_steps,
        ),
        run=RunConfig(
            storage=f"sqlite:///{path}",
            study=SAMPLER_METHOD[sampler],
            n_trials=budget,
            workers=1,
            timeout=None,
            threads=threads,
        ),
    )
    return run_search(
        cfg, evaluator_factory=lambda _exp, _dev: evaluator, prepare=None, echo=echo, poll_s=1.0
    )


def finished_search(path: Path, name: str, budget: int, why: str) -> optuna.Study:
    """A setting's finished study, read without running anything (its teacher is not at hand).

    Raises:
        TeacherArchiveError: The study is missing, has fewer than ``budget`` finished trials, or (a search)
            has no verified selection; the message starts with ``why``.
    """
    from study.verify import verified

    url = f"sqlite:///{path}"
    names = (
        {s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False)}
        if path.is_file()
        else set()
    )
    if name not in names:
        raise TeacherArchiveError(f"{why}; its study {name!r} is missing from {path}")
    study = optuna.load_study(study_name=name, storage=url)
    done = len(completed(study)) + len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    if done < budget:
        raise TeacherArchiveError(f"{why}; its study {name!r} has {done} of {budget} finished trials")
    if name in SAMPLER_METHOD.values() and not verified(study):
        raise TeacherArchiveError(f"{why}; its study {name!r} has no verified selection")
    return study


def verified_choice(study: optuna.Study) -> tuple[bool, DistillerSpec | None]:
    """``(found, spec)``: the verified winner of a search (``spec`` None: plain CE won the verification)."""
    from study.verify import verified

    table = verified(study)
    if not table:
        return False, None
    raw = table[0].get("spec")
    return True, (DistillerSpec.from_json(raw) if raw else None)


def _clock(trials: list[FrozenTrial]) -> str:
    """``cpu`` when every trial recorded ``cpu_s`` (immune to a shared or paused machine), else ``wall``."""
    return "cpu" if trials and all("cpu_s" in t.user_attrs for t in trials) else "wall"


def _trial_cost(t: FrozenTrial, clock: str) -> float:
    if clock == "cpu":
        return float(t.user_attrs["cpu_s"])
    if t.datetime_start is None or t.datetime_complete is None:
        return 0.0
    return (t.datetime_complete - t.datetime_start).total_seconds()


def study_cost_s(study: optuna.Study, role: str | None = None) -> tuple[float, str]:
    """Summed cost of a study's finished trials, in CPU seconds when every trial recorded ``cpu_s``.

    Args:
        study: The study.
        role: Only trials whose ``role`` user attr is this (e.g. ``verify`` in the companion study).

    Returns:
        ``(seconds, clock)`` with clock ``cpu`` (immune to a shared or paused machine) or ``wall``.
    """
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if role is None or t.user_attrs.get("role") == role
    ]
    clock = _clock(trials)
    return sum(_trial_cost(t, clock) for t in trials), clock


CANDIDATE_OUTCOMES = ("whole proxy", "early stop", "rejected", "twin")
"""How a search candidate ended, for :func:`candidate_breakdown`."""


def candidate_breakdown(study: optuna.Study, unit_s: float) -> dict[str, dict[str, float]]:
    """Count and mean cost (in units of ``unit_s``, e.g. one full distillation run) of candidates by outcome.

    Outcomes: ``whole proxy`` (COMPLETE, trained), ``early stop`` (PRUNED by early stopping), ``rejected``
    (PRUNED for any other reason: invalid, exploding or diverging loss, too large a tensor) and ``twin``
    (a candidate equivalent to a finished one, not trained: user attr ``duplicate_of``). The mean cost of a
    candidate is the count-weighted mean of the four; it shows which outcome the 1/40 target depends on.
    """
    groups: dict[str, list[float]] = {k: [] for k in CANDIDATE_OUTCOMES}
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    clock = _clock(trials)
    for t in trials:
        if "duplicate_of" in t.user_attrs:
            kind = "twin"
        elif t.state == TrialState.COMPLETE:
            kind = "whole proxy"
        elif t.user_attrs.get("reject_reason") == "early_stop":
            kind = "early stop"
        else:
            kind = "rejected"
        groups[kind].append(_trial_cost(t, clock) / unit_s)
    return {k: {"n": len(v), "mean_units": sum(v) / len(v) if v else 0.0} for k, v in groups.items()}


def verification_cost_s(study: optuna.Study) -> tuple[float, str]:
    """:func:`study_cost_s` of the search's verification runs (its companion study, CE reference excluded)."""
    from study.verify import load_side_study

    side = load_side_study(study)
    return (0.0, "cpu") if side is None else study_cost_s(side, role="verify")


def verification_cost_per_rung(study: optuna.Study, dist_s: float) -> list[dict[str, Any]]:
    """The search's verification cost per rung: jobs, full-schedule runs trained, CPU s, distillation runs.

    ``full_runs`` counts the share of the schedule each job trained (a continued run counts what it added);
    ``units`` is the rung's CPU seconds over the setting's mean full distillation run (``dist_s``).
    """
    from study.verify import load_side_study, verification_cost

    side = load_side_study(study)
    costs = (verification_cost(study, side) if side is not None else None) or []
    return [{**c, "units": c["cpu_s"] / dist_s if dist_s else math.nan} for c in costs]


def trial_fitness(trial: FrozenTrial) -> dict[str, float]:
    """Proxy objectives of a COMPLETE trial: ce, sharpness_gap, cka_gap, fitness, paper_sum, proxy_acc."""
    if len(trial.values) == 3:
        ce, sg, cka = (float(v) for v in trial.values)
    else:
        ce, sg, cka = (float(trial.user_attrs[k]) for k in ("ce", "sharpness_gap", "cka_gap"))
    return with_scalars(
        {
            "ce": ce,
            "sharpness_gap": sg,
            "cka_gap": cka,
            "proxy_acc": float(trial.user_attrs.get("accuracy", math.nan)),
        }
    )


def with_scalars(fit: dict[str, Any]) -> dict[str, Any]:
    """``fit`` with ``fitness`` (``study.fitness.scalarise``) and ``paper_sum`` computed from its objectives.

    Either is nan when an objective is missing or not finite (a rejected candidate).
    """
    objectives = tuple(float(fit.get(k, math.nan)) for k in ("ce", "sharpness_gap", "cka_gap"))
    ok = all(math.isfinite(v) for v in objectives)
    return {
        **fit,
        "fitness": scalarise(objectives) if ok else math.nan,
        "paper_sum": paper_sum(objectives) if ok else math.nan,
    }


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The COMPLETE trial of lowest scalarised fitness (multi-objective: ``study.summarise(...).best``)."""
    if len(study.directions) > 1:
        return summarise(study).best
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    return min(done, key=lambda t: (t.values[0], t.number)) if done else None


def completed(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials with finite fitness, best scalarised first."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = [t for t in done if math.isfinite(trial_fitness(t)["fitness"])]
    return sorted(done, key=lambda t: (trial_fitness(t)["fitness"], t.number))


def verify_seed(exp: ExperimentConfig) -> int:
    """Seed of the fidelity set's verification runs: the searches' first (``study.verify.verify_seeds``).

    So a distiller's fidelity run and a search's verification run of it are the same run.
    """
    from study.verify import verify_seeds

    return verify_seeds(StudyConfig(experiment=exp, search=SearchConfig(verify_seeds=1)))[0]


def verify_accuracy(evaluator: Any, spec: DistillerSpec | None, fraction: float, seed: int) -> float:
    """Validation accuracy of ``spec`` after ``fraction`` of the full schedule (verification run) or nan."""
    try:
        return float(evaluator.evaluate(spec, seed=seed, fraction=fraction).accuracy)
    except Rejected:
        return math.nan


def evaluate_fitness(evaluator: Any, spec: DistillerSpec | None) -> dict[str, float]:
    """Proxy objectives of ``spec`` (``None``: CE only) by a fresh proxy run; nan values when rejected."""
    t0 = time.perf_counter()
    try:
        fit = evaluator.evaluate(spec)
    except Rejected as exc:
        nan = math.nan
        return {
            "ce": nan,
            "sharpness_gap": nan,
            "cka_gap": nan,
            "fitness": nan,
            "paper_sum": nan,
            "proxy_acc": nan,
            "rejected": exc.reason,
            "proxy_s": time.perf_counter() - t0,
        }
    return with_scalars(
        {
            "ce": float(fit.ce),
            "sharpness_gap": float(fit.sharpness_gap),
            "cka_gap": float(fit.cka_gap),
            "proxy_acc": float(fit.accuracy),
            "proxy_s": time.perf_counter() - t0,
        }
    )
