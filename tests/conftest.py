"""Shared fixtures: one torch thread per test process, and a PostgreSQL server started on 127.0.0.1 when needed."""

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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on 127.0.0.1; yields a SQLAlchemy URL. Stopped when the session ends.

    Skips only when the server binaries are absent and we are not in CI (``.ci/run`` installs them).
    """
    if os.environ.get("KDZERO_PG_URL"):
        yield os.environ["KDZERO_PG_URL"]
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
    subprocess.run([*as_postgres, initdb, "-D", str(data), "-U", "postgres", "-A", "trust"],
                   check=True, capture_output=True)
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {sock} -c max_connections=200"
    subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-o", opts, "-l", str(tmp / "log"), "-w", "start"],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, "psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                    "-c", "CREATE DATABASE kdzero_test"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/kdzero_test"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
