"""A real PostgreSQL server for the test suite, started by the suite itself.

``initdb`` + ``pg_ctl`` into a fresh directory on a free loopback port, trust authentication on
loopback only, stopped (``pg_ctl stop -m immediate``) and removed at the end of the session. The
server runs as the ``postgres`` OS user when the suite runs as root (PostgreSQL refuses to run as
root; Debian's package creates that user), as the current user otherwise. ``make test`` installs
the distribution's package when no ``initdb`` is found; without it the fixture fails with that
advice — it is never skipped and never replaced by a fake.

The server runs with ``fsync=off``: the tests kill node processes, never the server or the machine,
and a committed transaction survives a client's ``kill -9`` whatever ``fsync`` says (it is in the
server's WAL buffers before the commit is acknowledged); ``fsync`` only protects against an OS
crash, and turning it off makes ``CREATE DATABASE`` per test cheap.

Each test gets a database of its own (:meth:`PostgresServer.database`), so tests never see each
other's rows and need no cleanup.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

START_TRIES = 3  # a free port can be taken between choosing it and binding it


def _bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(found)
    if not candidates:
        raise RuntimeError(
            "no PostgreSQL server found (initdb): `make test` installs it "
            "(apt-get install postgresql), or put its bin directory on PATH"
        )
    return Path(candidates[0]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One throwaway PostgreSQL cluster; ``url(db)`` names a database on it."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="ts-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self.user = "postgres" if self._as else os.environ.get("USER", "postgres")

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as, *args], capture_output=True, text=True, check=False, timeout=120
        )

    def start(self) -> PostgresServer:
        init = self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr or init.stdout}")
        for _ in range(START_TRIES):
            self.port = _free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                "-c max_connections=300 -c shared_buffers=32MB -c fsync=off -c full_page_writes=off"
            )
            started = self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            )
            if started.returncode == 0:
                return self
        log = (self.root / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def database(self, prefix: str = "t") -> str:
        """Create an empty database and return its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # generated name, nothing from outside
        return self.url(name)

    def stop(self) -> None:
        if self.port:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
