"""A damaged study stays usable: one stored row of broken JSON is named by every command (study status,
analysis pareto / export / report, resuming the search); ``study status --check`` lists it and ``--repair``
backs the database up and moves it aside, after which the study loads and the search resumes."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from pathlib import Path

import pytest
import sqlalchemy
from rel_helpers import assert_clean_error, finished, run_main
from study_fakes import make_fake, smoke_config

from analysis.__main__ import main as analysis_main
from study._optuna import GENERATION_KEY
from study.cli import main as study_main
from study.integrity import MOVED_TABLE, StudyDamagedError
from study.search import run_search
from study.storage import make_storage
from study.worker import load_existing_study

NAME = "damaged"
BROKEN = "{broken"


def _cfg(url: str, n_trials: int, name: str = NAME):
    return smoke_config(url, n_trials, 1, name, verify_top=0)


def _search(url: str, n_trials: int, name: str = NAME):
    return run_search(
        _cfg(url, n_trials, name),
        evaluator_factory=make_fake,
        prepare=None,
        echo=lambda _: None,
        refresh_s=0.2,
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A finished 6-trial study (and its companion with the CE reference), searched once for the module."""
    path = tmp_path_factory.mktemp("pristine") / "kd.db"
    _search(f"sqlite:///{path}", 6)
    return path


@pytest.fixture
def db(pristine, tmp_path) -> Path:
    """A private copy of the pristine study (SQLite's backup API: the write-ahead log included)."""
    path = tmp_path / "kd.db"
    with (
        contextlib.closing(sqlite3.connect(pristine)) as src,
        contextlib.closing(sqlite3.connect(path)) as dst,
    ):
        src.backup(dst)
    return path


TRIAL_ROW = "trial_id = (SELECT trial_id FROM trials WHERE number = :n AND study_id = ({study}))"
STUDY_ROW = "study_id = ({study})"
STUDY_ID = "SELECT study_id FROM studies WHERE study_name = :s"


def _break(url: str, table: str, column: str, where: str, params: dict, value: str = BROKEN) -> None:
    """Overwrite one stored JSON value (exactly one row) with ``value``."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as con:
        sql = f"UPDATE {table} SET {column} = :v WHERE {where.format(study=STUDY_ID)}"
        count = con.execute(sqlalchemy.text(sql), {"v": value, **params}).rowcount
    engine.dispose()
    assert count == 1, (table, where, params)


# (table, JSON column, row filter, parameters, what the message names)
DAMAGE = {
    "trial-user-attr": (
        "trial_user_attributes",
        "value_json",
        f"key = 'accuracy' AND {TRIAL_ROW}",
        {"n": 2, "s": NAME},
        f"trial 2 user attr 'accuracy' of study '{NAME}'",
    ),
    "trial-system-attr": (
        "trial_system_attributes",
        "value_json",
        f"key = '{GENERATION_KEY}' AND {TRIAL_ROW}",
        {"n": 4, "s": NAME},
        f"trial 4 system attr '{GENERATION_KEY}' of study '{NAME}'",
    ),
    "study-user-attr": (
        "study_user_attributes",
        "value_json",
        f"key = 'kdzero_target' AND {STUDY_ROW}",
        {"s": NAME},
        f"study user attr 'kdzero_target' of study '{NAME}'",
    ),
    "study-system-attr": (
        "study_system_attributes",
        "value_json",
        f"key = 'study:metric_names' AND {STUDY_ROW}",
        {"s": NAME},
        f"study system attr 'study:metric_names' of study '{NAME}'",
    ),
    "param-distribution": (
        "trial_params",
        "distribution_json",
        f"param_name = 'distance' AND {TRIAL_ROW}",
        {"n": 5, "s": NAME},
        f"trial 5 param 'distance' of study '{NAME}'",
    ),
    "companion-trial-attr": (
        "trial_user_attributes",
        "value_json",
        f"key = 'role' AND {TRIAL_ROW}",
        {"n": 0, "s": NAME + ":verify"},
        f"trial 0 user attr 'role' of study '{NAME}:verify'",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_row_is_named_by_status_and_pareto(db, capsys, case) -> None:
    url = f"sqlite:///{db}"
    table, column, where, params, named = DAMAGE[case]
    _break(url, table, column, where, params)
    for main, argv in (
        (study_main, ["status", "--storage", url, "--study", NAME]),
        (analysis_main, ["pareto", "--storage", url, "--study", NAME]),
    ):
        proc = run_main(main, argv, capsys)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert_clean_error(proc, named, "damaged row", "--repair")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_every_command_names_the_damage_then_check_and_repair_make_the_study_usable(db, tmp_path, capsys):
    url = f"sqlite:///{db}"
    _break(url, "trial_user_attributes", "value_json", f"key = 'known' AND {TRIAL_ROW}", {"n": 1, "s": NAME})
    named = f"trial 1 user attr 'known' of study '{NAME}': '{BROKEN}' is not JSON"
    for main, argv in (
        (study_main, ["status", "--storage", url, "--study", NAME]),
        (analysis_main, ["pareto", "--storage", url, "--study", NAME]),
        (
            analysis_main,
            ["export", "--storage", url, "--study", NAME, "--trial", "3", "--out", str(tmp_path / "e")],
        ),
        (analysis_main, ["report", "--storage", url, "--study", NAME, "--out", str(tmp_path / "r.html")]),
    ):
        proc = run_main(main, argv, capsys)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert_clean_error(proc, named, f"python -m study status --storage {url} --study {NAME} --repair")
    with pytest.raises(StudyDamagedError, match="trial 1 user attr 'known'"):  # resuming the search
        _search(url, 9)

    check = ["status", "--storage", url, "--study", NAME, "--check"]
    proc = run_main(study_main, check, capsys)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert f"damaged: {named}" in proc.stdout and "1 damaged row(s)" in proc.stdout

    proc = run_main(study_main, ["status", "--storage", url, "--study", NAME, "--repair"], capsys)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert f"moved aside: {named}" in proc.stdout and MOVED_TABLE in proc.stdout
    backups = list(db.parent.glob("kd.db.bak-*"))
    assert len(backups) == 1 and str(backups[0]) in proc.stdout
    with contextlib.closing(sqlite3.connect(backups[0])) as con:  # the backup still holds the row as it was
        assert con.execute(
            "SELECT count(*) FROM trial_user_attributes WHERE value_json = ?", (BROKEN,)
        ).fetchone()
    with contextlib.closing(sqlite3.connect(db)) as con:  # and so does the table of moved rows
        moved = con.execute(f"SELECT table_name, trial_number, key, value_text FROM {MOVED_TABLE}").fetchall()
    assert moved == [("trial_user_attributes", 1, "known", BROKEN)]

    assert run_main(study_main, check, capsys).returncode == 0
    assert run_main(study_main, ["status", "--storage", url, "--study", NAME], capsys).returncode == 0
    assert run_main(analysis_main, ["pareto", "--storage", url, "--study", NAME], capsys).returncode == 0
    study = _search(url, 9)  # the search resumes to its new target
    assert len(finished(study)) >= 9


def test_a_spec_attr_that_is_not_a_spec_is_reported_by_trial_and_skipped(db, tmp_path, capsys) -> None:
    url = f"sqlite:///{db}"
    not_a_spec = '"{\\"knowledge\\": \\"bogus\\"}"'  # valid JSON (a string), not a DistillerSpec
    _break(
        url,
        "trial_user_attributes",
        "value_json",
        f"key = 'spec' AND {TRIAL_ROW}",
        {"n": 3, "s": NAME},
        not_a_spec,
    )
    proc = run_main(analysis_main, ["pareto", "--storage", url, "--study", NAME, "--json"], capsys)
    assert proc.returncode == 0, proc.stderr  # analysis rebuilds specs from params: the attr is not read
    proc = run_main(study_main, ["status", "--storage", url, "--study", NAME, "--check"], capsys)
    assert proc.returncode == 1
    assert f"trial 3 user attr 'spec' of study '{NAME}'" in proc.stdout and "not a valid spec" in proc.stdout
    assert (
        run_main(study_main, ["status", "--storage", url, "--study", NAME, "--repair"], capsys).returncode
        == 0
    )
    out = tmp_path / "e"
    proc = run_main(
        analysis_main,
        ["export", "--storage", url, "--study", NAME, "--trial", "3", "--out", str(out)],
        capsys,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "distiller.json").exists()


def test_check_of_a_sound_study_and_of_a_missing_one(db, capsys) -> None:
    url = f"sqlite:///{db}"
    proc = run_main(study_main, ["status", "--storage", url, "--study", NAME, "--check"], capsys)
    assert proc.returncode == 0 and "no damaged rows" in proc.stdout
    proc = run_main(study_main, ["status", "--storage", url, "--study", NAME, "--repair"], capsys)
    assert proc.returncode == 0 and "nothing changed" in proc.stdout
    assert not list(db.parent.glob("kd.db.bak-*"))  # nothing to repair: no backup either
    proc = run_main(study_main, ["status", "--storage", url, "--study", "nosuch", "--check"], capsys)
    assert proc.returncode == 2
    assert_clean_error(proc, "no study named 'nosuch'", f"'{NAME}'")


@pytest.mark.postgres
def test_repair_on_postgresql_keeps_the_rows_in_a_table(postgres_url, capsys) -> None:
    name = f"damaged-{uuid.uuid4().hex[:8]}"
    _search(postgres_url, 5, name)
    where = f"key = 'known' AND {TRIAL_ROW}"
    _break(postgres_url, "trial_user_attributes", "value_json", where, {"n": 0, "s": name})
    proc = run_main(study_main, ["status", "--storage", postgres_url, "--study", name], capsys)
    assert_clean_error(proc, f"trial 0 user attr 'known' of study '{name}'", "--repair")
    proc = run_main(study_main, ["status", "--storage", postgres_url, "--study", name, "--repair"], capsys)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "copied to" not in proc.stdout and MOVED_TABLE in proc.stdout
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as con:
        rows = con.execute(
            sqlalchemy.text(f"SELECT trial_number, key, value_text FROM {MOVED_TABLE} WHERE study_name = :s"),
            {"s": name},
        ).fetchall()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(0, "known", BROKEN)]
    study = load_existing_study(make_storage(postgres_url), name)
    assert "known" not in study.trials[0].user_attrs
