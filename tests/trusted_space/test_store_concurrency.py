"""The SQL stores under many concurrent writers (found by tests/integration), on both backends.

A write transaction may read through a second, read-only transaction before it commits (the
negotiator checks the offer and the sender's key that way). With writers waiting inside SQLite's
busy handler, every pooled connection was held by a waiting writer, the lock holder could not get
one for its read, and the waiting writers failed with "database is locked" after the busy timeout
(a 503, or a negotiation step lost). Writers now queue on the store's own lock before they take a
connection.

PostgreSQL runs on the real server the suite starts (``tests/_postgres.py``); there a writer of
another process (a second store on the same database) waits on the advisory lock, bounded by the
same busy timeout.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from trusted_space.errors import StoreError
from trusted_space.store import PostgresStore, SQLiteStore, Store

WRITERS = 48  # more than the connection pool holds (8 + 24 overflow)
BACKENDS = ["sqlite", "postgresql"]


def _open(backend: str, request: pytest.FixtureRequest, busy_timeout_ms: int) -> Store:
    if backend == "sqlite":
        path = request.getfixturevalue("tmp_path") / "node.db"
        return SQLiteStore(path, busy_timeout_ms=busy_timeout_ms)
    url = request.getfixturevalue("postgres").database()
    return PostgresStore(url, busy_timeout_ms=busy_timeout_ms)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_writers_with_a_nested_read_all_commit(
    backend: str, request: pytest.FixtureRequest
) -> None:
    store = _open(backend, request, busy_timeout_ms=5_000)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_writer_that_never_gets_its_turn_is_a_store_error(
    backend: str, request: pytest.FixtureRequest
) -> None:
    store = _open(backend, request, busy_timeout_ms=200)
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


def test_postgres_writers_of_two_processes_are_serialised(postgres: Any) -> None:
    """Two stores on one database stand for two node processes: no lost update, no index twice."""
    url = postgres.database()
    stores = [PostgresStore(url, busy_timeout_ms=30_000) for _ in range(2)]
    barrier = threading.Barrier(16)
    errors: list[Exception] = []
    indices: list[int] = []
    lock = threading.Lock()

    def writer(store: Store) -> None:
        barrier.wait()
        try:
            for _ in range(10):
                with store.transaction() as tx:
                    tx.increment("uses", "agreement")
                    index = tx.log_append("events", b"use", b"\0" * 32)
                with lock:
                    indices.append(index)
        except StoreError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(stores[i % 2],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sorted(indices) == list(range(160))
    with stores[0].transaction(readonly=True) as tx:
        assert tx.counter("uses", "agreement") == 160
        assert tx.log_size("events") == 160
    for store in stores:
        store.close()


def test_postgres_writer_of_another_process_that_never_gets_its_turn(postgres: Any) -> None:
    url = postgres.database()
    holder, waiter = PostgresStore(url), PostgresStore(url, busy_timeout_ms=200)
    try:
        with holder.transaction() as tx:
            tx.put("doc", "a", {"v": 1})
            try:
                with waiter.transaction() as other:
                    other.put("doc", "b", {"v": 2})
                raised = None
            except StoreError as exc:
                raised = exc
        assert raised is not None and "busy" in str(raised)
        with waiter.transaction(readonly=True) as tx:
            assert tx.get("doc", "a") is not None and tx.get("doc", "b") is None
    finally:
        holder.close()
        waiter.close()
