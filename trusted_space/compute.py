"""A node's side of joint computations: the operations other nodes may call, and what they touch.

Why: every multi-party protocol step that runs *at* a node (a provider computing its encrypted
partial logit, the operator summing ciphertexts or dealing Beaver triples, a provider answering a
PSI request) is an **operation** registered on that node's :class:`ComputeNode`. The node's
transport edge (HTTP ``POST /compute/{operation}`` in ``connectors``; :class:`~trusted_space.
transport.InMemoryTransport` in tests) authenticates the sender and calls :meth:`ComputeNode.handle`
— a :data:`~trusted_space.transport.Handler`. Protocol modules add their operations with
:meth:`ComputeNode.register`; nothing here knows about HTTP.

What a node touches is behind small interfaces, each with an in-memory twin for tests:

- :class:`DataAccess`: the node's own datasets (read in chunks from CSV/Parquet/SQLite by the
  connector; arrays in tests). Raw rows never leave through it: protocols use them locally.
- the store and ledger (every use is an event on the provider's own ledger);
- a :class:`~trusted_space.transport.Transport` for calls the node itself makes onward (to the
  operator's aggregator or dealer).

Session state (keys received, PSI order, shares) lives in :attr:`ComputeNode.sessions`, in memory,
with an expiry; a session is bound to the sender that opened it. Session keys are
``<kind>/<query id>[/...]``, so a query its analyst cancelled (:meth:`SessionStore.cancel`) has
every session dropped at once, and none of that query can be opened or used again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from trusted_space.consent import ConsentRegistry
from trusted_space.errors import ConflictError, NotFoundError, ValidationError
from trusted_space.ledger import Ledger
from trusted_space.store import Store
from trusted_space.transport import Reply, Transport, check_operation

__all__ = [
    "SESSION_TTL_SECONDS",
    "CallContext",
    "ComputeNode",
    "DataAccess",
    "InMemoryData",
    "Operation",
    "SessionStore",
]

FloatArray = npt.NDArray[np.float64]
SESSION_TTL_SECONDS = 3600.0
_CANCELLED_KEPT = 4096


class DataAccess(Protocol):
    """A node's own tables, as protocols see them (numeric columns, keyed by entity id)."""

    def columns(self, dataset_id: str) -> list[str]:
        """Numeric columns the dataset offers (its table's fields, minus the key)."""
        ...

    def lookup(
        self, dataset_id: str, entities: Sequence[str], columns: Sequence[str]
    ) -> tuple[npt.NDArray[np.bool_], FloatArray]:
        """Rows for ``entities`` in that order: (found mask, values with NaN where not found)."""
        ...

    def scan(
        self, dataset_id: str, columns: Sequence[str], *, chunk_rows: int = 50_000
    ) -> Iterator[tuple[list[str], FloatArray]]:
        """Every row, in chunks of (keys, values)."""
        ...


class InMemoryData:
    """:class:`DataAccess` over arrays (tests, benchmarks of the crypto path)."""

    def __init__(self) -> None:
        self._tables: dict[str, tuple[list[str], list[str], FloatArray]] = {}

    def add(
        self, dataset_id: str, keys: Sequence[str], columns: Sequence[str], values: Any
    ) -> None:
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (len(keys), len(columns)):
            raise ValidationError(
                f"{dataset_id}: values of shape {array.shape} for {len(keys)} keys and "
                f"{len(columns)} columns"
            )
        if len(set(keys)) != len(keys):
            raise ValidationError(f"{dataset_id}: duplicate keys")
        self._tables[dataset_id] = (list(keys), list(columns), array)

    def _table(self, dataset_id: str) -> tuple[list[str], list[str], FloatArray]:
        try:
            return self._tables[dataset_id]
        except KeyError as exc:
            raise NotFoundError(f"no dataset {dataset_id!r}") from exc

    def _indexes(self, dataset_id: str, columns: Sequence[str]) -> list[int]:
        _, names, _ = self._table(dataset_id)
        out = []
        for c in columns:
            if c not in names:
                raise ValidationError(f"dataset {dataset_id!r} has no column {c!r}")
            out.append(names.index(c))
        return out

    def columns(self, dataset_id: str) -> list[str]:
        return list(self._table(dataset_id)[1])

    def lookup(
        self, dataset_id: str, entities: Sequence[str], columns: Sequence[str]
    ) -> tuple[npt.NDArray[np.bool_], FloatArray]:
        keys, _, values = self._table(dataset_id)
        cols = self._indexes(dataset_id, columns)
        position = {k: i for i, k in enumerate(keys)}
        found = np.array([e in position for e in entities], dtype=bool)
        out = np.full((len(entities), len(cols)), np.nan)
        rows = [position[e] for e in entities if e in position]
        if rows:
            out[found] = values[np.ix_(rows, cols)]
        return found, out

    def scan(
        self, dataset_id: str, columns: Sequence[str], *, chunk_rows: int = 50_000
    ) -> Iterator[tuple[list[str], FloatArray]]:
        keys, _, values = self._table(dataset_id)
        cols = self._indexes(dataset_id, columns)
        for start in range(0, len(keys), chunk_rows):
            yield keys[start : start + chunk_rows], values[start : start + chunk_rows][:, cols]


class SessionStore:
    """In-memory protocol state per (sender, session id), expiring after ``ttl`` seconds."""

    def __init__(self, ttl: float = SESSION_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._items: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._cancelled: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def query_of(session_id: str) -> str:
        """The query a session key belongs to (``score/q1`` and ``align/q1/ds`` → ``q1``)."""
        parts = session_id.split("/")
        return parts[1] if len(parts) > 1 else session_id

    def _refuse_cancelled(self, sender: str, session_id: str) -> None:
        query = self.query_of(session_id)
        if (sender, query) in self._cancelled:
            raise ConflictError(f"query {query!r} was cancelled by its analyst")

    def open(self, sender: str, session_id: str) -> dict[str, Any]:
        """Create (or return) the state of a session opened by ``sender``.

        Raises:
            ConflictError: ``sender`` cancelled the session's query.
        """
        with self._lock:
            self._expire()
            self._refuse_cancelled(sender, session_id)
            key = (sender, session_id)
            if key not in self._items:
                self._items[key] = (time.monotonic() + self.ttl, {})
            return self._items[key][1]

    def get(self, sender: str, session_id: str) -> dict[str, Any]:
        """The state of an open session; another sender's session is indistinguishable from none.

        Raises:
            NotFoundError: no such session for this sender (or it expired).
            ConflictError: ``sender`` cancelled the session's query.
        """
        with self._lock:
            self._expire()
            self._refuse_cancelled(sender, session_id)
            item = self._items.get((sender, session_id))
        if item is None:
            raise NotFoundError(f"no compute session {session_id!r}")
        return item[1]

    def close(self, sender: str, session_id: str) -> None:
        with self._lock:
            self._items.pop((sender, session_id), None)

    def cancel(self, sender: str, query: str) -> list[dict[str, Any]]:
        """Drop every session of ``sender``'s query ``query`` and refuse any later one.

        Returns the dropped sessions' states (the caller releases what they hold). The mark
        lasts as long as a session would (``ttl``); the newest :data:`_CANCELLED_KEPT` are kept.
        """
        with self._lock:
            self._expire()
            dropped = [k for k in self._items if k[0] == sender and self.query_of(k[1]) == query]
            states = [self._items.pop(k)[1] for k in dropped]
            self._cancelled[(sender, query)] = time.monotonic() + self.ttl
            self._cancelled.move_to_end((sender, query))
            while len(self._cancelled) > _CANCELLED_KEPT:
                self._cancelled.popitem(last=False)
        return states

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (until, _) in self._items.items() if until < now]:
            del self._items[key]
        for mark in [k for k, until in self._cancelled.items() if until < now]:
            del self._cancelled[mark]


@dataclass(frozen=True)
class CallContext:
    """One incoming call: who sent it (authenticated) and the node it reached."""

    sender: str
    operation: str
    node: ComputeNode


Operation = Callable[[CallContext, dict[str, Any], bytes], Reply]


@dataclass
class ComputeNode:
    """A node's compute side. Protocol modules register their operations on it.

    Attributes:
        participant_id: this node.
        store: this node's store.
        ledger: this node's ledger (receipts for uses come from it).
        data: this node's datasets (``None`` on a node without data, e.g. the operator).
        transport: for calls this node makes onward (aggregator, dealer).
        clock: the node's clock.
        operator: the space operator's id, set by the connector from its trust anchor. A provider
            sends partials and fetches Beaver triples only there, whatever an analyst names (an
            analyst naming itself would otherwise receive the partials); ``None`` (tests without
            an anchor) accepts the operator the analyst names.
        roles_of: ``participant id -> roles`` from the participant's operator-signed credential,
            for ``role`` constraints of policies; ``None``: every sender has no roles.
        consents: the data-subject authorisations this node holds, for policies that require
            consent (``None``: the node keeps no registry).
        score_workers: worker processes a provider's score session may use for its homomorphic
            products (CKKS weighted sums; the node's ``ckks_workers`` setting; 1: in-process).
    """

    participant_id: str
    store: Store
    ledger: Ledger
    data: DataAccess | None = None
    transport: Transport | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    operator: str | None = None
    roles_of: Callable[[str], frozenset[str]] | None = None
    consents: ConsentRegistry | None = None
    score_workers: int = 1
    sessions: SessionStore = field(default_factory=SessionStore)
    _operations: dict[str, Operation] = field(default_factory=dict)

    def register(self, operation: str, handler: Operation) -> None:
        """Make ``operation`` callable on this node (names are unique per node)."""
        check_operation(operation)
        if operation in self._operations:
            raise ValidationError(f"operation {operation!r} is already registered")
        self._operations[operation] = handler

    def sender_roles(self, sender: str) -> frozenset[str]:
        """The authenticated ``sender``'s roles (empty when no lookup is plugged in)."""
        return frozenset() if self.roles_of is None else frozenset(self.roles_of(sender))

    @property
    def operations(self) -> list[str]:
        return sorted(self._operations)

    def handle(self, sender: str, operation: str, header: dict[str, Any], payload: bytes) -> Reply:
        """Run one operation for an authenticated ``sender`` (a transport Handler).

        Raises:
            NotFoundError: no such operation on this node.
            and whatever the operation raises (ValidationError, RefusedError, ...).
        """
        handler = self._operations.get(operation)
        if handler is None:
            raise NotFoundError(f"no compute operation {operation!r} on {self.participant_id}")
        return handler(CallContext(sender, operation, self), header, payload)
