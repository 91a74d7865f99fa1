"""Shared helpers of the fault suite: tiny searches with the study tests' fake evaluator, fault accounting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))  # study_fakes (no __init__.py)

from study_fakes import FakeEvaluator, smoke_config  # noqa: E402

from study.config import StudyConfig  # noqa: E402
from study.search import run_search  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_half_second_fake(exp: Any, device: str) -> FakeEvaluator:
    """Fake evaluator whose trials take 0.5 s (faults can land mid-trial)."""
    return FakeEvaluator(exp, device, delay=0.5)


def config(url: str, n_trials: int, workers: int = 1, study: str = "s", **run: Any) -> StudyConfig:
    """Smoke preset on the fake evaluator's logits space, short heartbeats (1 s) and grace period (3 s)."""
    return smoke_config(url, n_trials, workers, study, run=run)


def search(cfg: StudyConfig, factory: Any = make_half_second_fake) -> tuple[optuna.Study, str]:
    """Run a search with a fake evaluator; returns the study and the echoed text."""
    lines: list[str] = []
    study = run_search(
        cfg, evaluator_factory=factory, prepare=None, echo=lines.append, poll_s=0.5, refresh_s=0.2
    )
    return study, "\n".join(lines)


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE and PRUNED trials."""
    return study.get_trials(deepcopy=False, states=FINISHED)


def lost_candidates(study: optuna.Study) -> list[int]:
    """Numbers of FAIL trials no finished retry descends from, and of trials still RUNNING or WAITING.

    A retry (Optuna's stale-trial callback) lists every trial it replaces in its ``retry_history``.
    """
    trials = study.get_trials(deepcopy=False)
    recovered = {n for t in trials if t.state in FINISHED for n in t.system_attrs.get("retry_history", ())}
    lost = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    lost += [t.number for t in trials if t.state == TrialState.FAIL and t.number not in recovered]
    return sorted(lost)


def wait_for(predicate: Any, timeout: float = 120.0, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (a guard against hangs, not a timing check)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"condition not reached within {timeout} s")


def running_with_spec(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials whose objective has started (their ``spec`` is stored)."""
    return [t for t in study.get_trials(states=(TrialState.RUNNING,)) if "spec" in t.user_attrs]


def cli(
    package: str,
    *args: str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m <package> <args>`` from the repository root (or ``cwd``); text output captured."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", package, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=full_env,
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit status != 0, no Python traceback, stderr starting with an ``error`` line; every needle named."""
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "error" in proc.stderr.strip().splitlines()[0].lower(), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def run_main(main: Any, argv: list[str], capsys: Any) -> subprocess.CompletedProcess:
    """Call a CLI's ``main(argv)`` in-process (an uncaught exception fails the test); output captured."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)
