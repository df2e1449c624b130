"""The fast readers agree with the row reader, and the provider's column cache stays correct.

- CSV numeric reads go through Arrow first; any row Arrow cannot take as-is hands over to the
  :mod:`csv` reader from that row on, so the rows, values and error messages are the same as the
  row reader's alone (properties over random files with bad cells in random places).
- ``Source.read_columns`` gives the same table as the chunks, for every kind of source.
- ``SourceData`` serves lookups and scans from its cache, re-reads when the file or the
  published version changes, never caches beyond its bound, and streams when the cache is off.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connectors.node.sources as sources_module
from connectors.common.settings import NodeSettings
from connectors.node.compute import ColumnCache, SourceData
from connectors.node.sources import SOURCE_NAMESPACE, SourceSpec, open_source
from tests._seeding import rng_for
from tests.trusted_space._joint import dataset, offer
from trusted_space.catalog import FieldType, publish
from trusted_space.errors import StoreError, ValidationError
from trusted_space.store import MemoryStore

KEY = "entity"
COLUMNS = ["a", "b"]


def write_rows(path: Path, rows: list[list[str]], header: str = "entity,a,b") -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(header + "\n")
        for row in rows:
            handle.write(",".join(row) + "\n")
    return path


def clean_rows(n: int) -> list[list[str]]:
    rng = rng_for(f"{__name__}.clean_rows")
    return [[f"k{i:05d}", f"{rng.normal():.6f}", f"{rng.integers(0, 99)}"] for i in range(n)]


def row_reader(path: Path, chunk_rows: int) -> tuple[list[str], np.ndarray] | str:
    """What the csv-module reader alone gives: (keys, values) or its error message."""
    source = open_source(SourceSpec("csv", str(path)))
    header = source.column_names()
    positions = [header.index(c) for c in [KEY, *COLUMNS]]
    try:
        chunks = list(
            source._read_rows(KEY, COLUMNS, positions, len(header), chunk_rows, True)  # type: ignore[attr-defined]
        )
    except ValidationError as exc:
        return str(exc)
    keys = [k for c in chunks for k in c.keys]
    values = np.column_stack([np.concatenate([c.columns[n] for c in chunks]) for n in COLUMNS])
    return keys, values


def fast_reader(path: Path, chunk_rows: int) -> tuple[list[str], np.ndarray, list[int]] | str:
    source = open_source(SourceSpec("csv", str(path)))
    try:
        chunks = list(source.chunks(KEY, COLUMNS, chunk_rows=chunk_rows))
    except ValidationError as exc:
        return str(exc)
    keys = [k for c in chunks for k in c.keys]
    values = np.column_stack([np.concatenate([c.columns[n] for c in chunks]) for n in COLUMNS])
    return keys, values, [len(c) for c in chunks]


BAD_CELLS = ["", "n/a", "nan", "inf", " 1.5", "1_000", "1e3", "-0", '"7"', "0x10"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 400),
    chunk_rows=st.integers(1, 97),
    bad=st.lists(st.tuples(st.integers(0, 399), st.sampled_from(BAD_CELLS)), max_size=3),
    empty_key=st.booleans(),
    ragged=st.booleans(),
)
def test_the_arrow_path_gives_what_the_row_reader_gives(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    chunk_rows: int,
    bad: list[tuple[int, str]],
    empty_key: bool,
    ragged: bool,
) -> None:
    monkeypatch.setattr(sources_module, "_CSV_BLOCK_BYTES", 257)  # many small Arrow batches
    rows = clean_rows(n)
    for at, cell in bad:
        rows[at % n][1] = cell
    if empty_key:
        rows[n // 2][0] = ""
    if ragged:
        rows[n - 1].append("x")
    path = write_rows(tmp_path_factory.mktemp("csv") / "t.csv", rows)
    expected = row_reader(path, chunk_rows)
    got = fast_reader(path, chunk_rows)
    if isinstance(expected, str):
        assert got == expected  # the same message: row, line, column and cause
        return
    assert not isinstance(got, str)
    keys, values, sizes = got
    assert keys == expected[0]
    assert np.array_equal(values, expected[1])
    assert all(size == chunk_rows for size in sizes[:-1]) and 1 <= sizes[-1] <= chunk_rows


def test_quoted_newlines_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes(b'\xef\xbb\xbfentity,a,b\r\n"x\ny",1,2\r\n\r\nz, 3 ,4\r\n')
    got = fast_reader(path, 10)
    assert not isinstance(got, str)
    assert got[0] == ["x\ny", "z"] and got[1].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert (
        got[0]
        == open_source(SourceSpec("csv", str(path))).read_columns(KEY, COLUMNS).keys.to_pylist()
    )


def sources_of(root: Path, rows: list[list[str]]) -> list[SourceSpec]:
    csv_path = write_rows(root / "t.csv", rows)
    table = pa.table(
        {
            KEY: [r[0] for r in rows],
            "a": [float(r[1]) for r in rows],
            "b": [int(r[2]) for r in rows],
        }
    )
    pq.write_table(table, root / "t.parquet", row_group_size=17)
    conn = sqlite3.connect(root / "t.db")
    conn.execute("DROP TABLE IF EXISTS t")
    conn.execute("CREATE TABLE t (entity TEXT, a REAL, b INTEGER)")
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?)", [(r[0], float(r[1]), int(r[2])) for r in rows]
    )
    conn.commit()
    conn.close()
    return [
        SourceSpec("csv", str(csv_path)),
        SourceSpec("parquet", str(root / "t.parquet")),
        SourceSpec("sqlite", str(root / "t.db"), "t"),
    ]


def test_read_columns_equals_the_chunks_for_every_kind(tmp_path: Path) -> None:
    rows = clean_rows(123)
    for spec in sources_of(tmp_path, rows):
        source = open_source(spec)
        whole = source.read_columns(KEY, COLUMNS)
        chunks = list(source.chunks(KEY, COLUMNS, chunk_rows=10))
        assert whole.keys.to_pylist() == [k for c in chunks for k in c.keys], spec.kind
        for name in COLUMNS:
            assert np.array_equal(
                whole.values[name], np.concatenate([c.columns[name] for c in chunks])
            ), (spec.kind, name)
        assert len(whole) == 123


def test_read_columns_names_the_bad_row_like_the_chunks(tmp_path: Path) -> None:
    rows = clean_rows(50)
    rows[31][2] = "many"
    source = open_source(SourceSpec("csv", str(write_rows(tmp_path / "bad.csv", rows))))
    with pytest.raises(ValidationError, match=r"column 'b', row 32 \(line 33\): 'many'"):
        source.read_columns(KEY, COLUMNS)


# -- the provider's column cache --------------------------------------------------------------


def registered(
    store: MemoryStore, spec: SourceSpec, rows: int, *, ds_id: str = "ds-1", version: int = 0
) -> str:
    the_offer = offer()
    ds = dataset(
        "tax-bureau",
        COLUMNS,
        ds_id=ds_id,
        offer_ids=[the_offer["@id"]],
        types={"a": FieldType.FLOAT, "b": FieldType.INT},
    )
    with store.transaction() as tx:
        publish(tx, ds, [the_offer], expect_version=version)
        tx.put(SOURCE_NAMESPACE, ds.id, spec.to_json() | {"rows": rows})
    return ds.id


class CountingSource:
    """Counts how often a source is opened for reading (each open is a read of the file)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import connectors.node.compute as wiring

        self.opened = 0
        real = wiring.open_source

        def counting(spec: SourceSpec) -> Any:
            self.opened += 1
            return real(spec)

        monkeypatch.setattr(wiring, "open_source", counting)


@pytest.mark.parametrize("kind", ["csv", "parquet", "sqlite"])
def test_lookups_come_from_the_cache_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    rows = clean_rows(200)
    spec = next(s for s in sources_of(tmp_path, rows) if s.kind == kind)
    store = MemoryStore()
    ds = registered(store, spec, len(rows))
    opened = CountingSource(monkeypatch)
    data = SourceData(store, "tax-bureau", cache_bytes=1 << 20)
    wanted = ["k00007", "nobody", "k00199", "k00007", "k00000"]
    found, values = data.lookup(ds, wanted, ["b", "a"])
    assert found.tolist() == [True, False, True, True, True]
    expected = [[float(rows[i][2]), float(rows[i][1])] for i in (7, 199, 7, 0)]
    assert values[found].tolist() == expected
    assert np.isnan(values[1]).all()
    for _ in range(3):
        data.lookup(ds, wanted, ["a"])
    assert opened.opened == 1  # read once, then served from memory
    assert data.cache.nbytes > 0
    # Scans come from the cache too, in file order and chunked.
    chunks = list(data.scan(ds, ["a"], chunk_rows=64))
    assert [len(k) for k, _ in chunks] == [64, 64, 64, 8]
    assert [k for keys, _ in chunks for k in keys] == [r[0] for r in rows]
    assert opened.opened == 1
    # A changed file is read again (the stamp holds its size and times).
    rows[7][2] = "98"
    if kind == "csv":
        write_rows(Path(spec.path), rows)
    elif kind == "parquet":
        sources_of(tmp_path, rows)
    else:
        conn = sqlite3.connect(spec.path)
        conn.execute("UPDATE t SET b = 98 WHERE entity = 'k00007'")
        conn.commit()
        conn.close()
    os.utime(spec.path, ns=(1, 1))  # a different modification time, whatever the clock
    _, values = data.lookup(ds, ["k00007"], ["b"])
    assert values.tolist() == [[98.0]]
    assert opened.opened == 2


def test_a_new_published_version_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = sources_of(tmp_path, clean_rows(20))[0]
    store = MemoryStore()
    ds = registered(store, spec, 20)
    opened = CountingSource(monkeypatch)
    data = SourceData(store, "tax-bureau")
    data.lookup(ds, ["k00001"], ["a"])
    registered(store, spec, 20, version=1)
    data.lookup(ds, ["k00001"], ["a"])
    assert opened.opened == 2


def test_a_dataset_above_the_bound_is_streamed_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = clean_rows(300)
    spec = sources_of(tmp_path, rows)[0]
    store = MemoryStore()
    ds = registered(store, spec, len(rows))
    opened = CountingSource(monkeypatch)
    for data in (
        SourceData(store, "tax-bureau", cache_bytes=300 * 8, chunk_rows=7),  # too small
        SourceData(store, "tax-bureau", cache_bytes=0, chunk_rows=7),  # off
    ):
        before = opened.opened
        found, values = data.lookup(ds, ["k00299", "k00003", "k00299", "zz"], ["a", "b"])
        assert found.tolist() == [True, True, True, False]
        assert values[0].tolist() == [float(rows[299][1]), float(rows[299][2])]
        assert values[2].tolist() == values[0].tolist()
        data.lookup(ds, ["k00003"], ["a"])
        assert opened.opened == before + 2  # every lookup reads the file
        assert data.cache.nbytes == 0


def test_a_duplicate_key_or_a_broken_file_is_a_store_error_naming_the_dataset_only(
    tmp_path: Path,
) -> None:
    rows = clean_rows(30)
    rows[20][0] = rows[3][0]
    spec = SourceSpec("csv", str(write_rows(tmp_path / "dup.csv", rows)))
    store = MemoryStore()
    ds = registered(store, spec, 30)
    data = SourceData(store, "tax-bureau")
    with pytest.raises(StoreError) as caught:
        data.lookup(ds, ["k00001"], ["a"])
    assert "ds-1" in str(caught.value) and str(tmp_path) not in str(caught.value)
    write_rows(Path(spec.path), [["k1", "oops", "1"]])
    with pytest.raises(StoreError) as caught:
        data.lookup(ds, ["k1"], ["a"])
    assert str(tmp_path) not in str(caught.value)


def test_the_cache_evicts_the_least_recently_used_within_its_bound() -> None:
    from connectors.node.compute import _Entry

    def entry(size: int) -> _Entry:
        return _Entry(("s",), pa.array(["x"]), {}, size)

    cache = ColumnCache(100)
    cache.put("a", entry(40))
    cache.put("b", entry(40))
    assert cache.get("a", ("s",)) is not None  # a is now the most recent
    cache.put("c", entry(40))
    assert cache.get("b", ("s",)) is None and cache.get("a", ("s",)) is not None
    assert cache.nbytes == 80
    cache.put("d", entry(101))  # larger than the bound: never held
    assert cache.get("d", ("s",)) is None and cache.nbytes == 80
    assert cache.get("a", ("other",)) is None and cache.nbytes == 40  # stale: dropped


def test_the_cache_bound_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def bound() -> int:
        node_settings = NodeSettings(name="provider-p", roles=["provider"])
        data = SourceData(MemoryStore(), "p", cache_bytes=node_settings.data_cache_bytes)
        return data.cache.max_bytes

    monkeypatch.setenv("TS_DATA_CACHE_MB", "2")
    assert bound() == 2 << 20
    monkeypatch.setenv("TS_DATA_CACHE_MB", "0")
    assert bound() == 0
    monkeypatch.setenv("TS_DATA_CACHE_MB", "lots")  # not a number: the default, as before
    assert bound() == 1 << 30
    monkeypatch.delenv("TS_DATA_CACHE_MB")
    assert bound() == 1 << 30
    assert SourceData(MemoryStore(), "p").cache.max_bytes == 1 << 30


def test_the_worker_counts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TS_CKKS_WORKERS", "4")
    monkeypatch.setenv("TS_PSI_WORKERS", "3")
    tuned = NodeSettings(name="provider-p", roles=["provider"])
    assert (tuned.ckks_workers, tuned.psi_workers) == (4, 3)
    monkeypatch.setenv("TS_CKKS_WORKERS", "many")  # not a number: in-process, as before
    monkeypatch.setenv("TS_PSI_WORKERS", " ")
    default = NodeSettings(name="provider-p", roles=["provider"])
    assert (default.ckks_workers, default.psi_workers) == (1, 1)


def test_csv_writer_round_trip_sanity(tmp_path: Path) -> None:
    """Values written by the csv module (quoted where needed) read back unchanged."""
    path = tmp_path / "w.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow([KEY, "a", "b"])
        out.writerow(["id, with comma", "1.25", "3"])
        out.writerow(['say "hi"', "-2", "4"])
    got = fast_reader(path, 5)
    assert not isinstance(got, str)
    assert got[0] == ["id, with comma", 'say "hi"'] and got[1].tolist() == [[1.25, 3], [-2, 4]]
