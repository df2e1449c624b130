"""The durable store every node runs on, behind one small interface.

Everything a node must not lose goes through a :class:`Store` transaction: documents (datasets,
policies, negotiations, agreements, consents, credentials, the replay cache), integer counters
(policy ``count`` limits, metering, privacy budgets) and the append-only event logs behind the
ledger. A transaction either commits whole or not at all, so a crash (``kill -9``) never leaves
half a record, and a ledger entry is written in the same transaction as the state change it
describes.

Backends:

- :class:`SQLiteStore`: SQLAlchemy 2 Core over SQLite in WAL mode with ``synchronous=FULL`` (an
  acknowledged commit survives power loss) and a busy timeout. Every write transaction starts with
  ``BEGIN IMMEDIATE``, which serialises writers: a counter checked and incremented inside one
  transaction is exact even when many requests arrive at once. Writers of one process also queue
  on a lock of their own before they take a connection: SQLite's busy handler polls with a
  growing sleep, so under a few dozen concurrent writers an unlucky one could poll for the whole
  busy timeout and fail with "database is locked" (a 503), and waiting writers held pooled
  connections a writer's nested read needed. The embedded default.
- :class:`PostgresStore`: the production store, the same SQL over PostgreSQL (psycopg 3). A write
  transaction takes one transaction-scoped advisory lock first (``pg_advisory_xact_lock``), the
  server-side twin of ``BEGIN IMMEDIATE``: writers of every process sharing the database are
  serialised, so the read-check-write of a version, a ``count`` or a log index is exact, with
  ``lock_timeout`` as the busy timeout. Read-only transactions are ``REPEATABLE READ READ ONLY``
  (a consistent snapshot that never waits for a writer). Keys compare bytewise (``COLLATE "C"``)
  so ``scan`` orders and filters exactly as SQLite does.
- :class:`MemoryStore`: the in-memory twin for fast tests, with the same semantics (one lock
  serialises transactions, an undo journal rolls back a failed one).

Both SQL backends keep their schema in numbered migrations (:data:`MIGRATIONS`), applied in order
at open inside one write transaction and recorded in a ``schema_version`` table; a database
written by a newer release is refused rather than misread (``docs/decisions.md``).

One shared test suite (``tests/trusted_space/test_store.py``) runs against all three, PostgreSQL on
a real server the test suite starts itself.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from trusted_space.errors import ConflictError, LimitExceededError, NotFoundError, StoreError

__all__ = [
    "MIGRATIONS",
    "Document",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "Transaction",
    "open_store",
]


@dataclass(frozen=True)
class Document:
    """A JSON document with an optimistic-concurrency version (1 on first write)."""

    namespace: str
    key: str
    version: int
    body: dict[str, Any]
    updated_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _encode(body: Mapping[str, Any]) -> str:
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"document body is not JSON-serialisable: {exc}") from exc


class Transaction(ABC):
    """Operations inside one atomic transaction. Obtain one from :meth:`Store.transaction`."""

    # -- documents -------------------------------------------------------------------------
    @abstractmethod
    def get(self, namespace: str, key: str) -> Document | None:
        """Return the document or ``None`` when absent (absence is an answer, not a failure)."""

    def require(self, namespace: str, key: str) -> Document:
        """Return the document or raise :class:`NotFoundError`."""
        doc = self.get(namespace, key)
        if doc is None:
            raise NotFoundError(f"no {namespace} with id {key!r}")
        return doc

    @abstractmethod
    def put(
        self,
        namespace: str,
        key: str,
        body: Mapping[str, Any],
        *,
        expect_version: int | None = None,
    ) -> Document:
        """Write a document.

        Args:
            namespace: the collection, e.g. ``"negotiation"``.
            key: the id within the namespace.
            body: a JSON-compatible mapping.
            expect_version: ``None`` writes unconditionally; ``0`` requires that the document does
                not exist yet; ``n`` requires that the stored version is ``n``. Otherwise
                :class:`ConflictError` is raised and nothing is written.
        """

    def insert(self, namespace: str, key: str, body: Mapping[str, Any]) -> Document:
        """Create a document that must not exist yet (:class:`ConflictError` if it does)."""
        return self.put(namespace, key, body, expect_version=0)

    @abstractmethod
    def scan(self, namespace: str, prefix: str = "") -> list[Document]:
        """All documents of a namespace whose key starts with ``prefix``, ordered by key."""

    @abstractmethod
    def delete(self, namespace: str, key: str) -> bool:
        """Delete a document; return whether it existed."""

    # -- counters --------------------------------------------------------------------------
    @abstractmethod
    def counter(self, namespace: str, key: str) -> int:
        """Current value of a counter (0 when never incremented)."""

    @abstractmethod
    def increment(
        self, namespace: str, key: str, delta: int = 1, *, limit: int | None = None
    ) -> int:
        """Add ``delta`` (≥ 0: counters never go backwards) and return the new value.

        Raises:
            LimitExceededError: the new value would exceed ``limit``; nothing is changed.
        """

    # -- append-only logs ------------------------------------------------------------------
    @abstractmethod
    def log_append(self, log: str, entry: bytes, leaf_hash: bytes) -> int:
        """Append an entry and its RFC 6962 leaf hash; return its index (0-based)."""

    @abstractmethod
    def log_size(self, log: str) -> int:
        """Number of entries in a log."""

    @abstractmethod
    def log_entries(self, log: str, start: int, end: int) -> list[bytes]:
        """Entries with ``start <= index < end`` (clipped to the log's size)."""

    @abstractmethod
    def log_leaf_hashes(self, log: str, start: int, end: int) -> list[bytes]:
        """Leaf hashes with ``start <= index < end`` (clipped to the log's size)."""


class Store(ABC):
    """A transactional store. ``with store.transaction() as tx: ...`` commits on success."""

    @abstractmethod
    def transaction(self, *, readonly: bool = False, durable: bool = True) -> Any:
        """Return a context manager yielding a :class:`Transaction`.

        ``readonly=True`` promises that the block only reads: on SQLite it starts a deferred
        transaction that does not take the writer lock (a consistent snapshot under WAL), so
        readers never queue behind writers. Writing inside it fails with :class:`StoreError`.

        ``durable=False`` commits without waiting for the disk: the commit is visible at once,
        survives a crash of the process, and reaches the disk with the next durable commit of
        the same store (whose flush covers every earlier commit of the log) or the backend's own
        flush. For records that only guard the durable work that follows them (the replay cache:
        decision 58); never for anything acknowledged to a caller as kept.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources held by the backend."""


def _check_delta(delta: int) -> None:
    if delta < 0:
        raise ValueError("counters never go backwards: delta must be >= 0")


def _check_range(start: int, end: int) -> None:
    if start < 0 or end < start:
        raise ValueError(f"bad range [{start}, {end})")


# ----------------------------------------------------------------------------------------------
# In-memory twin
# ----------------------------------------------------------------------------------------------


class _MemoryTx(Transaction):
    def __init__(self, store: MemoryStore) -> None:
        self._s = store
        self._undo: list[Any] = []

    def get(self, namespace: str, key: str) -> Document | None:
        return self._s._docs.get((namespace, key))

    def put(
        self,
        namespace: str,
        key: str,
        body: Mapping[str, Any],
        *,
        expect_version: int | None = None,
    ) -> Document:
        current = self._s._docs.get((namespace, key))
        version = current.version if current else 0
        if expect_version is not None and expect_version != version:
            raise ConflictError(
                f"{namespace} {key!r} is at version {version}, expected {expect_version}"
            )
        doc = Document(namespace, key, version + 1, json.loads(_encode(body)), _now())
        self._undo.append(("doc", (namespace, key), current))
        self._s._docs[(namespace, key)] = doc
        return doc

    def scan(self, namespace: str, prefix: str = "") -> list[Document]:
        return sorted(
            (d for (ns, k), d in self._s._docs.items() if ns == namespace and k.startswith(prefix)),
            key=lambda d: d.key,
        )

    def delete(self, namespace: str, key: str) -> bool:
        current = self._s._docs.pop((namespace, key), None)
        if current is not None:
            self._undo.append(("doc", (namespace, key), current))
        return current is not None

    def counter(self, namespace: str, key: str) -> int:
        return self._s._counters.get((namespace, key), 0)

    def increment(
        self, namespace: str, key: str, delta: int = 1, *, limit: int | None = None
    ) -> int:
        _check_delta(delta)
        old = self._s._counters.get((namespace, key), 0)
        new = old + delta
        if limit is not None and new > limit:
            raise LimitExceededError(f"counter {namespace}/{key} at {old}: +{delta} > {limit}")
        self._undo.append(("counter", (namespace, key), old))
        self._s._counters[(namespace, key)] = new
        return new

    def log_append(self, log: str, entry: bytes, leaf_hash: bytes) -> int:
        entries = self._s._logs.setdefault(log, [])
        entries.append((bytes(entry), bytes(leaf_hash)))
        self._undo.append(("log", log, None))
        return len(entries) - 1

    def log_size(self, log: str) -> int:
        return len(self._s._logs.get(log, []))

    def log_entries(self, log: str, start: int, end: int) -> list[bytes]:
        _check_range(start, end)
        return [e for e, _ in self._s._logs.get(log, [])[start:end]]

    def log_leaf_hashes(self, log: str, start: int, end: int) -> list[bytes]:
        _check_range(start, end)
        return [h for _, h in self._s._logs.get(log, [])[start:end]]

    def _rollback(self) -> None:
        for kind, key, old in reversed(self._undo):
            if kind == "doc":
                if old is None:
                    self._s._docs.pop(key, None)
                else:
                    self._s._docs[key] = old
            elif kind == "counter":
                self._s._counters[key] = old
            else:
                self._s._logs[key].pop()


class MemoryStore(Store):
    """In-memory twin of :class:`SQLiteStore`: same semantics, nothing survives the process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._docs: dict[tuple[str, str], Document] = {}
        self._counters: dict[tuple[str, str], int] = {}
        self._logs: dict[str, list[tuple[bytes, bytes]]] = {}

    @contextmanager
    def transaction(self, *, readonly: bool = False, durable: bool = True) -> Iterator[Transaction]:
        with self._lock:
            tx = _MemoryTx(self)
            try:
                yield tx
            except BaseException:
                tx._rollback()
                raise


# ----------------------------------------------------------------------------------------------
# SQLite (SQLAlchemy 2 Core)
# ----------------------------------------------------------------------------------------------

_meta = sa.MetaData()
# Keys compare bytewise on every backend: PostgreSQL's default collation would order "b:1" and
# "a:2" by locale rules and break ``scan``'s prefix range.
_Key = sa.String(512).with_variant(sa.String(512, collation="C"), "postgresql")
_Name = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")
_documents = sa.Table(
    "documents",
    _meta,
    sa.Column("namespace", _Name, primary_key=True),
    sa.Column("key", _Key, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
)
_counters = sa.Table(
    "counters",
    _meta,
    sa.Column("namespace", _Name, primary_key=True),
    sa.Column("key", _Key, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
_log = sa.Table(
    "log_entries",
    _meta,
    sa.Column("log", _Name, primary_key=True),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("entry", sa.LargeBinary, nullable=False),
    sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
)
_schema_version = sa.Table(
    "schema_version",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.String(40), nullable=False),
)


def _initial_schema(conn: Connection) -> None:
    # checkfirst: a SQLite store written before migrations existed already has these tables.
    _meta.create_all(conn, checkfirst=True)


MIGRATIONS: tuple[tuple[int, str, Any], ...] = (
    (1, "documents, counters and append-only logs", _initial_schema),
)
"""The schema's history, oldest first: ``(version, description, apply(connection))``.

A change of schema is a new entry at the end, written for both backends; entries are never edited
once released (a node upgraded in place runs the ones it has not seen yet)."""


def _migrate(conn: Connection, where: str) -> None:
    """Apply the migrations this database has not seen, inside the caller's write transaction."""
    _schema_version.create(conn, checkfirst=True)
    applied = {int(v) for v in conn.execute(sa.select(_schema_version.c.version)).scalars()}
    known = {version for version, _, _ in MIGRATIONS}
    newer = sorted(applied - known)
    if newer:
        raise StoreError(
            f"store at {where} has schema version {newer[-1]}, newer than this release knows "
            f"({max(known)}): upgrade trusted-space before opening it"
        )
    for version, description, apply in MIGRATIONS:
        if version not in applied:
            apply(conn)
            conn.execute(
                _schema_version.insert().values(
                    version=version, description=description, applied_at=_now()
                )
            )


# The statements of every transaction, built once with bound parameters: building a clause and
# its cache key per call cost more than running it on SQLite (decision 59).
_DOC_WHERE = sa.and_(
    _documents.c.namespace == sa.bindparam("ns"), _documents.c.key == sa.bindparam("k")
)
_DOC_GET = sa.select(_documents).where(_DOC_WHERE)
_DOC_INSERT = _documents.insert()
_DOC_UPDATE = (
    _documents.update()
    .where(_DOC_WHERE)
    .values(
        version=sa.bindparam("new_version"),
        body=sa.bindparam("new_body"),
        updated_at=sa.bindparam("new_at"),
    )
)
_DOC_DELETE = _documents.delete().where(_DOC_WHERE)
_COUNTER_WHERE = sa.and_(
    _counters.c.namespace == sa.bindparam("ns"), _counters.c.key == sa.bindparam("k")
)
_COUNTER_GET = sa.select(_counters.c.value).where(_COUNTER_WHERE)
_COUNTER_INSERT = _counters.insert()
_COUNTER_UPDATE = _counters.update().where(_COUNTER_WHERE).values(value=sa.bindparam("new_value"))
_LOG_INSERT = _log.insert()
_LOG_SIZE = sa.select(sa.func.max(_log.c.idx)).where(_log.c.log == sa.bindparam("log"))


def _log_range(column: sa.Column[Any]) -> sa.Select[Any]:
    return (
        sa.select(column)
        .where(
            _log.c.log == sa.bindparam("log"),
            _log.c.idx >= sa.bindparam("start"),
            _log.c.idx < sa.bindparam("end"),
        )
        .order_by(_log.c.idx)
    )


_LOG_ENTRIES = _log_range(_log.c.entry)
_LOG_LEAF_HASHES = _log_range(_log.c.leaf_hash)


class _SQLTx(Transaction):
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def get(self, namespace: str, key: str) -> Document | None:
        row = self._c.execute(_DOC_GET, {"ns": namespace, "k": key}).first()
        if row is None:
            return None
        return Document(row.namespace, row.key, row.version, json.loads(row.body), row.updated_at)

    def put(
        self,
        namespace: str,
        key: str,
        body: Mapping[str, Any],
        *,
        expect_version: int | None = None,
    ) -> Document:
        encoded = _encode(body)
        current = self.get(namespace, key)
        version = current.version if current else 0
        if expect_version is not None and expect_version != version:
            raise ConflictError(
                f"{namespace} {key!r} is at version {version}, expected {expect_version}"
            )
        now = _now()
        if current is None:
            self._c.execute(
                _DOC_INSERT,
                {
                    "namespace": namespace,
                    "key": key,
                    "version": 1,
                    "body": encoded,
                    "updated_at": now,
                },
            )
        else:
            self._c.execute(
                _DOC_UPDATE,
                {
                    "ns": namespace,
                    "k": key,
                    "new_version": version + 1,
                    "new_body": encoded,
                    "new_at": now,
                },
            )
        return Document(namespace, key, version + 1, json.loads(encoded), now)

    def scan(self, namespace: str, prefix: str = "") -> list[Document]:
        query = sa.select(_documents).where(_documents.c.namespace == namespace)
        if prefix:
            # Range on the primary key instead of LIKE: no wildcard escaping, uses the index.
            query = query.where(
                _documents.c.key >= prefix, _documents.c.key < prefix + "\U0010ffff"
            )
        rows = self._c.execute(query.order_by(_documents.c.key)).all()
        return [
            Document(r.namespace, r.key, r.version, json.loads(r.body), r.updated_at) for r in rows
        ]

    def delete(self, namespace: str, key: str) -> bool:
        result = self._c.execute(_DOC_DELETE, {"ns": namespace, "k": key})
        return bool(result.rowcount)

    def counter(self, namespace: str, key: str) -> int:
        value = self._c.execute(_COUNTER_GET, {"ns": namespace, "k": key}).scalar()
        return int(value or 0)

    def increment(
        self, namespace: str, key: str, delta: int = 1, *, limit: int | None = None
    ) -> int:
        _check_delta(delta)
        old = self.counter(namespace, key)
        new = old + delta
        if limit is not None and new > limit:
            raise LimitExceededError(f"counter {namespace}/{key} at {old}: +{delta} > {limit}")
        if old == 0 and not self._counter_exists(namespace, key):
            self._c.execute(_COUNTER_INSERT, {"namespace": namespace, "key": key, "value": new})
        else:
            self._c.execute(_COUNTER_UPDATE, {"ns": namespace, "k": key, "new_value": new})
        return new

    def _counter_exists(self, namespace: str, key: str) -> bool:
        return self._c.execute(_COUNTER_GET, {"ns": namespace, "k": key}).first() is not None

    def log_append(self, log: str, entry: bytes, leaf_hash: bytes) -> int:
        index = self.log_size(log)
        self._c.execute(
            _LOG_INSERT,
            {"log": log, "idx": index, "entry": bytes(entry), "leaf_hash": bytes(leaf_hash)},
        )
        return index

    def log_size(self, log: str) -> int:
        value = self._c.execute(_LOG_SIZE, {"log": log}).scalar()
        return 0 if value is None else int(value) + 1

    def _log_column(self, statement: sa.Select[Any], log: str, start: int, end: int) -> list[bytes]:
        _check_range(start, end)
        rows = self._c.execute(statement, {"log": log, "start": start, "end": end}).scalars()
        return [bytes(v) for v in rows]

    def log_entries(self, log: str, start: int, end: int) -> list[bytes]:
        return self._log_column(_LOG_ENTRIES, log, start, end)

    def log_leaf_hashes(self, log: str, start: int, end: int) -> list[bytes]:
        return self._log_column(_LOG_LEAF_HASHES, log, start, end)


class _SQLStore(Store):
    """What both SQL backends share: the writers' queue, the transaction shape and migrations.

    Writers of one process queue on a lock of their own before they take a pooled connection, so
    a writer that reads through a nested read-only transaction always finds a free connection
    (see ``tests/trusted_space/test_store_concurrency.py``); the backend's ``begin`` hook then
    serialises writers across processes (``BEGIN IMMEDIATE`` or an advisory lock).
    """

    _engine: Engine
    _busy_timeout: float
    _where: str

    def _start(self) -> None:
        self._writer = threading.Lock()
        try:
            with self._transaction(readonly=False) as tx:
                _migrate(tx._c, self._where)
        except StoreError:
            self._engine.dispose()
            raise

    def schema_version(self) -> int:
        """The newest migration applied to this database (shown by ``/readyz`` and the tests)."""
        with self._transaction(readonly=True) as tx:
            value = tx._c.execute(sa.select(sa.func.max(_schema_version.c.version))).scalar()
        return int(value or 0)

    @contextmanager
    def transaction(self, *, readonly: bool = False, durable: bool = True) -> Iterator[Transaction]:
        if readonly:
            with self._transaction(readonly=True) as tx:
                yield tx
            return
        if not self._writer.acquire(timeout=self._busy_timeout):
            raise StoreError(f"store busy: no write turn within {self._busy_timeout:g} s")
        try:
            with self._transaction(readonly=False, durable=durable) as tx:
                yield tx
        finally:
            self._writer.release()

    def _after(self, conn: Connection, readonly: bool, durable: bool) -> None:
        """Undo per-transaction connection settings (SQLite's ``query_only``, ``synchronous``)."""

    @contextmanager
    def _transaction(self, *, readonly: bool, durable: bool = True) -> Iterator[_SQLTx]:
        try:
            with self._engine.connect() as conn:
                conn.info["ts_readonly"] = readonly
                conn.info["ts_durable"] = durable
                try:
                    with conn.begin():
                        yield _SQLTx(conn)
                finally:
                    self._after(conn, readonly, durable)
        except SQLAlchemyError as exc:
            if getattr(getattr(exc, "orig", None), "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                raise StoreError(
                    f"store busy: no write turn within {self._busy_timeout:g} s"
                ) from exc
            raise StoreError(f"store transaction failed: {_reason(exc)}") from exc

    def close(self) -> None:
        self._engine.dispose()


_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout expired (another process's writer)


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's message without SQLAlchemy's echo of the statement and its parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SQLiteStore(_SQLStore):
    """SQLite in WAL mode with ``synchronous=FULL``; the schema is migrated at open.

    Args:
        path: the database file (created with its directory if missing).
        busy_timeout_ms: how long a writer waits for another writer's lock before failing.
        synchronous: ``"FULL"`` by default; ``"NORMAL"`` trades the last transactions on power
            loss (not on process crash) for speed and must be asked for explicitly.
    """

    def __init__(
        self, path: str | Path, *, busy_timeout_ms: int = 30_000, synchronous: str = "FULL"
    ) -> None:
        if synchronous not in ("FULL", "EXTRA", "NORMAL"):
            raise ValueError(f"synchronous must be FULL, EXTRA or NORMAL, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._where = str(self.path)
        self._busy_timeout = busy_timeout_ms / 1000
        self._engine = sa.create_engine(
            f"sqlite:///{self.path}",
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
            pool_size=8,
            max_overflow=24,
        )

        @event.listens_for(self._engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(self._engine, "begin")
        def _on_begin(conn: Connection) -> None:
            readonly = conn.info.get("ts_readonly", False)
            if not conn.info.get("ts_durable", True):
                # WAL mode: this commit appends to the log without fsync; the next FULL commit's
                # fsync of the same log file carries it to the disk (decision 58).
                conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
            conn.exec_driver_sql("BEGIN DEFERRED" if readonly else "BEGIN IMMEDIATE")
            if readonly:
                conn.exec_driver_sql("PRAGMA query_only=ON")

        try:
            self._start()
        except StoreError as exc:
            raise StoreError(f"cannot open store at {self.path}: {exc}") from exc

    def _after(self, conn: Connection, readonly: bool, durable: bool) -> None:
        if not durable:  # outside any transaction (the driver runs in autocommit)
            conn.info["ts_durable"] = True
            driver = conn.connection.driver_connection
            assert driver is not None  # a checked-out connection always has one
            driver.execute(f"PRAGMA synchronous={self.synchronous}")
        if readonly:
            conn.exec_driver_sql("PRAGMA query_only=OFF")
            conn.commit()

    def pragma(self, name: str) -> Any:
        """Read a PRAGMA value (used by tests and ``/readyz`` to show the durability settings)."""
        if not name.isidentifier():
            raise ValueError(f"bad pragma name {name!r}")
        with self._engine.connect() as conn:
            return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


# Any constant works: the lock is per database, and only this store takes advisory locks in it.
_WRITER_LOCK = 0x7473_7374_6F72_6501 & 0x7FFF_FFFF_FFFF_FFFF


class PostgresStore(_SQLStore):
    """PostgreSQL through psycopg 3; the schema is migrated at open.

    Writers are serialised by one transaction-scoped advisory lock, so every node process (and an
    operator's ``psql`` doing the same) sees the store exactly as one SQLite file: a ``count`` is
    never exceeded, a log index never repeats. Durability is the server's (``fsync`` and
    ``synchronous_commit`` on, the defaults): an acknowledged commit is in its WAL.

    Args:
        url: ``postgresql://user:password@host:port/database`` (``postgres://`` and
            ``postgresql+psycopg://`` are accepted too); libpq's query parameters such as
            ``sslmode=verify-full`` pass through.
        busy_timeout_ms: how long a writer waits for another writer's lock before failing.
        connect_timeout_s: how long opening a connection may take before the store is unreachable.
    """

    def __init__(
        self, url: str, *, busy_timeout_ms: int = 30_000, connect_timeout_s: int = 10
    ) -> None:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
            raise ValueError(f"not a PostgreSQL URL: {_redact(url)!r}")
        self.url = f"postgresql+psycopg://{rest}"
        self._where = _redact(url)
        self._busy_timeout = busy_timeout_ms / 1000
        self._engine = sa.create_engine(
            self.url,
            connect_args={"connect_timeout": connect_timeout_s},
            pool_size=8,
            max_overflow=24,
            pool_pre_ping=True,  # a server restart between transactions is not an error
            isolation_level="AUTOCOMMIT",  # we issue BEGIN ourselves, as on SQLite
        )
        timeout_ms = int(busy_timeout_ms)

        @event.listens_for(self._engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.info.get("ts_readonly", False):
                conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                return
            conn.exec_driver_sql("BEGIN ISOLATION LEVEL READ COMMITTED")
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {timeout_ms}")
            if not conn.info.get("ts_durable", True):
                # The WAL flush of any later synchronous commit covers this one (decision 58);
                # otherwise the WAL writer flushes it within 3 x wal_writer_delay.
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_WRITER_LOCK})")

        try:
            self._start()
        except StoreError as exc:
            raise StoreError(f"cannot open store at {self._where}: {exc}") from exc


def _redact(url: str) -> str:
    """The URL without its password (a store URL is shown in errors and ``/readyz``)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def open_store(url: str) -> Store:
    """Open a store from a URL: ``sqlite:///PATH``, ``postgresql://...`` or ``memory:``."""
    if url == "memory:":
        return MemoryStore()
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url.split("://", 1)[0] in ("postgres", "postgresql", "postgresql+psycopg"):
        return PostgresStore(url)
    raise ValueError(
        f"unknown store URL {_redact(url)!r}: use sqlite:///PATH, postgresql://... or memory:"
    )
