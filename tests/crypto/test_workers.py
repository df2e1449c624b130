"""Process pools: spawned workers that hold none of the parent's sockets and die with it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crypto.workers import worker_pool

HANG_GUARD = 60.0  # seconds: a guard against a hang, not a measured bound


def _open_fds() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def test_workers_do_not_inherit_the_parents_listening_socket() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        inode = os.fstat(server.fileno()).st_ino
        with worker_pool(2) as pool:
            seen = pool.submit(_open_fds).result(timeout=HANG_GUARD)
        mine = _open_fds()
    assert f"socket:[{inode}]" in mine  # the parent holds it while its worker runs
    assert f"socket:[{inode}]" not in seen


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    parent = subprocess.Popen(  # a parent that starts a pool, then waits to be killed
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "from crypto.workers import worker_pool\n"
            "pool = worker_pool(2)\n"
            "pids = {pool.submit(os.getpid).result() for _ in range(8)}\n"
            "for _ in range(8):\n"
            "    pids |= {pool.submit(os.getpid).result()}\n"
            "open(sys.argv[1], 'w').write(' '.join(map(str, sorted(pids))))\n"
            "time.sleep(600)\n",
            str(pids_file),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + HANG_GUARD
        while not (pids_file.exists() and pids_file.read_text()) and time.monotonic() < deadline:
            assert parent.poll() is None, "the parent exited before it started its workers"
            time.sleep(0.05)
        workers = [int(p) for p in pids_file.read_text().split()]
        assert workers and all(_alive(p) for p in workers)

        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=HANG_GUARD)
        deadline = time.monotonic() + HANG_GUARD
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)

        assert [p for p in workers if _alive(p)] == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        worker_pool(0)
