"""Verification runs shared by the searches of one Table-3 setting (``benchmarks.table``).

The searches of one (regime, student) verify many of the same distillers with the same seeds and fraction of
the schedule: generation 0 is the same known distillers (and their loss-scale variants), and the CE reference
is in every plan. :class:`SharedVerification` answers such a run from the search that made it, and
:func:`verified_runs` gives the fidelity set the runs it would otherwise train again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmarks.table_methods import SAMPLER_METHOD
from spaces import DistillerSpec
from study.config import StudyConfig
from study.worker import CONFIG_ATTR, TEACHER_ATTR
from trainers.config import ExperimentConfig


def verification_runs(
    studies: dict[str, optuna.Study], fraction: float, seed: int
) -> dict[str, tuple[FrozenTrial, str]]:
    """The COMPLETE verification jobs of ``studies``' companion studies run at ``fraction`` and ``seed``.

    Args:
        studies: Searches by a name used in the returned descriptions (``kd-zero``, ``rand-kd``, ...).
        fraction: Fraction of the full schedule of the runs wanted.
        seed: Their seed.

    Returns:
        ``{canonical spec key or "ce": (trial, "<name> verification job <job>")}``, the first found per key
        (twins share a key: they compute the same loss).
    """
    from study.verify import load_side_study

    found: dict[str, tuple[FrozenTrial, str]] = {}
    for name, study in studies.items():
        side = load_side_study(study)
        if side is None:
            continue
        for t in side.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            a = t.user_attrs
            if a.get("role") != "verify" or a.get("seed") != seed or a.get("fraction") != fraction:
                continue
            key = DistillerSpec.from_json(a["spec"]).canonical_key() if a.get("spec") else "ce"
            found.setdefault(key, (t, f"{name} verification job {a['job']}"))
    return found


def verified_runs(
    studies: dict[str, optuna.Study], fraction: float, seed: int
) -> dict[str, tuple[float, str]]:
    """Validation accuracies the searches' verification stages measured at ``fraction`` and ``seed``.

    A verification job of a search runs ``evaluator.evaluate(spec, seed=, fraction=)`` with the table's own
    evaluator, exactly as :func:`verify_accuracy` does, so a distiller the fidelity set needs at the same
    seed and fraction is read from there instead of trained a second time.

    Returns:
        ``{canonical spec key or "ce": (validation accuracy, "<method> verification job <job>")}``
        (:func:`verification_runs`).
    """
    runs = verification_runs(studies, fraction, seed)
    return {k: (float(t.value), where) for k, (t, where) in runs.items()}


def _run_identity(cfg: StudyConfig) -> dict[str, Any]:
    """What makes two runs of a setting the same run: the experiment part of ``cfg.identity()``, as JSON."""
    return json.loads(json.dumps(cfg.identity()["experiment"], sort_keys=True))


@dataclasses.dataclass
class ReusedRun:
    """A run answered by :class:`SharedVerification`, as ``study.verify.SideObjective`` reads a result."""

    accuracy: float
    ce: float
    steps: int
    seed_accuracies: list[float]
    reused: dict[str, Any]


class SharedVerification:
    """A setting's evaluator that answers a verification run another search of the setting has made.

    The searches of one (regime, student) verify many of the same distillers (generation 0 is the same known
    distillers and their loss-scale variants; the CE reference is in every plan) with the same seeds and
    fraction. A run (``fraction`` given) whose distiller (canonical form), seed and fraction a COMPLETE
    verification job of a search in ``<stem>-*.db`` has already trained, with the same experiment
    (``kdzero_config``'s ``experiment`` as ``StudyConfig.identity`` reads it: execution settings such as
    ``amp``, a no-op on CPU, are not part of it) and teacher identity, is read from there, not
    trained again: the same run on the same code and thread count gives the same numbers (the full-regime
    kd-zero and rand-kd verifications' KD runs agree to the last digit). The job records the source
    (``same_training_as``) and that run's cost (``study.verify.SideObjective``). Proxy runs (no
    ``fraction``) always train. The files are read at each run, so a search that verified since is seen.

    Args:
        evaluator: The setting's ``trainers.ProxyEvaluator``; every other attribute is its.
        stem: The setting's file stem (``<out>/<run>-<regime>-<student>``).
        experiment: The setting's experiment.
        teacher: The identity of the setting's teacher.
    """

    def __init__(self, evaluator: Any, stem: Path, experiment: ExperimentConfig, teacher: str) -> None:
        self.evaluator, self.stem, self.teacher = evaluator, Path(stem), teacher
        self.experiment = _run_identity(StudyConfig(experiment=experiment))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.evaluator, name)

    def sources(self, pattern: str | None = None) -> dict[str, optuna.Study]:
        """The setting's searches made with this experiment and teacher, by ``<file stem>:<study>``.

        Args:
            pattern: Study files looked into, a glob in the stem's folder (default ``<stem name>-*.db``).
        """
        out: dict[str, optuna.Study] = {}
        for path in sorted(self.stem.parent.glob(pattern or f"{self.stem.name}-*.db")):
            url = f"sqlite:///{path}"
            for summary in optuna.get_all_study_summaries(url, include_best_trial=False):
                if summary.study_name not in SAMPLER_METHOD.values():
                    continue
                study = optuna.load_study(study_name=summary.study_name, storage=url)
                raw, rec = study.user_attrs.get(CONFIG_ATTR), study.user_attrs.get(TEACHER_ATTR)
                try:
                    stored = _run_identity(StudyConfig.from_dict(json.loads(raw)))
                except (json.JSONDecodeError, TypeError, ValueError):
                    stored = None
                same_teacher = isinstance(rec, dict) and rec.get("identity") == self.teacher
                if stored == self.experiment and same_teacher:
                    out[f"{path.stem}:{summary.study_name}"] = study
        return out

    def evaluate(
        self,
        spec: DistillerSpec | None,
        callbacks: Any = None,
        seed: int | None = None,
        *,
        fraction: float | None = None,
        rungs: Any = None,
        checkpoint: Any = None,
    ) -> Any:
        """``evaluator.evaluate``, or the run a search of the setting made (:class:`ReusedRun`).

        A reused run writes no checkpoint: a later rung of it trains from the start (its job names why).
        """
        if fraction is not None and seed is not None:
            key = spec.canonical_key() if spec is not None else "ce"
            hit = verification_runs(self.sources(), fraction, seed).get(key)
            if hit is not None:
                t, where = hit
                a = t.user_attrs
                return ReusedRun(
                    accuracy=float(t.value),
                    ce=float(a.get("val_ce", math.nan)),
                    steps=int(a.get("steps", 0)),
                    seed_accuracies=[float(t.value)],
                    reused={
                        "source": str(a.get("same_training_as", where)),
                        "cpu_s": float(a.get("cpu_s", 0.0)),
                        "wall_s": float(a.get("wall_s", 0.0)),
                    },
                )
        extra = {} if checkpoint is None else {"rungs": rungs, "checkpoint": checkpoint}
        return self.evaluator.evaluate(spec, callbacks, seed, fraction=fraction, **extra)
