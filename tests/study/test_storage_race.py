"""SQLite: worker processes popping enqueued (WAITING) trials never get the same trial twice."""

from __future__ import annotations

import multiprocessing as mp
import warnings

import optuna
from study_race import ask_and_tell

from study.storage import make_storage


def test_enqueued_trials_are_popped_once_across_processes(tmp_path) -> None:
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path}/race.db"
    study = optuna.create_study(study_name="r", storage=make_storage(url))
    for i in range(45):
        study.enqueue_trial({"x": float(i)})
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=ask_and_tell, args=(url, 30, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    numbers = sum(got, [])
    assert len(numbers) == len(set(numbers)) == 90
    xs = [t.system_attrs["fixed_params"]["x"] for t in study.trials if "fixed_params" in t.system_attrs]
    assert sorted(xs) == [float(i) for i in range(45)]  # every enqueued candidate ran exactly once
