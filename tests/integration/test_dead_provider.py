"""A provider killed mid-query: nothing of it survives, and the analyst fails at once, naming it.

Issue 17 found that ``kill -9`` of a provider during a Paillier score left its forked pool workers
alive (PPID 1) holding the node's port and the analyst's connection, so the node could not restart
and the analyst's query hung for the whole 300 s read timeout. Here ``trusted-space local score``
(a real space: one node process per party) scores 20,000 rows with Paillier, large enough that the
provider computes in its process pool; while it does, the provider's node process is killed with
SIGKILL. What must hold:

* every process the provider had (its pool workers, the pool's helper) is gone;
* its port can be bound again (nothing holds the node's listening socket);
* the analyst's command fails (exit 1) and its error names the provider — well inside a generous
  hang guard that is far below the 300 s read timeout a held connection would have cost.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests._seeding import rng_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 20_000  # above the Paillier provider's pool threshold: its workers are running
HANG_GUARD = 120.0  # seconds; a held connection would hang 300 s (the read timeout)


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _files(directory: Path) -> list[str]:
    rng = rng_for(f"{__name__}._files")
    ids = [f"firm-{i:05d}" for i in range(ROWS)]
    columns = {"bank": ["loans"], "tax": ["tax_paid", "employees"]}
    for party, cols in columns.items():
        values = np.round(rng.normal(0, 2, (ROWS, len(cols))), 4)
        with (directory / f"{party}.csv").open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["firm", *cols])
            for e, row in zip(ids, values, strict=True):
                out.writerow([e, *row])
    model = {
        "intercept": 0.1,
        "link": {"scorecard": {"offset": 600.0, "factor": -20.0}},
        "weights": {p: {c: 0.5 for c in cols} for p, cols in columns.items()},
    }
    (directory / "model.json").write_text(json.dumps(model), encoding="utf-8")
    return [f"--party={p}={directory / f'{p}.csv'}" for p in columns]


def test_killed_provider_leaves_no_process_and_the_analyst_fails_naming_it(
    tmp_path: Path,
) -> None:
    parties = _files(tmp_path)
    work = tmp_path / "work"
    analyst = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from connectors.cli.main import main; main()",
            "local",
            "score",
            *parties,
            "--id",
            "firm",
            "--model",
            str(tmp_path / "model.json"),
            "--protocol",
            "paillier",
            "--out",
            str(tmp_path / "scores.csv"),
            "--work-dir",
            str(work),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    provider, pool = 0, set()
    try:
        # Arrange: wait until the provider's node computes in its pool (it has child processes).
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline and analyst.poll() is None:
            nodes = [p for p in _descendants(analyst.pid) if "node serve" in _cmdline(p)]
            tax = [p for p in nodes if f"{os.sep}tax" in _cmdline(p)]
            if tax:
                provider = tax[0]
                pool = {p for p in _descendants(provider) if "spawn_main" in _cmdline(p)}
                if pool:
                    break
            time.sleep(0.02)
        assert pool, f"the provider never computed in its pool: {analyst.poll()} {nodes}"
        port_line = next(
            line
            for line in (work / "space" / "tax" / "node.toml").read_text().splitlines()
            if line.startswith("port")
        )
        port = int(port_line.split("=")[1])
        everything = _descendants(provider)

        # Act: kill the provider's node process.
        os.kill(provider, signal.SIGKILL)
        _, stderr = analyst.communicate(timeout=HANG_GUARD)
        deadline = time.monotonic() + HANG_GUARD
        while any(_alive(p) for p in everything) and time.monotonic() < deadline:
            time.sleep(0.05)

        # Assert
        assert [(p, _cmdline(p)) for p in everything if _alive(p)] == []
        with socket.socket() as again:  # nothing listens on the node's port: it could restart
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            again.bind(("127.0.0.1", port))
            again.listen()
        assert analyst.returncode == 1, stderr[-2000:]
        assert "failed: tax: cannot reach tax at" in " ".join(stderr.split()), stderr[-2000:]
    finally:
        if analyst.poll() is None:
            analyst.kill()
            analyst.wait()
