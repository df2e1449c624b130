"""A node's compute side, wired to what the node really has: its sources, store, keys and peers.

:mod:`trusted_space.compute` and the protocols in :mod:`trusted_space.protocols` are written
against three small interfaces (a :class:`~trusted_space.compute.DataAccess`, a
:class:`~trusted_space.transport.Transport` and ``ComputeNode.extras``); this module supplies the
real ones for a running node and registers the operations its roles serve:

- :class:`SourceData`: the node's *published* datasets, read from their registered sources
  (:mod:`connectors.sources`, store namespace ``source``) in chunks. ``lookup`` keeps only a dict
  of the wanted ids and the matching rows of the requested columns, so a 2-million-row table is
  streamed, never held; ``scan`` streams too. A source that no longer reads cleanly (the file was
  changed or removed after publication) is a :class:`~trusted_space.errors.StoreError` whose
  message names the dataset only: the file path, row and cell stay in this node's log, because
  the error travels back to another institution.
- :class:`HttpTransport`: ``call(peer, operation, header, payload)`` is a signed
  ``POST {peer url}/compute/{operation}`` with the framed body
  (:func:`trusted_space.transport.frame`) through ``runtime.client``. A problem answer becomes a
  :class:`~trusted_space.transport.RemoteError` carrying the peer's problem document, so a
  provider's ``403`` and its policy trace reach the analyst; an unreachable peer is a
  ``RemoteError`` with status ``503``.
- :func:`compute_node`: the node's :class:`~trusted_space.compute.ComputeNode`, built on first use
  and cached per runtime, with ``extras`` = the consent registry, a roles lookup from stored
  (operator-signed) credentials, and the space's operator id (a provider sends partials and
  fetches triples only there, whatever an analyst names). Operations by role: the operator serves
  the key-less aggregator and the Beaver dealers (scores, training); a provider serves score, PSI
  alignment, aggregate and training operations.

Threats: the sender of every operation is the participant that signed the HTTP request (the
router passes ``verified.participant_id``), never a header claim; the data interface exposes only
numeric, non-key columns of datasets this node published, and every protocol calls
:func:`trusted_space.enforcement.authorize_use` before it touches them.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, Final

import httpx
import numpy as np
import numpy.typing as npt

from connectors.problems import NotReady, PeerError
from connectors.runtime import NodeRuntime
from connectors.sources import DEFAULT_CHUNK_ROWS, Chunk, Source, load_spec, open_source
from trusted_space.catalog import Dataset, FieldType, load_dataset
from trusted_space.compute import ComputeNode
from trusted_space.enforcement import CONSENTS_EXTRA, NUMERIC_TYPES
from trusted_space.errors import NotFoundError, StoreError, ValidationError
from trusted_space.protocols.aggregate import register_aggregate
from trusted_space.protocols.align import register_align
from trusted_space.protocols.operator import register_operator
from trusted_space.protocols.score import OPERATOR_EXTRA, ROLES_EXTRA, register_provider
from trusted_space.protocols.train_ops import register_train, register_train_dealer
from trusted_space.store import Store
from trusted_space.transport import RemoteError, Reply, check_operation, frame, unframe

__all__ = [
    "COMPUTE_CONTENT_TYPE",
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

FloatArray = npt.NDArray[np.float64]
_TRUE: Final = frozenset({"1", "true", "t", "yes", "y"})
_FALSE: Final = frozenset({"0", "false", "f", "no", "n"})


# -- data -------------------------------------------------------------------------------------


class SourceData:
    """:class:`~trusted_space.compute.DataAccess` over the node's published, registered sources.

    Args:
        store: the node's store (datasets and source specs are read from it at every call, so a
            replaced or withdrawn dataset takes effect at once).
        participant_id: this node (named in errors sent back to peers).
        chunk_rows: rows per chunk read from a source.
    """

    def __init__(
        self, store: Store, participant_id: str, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be positive")
        self._store = store
        self._participant = participant_id
        self.chunk_rows = chunk_rows

    # -- helpers ---------------------------------------------------------------------------
    def _dataset(self, dataset_id: str) -> tuple[Dataset, Source]:
        with self._store.transaction(readonly=True) as tx:
            published = load_dataset(tx, dataset_id)
            try:
                spec = load_spec(tx, dataset_id)
            except NotFoundError as exc:
                raise NotFoundError(f"dataset {dataset_id!r} has no source here") from exc
        try:
            source = open_source(spec)
        except ValidationError as exc:
            raise self._unreadable(dataset_id, exc) from exc
        return published.dataset, source

    def _unreadable(self, dataset_id: str, exc: Exception) -> StoreError:
        log.error("dataset %s cannot be read from its source: %s", dataset_id, exc)
        return StoreError(
            f"dataset {dataset_id!r} at {self._participant} cannot be read from its source "
            "(changed since it was published?); its staff can see why in the node's log"
        )

    @staticmethod
    def _check_columns(dataset: Dataset, columns: Sequence[str]) -> list[FieldType]:
        numeric = {
            f.name: f.type
            for f in dataset.table.fields
            if f.type in NUMERIC_TYPES and f.name != dataset.key_column
        }
        kinds = []
        for c in columns:
            if c not in numeric:
                raise ValidationError(f"dataset {dataset.id!r} has no numeric column {c!r}")
            kinds.append(numeric[c])
        if len(set(columns)) != len(columns):
            raise ValidationError(f"columns {list(columns)} name a column twice")
        return kinds

    def _chunks(
        self, dataset_id: str, columns: Sequence[str], chunk_rows: int
    ) -> Generator[tuple[list[str], FloatArray], None, None]:
        """(keys, values) per chunk, values as float64 in ``columns`` order."""
        dataset, source = self._dataset(dataset_id)
        kinds = self._check_columns(dataset, columns)
        booleans = FieldType.BOOL in kinds
        try:
            for chunk in source.chunks(
                dataset.key_column, list(columns), chunk_rows=chunk_rows, numeric=not booleans
            ):
                yield chunk.keys, _matrix(chunk, columns, kinds, booleans)
        except ValidationError as exc:
            raise self._unreadable(dataset_id, exc) from exc

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
        """Rows for ``entities`` in that order, streaming the source once.

        Only a dict of the wanted ids and the output array are held; the scan stops as soon as
        every wanted id was seen.
        """
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
            chunks = self._chunks(dataset_id, columns, self.chunk_rows)
            try:
                for keys, values in chunks:
                    rows: list[int] = []
                    targets: list[int] = []
                    for r, key in enumerate(keys):
                        t = first.get(key)
                        if t is not None:
                            rows.append(r)
                            targets.append(t)
                    if not targets:
                        continue
                    if found[targets].any() or len(set(targets)) != len(targets):
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
        else:
            self._check_columns(self._dataset(dataset_id)[0], columns)
        for i, j in repeats:
            found[i] = found[j]
            out[i] = out[j]
        return found, out

    def scan(
        self, dataset_id: str, columns: Sequence[str], *, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Iterator[tuple[list[str], FloatArray]]:
        """Every row, in chunks of (keys, values)."""
        if chunk_rows < 1:
            raise ValidationError("chunk_rows must be positive")
        return self._chunks(dataset_id, columns, chunk_rows)


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


class HttpTransport:
    """:class:`~trusted_space.transport.Transport` over signed HTTP, as ``runtime``'s node.

    ``call`` posts the framed header and payload to ``{peer url}/compute/{operation}``; the
    request is signed for ``peer`` (audience), so the receiver authenticates this node before the
    operation runs. Peer URLs come from ``runtime.peer_url`` (the operator's registry).
    """

    def __init__(self, runtime: NodeRuntime) -> None:
        # A weak reference: the cached compute node holds this transport and must not keep the
        # runtime (its store, its client) alive after the node is gone.
        self._runtime_ref = weakref.ref(runtime)
        self.sender = runtime.id

    @property
    def _runtime(self) -> NodeRuntime:
        runtime = self._runtime_ref()
        if runtime is None:
            raise NotReady(f"node {self.sender} has shut down")
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
        except NotReady as exc:
            raise RemoteError(
                peer, 503, {"title": "Not ready", "status": 503, "detail": str(exc)}
            ) from exc
        except PeerError as exc:  # the operator refused to say where the peer is
            raise RemoteError(peer, 503, {"status": 503, "detail": str(exc)}) from exc
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
    extras: dict[str, Any] = {ROLES_EXTRA: roles_lookup(runtime)}
    if runtime.consents is not None:
        extras[CONSENTS_EXTRA] = runtime.consents
    if runtime.anchor is not None:
        extras[OPERATOR_EXTRA] = runtime.anchor.operator_id
    holds_data = bool(runtime.roles & {"provider", "consumer"})
    node = ComputeNode(
        participant_id=runtime.id,
        store=runtime.store,
        ledger=runtime.ledger,
        data=SourceData(runtime.store, runtime.id) if holds_data else None,
        transport=HttpTransport(runtime),
        clock=runtime.clock,
        extras=extras,
    )
    if runtime.is_operator:
        register_operator(node)
        register_train_dealer(node)
    if "provider" in runtime.roles:
        register_provider(node)
        register_align(node)
        register_aggregate(node)
        register_train(node)
    return node


_nodes: weakref.WeakKeyDictionary[NodeRuntime, ComputeNode] = weakref.WeakKeyDictionary()
_nodes_lock = threading.Lock()


def compute_node(runtime: NodeRuntime) -> ComputeNode:
    """The runtime's compute node, built on first use and kept as long as the runtime lives."""
    with _nodes_lock:
        node = _nodes.get(runtime)
        if node is None:
            node = build_compute_node(runtime)
            _nodes[runtime] = node
        return node


def forget_compute_node(runtime: NodeRuntime) -> None:
    """Drop the cached compute node (its open sessions with it), e.g. at shutdown."""
    with _nodes_lock:
        _nodes.pop(runtime, None)
