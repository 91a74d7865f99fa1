"""Ctrl-C on ``python -m study search`` (real CLI, real tiny search on digits): workers stop, their running
trials are failed and re-enqueued, and the same command resumes to the target with no candidate lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import optuna
from optuna.trial import TrialState
from rel_helpers import ROOT, finished, lost_candidates, running_with_spec, wait_for

CONFIG = """
[experiment]
teacher = "cnn_tiny"
student = "mlp"
[experiment.dataset]
name = "digits"
val_size = 200
[experiment.teacher_train]
epochs = 1
batch_size = 64
optimizer = "adamw"
lr = 0.003
warmup_epochs = 0.0
[experiment.student_train]
epochs = 4
batch_size = 64
optimizer = "adamw"
lr = 0.003
warmup_epochs = 0.0
[experiment.proxy]
steps = 300
evals = 2
reject_batches = 1
[search]
population = 3
knowledge = ["logits"]
early_stop_warmup = 1000
[run]
study = "sigint"
workers = 2
n_trials = 7
heartbeat_interval = 1
grace_period = 3
"""


def test_ctrl_c_stops_workers_marks_trials_and_the_same_command_resumes(tmp_path) -> None:
    # Proxy runs of 300 steps keep each trial running long enough (about a second) that the poll sees
    # it running and the signal arrives before the search can finish (24 steps: a busy CI machine missed it).
    cfg = tmp_path / "sigint.toml"
    cfg.write_text(CONFIG)
    url = f"sqlite:///{tmp_path}/kd.db"
    argv = [
        sys.executable,
        "-m",
        "study",
        "search",
        "--preset",
        "smoke",
        "--config",
        str(cfg),
        "--storage",
        url,
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A new session = its own process group, as a terminal's foreground job: Ctrl-C reaches every process.
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        study = wait_for(lambda: _load(url), timeout=300, step=0.5)
        cut = wait_for(lambda: running_with_spec(study), timeout=300, step=0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in out + err and "rerun the same command" in out + err
    study = optuna.load_study(study_name="sigint", storage=url)
    # Each worker fails the trial it was running and enqueues it again; a trial cut before Optuna could record
    # the failure stays RUNNING and is retried through its stopped heartbeat on the next start. (A trial seen
    # running before the signal may also have finished in the meantime: only unfinished ones must be marked.)
    failed = study.get_trials(states=(TrialState.FAIL,))
    running = study.get_trials(states=(TrialState.RUNNING,))
    done = {t.number for t in finished(study)}
    assert {t.number for t in cut} - done <= {t.number for t in failed + running}
    waiting = study.get_trials(states=(TrialState.WAITING,))
    requeued = {w.system_attrs.get("failed_trial") for w in waiting}
    assert {t.number for t in failed} <= requeued  # each interrupted candidate is queued again
    rerun = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    study = optuna.load_study(study_name="sigint", storage=url)
    assert 7 <= len(finished(study)) <= 8
    assert lost_candidates(study) == []


def _load(url: str) -> optuna.Study | None:
    try:
        study = optuna.load_study(study_name="sigint", storage=url)
    except Exception:  # noqa: BLE001 - not created yet
        return None
    return study if study.user_attrs.get("kdzero_config") else None
