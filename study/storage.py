"""Study storage: URL checks and masking, RDB storage with heartbeats, retry on a locked SQLite database."""

from __future__ import annotations

import contextlib
import copy
import re
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState

try:  # optuna >= 4.9 renamed the callback and the storage argument
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _RetryCallback

    _CALLBACK_ARG = "heartbeat_stale_trial_callback"
except ImportError:  # pragma: no cover - older optuna
    from optuna.storages import RetryFailedTrialCallback as _RetryCallback

    _CALLBACK_ARG = "failed_trial_callback"
from sqlalchemy.engine import URL, make_url

from study._optuna import heartbeat_table, rdb_of, storage_of, study_id, study_name_limit, trial_id

T = TypeVar("T")
SCHEMES = ("mysql", "postgresql", "sqlite")
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (works on malformed URLs too)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is masked by pattern below
        return _PASSWORD.sub(r"\1***@", url)


def parse_url(url: str) -> URL:
    """Parse and check a SQLAlchemy storage URL.

    Args:
        url: e.g. ``sqlite:///kdzero.db``, ``postgresql://user:pw@host/db``, ``mysql+pymysql://user:pw@host/db``.

    Returns:
        The parsed URL.

    Raises:
        ValueError: The URL is malformed or its scheme is not in :data:`SCHEMES` (passwords masked).
    """
    example = "e.g. sqlite:///kdzero.db or postgresql://user:password@host:5432/db"
    if not isinstance(url, str) or not url:
        raise ValueError(f"storage URL must be a non-empty string ({example}), got {url!r}")
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError or ValueError
        raise ValueError(
            f"malformed storage URL {mask_url(url)!r}: {exc.__class__.__name__}; expected {example}"
        ) from None
    if parsed.get_backend_name() not in SCHEMES:
        raise ValueError(
            f"storage URL {mask_url(url)!r} has unsupported scheme {parsed.get_backend_name()!r}; "
            f"valid schemes are {SCHEMES} ({example})"
        )
    _require_driver(parsed, url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError(
            f"storage URL {mask_url(url)!r} is an in-memory SQLite database, which worker processes "
            "cannot share; give a file, e.g. sqlite:///kdzero.db"
        )
    return parsed


def max_study_name() -> int:
    """Longest study name every storage holds, its companion study's name (``<name>:verify``) included."""
    from study.verify import SIDE_SUFFIX  # deferred: verify imports this module

    return study_name_limit() - len(SIDE_SUFFIX)


def check_study_name(name: str, what: str = "study name") -> None:
    """Refuse, before anything is stored, a study name too long for the storage (the same on every backend).

    Optuna's ``studies.study_name`` column holds 512 characters; SQLite takes more, PostgreSQL and MySQL
    fail mid-run. The companion study adds its suffix.

    Raises:
        ValueError: Naming the length and the limit (not the whole name).
    """
    from study.verify import SIDE_SUFFIX  # deferred: verify imports this module

    limit = max_study_name()
    if isinstance(name, str) and len(name) > limit:
        raise ValueError(
            f"{what} is {len(name)} characters long; at most {limit} fit the storage (Optuna's "
            f"study_name column holds {study_name_limit()}, and the companion study adds {SIDE_SUFFIX!r}): "
            f"choose a shorter name (it begins {name[:40]!r})"
        )


DRIVER_PACKAGES = {
    "mysqldb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysqlconnector": "mysql-connector-python",
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg[binary]",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
}
"""pip package of each SQLAlchemy database driver a storage URL may name."""


def _require_driver(parsed: URL, url: str) -> None:
    """Refuse a URL whose database driver is not installed, naming the package to install."""
    try:
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except ImportError:
        driver = parsed.get_driver_name() or "default"
        package = DRIVER_PACKAGES.get(driver, driver)
        raise ValueError(
            f"storage URL {mask_url(url)!r} needs the database driver {driver!r}, which is not installed: "
            f"pip install '{package}' (or name an installed driver, e.g. postgresql+psycopg2:// or "
            "mysql+pymysql://)"
        ) from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise ValueError(
            f"storage URL {mask_url(url)!r} names an unknown database driver {parsed.drivername!r}; e.g. "
            "postgresql://, postgresql+psycopg2://, mysql+pymysql://, sqlite:///"
        ) from None


def is_locked_error(exc: BaseException) -> bool:
    """Whether an exception is SQLite's transient "database is locked"."""
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def is_transient_error(exc: BaseException) -> bool:
    """Whether a storage error may pass: SQLite's lock, or a lost / refused database connection.

    A restarted PostgreSQL server cuts open connections (``OperationalError``, or ``DBAPIError`` with
    ``connection_invalidated``); the pool reconnects (``pool_pre_ping``) once the server is back. The error
    may be the cause of the one raised (Optuna raises ``StorageInternalError`` from it).
    """
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:  # optuna wraps errors in StorageInternalError
        seen.add(id(node))
        if is_locked_error(node):
            return True
        if isinstance(node, sqlalchemy.exc.DBAPIError) and node.connection_invalidated:
            return True
        if isinstance(node, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        node = node.__cause__ or node.__context__
    return False


def with_retry(fn: Callable[[], T], attempts: int = 8, base_delay: float = 0.2) -> T:
    """Call ``fn``, retrying with exponential backoff while SQLite reports "database is locked"."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_locked_error(exc) or attempt == attempts - 1:
                raise
            time.sleep(base_delay * 2**attempt)
    raise AssertionError("unreachable")


class _RDBStorage(RDBStorage):
    """An :class:`RDBStorage` whose heartbeat survives a lost database connection.

    Optuna records heartbeats from a background thread; an error there (e.g. PostgreSQL restarting) ends
    that thread with a traceback on stderr, although a missed beat is harmless: the next one comes
    ``heartbeat_interval`` seconds later, well inside the grace period. A transient error is therefore
    reported as one line and the thread keeps beating.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat of a running trial; a transient storage error is reported, not raised."""
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not is_transient_error(exc):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"heartbeat of trial id {trial_id} missed: storage unavailable ({first})", file=sys.stderr)


def make_storage(
    url: str, *, heartbeat_interval: int | None = 20, grace_period: int | None = 60, max_retry: int = 2
) -> RDBStorage:
    """Open (creating if needed) an RDB storage with heartbeats and retry of trials whose worker died.

    SQLite files get a 60 s busy timeout and write-ahead logging, so several workers can share one file.

    Args:
        url: SQLAlchemy URL (checked with :func:`parse_url`).
        heartbeat_interval: Seconds between heartbeats of running trials; ``None`` disables heartbeats.
        grace_period: Seconds without heartbeat after which a running trial is failed.
        max_retry: Times a failed (stale) trial is enqueued again with the same parameters.

    Returns:
        The storage.
    """
    parsed = parse_url(url)
    engine_kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": 60}}
        path = Path(parsed.database or "")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(
                f"cannot create the folder of the SQLite storage {mask_url(url)!r}: {exc}"
            ) from None

        def _wal() -> None:
            with sqlite3.connect(path, timeout=60) as con:
                con.execute("PRAGMA journal_mode=WAL")

        with_retry(_wal)
    else:
        engine_kwargs = {"pool_pre_ping": True}
    callback = None
    with warnings.catch_warnings():  # heartbeats and the retry callback are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_interval is not None:
            callback = _RetryCallback(max_retry=max_retry)
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            _CALLBACK_ARG: callback,
            "grace_period": grace_period if heartbeat_interval is not None else None,
        }
        storage = with_retry(lambda: _open_rdb(url, engine_kwargs, kwargs))
    if parsed.get_backend_name() == "sqlite":
        _begin_immediate(storage.engine)
    return storage


def _open_rdb(
    url: str, engine_kwargs: dict[str, Any], kwargs: dict[str, Any], attempts: int = 5
) -> RDBStorage:
    """Open an :class:`RDBStorage`, again when another process created the schema of a new database at once.

    Optuna checks for its tables, then creates them and stamps their version; a table or stamp written by the
    other process in between fails the ``CREATE`` or the ``INSERT``, and opening again finds the schema.
    """
    for attempt in range(attempts):
        try:
            return _RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except sqlalchemy.exc.DatabaseError as exc:
            text = str(exc)
            raced = isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in text
            if not raced or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def _begin_immediate(engine: sqlalchemy.engine.Engine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE`` (take the write lock before reading).

    Python's sqlite3 starts a transaction only at the first write, so two workers can both read a WAITING
    (enqueued or retried) trial and both mark it RUNNING: the same candidate would be evaluated twice and the
    second ``tell`` fails. With the lock taken at BEGIN, the read-check-write of Optuna is atomic.
    """

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy emit BEGIN itself

    def on_begin(conn: sqlalchemy.engine.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    sqlalchemy.event.listen(engine, "connect", on_connect)
    sqlalchemy.event.listen(engine, "begin", on_begin)
    engine.dispose()  # pooled connections opened before the listeners are dropped


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL, or ``None`` for other back-ends and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def require_existing_sqlite(url: str) -> None:
    """Refuse a ``sqlite:///`` URL whose file does not exist (commands that only read must not create one).

    Raises:
        ValueError: The file is missing (the message names it).
    """
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise ValueError(f"storage {mask_url(url)!r}: the SQLite file {str(path)!r} does not exist")


def require_study_file(url: str) -> None:
    """For a ``sqlite:///`` URL, refuse a missing file or one that is not an Optuna database.

    Reads the file read-only: commands that only read a study never create or write a database.

    Raises:
        ValueError: The file is missing, is not SQLite, or has no Optuna tables (the message names it).
    """
    require_existing_sqlite(url)
    path = sqlite_path(url)
    if path is None:
        return
    shown = mask_url(url)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ValueError(
            f"storage {shown!r}: {str(path)!r} is not an Optuna database ({exc}); nothing was written"
        ) from None
    if "studies" not in tables:
        raise ValueError(
            f"storage {shown!r}: {str(path)!r} is a SQLite file without Optuna's tables (not a kdzero "
            "study); nothing was written"
        )


def backend_name(url: str) -> str:
    """Backend of a storage URL (``sqlite``, ``postgresql``, ``mysql``)."""
    return sqlalchemy.engine.make_url(url).get_backend_name()


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail the running trials whose worker died, and enqueue their retries (the storage's stale callback).

    Optuna's ``fail_stale_trials`` only sees trials whose heartbeat stopped; a worker killed between creating
    a trial and its first heartbeat leaves a RUNNING trial without any heartbeat, which Optuna never fails.
    Such a trial is failed here once its start is older than the storage's grace period.

    Args:
        study: A study on an :class:`RDBStorage` with heartbeats (other storages: nothing is done).

    Returns:
        Numbers of the trials without heartbeat failed by this call.
    """
    storage = storage_of(study)
    rdb = rdb_of(study)
    if rdb is None or rdb.heartbeat_interval is None:
        return []
    fail_stale_trials(study)
    grace = timedelta(seconds=rdb.grace_period or 2 * rdb.heartbeat_interval)
    now = datetime.now()  # datetime_start is written by optuna with the (local) clock of the worker
    running = storage.get_all_trials(study_id(study), deepcopy=False, states=(TrialState.RUNNING,))
    old = {trial_id(t): t for t in running if t.datetime_start is not None and now - t.datetime_start > grace}
    if not old:
        return []
    table = heartbeat_table()
    with rdb.engine.connect() as con:
        query = sqlalchemy.select(table.c.trial_id).where(table.c.trial_id.in_(old))
        beating = {row[0] for row in con.execute(query)}
    failed = []
    for orphan in sorted(set(old) - beating):
        try:
            if storage.set_trial_state_values(orphan, state=TrialState.FAIL):
                failed.append(orphan)
        except optuna.exceptions.UpdateFinishedTrialError:  # another process finished or failed it
            pass
    callback = storage.get_heartbeat_stale_trial_callback()
    for orphan in failed:
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(orphan)))
    return [old[i].number for i in failed]
