"""One shared suite for every Store backend: the in-memory twin, SQLite and PostgreSQL.

PostgreSQL is a real server the suite starts itself (``tests/_postgres.py``); each test gets an
empty database of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from tests._postgres import PostgresServer
from trusted_space.errors import ConflictError, LimitExceededError, NotFoundError, StoreError
from trusted_space.events import decode_event, record_event
from trusted_space.merkle import leaf_hash
from trusted_space.store import (
    MIGRATIONS,
    MemoryStore,
    PostgresStore,
    SQLiteStore,
    Store,
    open_store,
)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(tmp_path / "n.db")
    else:
        s = open_store(request.getfixturevalue("postgres").database())
    yield s
    s.close()


def test_put_get_versions(store: Store) -> None:
    with store.transaction() as tx:
        first = tx.put("dataset", "a", {"x": 1})
        second = tx.put("dataset", "a", {"x": 2}, expect_version=1)
    with store.transaction() as tx:
        got = tx.require("dataset", "a")
    assert (first.version, second.version, got.version) == (1, 2, 2)
    assert got.body == {"x": 2}


def test_stale_version_and_duplicate_insert_conflict(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert("agreement", "a1", {"signed": True})
    with pytest.raises(ConflictError), store.transaction() as tx:
        tx.insert("agreement", "a1", {"signed": False})
    with pytest.raises(ConflictError), store.transaction() as tx:
        tx.put("agreement", "a1", {"signed": False}, expect_version=7)
    with store.transaction() as tx:
        assert tx.require("agreement", "a1").body == {"signed": True}


def test_missing_document_is_none_or_not_found(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.get("dataset", "nope") is None
        with pytest.raises(NotFoundError):
            tx.require("dataset", "nope")


def test_failed_transaction_leaves_nothing(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction() as tx:
        tx.put("negotiation", "n1", {"state": "REQUESTED"})
        tx.increment("uses", "agr-1")
        record_event(tx, "negotiation.transition", {"id": "n1"})
        raise Boom
    with store.transaction() as tx:
        assert tx.get("negotiation", "n1") is None
        assert tx.counter("uses", "agr-1") == 0
        assert tx.log_size("events") == 0


def test_scan_prefix_and_delete(store: Store) -> None:
    with store.transaction() as tx:
        for key in ["b:2", "a:1", "b:1", "c:1"]:
            tx.put("replay", key, {"k": key})
        assert [d.key for d in tx.scan("replay", "b:")] == ["b:1", "b:2"]
        assert tx.delete("replay", "b:1") is True
        assert tx.delete("replay", "b:1") is False
        assert [d.key for d in tx.scan("replay")] == ["a:1", "b:2", "c:1"]


def test_counter_limit_refuses_without_change(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.increment("uses", "agr", limit=2) == 1
        assert tx.increment("uses", "agr", limit=2) == 2
    with pytest.raises(LimitExceededError), store.transaction() as tx:
        tx.increment("uses", "agr", limit=2)
    with store.transaction() as tx:
        assert tx.counter("uses", "agr") == 2
        with pytest.raises(ValueError, match="backwards"):
            tx.increment("uses", "agr", -1)


def test_counter_exact_under_concurrency(store: Store) -> None:
    limit, workers = 25, 16
    allowed: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            try:
                with store.transaction() as tx:
                    value = tx.increment("uses", "shared", limit=limit)
                with lock:
                    allowed.append(value)
            except LimitExceededError:
                pass

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(allowed) == list(range(1, limit + 1))


@given(entries=st.lists(st.binary(max_size=64), max_size=20))
def test_log_append_roundtrip_memory(entries: list[bytes]) -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        indices = [tx.log_append("events", e, leaf_hash(e)) for e in entries]
        assert indices == list(range(len(entries)))
        assert tx.log_entries("events", 0, len(entries) + 5) == entries
        assert tx.log_leaf_hashes("events", 0, len(entries)) == [leaf_hash(e) for e in entries]


def test_log_ranges_and_events(store: Store) -> None:
    with store.transaction() as tx:
        for i in range(5):
            record_event(tx, "query.use", {"i": i})
    with store.transaction() as tx:
        entries = tx.log_entries("events", 1, 3)
        assert [decode_event(1 + j, e).body["i"] for j, e in enumerate(entries)] == [1, 2]
        assert tx.log_size("events") == 5
        assert tx.log_size("other") == 0
        with pytest.raises(ValueError):
            tx.log_entries("events", 3, 1)


def test_non_json_body_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError), store.transaction() as tx:
        tx.put("dataset", "bad", {"x": float("nan")})


def test_sqlite_durability_settings(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "d.db")
    try:
        assert store.pragma("journal_mode") == "wal"
        assert store.pragma("synchronous") == 2  # FULL
    finally:
        store.close()


def test_a_commit_without_waiting_for_the_disk_is_seen_at_once_and_all_or_nothing(
    store: Store,
) -> None:
    with store.transaction(durable=False) as tx:
        tx.insert("replay", "bank/a", {"until": 1})
    with pytest.raises(RuntimeError), store.transaction(durable=False) as tx:
        tx.insert("replay", "bank/b", {"until": 1})
        raise RuntimeError("the request failed")
    with store.transaction(readonly=True) as tx:
        assert tx.require("replay", "bank/a").body == {"until": 1}
        assert tx.get("replay", "bank/b") is None
    with pytest.raises(ConflictError), store.transaction(durable=False) as tx:
        tx.insert("replay", "bank/a", {"until": 2})  # consumed once, whatever the flush


def _setting(tx: object, sql: str) -> object:
    return tx._c.exec_driver_sql(sql).scalar()  # type: ignore[attr-defined]


def test_sqlite_lazy_commit_is_normal_for_itself_and_leaves_its_connection_full(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "lazy.db")
    try:
        with store.transaction(durable=False) as tx:
            assert _setting(tx, "PRAGMA synchronous") == 1  # NORMAL: no fsync at this commit
            tx.put("replay", "k", {"until": 1})
        with pytest.raises(RuntimeError), store.transaction(durable=False) as tx:
            raise RuntimeError("rolled back")
        # One thread, one pooled connection: the next transactions run on the same one.
        assert store._engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        with store.transaction() as tx:
            assert _setting(tx, "PRAGMA synchronous") == 2  # FULL again
        assert store.pragma("synchronous") == 2
    finally:
        store.close()
    reopened = SQLiteStore(tmp_path / "lazy.db")
    try:
        with reopened.transaction(readonly=True) as tx:
            assert tx.require("replay", "k").body == {"until": 1}
    finally:
        reopened.close()


def test_postgres_lazy_commit_is_asynchronous_for_itself_only(postgres: PostgresServer) -> None:
    store = open_store(postgres.database())
    try:
        with store.transaction(durable=False) as tx:
            assert _setting(tx, "SHOW synchronous_commit") == "off"
            tx.put("replay", "k", {"until": 1})
        with store.transaction() as tx:
            assert _setting(tx, "SHOW synchronous_commit") == "on"
            assert tx.require("replay", "k").body == {"until": 1}
    finally:
        store.close()


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    first = SQLiteStore(path)
    with first.transaction() as tx:
        tx.put("dataset", "kept", {"v": 1})
        record_event(tx, "dataset.published", {"id": "kept"})
    first.close()
    second = open_store(f"sqlite:///{path}")
    with second.transaction() as tx:
        assert tx.require("dataset", "kept").body == {"v": 1}
        assert tx.log_size("events") == 1
    second.close()


def test_open_store_rejects_unknown_url() -> None:
    with pytest.raises(ValueError, match="unknown store URL"):
        open_store("mysql://x")
    with pytest.raises(ValueError, match="unknown store URL 'oracle://u:\\*\\*\\*@h'"):
        open_store("oracle://u:secret@h")  # the password is not echoed


def test_open_store_postgres_url_forms(postgres: PostgresServer) -> None:
    url = postgres.database()
    for form in (url, url.replace("postgresql://", "postgres://", 1)):
        store = open_store(form)
        assert isinstance(store, PostgresStore)
        assert store.schema_version() == MIGRATIONS[-1][0]
        store.close()


def test_unreachable_postgres_is_a_store_error_without_password() -> None:
    with pytest.raises(StoreError) as caught:
        PostgresStore("postgresql://u:hunter2@127.0.0.1:1/none", connect_timeout_s=2)
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_recorded_once_and_newer_schema_refused(
    backend: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else postgres.database()
    first = open_store(url)
    with first.transaction() as tx:
        tx.put("dataset", "kept", {"v": 1})
    first.close()
    second = open_store(url)  # reopening applies nothing twice and keeps the rows
    assert isinstance(second, SQLiteStore | PostgresStore)
    assert second.schema_version() == len(MIGRATIONS)
    with second._transaction(readonly=False) as raw:
        conn = raw._c
        rows = conn.exec_driver_sql("SELECT version FROM schema_version").scalars().all()
        assert sorted(rows) == [v for v, _, _ in MIGRATIONS]
        conn.exec_driver_sql(
            "INSERT INTO schema_version (version, description, applied_at) "
            "VALUES (999, 'from the future', 'x')"
        )
    with second.transaction() as tx:
        assert tx.require("dataset", "kept").body == {"v": 1}
    second.close()
    with pytest.raises(StoreError, match="schema version 999, newer than this release"):
        open_store(url)


def test_sqlite_store_written_before_migrations_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # the pre-migration schema: the three tables, no version table
        conn.exec_driver_sql(
            "CREATE TABLE documents (namespace VARCHAR(64) NOT NULL, key VARCHAR(512) NOT NULL, "
            "version INTEGER NOT NULL, body TEXT NOT NULL, updated_at VARCHAR(40) NOT NULL, "
            "PRIMARY KEY (namespace, key))"
        )
        conn.exec_driver_sql(
            "INSERT INTO documents VALUES ('dataset', 'old', 3, '{\"v\":1}', 'then')"
        )
    engine.dispose()
    store = SQLiteStore(path)
    with store.transaction() as tx:
        assert tx.require("dataset", "old").version == 3
        assert tx.increment("uses", "a") == 1  # the tables the old file lacked were created
    assert store.schema_version() == 1
    store.close()


def test_readonly_transaction_reads_and_refuses_writes(store: Store) -> None:
    with store.transaction() as tx:
        tx.put("dataset", "r", {"v": 1})
    with store.transaction(readonly=True) as tx:
        assert tx.require("dataset", "r").body == {"v": 1}
    if not isinstance(store, MemoryStore):
        with pytest.raises(StoreError), store.transaction(readonly=True) as tx:
            tx.put("dataset", "w", {"v": 2})
        with store.transaction() as tx:  # the connection is writable again afterwards
            tx.put("dataset", "w", {"v": 3})
            assert tx.require("dataset", "w").body == {"v": 3}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reader_does_not_wait_for_writer(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store: Store
    if backend == "sqlite":
        store = SQLiteStore(tmp_path / "c.db", busy_timeout_ms=200)
    else:
        store = PostgresStore(request.getfixturevalue("postgres").database(), busy_timeout_ms=200)
    try:
        with store.transaction() as tx:
            tx.put("dataset", "x", {"v": 1})
        with store.transaction() as writer:
            writer.put("dataset", "x", {"v": 2})
            with store.transaction(readonly=True) as reader:
                assert reader.require("dataset", "x").body == {"v": 1}  # snapshot, no lock wait
    finally:
        store.close()
