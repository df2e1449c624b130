"""Data-source adapters: CSV, Parquet and SQLite tables, read in chunks, never loaded whole.

Why: a department's table has millions of rows (the finance zone this mirrors holds records on
2 million+ enterprises). A provider that turned such a table into one Python list or one JSON
document would need gigabytes per query; every reader here streams, and a consumer of
:meth:`Source.chunks` holds at most ``chunk_rows`` rows at a time.

- CSV: :mod:`pyarrow.csv` (C++, about four times faster than the :mod:`csv` module) for numeric
  reads of clean files; at the first cell it cannot take as-is (an empty or non-finite number, a
  ragged row, an empty key, bad UTF-8) the read continues with the :mod:`csv` module over a text
  stream from that row on, so the rules and every error message (the 1-based data row and the
  physical line) are the row reader's. Text reads use the :mod:`csv` module only.
- Parquet: :meth:`pyarrow.parquet.ParquetFile.iter_batches`, only the columns asked for.
- SQLite: :mod:`sqlite3` in read-only URI mode (``file:...?mode=ro`` plus ``query_only``) with
  ``cursor.fetchmany``. The table name is checked as an identifier and quoted, and every column
  named in a query must be one of the table's own columns, so a registered source cannot carry
  SQL into the node (threat: a table name such as ``t; DROP TABLE x`` in a management request).

:func:`validate_against` checks a source against the dataset it is published as: every declared
field exists, numeric fields parse, the entity key is a canonical USCC where the dataset says so,
and no key repeats. It streams too: duplicate detection keeps one 64-bit hash per row (16 MB for
2 million rows) and confirms a suspected duplicate with a second pass, instead of a set of every
key string.

:meth:`Source.read_columns` reads a whole table's key column and numeric columns at once (the
provider's column cache, :class:`connectors.node.compute.SourceData`, bounds how much it holds).

Errors are :class:`~trusted_space.errors.ValidationError` (``csv.Error``, ``sqlite3.Error``,
``pyarrow`` errors and ``OSError`` are converted where they enter), and every message names the
file, the column and the row. Paths are chosen by the node's own staff (admin token), who already
control the node's file system; the adapters only ever open files for reading.
"""

from __future__ import annotations

import csv
import math
import re
import sqlite3
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.csv as pa_csv  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from trusted_space.catalog import Dataset, FieldType, KeyKind
from trusted_space.errors import NotFoundError, ValidationError
from trusted_space.store import Transaction
from trusted_space.uscc import validate_column

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "NUMERIC_TYPES",
    "SOURCE_KINDS",
    "SOURCE_NAMESPACE",
    "Chunk",
    "Columns",
    "CsvSource",
    "ParquetSource",
    "Source",
    "SourceSpec",
    "SqliteSource",
    "load_spec",
    "open_source",
    "validate_against",
]

DEFAULT_CHUNK_ROWS = 50_000
SOURCE_NAMESPACE: Final = "source"
"""Store namespace of registered sources (key: the dataset id; body: spec JSON and ``rows``)."""
SOURCE_KINDS: Final = ("csv", "parquet", "sqlite")
NUMERIC_TYPES: Final = frozenset({FieldType.INT, FieldType.FLOAT})
"""Field types whose every cell must parse as a finite number."""

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MAX_PATH = 4096
_CSV_BLOCK_BYTES: Final = 4 << 20
"""Bytes the Arrow CSV reader parses at a time when streaming (bounds its memory)."""


@dataclass(frozen=True)
class SourceSpec:
    """Where a dataset's rows are.

    ``kind`` is ``csv``, ``parquet`` or ``sqlite``; ``table`` is required for SQLite; ``path`` is
    absolute (relative paths are resolved against the node dir when parsed from a request).
    """

    kind: str
    path: str
    table: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValidationError(
                f"source.kind: {self.kind!r} is not one of {', '.join(SOURCE_KINDS)}"
            )
        if not isinstance(self.path, str) or not self.path or len(self.path) > _MAX_PATH:
            raise ValidationError("source.path: expected a non-empty path")
        if "\x00" in self.path:
            raise ValidationError("source.path: a path has no NUL character")
        if self.kind == "sqlite":
            if self.table is None:
                raise ValidationError("source.table: required for a sqlite source")
            if not isinstance(self.table, str) or not _IDENTIFIER.match(self.table):
                raise ValidationError(
                    f"source.table: {self.table!r} is not a table name "
                    "(letters, digits and '_', not starting with a digit)"
                )
        elif self.table is not None:
            raise ValidationError(
                f"source.table: only a sqlite source has a table, not {self.kind}"
            )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "path": self.path}
        if self.table is not None:
            out["table"] = self.table
        return out

    @classmethod
    def from_json(cls, doc: object, *, base_dir: Path | None = None) -> SourceSpec:
        """Parse ``{"kind", "path", "table"?}``; a relative path is resolved against ``base_dir``.

        Raises:
            ValidationError: unknown members, an unknown kind, a missing or bad table name, or a
                relative path with no ``base_dir`` to resolve it against.
        """
        if not isinstance(doc, Mapping):
            raise ValidationError("source: expected an object")
        unknown = sorted(set(doc) - {"kind", "path", "table"})
        if unknown:
            raise ValidationError(f"source: unknown member {', '.join(map(str, unknown))}")
        kind, path, table = doc.get("kind"), doc.get("path"), doc.get("table")
        if not isinstance(kind, str):
            raise ValidationError("source.kind: expected a string")
        if not isinstance(path, str) or not path:
            raise ValidationError("source.path: expected a non-empty string")
        if table is not None and not isinstance(table, str):
            raise ValidationError("source.table: expected a string")
        resolved = Path(path)
        if not resolved.is_absolute():
            if base_dir is None:
                raise ValidationError(f"source.path: {path!r} is relative and no base is known")
            resolved = base_dir / resolved
        return cls(kind, str(resolved.resolve()), table)


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows: the entity keys and the requested columns (same length)."""

    keys: list[str]
    columns: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class Columns:
    """A whole table in memory: the key column and numeric columns, in file order.

    ``keys`` is a :class:`pyarrow.StringArray` (compact: one buffer, no Python string per row)
    and ``values`` maps each column to a float64 array of the same length.
    """

    keys: Any
    values: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.keys)


class _Unclean(Exception):
    """The fast reader met a row only the row-by-row reader can judge (and name)."""


def _arrow_keys(keys: pa.Array) -> pa.Array:
    """The key column as strings, or :class:`_Unclean` if a key is empty or null."""
    keys = _as_strings(keys)
    if keys.null_count or (len(keys) and pc.min(pc.binary_length(keys)).as_py() == 0):
        raise _Unclean
    return keys


def _arrow_floats(values: pa.Array) -> np.ndarray:
    """A float64 column as numpy, or :class:`_Unclean` on a null or non-finite value."""
    if values.null_count:
        raise _Unclean
    out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    if not np.isfinite(out).all():
        raise _Unclean
    return out


class Source(ABC):
    """A table that is read, never loaded whole."""

    spec: SourceSpec

    @abstractmethod
    def column_names(self) -> list[str]:
        """The columns the table has, in order."""

    def chunks(
        self,
        key_column: str,
        columns: Sequence[str],
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        numeric: bool = True,
    ) -> Iterator[Chunk]:
        """Yield the key column and ``columns`` in chunks of at most ``chunk_rows`` rows.

        ``numeric=True`` gives float64 arrays (a non-numeric cell is a ValidationError naming the
        column and row); ``numeric=False`` gives object arrays of strings (raw-row transfer). The
        request is checked here, before anything is read.
        """
        wanted = self._check_request(key_column, columns, chunk_rows)
        return self._read(wanted, chunk_rows, numeric)

    @abstractmethod
    def _read(self, wanted: list[str], chunk_rows: int, numeric: bool) -> Iterator[Chunk]:
        """Read ``wanted`` (key column first, all checked to exist) in chunks."""

    def read_columns(
        self, key_column: str, columns: Sequence[str], *, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Columns:
        """The whole key column and ``columns`` as float64, in memory (same rules as ``chunks``).

        Holds the whole table's requested columns at once: the caller bounds what it asks for.
        """
        wanted = self._check_request(key_column, columns, chunk_rows)
        if key_column not in columns:
            try:
                return self._read_all(wanted)
            except _Unclean:
                pass  # the chunked reader judges (and names) the first bad row
        keys: list[pa.Array] = []
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        for chunk in self._read(wanted, chunk_rows, True):
            keys.append(pa.array(chunk.keys, type=pa.string()))
            for c in columns:
                parts[c].append(np.asarray(chunk.columns[c], dtype=np.float64))
        return Columns(
            pa.concat_arrays(keys) if keys else pa.array([], type=pa.string()),
            {c: np.concatenate(v) if v else np.zeros(0) for c, v in parts.items()},
        )

    def _read_all(self, wanted: list[str]) -> Columns:
        """A fast whole-table read, or :class:`_Unclean` to let the chunked reader decide."""
        raise _Unclean

    # -- shared helpers -------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """How messages name this source: the path, and the table for SQLite."""
        if self.spec.table is not None:
            return f"{self.spec.path} (table {self.spec.table!r})"
        return self.spec.path

    def _check_request(self, key_column: str, columns: Sequence[str], chunk_rows: int) -> list[str]:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValidationError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        wanted = [key_column, *columns]
        if len(set(columns)) != len(columns):
            raise ValidationError(f"columns {list(columns)} name a column twice")
        present = set(self.column_names())
        for name in wanted:
            if name not in present:
                raise ValidationError(f"column {name!r} is not in {self.label}")
        return wanted

    def _where(self, column: str, row: int, line: int | None = None) -> str:
        at = f"row {row}" + (f" (line {line})" if line is not None else "")
        return f"{self.label}: column {column!r}, {at}"


@dataclass(frozen=True)
class _Bad:
    """The first bad cell of one column in a chunk (``index`` counts from 0 in the chunk)."""

    index: int
    problem: str


_Column = np.ndarray | _Bad


def _key_problem(keys: Sequence[object]) -> _Bad | None:
    for i, key in enumerate(keys):
        if key is None or key == "":
            return _Bad(i, "empty key")
        if isinstance(key, bytes):
            return _Bad(i, "binary value, expected text")
    return None


def _cell_problem(value: object) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return "empty cell, expected a number"
    if isinstance(value, bytes):
        return "binary value, expected a number"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{str(value)[:40]!r} is not a number"
    if not math.isfinite(number):
        return f"{str(value)[:40]!r} is not a finite number"
    return ""


def _floats(values: Sequence[object]) -> _Column:
    """Parse cells as float64 (vectorised); on failure, find the first bad cell."""
    try:
        out = np.array(values, dtype=np.float64)
        if bool(np.isfinite(out).all()):
            return out
    except (TypeError, ValueError, OverflowError):
        pass
    for i, value in enumerate(values):
        problem = _cell_problem(value)
        if problem:
            return _Bad(i, problem)
    return _Bad(0, "does not parse as numbers")  # pragma: no cover - numpy and float() agree


def _texts(values: Sequence[object]) -> _Column:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            return _Bad(i, "binary value, expected text")
        out[i] = "" if value is None else value if isinstance(value, str) else str(value)
    return out


def _assemble(
    source: Source,
    key_column: str,
    keys: Sequence[object],
    columns: Mapping[str, _Column],
    first_row: int,
    lines: Sequence[int] = (),
) -> Chunk:
    """Build a chunk, or raise for the earliest bad row (the key column first on a tie)."""
    bad: list[tuple[int, int, str, str]] = []
    key_bad = _key_problem(keys)
    if key_bad is not None:
        bad.append((key_bad.index, 0, key_column, key_bad.problem))
    for order, (name, column) in enumerate(columns.items(), start=1):
        if isinstance(column, _Bad):
            bad.append((column.index, order, name, column.problem))
    if bad:
        index, _, name, problem = min(bad)
        line = lines[index] if lines else None
        raise ValidationError(f"{source._where(name, first_row + index, line)}: {problem}")
    texts = [key if isinstance(key, str) else str(key) for key in keys]
    return Chunk(texts, {name: col for name, col in columns.items() if isinstance(col, np.ndarray)})


# -- CSV ---------------------------------------------------------------------------------------


class CsvSource(Source):
    """A CSV file with a header line, read row by row with the :mod:`csv` module."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self._header: list[str] | None = None

    def _open(self) -> Any:
        try:
            return open(self.spec.path, encoding="utf-8-sig", newline="")
        except OSError as exc:
            raise ValidationError(f"{self.spec.path}: cannot open ({exc.strerror})") from exc

    def column_names(self) -> list[str]:
        if self._header is None:
            with self._open() as handle:
                reader = csv.reader(handle)
                try:
                    header = next(reader, None)
                except (csv.Error, UnicodeDecodeError) as exc:
                    raise ValidationError(f"{self.label}: line 1: {exc}") from exc
            if not header:
                raise ValidationError(f"{self.label}: no header line")
            names = [name.strip() for name in header]
            for name in names:
                if not name:
                    raise ValidationError(f"{self.label}: the header has an empty column name")
                if names.count(name) > 1:
                    raise ValidationError(f"{self.label}: the header names {name!r} twice")
            self._header = names
        return list(self._header)

    def _read(self, wanted: list[str], chunk_rows: int, numeric: bool) -> Iterator[Chunk]:
        header = self.column_names()
        positions = [header.index(name) for name in wanted]
        if numeric and wanted[0] not in wanted[1:]:
            return self._read_fast(wanted, positions, len(header), chunk_rows)
        return self._read_rows(wanted[0], wanted[1:], positions, len(header), chunk_rows, numeric)

    def _arrow_options(self, wanted: list[str], block_bytes: int | None) -> dict[str, Any]:
        read = pa_csv.ReadOptions(
            column_names=self.column_names(),
            skip_rows=1,
            encoding="utf8",
            **({"block_size": block_bytes} if block_bytes else {}),
        )
        types = {wanted[0]: pa.string(), **{c: pa.float64() for c in wanted[1:]}}
        convert = pa_csv.ConvertOptions(
            column_types=types,
            include_columns=wanted,
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        parse = pa_csv.ParseOptions(newlines_in_values=True)
        return {"read_options": read, "parse_options": parse, "convert_options": convert}

    def _read_all(self, wanted: list[str]) -> Columns:
        try:
            table = pa_csv.read_csv(self.spec.path, **self._arrow_options(wanted, None))
        except (pa.ArrowException, OSError) as exc:
            raise _Unclean from exc
        keys = _arrow_keys(table.column(wanted[0]).combine_chunks())
        values = {c: _arrow_floats(table.column(c).combine_chunks()) for c in wanted[1:]}
        return Columns(keys, values)

    def _read_fast(
        self, wanted: list[str], positions: list[int], width: int, chunk_rows: int
    ) -> Iterator[Chunk]:
        """Arrow batches re-cut to ``chunk_rows``; from the first unclean batch on, the rows."""
        done = 0
        pending: list[tuple[pa.Array, dict[str, np.ndarray]]] = []
        held = 0
        try:
            try:
                reader = pa_csv.open_csv(
                    self.spec.path, **self._arrow_options(wanted, _CSV_BLOCK_BYTES)
                )
                batches = iter(reader)
                while True:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    if batch.num_rows == 0:
                        continue
                    keys = _arrow_keys(batch.column(wanted[0]))
                    cols = {c: _arrow_floats(batch.column(c)) for c in wanted[1:]}
                    pending.append((keys, cols))
                    held += len(keys)
                    while held >= chunk_rows:
                        chunk, pending, held = _cut(pending, held, chunk_rows, wanted[1:])
                        yield chunk
                        done += len(chunk)
            except (pa.ArrowException, OSError) as exc:
                raise _Unclean from exc
        except _Unclean:
            yield from self._read_rows(
                wanted[0], wanted[1:], positions, width, chunk_rows, True, skip=done
            )
            return
        if held:
            yield _cut(pending, held, held, wanted[1:])[0]

    def _read_rows(
        self,
        key_column: str,
        columns: list[str],
        positions: list[int],
        width: int,
        chunk_rows: int,
        numeric: bool,
        *,
        skip: int = 0,
    ) -> Iterator[Chunk]:
        """Rows with the :mod:`csv` module, after the first ``skip`` rows (already read)."""
        with self._open() as handle:
            reader = csv.reader(handle)
            buffers: list[list[str]] = [[] for _ in positions]
            lines = array("q")
            row_number = 0
            first_row = skip + 1
            try:
                next(reader, None)  # header
                for record in reader:
                    if not record:
                        continue  # a blank line
                    row_number += 1
                    if len(record) != width:
                        raise ValidationError(
                            f"{self.label}: row {row_number} (line {reader.line_num}) has "
                            f"{len(record)} fields, the header has {width}"
                        )
                    if row_number <= skip:
                        continue
                    for buffer, position in zip(buffers, positions, strict=True):
                        buffer.append(record[position])
                    lines.append(reader.line_num)
                    if len(lines) == chunk_rows:
                        yield self._chunk(key_column, columns, buffers, first_row, lines, numeric)
                        first_row = row_number + 1
                        buffers = [[] for _ in positions]
                        lines = array("q")
            except (csv.Error, UnicodeDecodeError) as exc:
                raise ValidationError(f"{self.label}: line {reader.line_num + 1}: {exc}") from exc
            if lines:
                yield self._chunk(key_column, columns, buffers, first_row, lines, numeric)

    def _chunk(
        self,
        key_column: str,
        columns: list[str],
        buffers: list[list[str]],
        first_row: int,
        lines: Sequence[int],
        numeric: bool,
    ) -> Chunk:
        convert = _floats if numeric else _texts
        parsed = {name: convert(values) for name, values in zip(columns, buffers[1:], strict=True)}
        return _assemble(self, key_column, buffers[0], parsed, first_row, lines)


def _cut(
    pending: list[tuple[pa.Array, dict[str, np.ndarray]]],
    held: int,
    rows: int,
    columns: Sequence[str],
) -> tuple[Chunk, list[tuple[pa.Array, dict[str, np.ndarray]]], int]:
    """The first ``rows`` of the pending batches as one chunk, and what remains.

    Pending keys stay Arrow strings until they are cut: only one chunk's keys become Python
    strings at a time.
    """
    keys: list[str] = []
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    rest: list[tuple[pa.Array, dict[str, np.ndarray]]] = []
    need = rows
    for batch_keys, cols in pending:
        if need <= 0:
            rest.append((batch_keys, cols))
            continue
        take = min(need, len(batch_keys))
        keys.extend(batch_keys.slice(0, take).to_pylist())
        for c in columns:
            parts[c].append(cols[c][:take])
        if take < len(batch_keys):
            rest.append((batch_keys.slice(take), {c: cols[c][take:] for c in columns}))
        need -= take
    values = {c: np.concatenate(v) if v else np.zeros(0) for c, v in parts.items()}
    return Chunk(keys, values), rest, held - rows


# -- Parquet -----------------------------------------------------------------------------------


class ParquetSource(Source):
    """A Parquet file, read batch by batch (only the columns asked for)."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec

    def _file(self) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.spec.path)
        except (OSError, pa.ArrowException) as exc:
            raise ValidationError(f"{self.spec.path}: not a readable Parquet file ({exc})") from exc

    def column_names(self) -> list[str]:
        parquet = self._file()
        try:
            return list(parquet.schema_arrow.names)
        finally:
            parquet.close()

    def _read(self, wanted: list[str], chunk_rows: int, numeric: bool) -> Iterator[Chunk]:
        parquet = self._file()
        first_row = 1
        try:
            unique = list(dict.fromkeys(wanted))  # the key may also be asked for as a column
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=unique):
                if batch.num_rows == 0:
                    continue
                yield self._chunk(batch, wanted, first_row, numeric)
                first_row += batch.num_rows
        except pa.ArrowException as exc:
            raise ValidationError(f"{self.label}: cannot read rows ({exc})") from exc
        finally:
            parquet.close()

    def _read_all(self, wanted: list[str]) -> Columns:
        try:
            table = pq.read_table(self.spec.path, columns=wanted)
        except (OSError, pa.ArrowException) as exc:
            raise _Unclean from exc
        keys = _arrow_keys(table.column(wanted[0]).combine_chunks())
        values: dict[str, np.ndarray] = {}
        for name in wanted[1:]:
            column = self._numeric(name, table.column(name).combine_chunks())
            if isinstance(column, _Bad):
                raise _Unclean
            values[name] = column
        return Columns(keys, values)

    def _chunk(
        self, batch: pa.RecordBatch, wanted: list[str], first_row: int, numeric: bool
    ) -> Chunk:
        parsed: dict[str, _Column] = {}
        for name in wanted[1:]:
            arrow_column = batch.column(name)
            if numeric:
                parsed[name] = self._numeric(name, arrow_column)
            else:
                text = _as_strings(arrow_column).fill_null("")
                parsed[name] = text.to_numpy(zero_copy_only=False)
        keys = _as_strings(batch.column(wanted[0])).to_pylist()
        return _assemble(self, wanted[0], keys, parsed, first_row)

    def _numeric(self, name: str, values_in: pa.Array) -> _Column:
        kind = values_in.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return _floats(values_in.to_pylist())
        if not (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_decimal(kind)
            or pa.types.is_boolean(kind)
        ):
            raise ValidationError(f"{self.label}: column {name!r} has type {kind}, not a number")
        if values_in.null_count:
            first = int(np.flatnonzero(values_in.is_null().to_numpy(zero_copy_only=False))[0])
            return _Bad(first, "empty cell, expected a number")
        values = np.asarray(
            pc.cast(values_in, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
        finite = np.isfinite(values)
        if not finite.all():
            first = int(np.flatnonzero(~finite)[0])
            return _Bad(first, f"{values[first]!r} is not a finite number")
        return values


def _as_strings(values: pa.Array) -> pa.Array:
    if pa.types.is_string(values.type):
        return values
    return pc.cast(values, pa.string())


# -- SQLite ------------------------------------------------------------------------------------


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class SqliteSource(Source):
    """A table of an SQLite database, opened read-only and read with ``fetchmany``."""

    def __init__(self, spec: SourceSpec) -> None:
        if spec.table is None:  # SourceSpec refuses this; kept for the type checker
            raise ValidationError("source.table: required for a sqlite source")
        self.spec = spec
        self.table: str = spec.table

    def _connect(self) -> sqlite3.Connection:
        path = Path(self.spec.path)
        if not path.is_file():
            raise ValidationError(f"{self.spec.path}: no such file")
        try:
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
            conn.execute("PRAGMA query_only = ON")
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?",
                (self.table,),
            ).fetchone()
        except sqlite3.Error as exc:
            raise ValidationError(f"{self.spec.path}: not a readable SQLite database") from exc
        if found is None:
            conn.close()
            raise ValidationError(f"{self.spec.path}: no table {self.table!r}")
        return conn

    def column_names(self) -> list[str]:
        conn = self._connect()
        try:
            rows = conn.execute(f"PRAGMA table_info({_quote(self.table)})").fetchall()
        except sqlite3.Error as exc:
            raise ValidationError(f"{self.label}: cannot read the columns ({exc})") from exc
        finally:
            conn.close()
        return [str(row[1]) for row in rows]

    def _read(self, wanted: list[str], chunk_rows: int, numeric: bool) -> Iterator[Chunk]:
        # Every name below is one of the table's own columns (checked) and quoted.
        query = f"SELECT {', '.join(map(_quote, wanted))} FROM {_quote(self.table)}"  # noqa: S608
        conn = self._connect()
        first_row = 1
        try:
            cursor = conn.execute(query)
            while True:
                try:
                    rows = cursor.fetchmany(chunk_rows)
                except sqlite3.Error as exc:
                    raise ValidationError(f"{self.label}: cannot read rows ({exc})") from exc
                if not rows:
                    break
                yield self._chunk(wanted, rows, first_row, numeric)
                first_row += len(rows)
        except sqlite3.Error as exc:
            raise ValidationError(f"{self.label}: cannot read rows ({exc})") from exc
        finally:
            conn.close()

    def _chunk(
        self, wanted: list[str], rows: list[tuple[Any, ...]], first_row: int, numeric: bool
    ) -> Chunk:
        cells = list(zip(*rows, strict=True))
        convert = _floats if numeric else _texts
        parsed = {name: convert(values) for name, values in zip(wanted[1:], cells[1:], strict=True)}
        return _assemble(self, wanted[0], cells[0], parsed, first_row)


# -- opening and validating --------------------------------------------------------------------


def open_source(spec: SourceSpec) -> Source:
    """Open the source ``spec`` names (ValidationError if missing or of an unknown kind)."""
    if not isinstance(spec, SourceSpec):
        raise ValidationError("open_source needs a SourceSpec")
    if not Path(spec.path).is_file():
        raise ValidationError(f"source.path: no file at {spec.path}")
    if spec.kind == "csv":
        return CsvSource(spec)
    if spec.kind == "parquet":
        return ParquetSource(spec)
    return SqliteSource(spec)


def load_spec(tx: Transaction, dataset_id: str) -> SourceSpec:
    """The source registered for a published dataset.

    Raises:
        NotFoundError: no source is registered for ``dataset_id``.
    """
    doc = tx.get(SOURCE_NAMESPACE, dataset_id)
    if doc is None:
        raise NotFoundError(f"no source registered for dataset {dataset_id!r}")
    body = doc.body
    return SourceSpec(str(body["kind"]), str(body["path"]), body.get("table"))


def validate_against(
    source: Source, dataset: Dataset, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> int:
    """Check that ``source`` holds what ``dataset`` declares; return its number of rows.

    Every declared field must be a column of the source; every cell of a numeric field (``int``,
    ``float``) must parse as a finite number; every key must be non-empty and unique, and a
    canonical USCC (upper case, no spaces, both check characters right) when the dataset's key
    kind is ``uscc``. Every row is read, in chunks.

    Raises:
        ValidationError: the first problem found, naming the column and the row.
    """
    present = set(source.column_names())
    for f in dataset.table.fields:
        if f.name not in present:
            raise ValidationError(
                f"column {f.name!r} is declared in table {dataset.table.name!r} but missing "
                f"from {source.label}"
            )
    key_column = dataset.key_column
    numeric = [f.name for f in dataset.table.fields if f.type in NUMERIC_TYPES]
    uscc = dataset.key_kind is KeyKind.USCC
    hashes: list[np.ndarray] = []
    rows = 0
    for chunk in source.chunks(key_column, numeric, chunk_rows=chunk_rows, numeric=True):
        if uscc:
            _check_uscc(source, key_column, chunk.keys, rows + 1)
        hashes.append(np.fromiter((hash(k) for k in chunk.keys), np.int64, len(chunk.keys)))
        rows += len(chunk)
    _check_unique(source, key_column, hashes, chunk_rows)
    return rows


def _check_uscc(source: Source, key_column: str, keys: list[str], first_row: int) -> None:
    try:
        normalised = validate_column(keys, key_column, first_row=first_row)
    except ValidationError as exc:
        raise ValidationError(f"{source.label}: {exc}") from exc
    for i, (key, canonical) in enumerate(zip(keys, normalised, strict=True)):
        if key != canonical:
            raise ValidationError(
                f"{source._where(key_column, first_row + i)}: USCC {key!r} is not in canonical "
                f"form (write {canonical!r})"
            )


def _check_unique(
    source: Source, key_column: str, hashes: list[np.ndarray], chunk_rows: int
) -> None:
    if not hashes:
        return
    ordered = np.sort(np.concatenate(hashes))
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeated.size == 0:
        return
    suspects = {int(h) for h in repeated}
    seen: dict[str, int] = {}
    row = 0
    for chunk in source.chunks(key_column, [], chunk_rows=chunk_rows, numeric=False):
        for key in chunk.keys:
            row += 1
            if hash(key) not in suspects:
                continue
            if key in seen:
                raise ValidationError(
                    f"{source.label}: duplicate key {key!r} in column {key_column!r} "
                    f"(rows {seen[key]} and {row})"
                )
            seen[key] = row
