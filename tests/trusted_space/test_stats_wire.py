"""The ``stats.*`` headers: each message reads back what it wrote; a bad field is named."""

from __future__ import annotations

from typing import Any

import pytest

from trusted_space.errors import ValidationError
from trusted_space.protocols.aggregate.wire import (
    StatsEntities,
    StatsFetch,
    StatsOpened,
    StatsQuery,
    StatsReceived,
    StatsRef,
    StatsRelease,
    StatsReleased,
    StatsTotals,
)
from trusted_space.transport import frame, unframe


def _over_the_wire(header: dict[str, Any]) -> dict[str, Any]:
    return unframe(frame(header))[0]


def _query(**changes: Any) -> StatsQuery:
    values: dict[str, Any] = {
        "query": "urn:uuid:q-1",
        "agreement": "urn:uuid:a-1",
        "dataset": "ds-tax",
        "column": "income",
        "statistic": "mean",
        "protocol": "paillier",
        "purpose": "credit-risk",
    }
    values.update(changes)
    return StatsQuery(**values)


MESSAGES = [
    _query(),
    _query(statistic="histogram", bins=(0.0, 10.0, 100.0), epsilon=0.5),
    StatsRef("urn:uuid:q-1", "ds-tax"),
    StatsFetch("urn:uuid:q-1", "ds-tax", 1 << 24),
    StatsEntities(_query(epsilon=1.0), 3, "impute"),
    StatsReceived(2),
    StatsOpened(1000),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_reads_back_what_it_wrote(message: Any) -> None:
    header = _over_the_wire(message.to_header())
    assert type(message).from_header(header) == message


@pytest.mark.parametrize(
    ("protocol", "count"), [("paillier", "1234567"), ("ckks", 3.25), ("additive", "9" * 19)]
)
def test_a_release_reads_back_with_its_protocol(protocol: str, count: str | float) -> None:
    release = StatsRelease("urn:uuid:q-1", "ds-tax", count)
    assert StatsRelease.from_header(_over_the_wire(release.to_header()), protocol) == release


def test_the_replies_read_back_with_their_provider() -> None:
    released = StatsReleased(("count", "sum"), (1.0, 64.0), 12, {"index": 4}, (1.0, 8.0))
    header = _over_the_wire({**released.to_header(), "total": 10, "offset": 0})
    assert StatsReleased.from_header(header, "tax-bureau") == released
    plain = StatsReleased(("count",), (0.0,), 12, {"index": 4})
    assert "divisors" not in plain.to_header()
    assert StatsReleased.from_header(_over_the_wire(plain.to_header()), "p") == plain
    totals = StatsTotals(("count",), (11.5,), (1.0,), 12, ("e-9",), {"index": 4})
    assert StatsTotals.from_header(_over_the_wire(totals.to_header()), "tax-bureau") == totals


def test_the_headers_keep_their_wire_keys() -> None:
    keys = {"query", "agreement", "dataset", "column", "statistic", "protocol", "purpose", "bins"}
    assert set(_query().to_header()) == keys
    assert set(_query(epsilon=1.0).to_header()) == keys | {"epsilon"}
    assert set(StatsEntities(_query(), 3, "fail").to_header()) == keys | {"count", "missing"}
    assert list(StatsReleased(("count",), (0.0,), 1, {}, (1.0,)).to_header()) == [
        "names",
        "noiseScales",
        "count",
        "receipt",
        "divisors",
    ]


def test_epsilon_is_read_in_whole_micro_epsilon_and_bins_other_than_a_list_as_none() -> None:
    header = {**_query().to_header(), "epsilon": 0.1234567, "bins": "0,1"}
    message = StatsQuery.from_header(header)
    assert message.epsilon == 0.123457
    assert message.bins == ()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("query", None, "header.query: expected a non-empty string"),
        ("column", "", "header.column: expected a non-empty string"),
        ("statistic", "median", "statistic 'median' not in"),
        ("protocol", "rsa", "header.protocol: 'rsa' not in"),
        ("protocol", 7, "header.protocol: expected a non-empty string"),
        ("epsilon", "0.5", "header.epsilon: expected a number"),
        ("epsilon", True, "header.epsilon: expected a number"),
    ],
)
def test_a_bad_query_field_is_named(name: str, value: Any, message: str) -> None:
    header = _query().to_header()
    header[name] = value
    with pytest.raises(ValidationError) as info:
        StatsQuery.from_header(header)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"count": 0}, "header.count: expected an integer"),
        ({"missing": "skip"}, "header.missing: 'skip' not in"),
        ({"missing": None}, "header.missing: expected a non-empty string"),
        ({"purpose": None}, "header.purpose: expected a non-empty string"),
    ],
)
def test_a_bad_entities_field_is_named(changes: dict[str, Any], message: str) -> None:
    header = {**StatsEntities(_query(), 3, "fail").to_header(), **changes}
    with pytest.raises(ValidationError) as info:
        StatsEntities.from_header(header)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("protocol", "count", "message"),
    [
        ("paillier", 12, "header.count: expected the decrypted count as digits"),
        ("paillier", "-1", "header.count: expected the decrypted count as digits"),
        ("ckks", "1.5", "header.count: expected the decrypted count"),
        ("ckks", False, "header.count: expected the decrypted count"),
        ("additive", None, "header.count: expected the analyst's share as digits"),
    ],
)
def test_a_bad_release_count_is_named(protocol: str, count: Any, message: str) -> None:
    header = {"query": "q", "dataset": "d", "count": count}
    with pytest.raises(ValidationError) as info:
        StatsRelease.from_header(header, protocol)
    assert str(info.value) == message


def test_a_bad_fetch_offset_is_named() -> None:
    with pytest.raises(ValidationError, match=r"header\.offset"):
        StatsFetch.from_header({"query": "q", "dataset": "d", "offset": -1})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"receipt": None}, "tax-bureau: no receipt for the release"),
        ({"names": "count"}, "tax-bureau released other values than asked for"),
        ({"noiseScales": [1.0, 2.0]}, "tax-bureau: no noise scales"),
        ({"divisors": []}, "released CKKS values come without their divisors"),
    ],
)
def test_a_bad_release_reply_is_refused(changes: dict[str, Any], message: str) -> None:
    header = {**StatsReleased(("count",), (1.0,), 3, {}, (1.0,)).to_header(), **changes}
    with pytest.raises(ValidationError) as info:
        StatsReleased.from_header(header, "tax-bureau")
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"totals": [True]}, "tax-bureau: no totals"),
        ({"missing": "e-1"}, "tax-bureau: malformed missing list"),
        ({"receipt": []}, "tax-bureau: no receipt for the release"),
        ({"noiseScales": ["1"]}, "tax-bureau: no noise scales"),
    ],
)
def test_a_bad_totals_reply_is_refused(changes: dict[str, Any], message: str) -> None:
    header = {**StatsTotals(("count",), (2.0,), (1.0,), 3, (), {}).to_header(), **changes}
    with pytest.raises(ValidationError) as info:
        StatsTotals.from_header(header, "tax-bureau")
    assert str(info.value) == message
