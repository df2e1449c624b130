"""The Arrow IPC form of score results and queries: a round trip gives back the JSON document
exactly (every float bit, every id), and a bad stream is a ValidationError naming what is wrong."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.common.columnar import (
    BATCH_ROWS,
    METADATA_KEY,
    STORED_KEY,
    query_from_arrow,
    query_to_arrow,
    result_from_arrow,
    result_of_stored,
    result_to_arrow,
    stored_result,
)
from trusted_space.errors import ValidationError

finite = st.floats(allow_nan=False, allow_infinity=False)
ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def results(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 40))
    doc: dict[str, Any] = {
        "query": draw(ids),
        "entities": draw(st.lists(ids, min_size=n, max_size=n, unique=True)),
        "logits": draw(st.lists(finite, min_size=n, max_size=n)),
        "receipts": {"tax": {"index": draw(st.integers(0, 9)), "entry": "ZW50cnk="}},
        "timings": {"total": draw(finite)},
        "missing": {"tax": draw(st.lists(ids, max_size=3))},
        "protocol": "additive",
    }
    if draw(st.booleans()):
        doc["outputs"] = draw(st.lists(finite, min_size=n, max_size=n))
    else:
        doc["bands"] = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
        doc["bandEdges"] = [0.0, 1.5]
    return doc


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON documents, floats compared bit for bit (``-0.0`` is not ``0.0``)."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and math.copysign(1, a) == math.copysign(1, b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=60, deadline=None)
@given(results())
def test_a_result_round_trips_exactly(doc: dict[str, Any]) -> None:
    assert _same(result_from_arrow(result_to_arrow(doc)), doc)
    assert _same(result_of_stored(json.loads(json.dumps(stored_result(result_to_arrow(doc))))), doc)
    # the same numbers as the JSON the API serves
    assert _same(result_from_arrow(result_to_arrow(doc)), json.loads(json.dumps(doc)))


@settings(max_examples=30, deadline=None)
@given(st.lists(ids, max_size=30, unique=True), st.text(max_size=8))
def test_a_query_round_trips(entities: list[str], purpose: str) -> None:
    doc = {"purpose": purpose, "protocol": "ckks", "entities": entities, "cohort": False}
    assert query_from_arrow(query_to_arrow(doc)) == doc


def test_a_large_result_streams_in_batches_and_stays_bit_identical(
    rng: np.random.Generator,
) -> None:
    n = 2 * BATCH_ROWS + 7
    logits = rng.normal(0, 3, n)
    doc = {
        "query": "q",
        "entities": [f"e{i}" for i in range(n)],
        "logits": logits.tolist(),
        "outputs": (1 / (1 + np.exp(-logits))).tolist(),
    }
    data = result_to_arrow(doc)
    assert pa.ipc.open_stream(data).read_all().to_batches()[0].num_rows == BATCH_ROWS
    back = result_from_arrow(data)
    assert back == doc
    assert np.array_equal(np.asarray(back["logits"]).view(np.uint64), logits.view(np.uint64))


def test_results_stored_as_json_before_are_read_as_they_are() -> None:
    old = {"query": "q", "entities": ["a"], "logits": [0.5]}
    assert result_of_stored(old) == old
    assert set(stored_result(result_to_arrow(old))) == {STORED_KEY}


def _stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"", "not an Arrow IPC stream"),
        (b'{"entities": ["a"]}', "not an Arrow IPC stream"),
        (_stream(pa.table({"entities": ["a"]})), "no 'trusted-space' metadata"),
        (
            _stream(pa.table({"entities": [1, 2]}).replace_schema_metadata({METADATA_KEY: "{}"})),
            "$.entities: expected Arrow string",
        ),
        (
            _stream(pa.table({"ids": ["a"]}).replace_schema_metadata({METADATA_KEY: "{}"})),
            "$.ids: not a column",
        ),
        (
            _stream(
                pa.table({"entities": ["a", None]}).replace_schema_metadata({METADATA_KEY: "{}"})
            ),
            "$.entities: null values",
        ),
        (
            _stream(pa.table({"entities": ["a"]}).replace_schema_metadata({METADATA_KEY: "[1]"})),
            "not a JSON object",
        ),
        (
            _stream(
                pa.table({"entities": ["a"]}).replace_schema_metadata(
                    {METADATA_KEY: '{"entities": ["b"]}'}
                )
            ),
            "both a column and in the metadata",
        ),
    ],
)
def test_a_bad_query_stream_is_refused_naming_why(data: bytes, named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        query_from_arrow(data)
    assert named in str(caught.value)
