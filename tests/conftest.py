"""Shared fixtures: one torch thread per test process; a PostgreSQL server on 127.0.0.1 when needed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    return None


class PostgresServer:
    """The test PostgreSQL server: its URL, and ``restart()`` / ``psql()`` for fault tests.

    Args:
        url: SQLAlchemy URL of the test database.
        pg_ctl: Path of ``pg_ctl`` (``None`` for an external server given by ``KDZERO_PG_URL``).
        data: Data folder of the server.
        opts: Server options passed to ``pg_ctl -o``.
        log: Server log file.
        port: TCP port on 127.0.0.1.
        as_postgres: Command prefix running a program as the ``postgres`` user (when we are root).
    """

    def __init__(
        self,
        url: str,
        pg_ctl: str | None = None,
        data: Path | None = None,
        opts: str = "",
        log: Path | None = None,
        port: int = 0,
        as_postgres: list[str] | None = None,
    ) -> None:
        self.url, self.pg_ctl, self.data, self.opts, self.log, self.port = url, pg_ctl, data, opts, log, port
        self.as_postgres = as_postgres or []

    @property
    def restartable(self) -> bool:
        """Whether this session started the server (an external ``KDZERO_PG_URL`` one is not restarted)."""
        return self.pg_ctl is not None

    def _ctl(self, *args: str) -> None:
        assert self.pg_ctl is not None and self.data is not None
        subprocess.run(
            [*self.as_postgres, self.pg_ctl, "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are cut)."""
        self._ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        """Start the stopped server again on the same port."""
        assert self.log is not None
        self._ctl("-o", self.opts, "-l", str(self.log), "-w", "start")

    def psql(self, sql: str) -> None:
        """Run one SQL command on the test database as the ``postgres`` superuser."""
        db = self.url.rsplit("/", 1)[1]
        subprocess.run(
            [
                *self.as_postgres,
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL server on 127.0.0.1 (see :class:`PostgresServer`), stopped at session end.

    Skips only when the server binaries are absent and we are not in CI (``.ci/run`` installs them).
    """
    if os.environ.get("KDZERO_PG_URL"):
        yield PostgresServer(os.environ["KDZERO_PG_URL"])
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) are missing; .ci/run must install postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    tmp = Path(tempfile.mkdtemp(prefix="kdzero-pg-"))
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir()
    port = _free_port()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(tmp, "postgres")
        shutil.chown(sock, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {sock} -c max_connections=200"
    subprocess.run(
        [*as_postgres, pg_ctl, "-D", str(data), "-o", opts, "-l", str(tmp / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_postgres,
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-c",
            "CREATE DATABASE kdzero_test",
        ],
        check=True,
        capture_output=True,
    )
    try:
        url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/kdzero_test"
        yield PostgresServer(url, pg_ctl, data, opts, tmp / "log", port, as_postgres)
    finally:
        subprocess.run(
            [*as_postgres, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL of the throw-away PostgreSQL server on 127.0.0.1 (see :func:`postgres_server`)."""
    return postgres_server.url


@pytest.fixture
def user_module_factory(tmp_path, monkeypatch):
    """Write a model file outside kdzero, importable from ``tmp_path``; nothing allowed to import yet.

    Returns ``make(source, prefix) -> module name``, a fresh name each call (no test sees another's module).
    """
    import textwrap
    import uuid

    monkeypatch.delenv("KDZERO_ALLOW_IMPORT", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source: str, prefix: str = "user_models") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return make
