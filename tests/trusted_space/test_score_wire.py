"""The ``score.*`` and operator headers: each message reads back what it wrote; a bad field is
named."""

from __future__ import annotations

from typing import Any

import pytest

from trusted_space.errors import ValidationError, VerificationError
from trusted_space.protocols.operator_wire import (
    AggregateAdd,
    AggregateAdded,
    AggregateOpen,
    AggregateOpened,
    AggregateTake,
    AggregateTaken,
    DealerTriple,
    TripleDealt,
)
from trusted_space.protocols.score.wire import (
    BlockDone,
    EntitiesReceived,
    ScoreBlock,
    ScoreEntities,
    ScoreOpen,
    ScoreOpened,
    ScoreRan,
    ScoreRun,
)
from trusted_space.transport import frame, unframe


def _open(**changes: Any) -> ScoreOpen:
    values: dict[str, Any] = {
        "query": "urn:uuid:q-1",
        "protocol": "paillier",
        "mode": "analyst-held",
        "purpose": "credit-risk",
        "agreement": "urn:uuid:a-1",
        "dataset": "ds-tax",
        "id_kind": "opaque",
        "missing": "fail",
        "operator": "operator",
        "contributors": ("court", "tax-bureau"),
        "entities": 10,
        "block": 5,
        "feature_bound": 64.0,
        "partial_bound": 4096.0,
        "params": {"fracBits": 16},
        "columns": ("income", "debt"),
    }
    values.update(changes)
    return ScoreOpen(**values)


def _over_the_wire(header: dict[str, Any]) -> dict[str, Any]:
    return unframe(frame(header))[0]


MESSAGES = [
    _open(),
    _open(mode="party-held", columns=None, model="urn:uuid:m-1"),
    _open(
        entities=3,
        requests=(("urn:uuid:r-1", 1), ("urn:uuid:r-2", 2)),
        ids=("e1", "e2", "e3"),
        run_bytes=17,
    ),
    ScoreOpened("urn:uuid:q-1", 2),
    ScoreEntities("urn:uuid:q-1", 0, 10),
    EntitiesReceived(10),
    ScoreRun("urn:uuid:q-1"),
    BlockDone("urn:uuid:q-1", 1),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_reads_back_what_it_wrote(message: Any) -> None:
    header = _over_the_wire(message.to_header())
    assert type(message).from_header(header) == message


def test_block_and_run_reply_read_back_with_their_context() -> None:
    block = ScoreBlock("urn:uuid:q-1", 3)
    assert ScoreBlock.from_header(_over_the_wire(block.to_header()), 4) == block
    ran = ScoreRan("urn:uuid:q-1", {"index": 3}, 10, 2, {"maskSeed": "ab"})
    header = _over_the_wire(ran.to_header())
    assert header["maskSeed"] == "ab"  # a protocol's extras sit at the top level, as before
    assert ScoreRan.from_header(header, "tax-bureau") == ran


def test_a_served_run_reads_back_its_requests_uses_and_skips() -> None:
    ran = ScoreRan(
        "urn:uuid:q-1",
        {},
        3,
        0,
        uses={"urn:uuid:r-1": {"index": 4}},
        refused={"urn:uuid:r-2": {"status": 403, "trace": []}},
    )
    assert ScoreRan.from_header(_over_the_wire(ran.to_header()), "court") == ran
    block = ScoreBlock("urn:uuid:q-1", 0, ("urn:uuid:r-2",))
    assert ScoreBlock.from_header(_over_the_wire(block.to_header()), 1) == block


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"requests": [{"id": "r", "count": 3}, {"id": "r", "count": 7}]}, "requests"),
        ({"requests": [{"id": "r", "count": 9}]}, "requests"),
        ({"requests": "r"}, "requests"),
        ({"ids": "e1\ne2"}, "payload"),
        ({"ids": 5}, "ids"),
        ({"runBytes": 4}, "runBytes"),
    ],
)
def test_bad_served_fields_are_refused_naming_them(changes: dict[str, Any], field: str) -> None:
    header = {**_open().to_header(), **changes}
    with pytest.raises(ValidationError, match=field):
        ScoreOpen.from_header(header)
    with pytest.raises(ValidationError, match="skip"):
        ScoreBlock.from_header({"query": "q", "block": 0, "skip": [""]}, 1)


def test_the_open_header_keeps_its_wire_keys() -> None:
    assert set(_open().to_header()) == {
        "query",
        "protocol",
        "mode",
        "purpose",
        "agreement",
        "dataset",
        "idKind",
        "missing",
        "operator",
        "contributors",
        "entities",
        "block",
        "featureBound",
        "partialBound",
        "params",
        "columns",
    }


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("query", None, "header.query: expected a non-empty string"),
        ("protocol", "rsa", "header.protocol: expected one of"),
        ("contributors", ["tax-bureau", "court"], "header.contributors: must be sorted"),
        ("entities", 0, "header.entities: expected an integer"),
        ("featureBound", "64", "header.featureBound: expected a number"),
        ("columns", ["a", "a"], "header.columns: expected a list of distinct column names"),
        ("params", [], "header.params: expected an object"),
    ],
)
def test_a_bad_open_field_is_named(name: str, value: Any, message: str) -> None:
    header = _open().to_header()
    header[name] = value
    with pytest.raises(ValidationError, match=message.replace(".", r"\.")):
        ScoreOpen.from_header(header)


def test_a_block_out_of_range_and_a_reply_without_receipt_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"header\.block"):
        ScoreBlock.from_header({"query": "q", "block": 4}, 4)
    with pytest.raises(VerificationError) as info:
        ScoreRan.from_header({"query": "q", "rows": 1, "missing": 0}, "tax-bureau")
    assert info.value.reason == "tax-bureau returned no receipt"
    with pytest.raises(ValidationError, match=r"reply\.missing is not a count"):
        ScoreRan.from_header({"query": "q", "receipt": {}, "rows": 1, "missing": -1}, "p")


# -- the operator's messages (aggregate.*, dealer.triple) ----------------------------------------

OPERATOR_MESSAGES = [
    AggregateOpen("q", "ring64", ("court", "tax-bureau"), (5, 3), {"exponent": -32}),
    AggregateOpened(2),
    AggregateAdded(1, 2),
    AggregateTaken(1, 3),
    DealerTriple("s", "b-1", ("analyst", "court"), (5, 3), (3,)),
    TripleDealt(1, "ab" * 16),
]


@pytest.mark.parametrize("message", OPERATOR_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_operator_message_reads_back_what_it_wrote(message: Any) -> None:
    assert type(message).from_header(_over_the_wire(message.to_header())) == message


def test_operator_messages_with_ranges_of_the_aggregation_read_back() -> None:
    add = AggregateAdd("q", "analyst", ("court", "tax-bureau"), 1, 3)
    assert AggregateAdd.from_header(_over_the_wire(add.to_header()), [5, 3]) == add
    take = AggregateTake("q", 1)
    assert AggregateTake.from_header(_over_the_wire(take.to_header()), 2) == take
    with pytest.raises(ValidationError, match=r"header\.count"):
        AggregateAdd.from_header({**add.to_header(), "count": 5}, [5, 3])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"parties": ["a", "a"]}, "header.parties: expected 2-16 distinct participant ids"),
        ({"parties": [{"a": 1}, []]}, "header.parties: expected 2-16 distinct participant ids"),
        ({"right": [4]}, "header.left/right: shapes do not chain"),
        ({"left": [0, 3]}, "header.left: expected a shape of (2,) positive dimensions"),
    ],
)
def test_a_bad_triple_request_is_named(changes: dict[str, Any], message: str) -> None:
    header = {**DealerTriple("s", "b", ("a", "b"), (5, 3), (3,)).to_header(), **changes}
    with pytest.raises(ValidationError) as info:
        DealerTriple.from_header(header)
    assert str(info.value) == message
