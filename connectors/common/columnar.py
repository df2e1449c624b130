"""Large query documents as Arrow IPC streams: a score's result columns and a query's ids.

A score of a million entities returns a million ids and two million floats. As JSON they are
encoded at the node, parsed at the client and, before that, written to and read back from the
node's store; as Arrow columns each is one buffer. The analyst's API offers both
(``Accept``/``Content-Type`` :data:`ARROW_STREAM`, :mod:`connectors.node.routers.queries_admin`),
JSON staying the default and the form every other document keeps.

The stream's schema metadata holds, under :data:`METADATA_KEY`, the JSON of everything that is
not a column (receipts, timings, missing ids, link, ...); the columns are :data:`RESULT_COLUMNS`
(those the result has), or for a query the ids in ``entities``. Decoding gives back exactly the
JSON document: ids as ``str``, floats as the same ``float64`` (Arrow keeps the 8 bytes; JSON
writes the shortest repr that reads back the same), bands as ``int``.

Threats: a body from the network may be any bytes; :func:`read_stream` turns every Arrow or
JSON failure into a :class:`~trusted_space.errors.ValidationError` naming what is wrong, and a
column of the wrong type or a row count that disagrees is refused, never coerced.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from typing import Any, Final

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from trusted_space.errors import ValidationError

__all__ = [
    "ARROW_STREAM",
    "BATCH_ROWS",
    "METADATA_KEY",
    "QUERY_COLUMNS",
    "RESULT_COLUMNS",
    "STORED_KEY",
    "iter_result_stream",
    "query_from_arrow",
    "query_to_arrow",
    "read_stream",
    "result_of_stored",
    "result_from_arrow",
    "result_to_arrow",
    "stored_result",
]

ARROW_STREAM: Final = "application/vnd.apache.arrow.stream"
"""The media type of an Arrow IPC stream (IANA registered)."""
METADATA_KEY: Final = b"trusted-space"
RESULT_COLUMNS: Final[Mapping[str, pa.DataType]] = {
    "entities": pa.string(),
    "logits": pa.float64(),
    "outputs": pa.float64(),
    "bands": pa.int64(),
}
QUERY_COLUMNS: Final[Mapping[str, pa.DataType]] = {"entities": pa.string()}
_NUMPY: Final = {pa.float64(): np.float64, pa.int64(): np.int64}
STORED_KEY: Final = "arrowIpcBase64"
"""The one key of a result's stored form (:func:`stored_result`)."""
BATCH_ROWS: Final = 1 << 16
"""Rows per record batch: a streamed result is written and sent a batch at a time."""


def _table(doc: Mapping[str, Any], columns: Mapping[str, pa.DataType]) -> pa.Table:
    picked = {k: t for k, t in columns.items() if isinstance(doc.get(k), list)}
    rest = {k: v for k, v in doc.items() if k not in picked}
    meta = {METADATA_KEY: json.dumps(rest, separators=(",", ":"), allow_nan=False).encode()}
    arrays = [
        pa.array(doc[k] if pa.types.is_string(t) else np.asarray(doc[k], dtype=_NUMPY[t]), type=t)
        for k, t in picked.items()
    ]
    schema = pa.schema([pa.field(k, t, nullable=False) for k, t in picked.items()], metadata=meta)
    return pa.Table.from_arrays(arrays, schema=schema)


class _Chunks:
    """A write-only file for :func:`pyarrow.ipc.new_stream` that hands out what was written."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(self.parts[-1])

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def _stream(table: pa.Table) -> Iterator[bytes]:
    sink = _Chunks()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            writer.write_batch(batch)
            yield sink.take()
    yield sink.take()


def iter_result_stream(result: Mapping[str, Any]) -> Iterator[bytes]:
    """A score result (its JSON document) as Arrow IPC stream chunks, one per record batch."""
    return _stream(_table(result, RESULT_COLUMNS))


def result_to_arrow(result: Mapping[str, Any]) -> bytes:
    """A score result (its JSON document) as one Arrow IPC stream."""
    return b"".join(iter_result_stream(result))


def query_to_arrow(query: Mapping[str, Any]) -> bytes:
    """A score query (its JSON document) as an Arrow IPC stream: the ids a column."""
    return b"".join(_stream(_table(query, QUERY_COLUMNS)))


def read_stream(data: bytes, columns: Mapping[str, pa.DataType], what: str) -> dict[str, Any]:
    """The JSON document an Arrow IPC stream of ``columns`` carries.

    Raises:
        ValidationError: not an Arrow IPC stream, no or bad metadata, an unknown column or one of
            the wrong type, a column that the metadata also names.
    """
    try:
        table = pa.ipc.open_stream(data).read_all()
        table.validate(full=True)  # offsets and lengths inside their buffers before any read
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ValidationError(f"the {what} is not an Arrow IPC stream: {exc}") from exc
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValidationError(
            f"the {what}'s Arrow schema has no {METADATA_KEY.decode()!r} metadata"
        )
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"the {what}'s Arrow metadata is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValidationError(f"the {what}'s Arrow metadata is not a JSON object")
    for field in table.schema:
        expected = columns.get(field.name)
        if expected is None:
            raise ValidationError(f"$.{field.name}: not a column of a {what}")
        if field.type != expected:
            raise ValidationError(f"$.{field.name}: expected Arrow {expected}, got {field.type}")
        if field.name in doc:
            raise ValidationError(f"$.{field.name}: both a column and in the metadata")
        column = table.column(field.name)
        if column.null_count:
            raise ValidationError(f"$.{field.name}: null values")
        if pa.types.is_string(expected):
            doc[field.name] = column.to_pylist()
        else:
            doc[field.name] = column.to_numpy().tolist()
    return doc


def result_from_arrow(data: bytes) -> dict[str, Any]:
    """The score result's JSON document from :func:`result_to_arrow`'s stream."""
    return read_stream(data, RESULT_COLUMNS, "result")


def stored_result(stream: bytes) -> dict[str, Any]:
    """How a node stores a score result: its Arrow stream, base64, in one JSON field.

    ``stream`` is :func:`result_to_arrow`'s. A JSON document of a million ids and two million
    floats costs the store seconds to encode and check; one string of the same columns costs
    milliseconds.
    """
    return {STORED_KEY: base64.b64encode(stream).decode("ascii")}


def result_of_stored(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored result back as its JSON document (results stored as plain JSON are kept)."""
    data = doc.get(STORED_KEY)
    if not isinstance(data, str) or len(doc) != 1:
        return dict(doc)
    return result_from_arrow(base64.b64decode(data))


def query_from_arrow(data: bytes) -> dict[str, Any]:
    """The score query's JSON document from :func:`query_to_arrow`'s stream."""
    return read_stream(data, QUERY_COLUMNS, "query")
