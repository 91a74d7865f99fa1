"""Running the companion study's jobs: one job per trial, checkpoints continued and kept as artifacts.

:class:`SideObjective` is the objective a worker optimises the companion study (:mod:`study.verify`) with;
:func:`prune_checkpoints` deletes, once the verification is done, the checkpoints of the distillers that
dropped out before its last rung.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from spaces import DistillerSpec
from study._optuna import trial_id
from study.artifacts import CHECKPOINT_ATTR
from study.rungs import parse_job, trained_fraction
from study.storage import with_retry
from study.verify import jobs_by_name

DELETED_ATTR = "checkpoints_deleted"


class SideObjective:
    """Runs one job of the companion study with the worker's evaluator.

    A verification job of a rung plan (its user attrs name ``rungs``) trains with a checkpoint file in
    ``scratch``: a job with a ``parent_job`` first downloads the parent's checkpoint from the artifact store
    (content hash checked; a missing or damaged one is named in the job's ``resume_refused`` attr and the run
    trains from the start instead), continues it to its own rung, and uploads its checkpoint (user attr
    ``checkpoint``, :mod:`study.artifacts`). A job another worker holds or finished already (two workers
    enqueued the same rung at once) ends PRUNED ``duplicate_of`` without training.

    An evaluator may answer a job with a run it has already made (the same distiller up to its canonical
    form, seed, fraction, experiment and teacher; ``benchmarks.table`` does so across the searches of one
    setting): its result then carries ``reused = {"source": str, "cpu_s": float, "wall_s": float}``, and
    the job stores ``same_training_as`` = the source and that run's cost, so the search's reported cost is
    what training the job costs.

    Args:
        evaluator: ``trainers.ProxyEvaluator`` (or a fake with ``evaluate(spec, seed=, fraction=, rungs=,
            checkpoint=)``).
        store: The study's artifact store (:func:`study.artifacts.open_store`); ``None``: rung jobs keep no
            checkpoint, and a continued rung trains from the start.
        scratch: Folder of this worker's checkpoint files while a job runs (default: a temporary folder).
    """

    def __init__(self, evaluator: Any, store: Any = None, scratch: str | Path | None = None) -> None:
        self.evaluator, self.store = evaluator, store
        self.scratch = Path(scratch) if scratch is not None else Path(tempfile.gettempdir()) / "kdzero-verify"

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
        twin = _taken(trial)
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin)
            raise optuna.TrialPruned(f"job {attrs['job']} is run by trial #{twin}")
        spec = DistillerSpec.from_json(attrs["spec"]) if attrs.get("spec") else None
        rungs = attrs.get("rungs")
        ckpt = self._checkpoint_file(trial) if isinstance(rungs, list) else None
        try:
            kwargs: dict[str, Any] = {}
            if ckpt is not None:
                kwargs = {"rungs": tuple(rungs), "checkpoint": ckpt}  # type: ignore[arg-type]
            fitness = self.evaluator.evaluate(
                spec, seed=attrs.get("seed"), fraction=attrs.get("fraction"), **kwargs
            )
        except Rejected as exc:
            record_cost(trial, start, cpu0)
            raise record_rejection(trial, exc.reason, exc.detail) from None
        except Exception as exc:  # noqa: BLE001 - a broken job must not crash the worker
            if is_transient_error(exc):
                raise
            record_cost(trial, start, cpu0)
            raise record_rejection(trial, "error", error_detail(exc)) from None
        steps = int(getattr(fitness, "steps", 0) or 0)
        resumed = int(getattr(fitness, "resumed_from", 0) or 0)
        trial.set_user_attr("accuracy", float(fitness.accuracy))
        trial.set_user_attr("val_ce", float(fitness.ce))
        trial.set_user_attr("steps", steps)
        accs = getattr(fitness, "seed_accuracies", None) or [fitness.accuracy]
        trial.set_user_attr("seed_accuracies", [float(a) for a in accs])  # the CE reference's proxy seeds
        if ckpt is not None:
            trial.set_user_attr("resumed_from", resumed)
            trial.set_user_attr(
                "trained_fraction", trained_fraction(float(attrs["fraction"]), steps, resumed)
            )
            self._keep_checkpoint(trial, ckpt, steps)
        reused = getattr(fitness, "reused", None)
        if isinstance(reused, dict):  # the evaluator answered with a run it had made: that run's cost
            trial.set_user_attr("same_training_as", str(reused["source"]))
            trial.set_user_attr("wall_s", float(reused["wall_s"]))
            trial.set_user_attr("cpu_s", float(reused["cpu_s"]))
        else:
            record_cost(trial, start, cpu0)
        return float(fitness.accuracy)

    def _checkpoint_file(self, trial: optuna.Trial) -> Path:
        """This job's checkpoint file, holding the parent's checkpoint when there is one to continue."""
        from study.artifacts import ArtifactError, fetch

        self.scratch.mkdir(parents=True, exist_ok=True)
        job = str(trial.user_attrs["job"]).replace(":", "-")  # the file's name in the dashboard
        path = self.scratch / f"{job}-t{trial_id(trial)}.pt"
        path.unlink(missing_ok=True)
        parent = trial.user_attrs.get("parent_job")
        if not parent:
            return path
        done = [t for t in jobs_by_name(trial.study).get(str(parent), []) if t.state == TrialState.COMPLETE]
        record = done[0].user_attrs.get(CHECKPOINT_ATTR) if done else None
        if self.store is None or not isinstance(record, dict):
            why = "no artifact store" if self.store is None else f"job {parent} kept no checkpoint"
            trial.set_user_attr("resume_refused", why)
            return path
        try:
            fetch(self.store, record, path)
        except ArtifactError as err:
            trial.set_user_attr("resume_refused", str(err))
            print(f"verification: {err}; {trial.user_attrs['job']} trains from the start", file=sys.stderr)
        return path

    def _keep_checkpoint(self, trial: optuna.Trial, path: Path, steps: int) -> None:
        """Upload the job's checkpoint to the artifact store (when there is one) and drop the local file.

        A store that fails now (full, gone) does not undo the run: its accuracy stands, the job records
        ``checkpoint_error``, and a later rung of it trains from the start.
        """
        from study.artifacts import upload
        from study.pruner import error_detail
        from study.storage import is_transient_error

        try:
            if self.store is not None and path.exists():
                trial.set_user_attr(CHECKPOINT_ATTR, upload(self.store, trial, path, step=steps))
        except Exception as exc:  # noqa: BLE001 - the artifact store, not the run, failed
            if is_transient_error(exc):  # the study's storage itself: retried by the worker
                raise
            trial.set_user_attr("checkpoint_error", error_detail(exc))
            print(
                f"verification: {trial.user_attrs['job']}: checkpoint not kept ({error_detail(exc)})",
                file=sys.stderr,
            )
        finally:
            path.unlink(missing_ok=True)


def _taken(trial: optuna.Trial) -> int | None:
    """Number of an earlier trial of the same job that is running or finished (a duplicate enqueue)."""
    me = trial.number
    for t in jobs_by_name(trial.study).get(str(trial.user_attrs["job"]), []):
        if t.number == me or t.user_attrs.get("duplicate_of") is not None:
            continue
        if t.state == TrialState.COMPLETE or (t.state == TrialState.RUNNING and t.number < me):
            return t.number
    return None


def prune_checkpoints(side: optuna.Study, table: Sequence[Mapping[str, Any]], store: Any) -> int:
    """Delete the checkpoints of the distillers that dropped out before the last rung; returns how many.

    The runs of the last rung (the trained students, the choice's and the others') and the rung checkpoints
    of the distillers that reached it are kept. The deleted jobs are listed in the companion study's user
    attr ``checkpoints_deleted`` (a finished trial cannot be changed).
    """
    from study.artifacts import remove

    if store is None or not table:
        return 0
    last = max(int(r.get("rung", 0)) for r in table)
    dropped = {str(r["key"]) for r in table if int(r.get("rung", 0)) < last}
    gone = set(side.user_attrs.get(DELETED_ATTR) or [])
    for t in side.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name, record = t.user_attrs.get("job"), t.user_attrs.get(CHECKPOINT_ATTR)
        parsed = parse_job(name) if isinstance(name, str) else None
        if parsed is None or parsed[0] not in dropped or not isinstance(record, dict) or name in gone:
            continue
        remove(store, record)
        gone.add(str(name))
    if gone != set(side.user_attrs.get(DELETED_ATTR) or []):
        with_retry(lambda: side.set_user_attr(DELETED_ATTR, sorted(gone)))
    return len(gone)


def finish_student(
    study: optuna.Study, side: optuna.Study, table: Sequence[Mapping[str, Any]], store: Any, evaluator: Any
) -> dict[str, Any] | None:
    """After the verification: drop the dropped-out checkpoints, measure the choice's test accuracy once.

    The test split is touched here only, after the choice was made from validation accuracy: the chosen
    student (``kdzero_student``) is downloaded, checked, and evaluated with the evaluator's
    ``test_metrics(path)``; the record gets ``test_acc`` and ``test_ce`` (``None`` without a test split).
    A record that has them already is left as it is.

    Returns:
        The ``kdzero_student`` record, or ``None`` when the choice has no trained student.
    """
    from study.artifacts import ArtifactError, fetch
    from study.verify import STUDENT_ATTR, student

    prune_checkpoints(side, table, store)
    record = student(study)
    measure = getattr(evaluator, "test_metrics", None)
    if record is None or "test_acc" in record or store is None or measure is None:
        return record
    path = Path(tempfile.gettempdir()) / f"kdzero-student-{os.getpid()}.pt"
    try:
        fetch(store, record["checkpoint"], path)
        metrics = measure(path)
    except ArtifactError as err:
        print(f"verification: the chosen student cannot be read: {err}", file=sys.stderr)
        return record
    finally:
        path.unlink(missing_ok=True)
    record = {
        **record,
        "test_acc": None if metrics is None else float(metrics["accuracy"]),
        "test_ce": None if metrics is None else float(metrics["ce"]),
    }
    with_retry(lambda: study.set_user_attr(STUDENT_ATTR, record))
    return record
