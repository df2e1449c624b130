"""Data sources: CSV, Parquet and SQLite give the same chunks; precise errors; streaming."""

from __future__ import annotations

import csv
import itertools
import sqlite3
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.node.sources import (
    Chunk,
    Source,
    SourceSpec,
    load_spec,
    open_source,
    validate_against,
)
from tests._seeding import random_for
from trusted_space.catalog import Dataset
from trusted_space.errors import NotFoundError, ValidationError
from trusted_space.store import MemoryStore
from trusted_space.uscc import generate_uscc

COLUMNS = ["uscc", "name", "revenue", "employees"]
ROWS = 53


def make_rows(n: int) -> list[dict[str, Any]]:
    rng = random_for(f"{__name__}.make_rows")
    return [
        {
            "uscc": generate_uscc(rng),
            "name": f"enterprise, no. {i}" if i % 5 else f'quoted "{i}"',
            "revenue": round(rng.uniform(-1e6, 1e7), 2),
            "employees": rng.randrange(0, 5000),
        }
        for i in range(n)
    ]


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    table = pa.table({c: [r[c] for r in rows] for c in COLUMNS})
    pq.write_table(table, path, row_group_size=10)  # several row groups
    return path


def write_sqlite(path: Path, rows: list[dict[str, Any]], table: str = "firms") -> Path:
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE {table} (uscc TEXT, name TEXT, revenue REAL, employees INTEGER)")
    conn.executemany(
        f"INSERT INTO {table} VALUES (?, ?, ?, ?)", [tuple(r[c] for c in COLUMNS) for r in rows]
    )
    conn.commit()
    conn.close()
    return path


def dataset_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "tax-revenue",
        "owner": "tax-bureau",
        "title": "Revenue and staff",
        "tier": "zone",
        "keyColumn": "uscc",
        "keyKind": "uscc",
        "responsibility": {"id": "tax-collection", "title": "Tax collection"},
        "resource": {"id": "tax-returns", "title": "Tax returns"},
        "table": {
            "name": "firms",
            "fields": [
                {"name": "uscc", "type": "string", "grade": 1},
                {"name": "name", "type": "string", "grade": 1},
                {"name": "revenue", "type": "float", "grade": 3},
                {"name": "employees", "type": "int", "grade": 2},
            ],
        },
    }
    doc.update(changes)
    return doc


def dataset(**changes: Any) -> Dataset:
    return Dataset.from_json(dataset_doc(**changes))


@pytest.fixture(scope="module")
def data() -> list[dict[str, Any]]:
    return make_rows(ROWS)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, data: list[dict[str, Any]]) -> list[Source]:
    root = tmp_path_factory.mktemp("sources")
    specs = [
        SourceSpec("csv", str(write_csv(root / "firms.csv", data))),
        SourceSpec("parquet", str(write_parquet(root / "firms.parquet", data))),
        SourceSpec("sqlite", str(write_sqlite(root / "firms.db", data)), "firms"),
    ]
    return [open_source(s) for s in specs]


def collect(chunks: Iterator[Chunk]) -> tuple[list[int], list[str], dict[str, list[Any]]]:
    sizes: list[int] = []
    keys: list[str] = []
    columns: dict[str, list[Any]] = {}
    for chunk in chunks:
        sizes.append(len(chunk))
        keys.extend(chunk.keys)
        for name, values in chunk.columns.items():
            assert len(values) == len(chunk)
            columns.setdefault(name, []).extend(values.tolist())
    return sizes, keys, columns


# -- same data, same chunks ---------------------------------------------------------------------


def test_every_kind_lists_the_columns_in_order(sources: list[Source]) -> None:
    for source in sources:
        assert source.column_names() == COLUMNS


def test_every_kind_gives_the_same_numeric_chunks(
    sources: list[Source], data: list[dict[str, Any]]
) -> None:
    results = [collect(s.chunks("uscc", ["revenue", "employees"], chunk_rows=8)) for s in sources]
    for sizes, keys, columns in results:
        assert sizes == [8] * 6 + [5]
        assert keys == [r["uscc"] for r in data]
        assert columns["revenue"] == [r["revenue"] for r in data]
        assert columns["employees"] == [float(r["employees"]) for r in data]
    for source in sources:
        chunk = next(source.chunks("uscc", ["revenue"], chunk_rows=4))
        assert chunk.columns["revenue"].dtype == np.float64


def test_every_kind_gives_the_same_text_chunks(
    sources: list[Source], data: list[dict[str, Any]]
) -> None:
    for source in sources:
        sizes, _, columns = collect(
            source.chunks("uscc", ["name", "employees"], chunk_rows=20, numeric=False)
        )
        assert sizes == [20, 20, 13]
        assert columns["name"] == [r["name"] for r in data]
        assert columns["employees"] == [str(r["employees"]) for r in data]
        chunk = next(source.chunks("uscc", ["name"], numeric=False))
        assert chunk.columns["name"].dtype == object
        # the key may also be asked for as a column (a raw-row transfer of every field)
        _, keys, columns = collect(source.chunks("uscc", ["uscc", "name"], numeric=False))
        assert columns["uscc"] == keys == [r["uscc"] for r in data]


@settings(max_examples=25, deadline=None)
@given(chunk_rows=st.integers(min_value=1, max_value=70))
def test_chunking_partitions_the_rows_for_any_chunk_size(
    sources: list[Source], data: list[dict[str, Any]], chunk_rows: int
) -> None:
    for source in sources:
        sizes, keys, _ = collect(source.chunks("uscc", ["revenue"], chunk_rows=chunk_rows))
        assert all(1 <= s <= chunk_rows for s in sizes)
        assert keys == [r["uscc"] for r in data]


def test_validate_against_accepts_the_declared_table_and_counts_rows(
    sources: list[Source],
) -> None:
    for source in sources:
        assert validate_against(source, dataset(), chunk_rows=10) == ROWS


def test_a_column_not_in_the_source_is_refused(sources: list[Source]) -> None:
    with pytest.raises(ValidationError, match="column 'staff' is not in"):
        sources[0].chunks("uscc", ["staff"])
    with pytest.raises(ValidationError, match="chunk_rows"):
        sources[0].chunks("uscc", ["revenue"], chunk_rows=0)


# -- errors name the column and the row -----------------------------------------------------


def test_a_declared_column_missing_from_the_source_is_named(
    tmp_path: Path, data: list[dict[str, Any]]
) -> None:
    rows = [{k: v for k, v in r.items() if k != "employees"} for r in data]
    path = write_csv(tmp_path / "short.csv", rows, ["uscc", "name", "revenue"])
    source = open_source(SourceSpec("csv", str(path)))
    with pytest.raises(ValidationError) as err:
        validate_against(source, dataset())
    assert str(err.value) == (
        f"column 'employees' is declared in table 'firms' but missing from {path}"
    )


def test_a_bad_uscc_is_named_by_row_in_every_kind(
    tmp_path: Path, data: list[dict[str, Any]]
) -> None:
    rows = [dict(r) for r in data]
    good = rows[16]["uscc"]
    rows[16]["uscc"] = good[:17] + ("0" if good[17] != "0" else "1")  # row 17, bad check char
    for source in (
        open_source(SourceSpec("csv", str(write_csv(tmp_path / "bad.csv", rows)))),
        open_source(SourceSpec("parquet", str(write_parquet(tmp_path / "bad.parquet", rows)))),
        open_source(SourceSpec("sqlite", str(write_sqlite(tmp_path / "bad.db", rows)), "firms")),
    ):
        with pytest.raises(ValidationError) as err:
            validate_against(source, dataset(), chunk_rows=5)
        message = str(err.value)
        assert "row 17 of column 'uscc'" in message
        assert "check character (position 18)" in message


def test_an_opaque_key_is_not_checked_as_a_uscc(tmp_path: Path, data: list[dict[str, Any]]) -> None:
    rows = [dict(r, uscc=f"customer-{i}") for i, r in enumerate(data)]
    source = open_source(SourceSpec("csv", str(write_csv(tmp_path / "opaque.csv", rows))))
    assert validate_against(source, dataset(keyKind="opaque")) == ROWS
    with pytest.raises(ValidationError, match="row 1 of column 'uscc'"):
        validate_against(source, dataset())


def test_a_uscc_not_in_canonical_form_is_refused(
    tmp_path: Path, data: list[dict[str, Any]]
) -> None:
    rows = [dict(r) for r in data]
    rows[2]["uscc"] = " " + rows[2]["uscc"]
    source = open_source(SourceSpec("csv", str(write_csv(tmp_path / "lower.csv", rows))))
    with pytest.raises(ValidationError, match=r"column 'uscc', row 3: .* not in canonical form"):
        validate_against(source, dataset())


def test_a_non_numeric_cell_names_column_and_row(
    tmp_path: Path, data: list[dict[str, Any]]
) -> None:
    rows: list[dict[str, Any]] = [dict(r) for r in data]
    rows[40]["revenue"] = "n/a"
    rows[9]["employees"] = ""
    csv_source = open_source(SourceSpec("csv", str(write_csv(tmp_path / "nan.csv", rows))))
    with pytest.raises(ValidationError) as err:
        list(csv_source.chunks("uscc", ["revenue"], chunk_rows=16))
    assert "column 'revenue', row 41 (line 42): 'n/a' is not a number" in str(err.value)
    with pytest.raises(ValidationError, match=r"column 'employees', row 10 \(line 11\): empty"):
        validate_against(csv_source, dataset())
    # text mode takes any cell
    _, _, columns = collect(csv_source.chunks("uscc", ["revenue"], numeric=False))
    assert columns["revenue"][40] == "n/a"

    conn = sqlite3.connect(tmp_path / "nan.db")
    conn.execute("CREATE TABLE firms (uscc TEXT, name TEXT, revenue, employees)")
    conn.executemany("INSERT INTO firms VALUES (?, ?, ?, ?)", [tuple(r.values()) for r in rows])
    conn.execute("UPDATE firms SET employees = NULL WHERE rowid = 10")
    conn.commit()
    conn.close()
    sqlite_source = open_source(SourceSpec("sqlite", str(tmp_path / "nan.db"), "firms"))
    with pytest.raises(ValidationError, match="column 'revenue', row 41: 'n/a' is not a number"):
        list(sqlite_source.chunks("uscc", ["revenue"]))
    with pytest.raises(ValidationError, match="column 'employees', row 10: empty cell"):
        list(sqlite_source.chunks("uscc", ["employees"]))

    table = pa.table(
        {
            "uscc": [r["uscc"] for r in data],
            "revenue": [None if i == 30 else r["revenue"] for i, r in enumerate(data)],
            "when": pa.array([0] * len(data), pa.date32()),
        }
    )
    pq.write_table(table, tmp_path / "nan.parquet")
    parquet_source = open_source(SourceSpec("parquet", str(tmp_path / "nan.parquet")))
    with pytest.raises(ValidationError, match="column 'revenue', row 31: empty cell"):
        list(parquet_source.chunks("uscc", ["revenue"], chunk_rows=7))
    with pytest.raises(ValidationError, match="column 'when' has type date32"):
        list(parquet_source.chunks("uscc", ["when"]))
    _, _, columns = collect(parquet_source.chunks("uscc", ["when", "revenue"], numeric=False))
    assert columns["when"][0] == "1970-01-01"
    assert columns["revenue"][30] == ""


def test_non_finite_numbers_are_refused(tmp_path: Path, data: list[dict[str, Any]]) -> None:
    rows = [dict(r) for r in data]
    rows[4]["revenue"] = "inf"
    source = open_source(SourceSpec("csv", str(write_csv(tmp_path / "inf.csv", rows))))
    with pytest.raises(ValidationError, match=r"row 5 .*'inf' is not a finite number"):
        list(source.chunks("uscc", ["revenue"]))


def test_a_duplicate_key_is_named(tmp_path: Path, data: list[dict[str, Any]]) -> None:
    rows = [dict(r) for r in data]
    rows[44]["uscc"] = rows[6]["uscc"]
    for source in (
        open_source(SourceSpec("csv", str(write_csv(tmp_path / "dup.csv", rows)))),
        open_source(SourceSpec("sqlite", str(write_sqlite(tmp_path / "dup.db", rows)), "firms")),
    ):
        with pytest.raises(ValidationError) as err:
            validate_against(source, dataset(), chunk_rows=10)
        assert f"duplicate key {rows[6]['uscc']!r}" in str(err.value)
        assert "rows 7 and 45" in str(err.value)


def test_a_ragged_csv_row_and_an_empty_key_are_named(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("k,v\na,1\n\nb,2,3\n", encoding="utf-8")
    source = open_source(SourceSpec("csv", str(path)))
    with pytest.raises(ValidationError, match=r"row 2 \(line 4\) has 3 fields, the header has 2"):
        list(source.chunks("k", ["v"]))
    path.write_text("k,v\na,1\n,2\n", encoding="utf-8")
    with pytest.raises(ValidationError, match=r"column 'k', row 2 \(line 3\): empty key"):
        list(open_source(SourceSpec("csv", str(path))).chunks("k", ["v"]))
    path.write_text("k,v,k\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="names 'k' twice"):
        open_source(SourceSpec("csv", str(path))).column_names()


# -- specs and SQLite safety --------------------------------------------------------------------


@pytest.mark.parametrize(
    "table",
    ['firms"; DROP TABLE firms; --', "firms; DROP TABLE firms", "1firms", "", "a b", "firms--"],
)
def test_sqlite_table_names_that_are_not_identifiers_are_refused(
    tmp_path: Path, data: list[dict[str, Any]], table: str
) -> None:
    path = write_sqlite(tmp_path / "safe.db", data)
    with pytest.raises(ValidationError, match=r"source\.table"):
        open_source(SourceSpec("sqlite", str(path), table))
    with pytest.raises(ValidationError, match=r"source\.table"):
        SourceSpec.from_json({"kind": "sqlite", "path": str(path), "table": table})
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM firms").fetchone() == (len(data),)
    conn.close()


def test_sqlite_is_opened_read_only_and_unknown_tables_are_named(
    tmp_path: Path, data: list[dict[str, Any]]
) -> None:
    path = write_sqlite(tmp_path / "ro.db", data)
    with pytest.raises(ValidationError, match="no table 'nothing'"):
        open_source(SourceSpec("sqlite", str(path), "nothing")).column_names()
    source = open_source(SourceSpec("sqlite", str(path), "firms"))
    assert isinstance(source, Source)
    conn = source._connect()  # type: ignore[attr-defined]
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM firms")
    conn.close()
    not_a_db = tmp_path / "text.db"
    not_a_db.write_text("hello", encoding="utf-8")
    with pytest.raises(ValidationError, match="not a readable SQLite database"):
        open_source(SourceSpec("sqlite", str(not_a_db), "firms")).column_names()


def test_spec_parsing_resolves_relative_paths_and_refuses_unknowns(tmp_path: Path) -> None:
    spec = SourceSpec.from_json({"kind": "csv", "path": "data/x.csv"}, base_dir=tmp_path)
    assert spec.path == str((tmp_path / "data" / "x.csv").resolve())
    assert SourceSpec.from_json(spec.to_json()) == spec
    for bad, field in (
        ({"kind": "xlsx", "path": "/a"}, "source.kind"),
        ({"kind": "csv", "path": ""}, "source.path"),
        ({"kind": "csv", "path": "/a", "table": "t"}, "source.table"),
        ({"kind": "sqlite", "path": "/a"}, "source.table"),
        ({"kind": "csv", "path": "/a", "extra": 1}, "unknown member extra"),
        ({"kind": "csv", "path": "rel.csv"}, "relative"),
        ([], "expected an object"),
    ):
        with pytest.raises(ValidationError, match=field):
            SourceSpec.from_json(bad)
    with pytest.raises(ValidationError, match="no file at"):
        open_source(SourceSpec("csv", str(tmp_path / "absent.csv")))


def test_load_spec_reads_the_registered_source() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        with pytest.raises(NotFoundError):
            load_spec(tx, "tax-revenue")
        tx.put(
            "source", "tax-revenue", {"kind": "sqlite", "path": "/d.db", "table": "t", "rows": 3}
        )
        assert load_spec(tx, "tax-revenue") == SourceSpec("sqlite", "/d.db", "t")


# -- streaming ----------------------------------------------------------------------------------


def test_a_large_csv_is_streamed_in_bounded_chunks(tmp_path: Path) -> None:
    n, chunk_rows = 200_000, 10_000
    path = tmp_path / "large.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("key,a,b,label\n")
        for i in range(n):
            handle.write(f"k{i:07d},{i * 0.5},{i % 97},row {i}\n")
    source = open_source(SourceSpec("csv", str(path)))

    tracemalloc.start()
    try:
        rows = 0
        largest = 0
        total = 0.0
        for chunk in source.chunks("key", ["a", "b"], chunk_rows=chunk_rows):
            largest = max(largest, len(chunk))
            rows += len(chunk)
            total += float(chunk.columns["a"].sum())
        _, streamed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with path.open(encoding="utf-8", newline="") as handle:
            # A tenth of the table as a naive reader holds it (list of rows); times 10 is the whole.
            tenth = list(itertools.islice(csv.reader(handle), n // 10))
        _, tenth_peak = tracemalloc.get_traced_memory()
        del tenth
    finally:
        tracemalloc.stop()

    assert rows == n
    assert largest == chunk_rows
    assert total == sum(i * 0.5 for i in range(n))
    whole_in_memory = 10 * tenth_peak
    print(f"streamed peak {streamed_peak} B, whole table in memory ~{whole_in_memory} B")
    assert streamed_peak < whole_in_memory / 10, (streamed_peak, whole_in_memory)
    assert streamed_peak < path.stat().st_size, (streamed_peak, path.stat().st_size)
