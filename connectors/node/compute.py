"""A node's compute side, wired to what the node really has: its sources, store, keys and peers.

:mod:`trusted_space.compute` and the protocols in :mod:`trusted_space.protocols` are written
against small interfaces (a :class:`~trusted_space.compute.DataAccess`, a
:class:`~trusted_space.transport.Transport`, and the typed services of ``ComputeNode``: operator
id, roles lookup, consent registry); this module supplies the real ones for a running node and
registers the operations its roles serve:

- :class:`SourceData`: the node's *published* datasets, read from their registered sources
  (:mod:`connectors.node.sources`, store namespace ``source``). A query's lookups are served from a
  **column cache**: a dataset's key column (an Arrow string array) and its numeric columns
  (float64), read once and matched with a vectorised hash lookup
  (:func:`pyarrow.compute.index_in`), so repeated queries never re-parse a CSV. An entry is
  checked at every use against the dataset's published version, its source spec and the file's
  size, modification and change times (and an SQLite write-ahead log's), and is re-read when any
  of them changed. The cache is bounded in bytes (the node's ``data_cache_mb`` setting,
  ``TS_DATA_CACHE_MB``, default 1 GiB; least recently used first out); a dataset whose estimated
  size (rows times (8 bytes per numeric column + 32)) is above the bound is never cached and is
  streamed in chunks instead, holding only the wanted ids and their rows. A source that no longer
  reads cleanly (the file was changed or removed after publication) is a
  :class:`~trusted_space.errors.StoreError` whose message names the dataset only: the file path,
  row and cell stay in this node's log, because the error travels back to another institution.
- :class:`HttpTransport`: ``call(peer, operation, header, payload)`` is a signed
  ``POST {peer url}/compute/{operation}`` with the framed body
  (:func:`trusted_space.transport.frame`) through ``runtime.client``. A problem answer becomes a
  :class:`~trusted_space.errors.RemoteError` carrying the peer's problem document, so a
  provider's ``403`` and its policy trace reach the analyst; an unreachable peer is a
  ``RemoteError`` with status ``503`` and a ``not-ready`` document (as in memory).
- :func:`compute_node`: the node's :class:`~trusted_space.compute.ComputeNode`, built on first use
  and kept by the runtime (:meth:`~connectors.node.runtime.NodeRuntime.service`), with the
  consent registry, a roles lookup from stored (operator-signed) credentials, and the space's
  operator id (a provider sends partials and
  fetches triples only there, whatever an analyst names). Operations by role: the operator serves
  the key-less aggregator and the Beaver dealers (scores, training); a provider serves score, PSI
  alignment, aggregate and training operations; every node serves ``query.cancel``.

Threats: the sender of every operation is the participant that signed the HTTP request (the
router passes ``verified.participant_id``), never a header claim; the data interface exposes only
numeric, non-key columns of datasets this node published, and every protocol calls
:func:`trusted_space.enforcement.authorize_use` before it touches them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final

import httpx
import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from connectors.common.settings import DEFAULT_DATA_CACHE_MB
from connectors.node.runtime import NodeRuntime
from connectors.node.sources import (
    DEFAULT_CHUNK_ROWS,
    SOURCE_NAMESPACE,
    Chunk,
    Source,
    SourceSpec,
    load_spec,
    open_source,
)
from crypto.psi import psi_executor
from trusted_space.catalog import Dataset, FieldType, load_dataset
from trusted_space.compute import ComputeNode
from trusted_space.enforcement import NUMERIC_TYPES
from trusted_space.errors import (
    NotFoundError,
    NotReadyError,
    RemoteError,
    StoreError,
    ValidationError,
    problem_document,
)
from trusted_space.protocols.aggregate import register_aggregate
from trusted_space.protocols.align import register_align
from trusted_space.protocols.cancel import register_cancel
from trusted_space.protocols.operator import register_operator
from trusted_space.protocols.score import register_approval, register_provider
from trusted_space.protocols.train_ops import register_train, register_train_dealer
from trusted_space.store import Store
from trusted_space.transport import Reply, Transport, check_operation, frame, unframe

__all__ = [
    "COMPUTE_CONTENT_TYPE",
    "DEFAULT_CACHE_BYTES",
    "ColumnCache",
    "HttpTransport",
    "SourceData",
    "build_compute_node",
    "compute_node",
    "forget_compute_node",
    "roles_lookup",
]

log = logging.getLogger("trusted_space.compute")

COMPUTE_CONTENT_TYPE: Final = "application/octet-stream"
"""Media type of framed compute bodies, both ways."""

DEFAULT_CACHE_BYTES: Final = int(DEFAULT_DATA_CACHE_MB * (1 << 20))
"""The column cache's bound when none is given (the settings' default, 1 GiB)."""

FloatArray = npt.NDArray[np.float64]
_TRUE: Final = frozenset({"1", "true", "t", "yes", "y"})
_FALSE: Final = frozenset({"0", "false", "f", "no", "n"})


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One dataset's columns in memory, valid while its ``stamp`` holds."""

    stamp: tuple[Any, ...]
    keys: Any  # pyarrow.StringArray, unique
    values: Mapping[str, FloatArray]
    nbytes: int

    def __len__(self) -> int:
        return len(self.keys)


class ColumnCache:
    """Whole-dataset key and numeric columns, least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def get(self, dataset_id: str, stamp: tuple[Any, ...]) -> _Entry | None:
        """The entry, if it was made under ``stamp`` (a stale one is dropped)."""
        with self._lock:
            entry = self._entries.get(dataset_id)
            if entry is None:
                return None
            if entry.stamp != stamp:
                del self._entries[dataset_id]
                return None
            self._entries.move_to_end(dataset_id)
            return entry

    def put(self, dataset_id: str, entry: _Entry) -> None:
        """Keep ``entry`` (if it fits at all), evicting the least recently used."""
        with self._lock:
            self._entries.pop(dataset_id, None)
            if entry.nbytes > self.max_bytes:
                return
            while self._entries and (
                sum(e.nbytes for e in self._entries.values()) + entry.nbytes > self.max_bytes
            ):
                self._entries.popitem(last=False)
            self._entries[dataset_id] = entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass(frozen=True)
class _Resolved:
    dataset: Dataset
    spec: SourceSpec
    version: int
    rows: int | None


def _file_stamp(path: str) -> tuple[int, ...]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1,)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class SourceData:
    """:class:`~trusted_space.compute.DataAccess` over the node's published, registered sources.

    Args:
        store: the node's store (datasets and source specs are read from it at every call, so a
            replaced or withdrawn dataset takes effect at once).
        participant_id: this node (named in errors sent back to peers).
        chunk_rows: rows per chunk read from a source.
        cache_bytes: the column cache's bound (the node passes its ``data_cache_bytes``
            setting; ``0`` streams every lookup).
    """

    def __init__(
        self,
        store: Store,
        participant_id: str,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be positive")
        self._store = store
        self._participant = participant_id
        self.chunk_rows = chunk_rows
        self.cache = ColumnCache(cache_bytes)
        self._building: dict[str, threading.Lock] = {}
        self._building_lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------------------
    def _resolve(self, dataset_id: str) -> _Resolved:
        with self._store.transaction(readonly=True) as tx:
            published = load_dataset(tx, dataset_id)
            try:
                spec = load_spec(tx, dataset_id)
            except NotFoundError as exc:
                raise NotFoundError(f"dataset {dataset_id!r} has no source here") from exc
            doc = tx.get(SOURCE_NAMESPACE, dataset_id)
        rows = doc.body.get("rows") if doc is not None else None
        return _Resolved(
            published.dataset,
            spec,
            published.version,
            rows if isinstance(rows, int) and not isinstance(rows, bool) else None,
        )

    def _open(self, dataset_id: str, spec: SourceSpec) -> Source:
        try:
            return open_source(spec)
        except ValidationError as exc:
            raise self._unreadable(dataset_id, exc) from exc

    def _dataset(self, dataset_id: str) -> tuple[Dataset, Source]:
        resolved = self._resolve(dataset_id)
        return resolved.dataset, self._open(dataset_id, resolved.spec)

    def _unreadable(self, dataset_id: str, exc: Exception) -> StoreError:
        log.error("dataset %s cannot be read from its source: %s", dataset_id, exc)
        return StoreError(
            f"dataset {dataset_id!r} at {self._participant} cannot be read from its source "
            "(changed since it was published?); its staff can see why in the node's log"
        )

    @staticmethod
    def _numeric(dataset: Dataset) -> dict[str, FieldType]:
        return {
            f.name: f.type
            for f in dataset.table.fields
            if f.type in NUMERIC_TYPES and f.name != dataset.key_column
        }

    @classmethod
    def _check_columns(cls, dataset: Dataset, columns: Sequence[str]) -> list[FieldType]:
        numeric = cls._numeric(dataset)
        kinds = []
        for c in columns:
            if c not in numeric:
                raise ValidationError(f"dataset {dataset.id!r} has no numeric column {c!r}")
            kinds.append(numeric[c])
        if len(set(columns)) != len(columns):
            raise ValidationError(f"columns {list(columns)} name a column twice")
        return kinds

    def _read_chunks(
        self,
        dataset_id: str,
        dataset: Dataset,
        source: Source,
        columns: Sequence[str],
        chunk_rows: int,
    ) -> Generator[tuple[list[str], FloatArray], None, None]:
        kinds = self._check_columns(dataset, columns)
        booleans = FieldType.BOOL in kinds
        try:
            for chunk in source.chunks(
                dataset.key_column, list(columns), chunk_rows=chunk_rows, numeric=not booleans
            ):
                yield chunk.keys, _matrix(chunk, columns, kinds, booleans)
        except ValidationError as exc:
            raise self._unreadable(dataset_id, exc) from exc

    def _chunks(
        self, dataset_id: str, columns: Sequence[str], chunk_rows: int
    ) -> Generator[tuple[list[str], FloatArray], None, None]:
        """(keys, values) per chunk, values as float64 in ``columns`` order."""
        dataset, source = self._dataset(dataset_id)
        return self._read_chunks(dataset_id, dataset, source, columns, chunk_rows)

    # -- the column cache ------------------------------------------------------------------
    def _stamp(self, resolved: _Resolved) -> tuple[Any, ...]:
        spec = resolved.spec
        wal = _file_stamp(spec.path + "-wal") if spec.kind == "sqlite" else ()
        return (
            resolved.version,
            json.dumps(spec.to_json(), sort_keys=True),
            _file_stamp(spec.path),
            wal,
        )

    def _cached(self, dataset_id: str, resolved: _Resolved) -> _Entry | None:
        """The dataset's cached columns (read now if missing or stale); ``None`` if too big."""
        stamp = self._stamp(resolved)
        entry = self.cache.get(dataset_id, stamp)
        if entry is not None:
            return entry
        names = list(self._numeric(resolved.dataset))
        if resolved.rows is None or resolved.rows * (8 * len(names) + 32) > self.cache.max_bytes:
            return None
        with self._building_lock:
            lock = self._building.setdefault(dataset_id, threading.Lock())
        with lock:  # one reader per dataset; the others wait for its entry
            entry = self.cache.get(dataset_id, stamp)
            if entry is None:
                entry = self._load(dataset_id, resolved, names, stamp)
                self.cache.put(dataset_id, entry)
        return entry

    def _load(
        self, dataset_id: str, resolved: _Resolved, names: list[str], stamp: tuple[Any, ...]
    ) -> _Entry:
        dataset = resolved.dataset
        source = self._open(dataset_id, resolved.spec)
        kinds = self._check_columns(dataset, names)
        if FieldType.BOOL in kinds:
            parts = list(self._read_chunks(dataset_id, dataset, source, names, self.chunk_rows))
            keys = (
                pa.concat_arrays([pa.array(k, type=pa.string()) for k, _ in parts])
                if parts
                else pa.array([], type=pa.string())
            )
            matrix = np.vstack([v for _, v in parts]) if parts else np.zeros((0, len(names)))
            values = {c: np.ascontiguousarray(matrix[:, j]) for j, c in enumerate(names)}
        else:
            try:
                columns = source.read_columns(dataset.key_column, names)
            except ValidationError as exc:
                raise self._unreadable(dataset_id, exc) from exc
            keys, values = columns.keys, dict(columns.values)
        if len(keys) and len(keys.dictionary_encode().dictionary) != len(keys):
            raise self._unreadable(dataset_id, ValidationError("a key appears twice"))
        nbytes = int(keys.nbytes) + sum(int(v.nbytes) for v in values.values())
        return _Entry(stamp, keys, values, nbytes)

    # -- DataAccess ------------------------------------------------------------------------
    def columns(self, dataset_id: str) -> list[str]:
        """Numeric columns of the published dataset (its key excluded)."""
        with self._store.transaction(readonly=True) as tx:
            dataset = load_dataset(tx, dataset_id).dataset
        return [
            f.name
            for f in dataset.table.fields
            if f.type in NUMERIC_TYPES and f.name != dataset.key_column
        ]

    def lookup(
        self, dataset_id: str, entities: Sequence[str], columns: Sequence[str]
    ) -> tuple[npt.NDArray[np.bool_], FloatArray]:
        """Rows for ``entities`` in that order (found mask, values with NaN where not found).

        From the column cache when the dataset fits it; else one streaming pass over the
        source that holds only the wanted ids and their rows and stops once every one was seen.
        """
        resolved = self._resolve(dataset_id)
        self._check_columns(resolved.dataset, columns)
        entry = self._cached(dataset_id, resolved)
        if entry is None:
            return self._lookup_streaming(dataset_id, resolved, entities, columns)
        wanted = pa.array(entities, type=pa.string())
        position = pc.index_in(wanted, value_set=entry.keys).fill_null(-1)
        rows = np.asarray(position.to_numpy(zero_copy_only=False), dtype=np.int64)
        found = rows >= 0
        out = np.full((len(entities), len(columns)), np.nan)
        at = np.flatnonzero(found)
        if at.size:
            source_rows = rows[at]
            for j, c in enumerate(columns):
                out[at, j] = entry.values[c][source_rows]
        return found, out

    def _lookup_streaming(
        self,
        dataset_id: str,
        resolved: _Resolved,
        entities: Sequence[str],
        columns: Sequence[str],
    ) -> tuple[npt.NDArray[np.bool_], FloatArray]:
        first: dict[str, int] = {}
        repeats: list[tuple[int, int]] = []
        for i, e in enumerate(entities):
            j = first.setdefault(e, i)
            if j != i:
                repeats.append((i, j))
        found = np.zeros(len(entities), dtype=bool)
        out = np.full((len(entities), len(columns)), np.nan)
        remaining = len(first)
        if remaining:
            unique = pa.array(list(first), type=pa.string())
            target_of = np.fromiter(first.values(), dtype=np.int64, count=len(first))
            source = self._open(dataset_id, resolved.spec)
            chunks = self._read_chunks(
                dataset_id, resolved.dataset, source, columns, self.chunk_rows
            )
            try:
                for keys, values in chunks:
                    hit = pc.index_in(pa.array(keys, type=pa.string()), value_set=unique)
                    at = np.asarray(hit.fill_null(-1).to_numpy(zero_copy_only=False))
                    rows = np.flatnonzero(at >= 0)
                    if not rows.size:
                        continue
                    targets = target_of[at[rows]]
                    if found[targets].any() or len(np.unique(targets)) != len(targets):
                        raise self._unreadable(
                            dataset_id, ValidationError("a key appears twice in the source")
                        )
                    found[targets] = True
                    out[targets] = values[rows]
                    remaining -= len(targets)
                    if remaining == 0:
                        break
            finally:
                chunks.close()
        for i, j in repeats:
            found[i] = found[j]
            out[i] = out[j]
        return found, out

    def scan(
        self, dataset_id: str, columns: Sequence[str], *, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Iterator[tuple[list[str], FloatArray]]:
        """Every row, in chunks of (keys, values) (from the column cache when it holds it)."""
        if chunk_rows < 1:
            raise ValidationError("chunk_rows must be positive")
        resolved = self._resolve(dataset_id)
        self._check_columns(resolved.dataset, columns)
        entry = self._cached(dataset_id, resolved)
        if entry is None:
            source = self._open(dataset_id, resolved.spec)
            return self._read_chunks(dataset_id, resolved.dataset, source, columns, chunk_rows)
        return _slices(entry, list(columns), chunk_rows)


def _slices(
    entry: _Entry, columns: list[str], chunk_rows: int
) -> Iterator[tuple[list[str], FloatArray]]:
    for start in range(0, len(entry), chunk_rows):
        stop = min(start + chunk_rows, len(entry))
        keys = entry.keys.slice(start, stop - start).to_pylist()
        if columns:
            values = np.column_stack([entry.values[c][start:stop] for c in columns])
        else:
            values = np.zeros((stop - start, 0))
        yield keys, values


def _matrix(
    chunk: Chunk, columns: Sequence[str], kinds: Sequence[FieldType], booleans: bool
) -> FloatArray:
    if not columns:
        return np.zeros((len(chunk), 0))
    if not booleans:
        return np.column_stack([np.asarray(chunk.columns[c], dtype=np.float64) for c in columns])
    parts = []
    for c, kind in zip(columns, kinds, strict=True):
        raw = chunk.columns[c]
        parts.append(_booleans(raw, c) if kind is FieldType.BOOL else _numbers(raw, c))
    return np.column_stack(parts)


def _booleans(values: Any, column: str) -> FloatArray:
    out = np.empty(len(values))
    for i, v in enumerate(values):
        text = str(v).strip().lower()
        if text in _TRUE:
            out[i] = 1.0
        elif text in _FALSE:
            out[i] = 0.0
        else:
            raise ValidationError(f"column {column!r}: {text[:20]!r} is not a boolean")
    return out


def _numbers(values: Any, column: str) -> FloatArray:
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"column {column!r}: a cell is not a number") from exc
    if not np.isfinite(out).all():
        raise ValidationError(f"column {column!r}: a cell is not a finite number")
    return out


# -- transport --------------------------------------------------------------------------------


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        return doc
    return {"status": response.status_code, "detail": f"HTTP {response.status_code}"}


class HttpTransport(Transport):
    """:class:`~trusted_space.transport.Transport` over signed HTTP, as ``runtime``'s node.

    ``call`` posts the framed header and payload to ``{peer url}/compute/{operation}``; the
    request is signed for ``peer`` (audience), so the receiver authenticates this node before the
    operation runs. Peer URLs come from ``runtime.peer_url`` (the operator's registry).
    """

    max_concurrency = 8
    """Calls that may be in flight at once, from as many threads (httpx's client is thread-safe;
    a query serves its providers concurrently up to this)."""

    def __init__(self, runtime: NodeRuntime) -> None:
        # A weak reference: the cached compute node holds this transport and must not keep the
        # runtime (its store, its client) alive after the node is gone.
        self._runtime_ref = weakref.ref(runtime)
        self.sender = runtime.id

    @property
    def _runtime(self) -> NodeRuntime:
        runtime = self._runtime_ref()
        if runtime is None:
            raise NotReadyError(f"node {self.sender} has shut down")
        return runtime

    def url_for(self, peer: str, operation: str) -> str:
        """Where ``operation`` of ``peer`` is called."""
        return f"{self._runtime.peer_url(peer).rstrip('/')}/compute/{operation}"

    def call(
        self, peer: str, operation: str, header: Mapping[str, Any], payload: bytes = b""
    ) -> Reply:
        """Send one operation to ``peer`` and return its reply.

        Raises:
            RemoteError: the peer answered with an error (its problem document attached), could
                not be reached (503), or answered with something that is not a frame (502).
        """
        check_operation(operation)
        body = frame(header, payload)
        try:
            runtime = self._runtime
            url = f"{runtime.peer_url(peer).rstrip('/')}/compute/{operation}"
            response = runtime.client.request(
                "POST",
                url,
                audience=peer,
                content=body,
                content_type=COMPUTE_CONTENT_TYPE,
                check=False,
            )
        except RemoteError as exc:
            if exc.refused:  # the operator knows no such member: its refusal, relayed as a 4xx
                raise
            raise RemoteError(peer, 503, problem_document(NotReadyError(str(exc)))) from exc
        except NotReadyError as exc:  # the operator is unreachable, or there is none to ask:
            # the peer is not ready for us, as an unknown one in memory
            raise RemoteError(peer, 503, problem_document(NotReadyError(str(exc)))) from exc
        if not response.is_success:
            raise RemoteError(peer, response.status_code, _problem(response))
        try:
            out_header, out_payload = unframe(response.content)
        except ValidationError as exc:
            raise RemoteError(
                peer, 502, {"status": 502, "detail": f"{peer} answered {operation} without a frame"}
            ) from exc
        return Reply(out_header, out_payload)


# -- the node ---------------------------------------------------------------------------------


def roles_lookup(runtime: NodeRuntime) -> Callable[[str], frozenset[str]]:
    """``participant id -> roles`` from the stored, operator-signed credential (empty if none)."""
    ref = weakref.ref(runtime)

    def roles(participant_id: str) -> frozenset[str]:
        node = ref()
        directory = None if node is None else node.directory
        if node is None or directory is None:
            return frozenset()
        try:
            with node.transaction(readonly=True) as tx:
                return frozenset(directory.get(tx, participant_id).roles)
        except NotFoundError:
            return frozenset()

    return roles


def build_compute_node(runtime: NodeRuntime) -> ComputeNode:
    """A fresh compute node for ``runtime`` with the operations of its roles registered."""
    settings = runtime.settings
    holds_data = bool(runtime.roles & {"provider", "consumer"})
    data = SourceData(runtime.store, runtime.id, cache_bytes=settings.data_cache_bytes)
    node = ComputeNode(
        participant_id=runtime.id,
        store=runtime.store,
        ledger=runtime.ledger,
        data=data if holds_data else None,
        transport=HttpTransport(runtime),
        clock=runtime.clock,
        operator=None if runtime.anchor is None else runtime.anchor.operator_id,
        roles_of=roles_lookup(runtime),
        consents=runtime.consents,
        score_workers=settings.ckks_workers,
    )
    register_cancel(node)
    if runtime.is_operator:
        register_operator(node)
        register_train_dealer(node)
    if "provider" in runtime.roles:
        register_provider(node)
        register_approval(node)
        register_align(
            node,
            executor=_psi_pool(settings.psi_workers),
            ot_min_ids=settings.psi_ot_min_ids,
        )
        register_aggregate(node)
        register_train(node)
    return node


_psi_pools: dict[int, Executor] = {}
_psi_pools_lock = threading.Lock()


def _psi_pool(workers: int) -> Executor | None:
    """The process's PSI worker pool of ``workers`` processes (the node's ``psi_workers``).

    ``None`` (in-process) below 2. Shared by every node of the process that asks for that many;
    its workers start on first use.
    """
    if workers < 2:
        return None
    with _psi_pools_lock:
        if workers not in _psi_pools:
            _psi_pools[workers] = psi_executor(workers)
        return _psi_pools[workers]


def compute_node(runtime: NodeRuntime) -> ComputeNode:
    """The runtime's compute node, built on first use and kept as long as the runtime lives."""
    return runtime.service(ComputeNode, build_compute_node)


def forget_compute_node(runtime: NodeRuntime) -> None:
    """Drop the runtime's compute node (its open sessions with it), e.g. at shutdown."""
    runtime.drop_service(ComputeNode)
