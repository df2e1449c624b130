"""The operator's messages as typed headers: ``aggregate.open|add|take``, ``dealer.triple|bits``.

One frozen dataclass per message (requests and their replies), each with ``to_header()`` for the
sender beside ``from_header(header)`` for the receiver, so keys and checks live in one place
(:mod:`trusted_space.protocols.operator` serves them; its client helpers send them). Parsing is
strict: a missing or wrongly typed field is a :class:`~trusted_space.errors.ValidationError`
naming it (a 4xx at the edge). Ranges that depend on the aggregation the operator holds (block
numbers, a block's size) are given to ``from_header`` by the operation once it found it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Self

from trusted_space.errors import ValidationError
from trusted_space.protocols._common import (
    MAX_BLOCK_ROWS,
    header_int,
    header_participants,
    header_str,
)

__all__ = [
    "MAX_COMPARISONS",
    "MAX_BLOCKS",
    "MAX_DIM",
    "AggregateAdd",
    "AggregateAdded",
    "AggregateOpen",
    "AggregateOpened",
    "AggregateTake",
    "AggregateTaken",
    "BitsDealt",
    "DealerBits",
    "DealerTriple",
    "TripleDealt",
]

MAX_BLOCKS: Final = 1 << 16
"""Blocks per aggregation."""
MAX_DIM: Final = 1 << 24
"""Largest dimension (and element count) of one dealt triple batch."""


@dataclass(frozen=True)
class AggregateOpen:
    """``aggregate.open`` (analyst): sum ``contributors``' blocks of ``counts`` values.

    ``codec`` names how blocks are added; the payload is the public material it needs.
    ``recipient``: the contributor that takes the sums instead of the analyst (a band release:
    the sum is its share of the logit, which the analyst must never hold whole).
    """

    query: str
    codec: str
    contributors: tuple[str, ...]
    counts: tuple[int, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    recipient: str | None = None

    def to_header(self) -> dict[str, Any]:
        header = {
            "query": self.query,
            "codec": self.codec,
            "contributors": list(self.contributors),
            "counts": list(self.counts),
            "params": dict(self.params),
        }
        if self.recipient is not None:
            header["recipient"] = self.recipient
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        query = header_str(header, "query")
        codec = header_str(header, "codec")
        contributors = header_participants(header, "contributors")
        counts = header.get("counts")
        if (
            not isinstance(counts, list)
            or not 1 <= len(counts) <= MAX_BLOCKS
            or not all(
                isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= MAX_BLOCK_ROWS
                for c in counts
            )
        ):
            raise ValidationError("header.counts: expected a list of block sizes")
        params = header.get("params", {})
        if not isinstance(params, dict):
            raise ValidationError("header.params: expected an object")
        recipient = _recipient(header, contributors)
        return cls(query, codec, contributors, tuple(counts), params, recipient)


def _recipient(header: Mapping[str, Any], contributors: Sequence[str]) -> str | None:
    if "recipient" not in header:
        return None
    recipient = header_str(header, "recipient")
    if recipient not in contributors:
        raise ValidationError("header.recipient: not one of the contributors")
    return recipient


@dataclass(frozen=True)
class AggregateOpened:
    """The ``aggregate.open`` reply."""

    blocks: int

    def to_header(self) -> dict[str, Any]:
        return {"blocks": self.blocks}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_int(header, "blocks", 1, MAX_BLOCKS))


@dataclass(frozen=True)
class AggregateAdd:
    """``aggregate.add`` (provider): one block of its partial (the payload).

    For ``analyst``'s aggregation, naming the contributors and the sums' recipient (``None``:
    the analyst) the provider was told of.
    """

    query: str
    analyst: str
    contributors: tuple[str, ...]
    block: int
    count: int
    recipient: str | None = None

    def to_header(self) -> dict[str, Any]:
        header = {
            "query": self.query,
            "analyst": self.analyst,
            "contributors": list(self.contributors),
            "block": self.block,
            "count": self.count,
        }
        if self.recipient is not None:
            header["recipient"] = self.recipient
        return header

    @staticmethod
    def key(header: Mapping[str, Any]) -> tuple[str, str]:
        """``(query, analyst)``: which aggregation the message is for (checked)."""
        return header_str(header, "query"), header_str(header, "analyst")

    @classmethod
    def from_header(cls, header: Mapping[str, Any], counts: Sequence[int]) -> Self:
        """The message, for an aggregation of blocks of ``counts`` values."""
        query, analyst = cls.key(header)
        contributors = header_participants(header, "contributors")
        block = header_int(header, "block", 0, len(counts) - 1)
        count = header_int(header, "count", counts[block], counts[block])
        recipient = _recipient(header, contributors)
        return cls(query, analyst, contributors, block, count, recipient)


@dataclass(frozen=True)
class AggregateAdded:
    """The ``aggregate.add`` reply: contributors of the block so far."""

    block: int
    contributed: int

    def to_header(self) -> dict[str, Any]:
        return {"block": self.block, "contributed": self.contributed}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(
            header_int(header, "block", 0, MAX_BLOCKS - 1),
            header_int(header, "contributed", 1, 256),
        )


@dataclass(frozen=True)
class AggregateTake:
    """``aggregate.take``: the complete sum of one block, once.

    By the analyst that opened the aggregation, or (``analyst`` named) by the recipient it
    declared.
    """

    query: str
    block: int
    analyst: str | None = None

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"query": self.query, "block": self.block}
        if self.analyst is not None:
            header["analyst"] = self.analyst
        return header

    @staticmethod
    def key(header: Mapping[str, Any]) -> tuple[str, str | None]:
        """``(query, analyst or None)``: which aggregation the message is for (checked)."""
        analyst = header_str(header, "analyst") if "analyst" in header else None
        return header_str(header, "query"), analyst

    @classmethod
    def from_header(cls, header: Mapping[str, Any], blocks: int) -> Self:
        """The message, for an aggregation of ``blocks`` blocks."""
        query, analyst = cls.key(header)
        return cls(query, header_int(header, "block", 0, blocks - 1), analyst)


@dataclass(frozen=True)
class AggregateTaken:
    """The ``aggregate.take`` reply (the payload is the sum)."""

    block: int
    count: int

    def to_header(self) -> dict[str, Any]:
        return {"block": self.block, "count": self.count}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(
            header_int(header, "block", 0, MAX_BLOCKS - 1),
            header_int(header, "count", 1, MAX_BLOCK_ROWS),
        )


def _shape(header: Mapping[str, Any], name: str, dims: tuple[int, ...]) -> tuple[int, ...]:
    value = header.get(name)
    if (
        not isinstance(value, list)
        or len(value) not in dims
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DIM for v in value
        )
    ):
        raise ValidationError(f"header.{name}: expected a shape of {dims} positive dimensions")
    return tuple(value)


def _distinct(values: list[Any]) -> bool:
    try:
        return len(set(values)) == len(values)
    except TypeError:  # an object or a list among them: not participant ids
        return False


@dataclass(frozen=True)
class DealerTriple:
    """``dealer.triple`` (a party): its share of the matrix triple ``left @ right``.

    Of batch ``batch`` in ``session``, dealt to ``parties`` (a party's index is its position).
    """

    session: str
    batch: str
    parties: tuple[str, ...]
    left: tuple[int, int]
    right: tuple[int, ...]

    def to_header(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "batch": self.batch,
            "parties": list(self.parties),
            "left": list(self.left),
            "right": list(self.right),
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        session = header_str(header, "session")
        batch = header_str(header, "batch")
        value = header.get("parties")
        if not isinstance(value, list) or not 2 <= len(value) <= 16 or not _distinct(value):
            raise ValidationError("header.parties: expected 2-16 distinct participant ids")
        parties = tuple(header_str({"p": p}, "p") for p in value)
        left = _shape(header, "left", (2,))
        right = _shape(header, "right", (1, 2))
        if left[1] != right[0]:
            raise ValidationError("header.left/right: shapes do not chain")
        if left[0] * left[1] > MAX_DIM:
            raise ValidationError("header.left: triple too large for one batch")
        return cls(session, batch, parties, (left[0], left[1]), right)


@dataclass(frozen=True)
class TripleDealt:
    """The ``dealer.triple`` reply: the receiver's party index and the triple's id.

    The payload is the share.
    """

    party: int
    triple: str

    def to_header(self) -> dict[str, Any]:
        return {"party": self.party, "triple": self.triple}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_int(header, "party", 0, 15), header_str(header, "triple"))


MAX_COMPARISONS: Final = 1 << 17
"""Comparisons per ``dealer.bits`` batch: twelve XOR triples of three words each per party, so a
share is at most 36 MiB (under the compute message limit)."""


@dataclass(frozen=True)
class DealerBits:
    """``dealer.bits`` (a party): its share of the XOR triples for ``values`` comparisons.

    Of batch ``batch`` in ``session``, dealt to the two ``parties`` (index = position).
    """

    session: str
    batch: str
    parties: tuple[str, str]
    values: int

    def to_header(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "batch": self.batch,
            "parties": list(self.parties),
            "values": self.values,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        session = header_str(header, "session")
        batch = header_str(header, "batch")
        value = header.get("parties")
        if not isinstance(value, list) or len(value) != 2 or not _distinct(value):
            raise ValidationError("header.parties: expected 2 distinct participant ids")
        first, second = (header_str({"p": p}, "p") for p in value)
        return cls(
            session, batch, (first, second), header_int(header, "values", 1, MAX_COMPARISONS)
        )


@dataclass(frozen=True)
class BitsDealt:
    """The ``dealer.bits`` reply: the receiver's party index (the payload is its share)."""

    party: int
    values: int

    def to_header(self) -> dict[str, Any]:
        return {"party": self.party, "values": self.values}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(
            header_int(header, "party", 0, 1), header_int(header, "values", 1, MAX_COMPARISONS)
        )
