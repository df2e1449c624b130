"""The ``align.*`` headers: each message reads back what it wrote; a bad field is named."""

from __future__ import annotations

from typing import Any

import pytest

from trusted_space.errors import ValidationError
from trusted_space.protocols.align_wire import (
    AlignOpen,
    AlignOpened,
    AlignReceived,
    AlignRequest,
    AlignResponse,
)
from trusted_space.transport import frame, unframe


def _over_the_wire(header: dict[str, Any]) -> dict[str, Any]:
    return unframe(frame(header))[0]


def _open(**changes: Any) -> AlignOpen:
    values: dict[str, Any] = {
        "query": "urn:uuid:q-1",
        "agreement": "urn:uuid:a-1",
        "dataset": "ds-tax",
        "purpose": "credit-risk",
        "kind": "aggregate",
        "protocol": "paillier",
        "columns": ("income", "debt"),
        "size": 10,
    }
    values.update(changes)
    return AlignOpen(**values)


MESSAGES = [
    _open(),
    _open(kind="score", epsilon=0.5),
    AlignRequest("urn:uuid:q-1", "ds-tax"),
    AlignReceived(3),
    AlignResponse("urn:uuid:q-1", "ds-tax", 1 << 24),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_reads_back_what_it_wrote(message: Any) -> None:
    header = _over_the_wire(message.to_header())
    assert type(message).from_header(header) == message


def test_the_open_reply_reads_back_with_its_provider() -> None:
    opened = AlignOpened(bytes(range(16)), {"index": 3, "participant": "tax-bureau"})
    header = _over_the_wire(opened.to_header())
    assert header["session"] == bytes(range(16)).hex()
    assert AlignOpened.from_header(header, "tax-bureau") == opened


def test_the_open_header_keeps_its_wire_keys() -> None:
    keys = {"query", "agreement", "dataset", "purpose", "kind", "protocol", "columns", "size"}
    assert set(_open().to_header()) == keys
    assert set(_open(epsilon=1.0).to_header()) == keys | {"epsilon"}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("query", None, "header.query: expected a non-empty string"),
        ("agreement", "", "header.agreement: expected a non-empty string"),
        ("kind", "transfer-all", "header.kind: 'transfer-all' not in"),
        ("protocol", "rsa", "header.protocol: 'rsa' not in"),
        ("protocol", 3, "header.protocol: expected a non-empty string"),
        ("columns", [], "header.columns: expected a non-empty list of column names"),
        ("columns", ["a", 1], "header.column: expected a non-empty string"),
        ("size", 0, "header.size: expected an integer"),
        ("size", True, "header.size: expected an integer"),
        ("epsilon", "0.5", "header.epsilon: expected a number"),
        ("epsilon", False, "header.epsilon: expected a number"),
    ],
)
def test_a_bad_open_field_is_named(name: str, value: Any, message: str) -> None:
    header = _open().to_header()
    header[name] = value
    with pytest.raises(ValidationError) as info:
        AlignOpen.from_header(header)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"receipt": {}}, "header.session: expected a non-empty string"),
        ({"session": "zz", "receipt": {}}, "tax-bureau: PSI session id is not hex"),
        ({"session": "ab"}, "tax-bureau: no receipt for the alignment"),
    ],
)
def test_a_bad_open_reply_is_refused(header: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        AlignOpened.from_header(header, "tax-bureau")
    assert str(info.value) == message


def test_a_bad_request_or_response_field_is_named() -> None:
    with pytest.raises(ValidationError, match=r"header\.dataset"):
        AlignRequest.from_header({"query": "q"})
    with pytest.raises(ValidationError, match=r"header\.offset"):
        AlignResponse.from_header({"query": "q", "dataset": "d", "offset": -1})
    with pytest.raises(ValidationError, match=r"header\.offset"):
        AlignResponse.from_header({"query": "q", "dataset": "d", "offset": 1 << 41})
