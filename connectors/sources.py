"""Data-source adapters: CSV, Parquet and SQLite tables, read in chunks.

INTERFACE STUB — implemented by the data-sources work. The signatures below are the contract the
management, transfer and compute routes rely on; keep them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_CHUNK_ROWS", "Chunk", "Source", "SourceSpec", "open_source"]

DEFAULT_CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class SourceSpec:
    """Where a dataset's rows are.

    ``kind`` is ``csv``, ``parquet`` or ``sqlite``; ``table`` is required for SQLite; ``path`` is
    absolute (relative paths are resolved against the node dir when parsed from a request).
    """

    kind: str
    path: str
    table: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "path": self.path}
        if self.table is not None:
            out["table"] = self.table
        return out


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows: the entity keys and the requested columns (same length)."""

    keys: list[str]
    columns: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.keys)


class Source(ABC):
    """A table that is read, never loaded whole."""

    spec: SourceSpec

    @abstractmethod
    def column_names(self) -> list[str]:
        """The columns the table has, in order."""

    @abstractmethod
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
        column and row); ``numeric=False`` gives object arrays of strings (raw-row transfer).
        """


def open_source(spec: SourceSpec) -> Source:
    """Open the source ``spec`` names (ValidationError if missing or of an unknown kind)."""
    raise NotImplementedError
