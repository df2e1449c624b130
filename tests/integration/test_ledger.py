"""``trusted-space ledger verify`` against real nodes: every ledger verifies; a tampered one fails.

The tamper test does what an insider with file access could: stop the node, change one ledger
entry in its SQLite store, start it again. The store is backed up first with SQLite's online
backup API (what ``sqlite3 store.db ".backup ..."`` does) and restored afterwards, so the other
tests see an intact node.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from connectors.spaces.space import RunningSpace
from tests._backups import sqlite_backup

from .conftest import cli

pytestmark = pytest.mark.integration

NODES = ("city-centre", "tax-bureau", "court", "bank-a")


def verify(url: str) -> subprocess.CompletedProcess[str]:
    return cli("ledger", "verify", "--node", url, "--json")


def test_every_ledger_verifies(space: RunningSpace) -> None:
    with ThreadPoolExecutor(len(NODES)) as pool:
        results = dict(zip(NODES, pool.map(verify, [space[n].url for n in NODES]), strict=True))

    for name, result in results.items():
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        report = json.loads(result.stdout)
        assert report["ok"] is True
        assert report["size"] > 0, name


def restore(db: Path, copy: Path) -> None:
    for stale in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    db.write_bytes(copy.read_bytes())


def tamper(db: Path, index: int) -> None:
    conn = sqlite3.connect(db)
    try:
        query = "SELECT entry FROM log_entries WHERE log = 'events' AND idx = ?"
        (entry,) = conn.execute(query, (index,)).fetchone()
        forged = bytes(entry).replace(b'"time":"2', b'"time":"1', 1)
        assert forged != bytes(entry)
        conn.execute(
            "UPDATE log_entries SET entry = ? WHERE log = 'events' AND idx = ?", (forged, index)
        )
        conn.commit()
    finally:
        conn.close()


@pytest.mark.slow
def test_tampered_store_is_detected(
    space: RunningSpace, http: httpx.Client, tmp_path: Path
) -> None:
    court = space["court"]
    assert http.get(f"{court.url}/ledger/checkpoint").status_code == 200  # publish the head
    space.stop_node("court")
    db = court.layout.store
    saved = tmp_path / "court-backup.db"
    sqlite_backup(db, saved)
    try:
        tamper(db, 1)
        space.start_node("court")

        result = verify(court.url)

        assert result.returncode == 1, result.stdout
        assert json.loads(result.stdout)["ok"] is False
    finally:
        space.stop_node("court")
        restore(db, saved)
        space.start_node("court")
    assert verify(court.url).returncode == 0
