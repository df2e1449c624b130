"""SQLiteStore under many concurrent writers of one process (found by tests/integration).

A write transaction may read through a second, read-only transaction before it commits (the
negotiator checks the offer and the sender's key that way). With writers waiting inside SQLite's
busy handler, every pooled connection was held by a waiting writer, the lock holder could not get
one for its read, and the waiting writers failed with "database is locked" after the busy timeout
(a 503, or a negotiation step lost). Writers now queue on the store's own lock before they take a
connection.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from trusted_space.errors import StoreError
from trusted_space.store import SQLiteStore

WRITERS = 48  # more than the connection pool holds (8 + 24 overflow)


def test_many_writers_with_a_nested_read_all_commit(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "node.db", busy_timeout_ms=5_000)
    barrier = threading.Barrier(WRITERS)
    errors: list[Exception] = []

    def writer() -> None:
        barrier.wait()
        try:
            with store.transaction() as tx:
                with store.transaction(readonly=True) as read:
                    read.counter("uses", "agreement")
                tx.increment("uses", "agreement")
        except StoreError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert time.monotonic() - started < 5.0  # no writer waited out the busy timeout
    with store.transaction(readonly=True) as tx:
        assert tx.counter("uses", "agreement") == WRITERS
    store.close()


def test_a_writer_that_never_gets_its_turn_is_a_store_error(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "node.db", busy_timeout_ms=200)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.transaction() as tx:
            tx.put("doc", "a", {"v": 1})
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    try:
        began = time.monotonic()
        try:
            with store.transaction() as tx:
                tx.put("doc", "b", {"v": 2})
            raised = None
        except StoreError as exc:
            raised = exc
        waited = time.monotonic() - began
        with store.transaction(readonly=True) as tx:  # readers never queue behind the writer
            assert tx.get("doc", "b") is None
    finally:
        release.set()
        holder.join(10)

    assert raised is not None and "busy" in str(raised)
    assert 0.15 < waited < 5.0
    with store.transaction(readonly=True) as tx:
        assert tx.get("doc", "a") is not None and tx.get("doc", "b") is None
    store.close()
