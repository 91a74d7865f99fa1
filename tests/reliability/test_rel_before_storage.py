"""Inputs that cannot succeed are refused before anything is stored: a data root without the data set's files,
a data root given to a data set that reads none, a study name longer than the storage holds."""

from __future__ import annotations

import uuid

import optuna
import pytest
import torch
from rel_helpers import assert_clean_error, run_main
from study_fakes import smoke_config

from study.cli import main as study_main
from study.search import open_study
from study.storage import max_study_name
from trainers.__main__ import main as trainers_main


def test_search_with_an_empty_data_root_stores_nothing(tmp_path, capsys) -> None:
    """Fashion-MNIST (the default preset) under an empty folder: refused before the study (and its 7 known
    distillers) is created; the SQLite file is never written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    db = tmp_path / "kd.db"
    argv = ["search", "--storage", f"sqlite:///{db}", "--study", "s", "--data-root", str(empty)]
    proc = run_main(study_main, argv, capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, "Fashion-MNIST idx files", str(empty), "Nothing was stored")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not db.exists()


def test_search_with_a_data_root_for_digits_is_refused_by_name(tmp_path, capsys) -> None:
    db = tmp_path / "kd.db"
    argv = ["search", "--preset", "smoke", "--storage", f"sqlite:///{db}", "--data-root", str(tmp_path)]
    proc = run_main(study_main, argv, capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, "data set 'digits'", "reads no files", repr(str(tmp_path)))
    assert not db.exists()


def test_a_worker_with_a_data_root_for_digits_is_refused_before_its_first_trial(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'kd.db'}"
    study = open_study(smoke_config(url, 4, study="s"))
    argv = ["worker", "--storage", url, "--study", "s", "--data-root", str(tmp_path)]
    proc = run_main(study_main, argv, capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, "data set 'digits'", "reads no files")
    assert not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def test_search_on_a_gpu_this_machine_lacks_stores_nothing(tmp_path, capsys) -> None:
    """``--devices cuda:99``: no CUDA here, or not that many GPUs; refused before the study is created."""
    db = tmp_path / "kd.db"
    argv = ["search", "--preset", "smoke", "--storage", f"sqlite:///{db}", "--devices", "cpu,cuda:99"]
    proc = run_main(study_main, argv, capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, "device 'cuda:99'", "Nothing was stored")
    assert ("use --devices cpu" in proc.stderr) != torch.cuda.is_available()
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not db.exists()


def test_a_worker_on_a_gpu_this_machine_lacks_is_refused_before_its_first_trial(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'kd.db'}"
    study = open_study(smoke_config(url, 4, study="s"))
    proc = run_main(study_main, ["worker", "--storage", url, "--study", "s", "--device", "cuda:99"], capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, "device 'cuda:99'")
    assert not study.get_trials(deepcopy=False)


def test_trainers_teacher_refuses_a_data_root_for_digits(tmp_path, capsys) -> None:
    argv = [
        "teacher",
        "--dataset",
        "digits",
        "--data-root",
        str(tmp_path),
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    proc = run_main(trainers_main, argv, capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, "data set 'digits'", "reads no files")


@pytest.mark.parametrize("command", ["search", "worker", "status"])
def test_a_study_name_longer_than_the_storage_holds_is_refused(tmp_path, capsys, command) -> None:
    db = tmp_path / "kd.db"
    argv = [command, "--storage", f"sqlite:///{db}", "--study", "x" * 600]
    proc = run_main(study_main, [*argv, "--preset", "smoke"] if command == "search" else argv, capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, "is 600 characters long", f"at most {max_study_name()}")
    assert len(proc.stderr.strip().splitlines()) == 1 and "x" * 100 not in proc.stderr
    assert not db.exists()


@pytest.mark.postgres
def test_study_name_limit_on_postgresql(postgres_url, capsys) -> None:
    """The longest name allowed works on PostgreSQL (search study and companion); one more is refused."""
    longest = uuid.uuid4().hex + "x" * (max_study_name() - 32)
    study = open_study(smoke_config(postgres_url, 4, study=longest))
    assert study.study_name == longest
    names = {s.study_name for s in optuna.get_all_study_summaries(postgres_url, include_best_trial=False)}
    assert {longest, longest + ":verify"} <= names
    argv = ["search", "--preset", "smoke", "--storage", postgres_url, "--study", longest + "y"]
    proc = run_main(study_main, argv, capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, f"is {max_study_name() + 1} characters long")
    names = {s.study_name for s in optuna.get_all_study_summaries(postgres_url, include_best_trial=False)}
    assert longest + "y" not in names


@pytest.mark.parametrize("extra", [[], ["--check"], ["--repair"]])
def test_status_of_a_missing_sqlite_file_creates_nothing(tmp_path, capsys, extra) -> None:
    db = tmp_path / "nothere.db"
    proc = run_main(study_main, ["status", "--storage", f"sqlite:///{db}", "--study", "s", *extra], capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, "does not exist", str(db))
    assert not db.exists()
