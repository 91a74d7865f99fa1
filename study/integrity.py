"""A damaged study stays usable: find the stored rows Optuna cannot decode, name them, move them aside.

Optuna decodes every attribute (``value_json``) and parameter distribution (``distribution_json``) of a
study when it loads its trials; one row of broken JSON makes every command fail inside Optuna. kdzero loads a
study through :func:`readable`, which names the damaged rows instead; ``python -m study status --check``
lists them and ``--repair`` backs the database up and moves them aside (:func:`repair`). A ``spec`` trial
attr that is valid JSON but not a valid ``DistillerSpec`` is listed too: analysis rebuilds specs from the
params and never reads it, and moving it aside lets ``analysis export`` of that trial work again.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import sqlalchemy
from optuna.distributions import json_to_distribution
from optuna.storages import RDBStorage

from study._optuna import JSON_TABLES, rdb_of, rdb_table, storage_of, study_system_attrs
from study.storage import mask_url, with_retry
from study.verify import side_name

MOVED_TABLE = "kdzero_damaged_rows"
"""Table (created by :func:`repair` in the study's own database) keeping every row moved aside."""
SHOWN = 5
"""Damaged rows named in one error message (the rest are counted)."""
PREVIEW = 40
"""Characters of a damaged value quoted."""
_KIND = {
    "study_user_attributes": "user attr",
    "study_system_attributes": "system attr",
    "trial_user_attributes": "user attr",
    "trial_system_attributes": "system attr",
    "trial_params": "param",
}
_META = sqlalchemy.MetaData()
MOVED = sqlalchemy.Table(
    MOVED_TABLE,
    _META,
    sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True, autoincrement=True),
    sqlalchemy.Column("moved_at", sqlalchemy.DateTime, nullable=False),
    sqlalchemy.Column("table_name", sqlalchemy.String(64), nullable=False),
    sqlalchemy.Column("row_id", sqlalchemy.Integer, nullable=False),
    sqlalchemy.Column("owner_id", sqlalchemy.Integer, nullable=True),
    sqlalchemy.Column("study_name", sqlalchemy.String(512), nullable=True),
    sqlalchemy.Column("trial_number", sqlalchemy.Integer, nullable=True),
    sqlalchemy.Column("key", sqlalchemy.String(512), nullable=True),
    sqlalchemy.Column("value_text", sqlalchemy.Text, nullable=True),
    sqlalchemy.Column("problem", sqlalchemy.Text, nullable=True),
)


class StudyDamagedError(ValueError):
    """A study holds rows Optuna cannot decode; the message names them and the repair command."""


@dataclass(frozen=True)
class DamagedRow:
    """One stored row that Optuna cannot decode (or a ``spec`` attr that is not a valid spec).

    Args:
        table: Optuna's table (one of :data:`study._optuna.JSON_TABLES`).
        row_id: The row's primary key.
        owner_id: Its ``trial_id`` or ``study_id``.
        study: Name of the study it belongs to (the search or its companion ``<name>:verify``).
        trial: Number of its trial; ``None`` for a study attr.
        key: Attribute key or parameter name.
        value: The stored text.
        problem: Why it cannot be read.
    """

    table: str
    row_id: int
    owner_id: int | None
    study: str
    trial: int | None
    key: str | None
    value: str | None
    problem: str

    def where(self) -> str:
        """E.g. ``trial 3 user attr 'spec' of study 's'``."""
        owner = f"trial {self.trial}" if self.trial is not None else "study"
        return f"{owner} {_KIND.get(self.table, self.table)} {self.key!r} of study {self.study!r}"

    def line(self) -> str:
        """One line: where, the value quoted (capped), the problem, the table row."""
        return f"{self.where()}: {_preview(self.value)} {self.problem} [{self.table} row {self.row_id}]"


@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair` did: the rows moved aside, the SQLite backup file (``None``: other back-ends)."""

    rows: list[DamagedRow]
    backup: Path | None


def _preview(value: str | None) -> str:
    if value is None:
        return "NULL"
    return repr(value[:PREVIEW]) + ("..." if len(value) > PREVIEW else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def problem_of(table: str, key: str | None, text: str | None) -> str | None:
    """Why Optuna (or kdzero, for a ``spec`` attr) cannot read a stored JSON value; ``None`` when it can."""
    if text is None:
        return "is NULL, not JSON"
    if table == "trial_params":
        try:
            json_to_distribution(text)
        except Exception as exc:  # noqa: BLE001 - whatever Optuna would raise, the row is unreadable
            return f"is not a parameter distribution ({_first_line(exc)})"
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"is not JSON ({_first_line(exc)})"
    if table == "trial_user_attributes" and key == "spec" and value is not None:
        from spaces import DistillerSpec

        try:
            DistillerSpec.from_json(value) if isinstance(value, str) else DistillerSpec.from_dict(value)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return f"is valid JSON but not a valid spec ({_first_line(exc)}); analysis skips it"
    return None


def _scan(con: sqlalchemy.Connection, names: list[str]) -> list[DamagedRow]:
    """Every damaged row of the named studies, table by table, in row order."""
    studies, trials = rdb_table("studies"), rdb_table("trials")
    out: list[DamagedRow] = []
    for name, (owner, key_col, json_col) in JSON_TABLES.items():
        table = rdb_table(name)
        pk = next(iter(table.primary_key.columns))
        if owner == "trial_id":
            joined = table.join(trials, table.c.trial_id == trials.c.trial_id).join(
                studies, trials.c.study_id == studies.c.study_id
            )
            number = trials.c.number
        else:
            joined = table.join(studies, table.c.study_id == studies.c.study_id)
            number = sqlalchemy.null()
        query = (
            sqlalchemy.select(
                pk, table.c[owner], table.c[key_col], table.c[json_col], number, studies.c.study_name
            )
            .select_from(joined)
            .where(studies.c.study_name.in_(names))
            .order_by(pk)
        )
        for row_id, owner_id, key, text, trial, study in con.execute(query):
            problem = problem_of(name, key, text)
            if problem is not None:
                out.append(DamagedRow(name, row_id, owner_id, study, trial, key, text, problem))
    return out


def study_names(storage: RDBStorage) -> list[str]:
    """Names of the studies in an RDB storage, read without decoding any attribute."""
    studies = rdb_table("studies")
    with storage.engine.connect() as con:
        return sorted(r[0] for r in con.execute(sqlalchemy.select(studies.c.study_name)))


def find_damaged(storage: RDBStorage, study_name: str) -> list[DamagedRow]:
    """The damaged rows of a study and of its companion study (a direct scan, nothing decoded by Optuna).

    Raises:
        ValueError: The storage has no study of that name (the names there listed).
    """
    names = study_names(storage)
    if study_name not in names:
        raise ValueError(
            f"no study named {study_name!r} in {mask_url(storage.url)}; studies there: {names or '(none)'}"
        )
    with storage.engine.connect() as con:
        return _scan(con, [study_name, side_name(study_name)])


def damage_message(study_name: str, url: str, rows: list[DamagedRow]) -> str:
    """One line naming the damaged rows (the first :data:`SHOWN`) and the command that repairs them."""
    shown = "; ".join(r.line() for r in rows[:SHOWN])
    more = f"; and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    return (
        f"study {study_name!r} in {mask_url(url)} has {len(rows)} damaged row(s) that Optuna cannot read: "
        f"{shown}{more}. Back the database up and move them aside with: python -m study status --storage "
        f"{mask_url(url)} --study {study_name} --repair"
    )


def _decode_all(study: optuna.Study) -> None:
    """Make Optuna decode everything it stores for the study and its companion (trials are then cached)."""
    _ = study.user_attrs
    study_system_attrs(study)
    study.get_trials(deepcopy=False)
    try:
        side = optuna.load_study(study_name=side_name(study.study_name), storage=storage_of(study))
    except KeyError:
        return
    _ = side.user_attrs
    study_system_attrs(side)
    side.get_trials(deepcopy=False)


def readable(study: optuna.Study) -> optuna.Study:
    """The study, once everything Optuna stores for it decodes; otherwise the damaged rows are named.

    Returns:
        The same study (its finished trials now in Optuna's cache).

    Raises:
        StudyDamagedError: Rows Optuna cannot decode (each named: study, trial, attribute, table row), with
            the ``--repair`` command.
    """
    try:
        with_retry(lambda: _decode_all(study))
    except (ValueError, TypeError, KeyError, RecursionError):  # json.JSONDecodeError is a ValueError
        rdb = rdb_of(study)
        if rdb is None:
            raise
        rows = find_damaged(rdb, study.study_name)
        if not rows:
            raise
        raise StudyDamagedError(damage_message(study.study_name, rdb.url, rows)) from None
    return study


def _backup_sqlite(url: str, now: datetime) -> Path | None:
    """Copy a SQLite storage to ``<file>.bak-<timestamp>`` (SQLite's backup API: the WAL is included)."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    path = Path(parsed.database)
    target = path.with_name(f"{path.name}.bak-{now:%Y%m%d-%H%M%S}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.bak-{now:%Y%m%d-%H%M%S}-{n}")
        n += 1
    with (
        contextlib.closing(sqlite3.connect(path, timeout=60)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
    return target


def repair(storage: RDBStorage, study_name: str) -> RepairResult:
    """Back the database up, then move the damaged rows of a study (and its companion) aside.

    SQLite: the file is first copied to ``<file>.bak-<timestamp>``. Every back-end: in one transaction, each
    row still damaged is copied into :data:`MOVED_TABLE` (created in the same database) and deleted from
    Optuna's table, so the study loads and the search resumes; the attribute is then simply absent.

    Returns:
        The rows moved and the backup file (``None`` when nothing was damaged, or not SQLite).

    Raises:
        ValueError: The storage has no study of that name.
    """
    if not find_damaged(storage, study_name):
        return RepairResult([], None)
    now = datetime.now()
    backup = _backup_sqlite(storage.url, now)

    def move() -> list[DamagedRow]:
        with storage.engine.begin() as con:  # SQLite: BEGIN IMMEDIATE (study.storage), nobody writes between
            rows = _scan(con, [study_name, side_name(study_name)])
            if rows:
                MOVED.create(con, checkfirst=True)
            for r in rows:
                con.execute(
                    MOVED.insert().values(
                        moved_at=now,
                        table_name=r.table,
                        row_id=r.row_id,
                        owner_id=r.owner_id,
                        study_name=r.study,
                        trial_number=r.trial,
                        key=r.key,
                        value_text=r.value,
                        problem=r.problem,
                    )
                )
                table = rdb_table(r.table)
                pk = next(iter(table.primary_key.columns))
                con.execute(table.delete().where(pk == r.row_id))
            return rows

    return RepairResult(with_retry(move), backup)
