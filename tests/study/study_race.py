"""Worker-process helper for the SQLite race test (free of torch, so spawned processes start fast)."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from study.storage import make_storage


def ask_and_tell(url: str, n: int, queue: Any) -> None:
    """Ask and tell ``n`` trials of study ``r``; put the trial numbers this process got on ``queue``."""
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="r", storage=make_storage(url))
    got = []
    for _ in range(n):
        trial = study.ask()
        got.append(trial.number)
        study.tell(trial, 1.0)
    queue.put(got)
