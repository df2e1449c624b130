"""Backup and restore as docs/operations.md §7 tells an operator to do them, on both SQL stores.

The backup is taken while the store is open and written to (the node keeps serving); what was
committed before it is in the restored store, what came after is not, the ledger's size check of
restore step 3 reads the right figure, and the restored store opens and migrates like any other.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import psycopg

from tests._backups import sqlite_backup
from tests._postgres import PostgresServer
from trusted_space.events import EVENT_LOG
from trusted_space.merkle import leaf_hash
from trusted_space.store import SQLiteStore, Store, open_store

# Restore step 3's check, exactly as the docs print it.
LEDGER_SIZE = "SELECT count(*) FROM log_entries WHERE log = 'events'"


def _write(store: Store, tag: str, entries: int) -> None:
    with store.transaction() as tx:
        tx.put("agreement", f"agreement-{tag}", {"tag": tag})
        tx.increment("count", "agreement-a", 1)
        for i in range(entries):
            entry = f"{tag}-{i}".encode()
            tx.log_append(EVENT_LOG, entry, leaf_hash(entry))


def _state(store: Store) -> tuple[list[str], int, list[bytes]]:
    with store.transaction(readonly=True) as tx:
        keys = [d.key for d in tx.scan("agreement")]
        size = tx.log_size(EVENT_LOG)
        return keys, tx.counter("count", "agreement-a"), tx.log_entries(EVENT_LOG, 0, size)


def test_sqlite_online_backup_restores_what_was_committed(tmp_path: Path) -> None:
    live_path = tmp_path / "node" / "store.db"
    live = SQLiteStore(live_path)
    _write(live, "before", 3)
    expected = _state(live)
    backup = tmp_path / "backup.db"
    # The documented online backup (sqlite3's .backup; here the same API from Python), taken
    # while the node's store is open and its last commit may still sit in the WAL.
    sqlite_backup(live_path, backup)
    _write(live, "after", 2)
    assert _state(live) != expected
    live.close()
    check = sqlite3.connect(backup)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert check.execute(LEDGER_SIZE).fetchone() == (3,)
    finally:
        check.close()
    restored_path = tmp_path / "restored" / "store.db"
    restored_path.parent.mkdir()
    restored_path.write_bytes(backup.read_bytes())
    restored = open_store(f"sqlite:///{restored_path}")
    try:
        assert _state(restored) == expected
    finally:
        restored.close()


def test_postgresql_pg_dump_and_pg_restore_round_trip(postgres: PostgresServer) -> None:
    url = postgres.database("live")
    live = open_store(url)
    _write(live, "before", 4)
    expected = _state(live)
    dump = postgres.root / "store.dump"
    dumped = subprocess.run(
        [str(postgres.bindir / "pg_dump"), "--format=custom", f"--file={dump}", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert dumped.returncode == 0, dumped.stderr
    _write(live, "after", 1)
    live.close()
    target = postgres.database("restored")
    restored_run = subprocess.run(
        [str(postgres.bindir / "pg_restore"), "--no-owner", f"--dbname={target}", str(dump)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert restored_run.returncode == 0, restored_run.stderr
    with psycopg.connect(target) as conn:
        assert conn.execute(LEDGER_SIZE).fetchone() == (4,)
    restored = open_store(target)
    try:
        assert _state(restored) == expected
    finally:
        restored.close()
