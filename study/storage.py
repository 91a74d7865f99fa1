"""Study storage: URL checks and masking, RDB storage with heartbeats, retry on a locked SQLite database."""

from __future__ import annotations

import re
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

try:  # optuna >= 4.9 renamed the callback and the storage argument
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _RetryCallback

    _CALLBACK_ARG = "heartbeat_stale_trial_callback"
except ImportError:  # pragma: no cover - older optuna
    from optuna.storages import RetryFailedTrialCallback as _RetryCallback

    _CALLBACK_ARG = "failed_trial_callback"
from sqlalchemy.engine import URL, make_url

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
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError(
            f"storage URL {mask_url(url)!r} is an in-memory SQLite database, which worker processes "
            "cannot share; give a file, e.g. sqlite:///kdzero.db"
        )
    return parsed


def is_locked_error(exc: BaseException) -> bool:
    """Whether an exception is SQLite's transient "database is locked"."""
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


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
        path.parent.mkdir(parents=True, exist_ok=True)

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
        storage = with_retry(lambda: RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs))
    if parsed.get_backend_name() == "sqlite":
        _begin_immediate(storage.engine)
    return storage


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


def backend_name(url: str) -> str:
    """Backend of a storage URL (``sqlite``, ``postgresql``, ``mysql``)."""
    return sqlalchemy.engine.make_url(url).get_backend_name()
