"""The ``score.*`` messages as typed headers: one frozen dataclass per message, paired serde.

Each message has ``to_header()`` (what the sender frames) beside ``from_header(header)`` (what
the receiver accepts), so the keys and their checks live in one place. ``from_header`` is
strict: the header came from another node, so a missing or wrongly typed field is a
:class:`~trusted_space.errors.ValidationError` naming it (``header.<name>: ...``; a 4xx at the
edge), never a ``KeyError``. Checks that need the receiving node (the space's operator, the
provider among the contributors, a session's state) stay with the operation.

Requests (analyst → provider): :class:`ScoreOpen`, :class:`ScoreEntities`, :class:`ScoreRun`,
:class:`ScoreBlock` (also ``score.beaver``, the same header). Replies (provider → analyst):
:class:`ScoreOpened`, :class:`EntitiesReceived`, :class:`ScoreRan`, :class:`BlockDone`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Self

from trusted_space.errors import ValidationError, VerificationError
from trusted_space.policy import PROTOCOLS
from trusted_space.protocols._common import (
    MAX_BLOCK_ROWS,
    header_float,
    header_int,
    header_participants,
    header_str,
)
from trusted_space.queries.common import ID_KINDS, MISSING_RULES, MODES
from trusted_space.queries.score import MAX_BAND_EDGES

__all__ = [
    "ENTITY_CHUNK",
    "MAX_ENTITIES",
    "BlockDone",
    "EntitiesReceived",
    "ScoreBlock",
    "ScoreEntities",
    "ScoreOpen",
    "ScoreOpened",
    "ScoreRan",
    "ScoreRun",
]

ENTITY_CHUNK: Final = 1 << 18
"""Entity ids per ``score.entities`` call (at most 129 bytes each: 34 MB, under the limit)."""
MAX_ENTITIES: Final = 10_000_000
_RAN_KEYS: Final = frozenset({"query", "receipt", "rows", "missing"})


def _choice(header: Mapping[str, Any], name: str, choices: Sequence[str]) -> str:
    value = header.get(name)
    if value not in choices:
        raise ValidationError(f"header.{name}: expected one of {list(choices)}")
    return str(value)


def _columns(header: Mapping[str, Any]) -> tuple[str, ...]:
    value = header.get("columns")
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 4096
        or not all(isinstance(c, str) and c for c in value)
        or len(set(value)) != len(value)
    ):
        raise ValidationError("header.columns: expected a list of distinct column names")
    return tuple(value)


@dataclass(frozen=True)
class ScoreOpen:
    """``score.open``: the query as one provider needs it; the payload is the public material.

    Analyst-held mode names the provider's ``columns`` (the analyst holds the weights);
    party-held mode names the ``model`` whose weights the provider stored.
    """

    query: str
    protocol: str
    mode: str
    purpose: str
    agreement: str
    dataset: str
    id_kind: str
    missing: str
    operator: str
    contributors: tuple[str, ...]
    entities: int
    block: int
    feature_bound: float
    partial_bound: float
    params: Mapping[str, Any] = field(default_factory=dict)
    columns: tuple[str, ...] | None = None
    model: str | None = None
    scales: tuple[int, ...] | None = None
    """Analyst-held: the power-of-two exponent of each column's declared range (column order)."""
    band_edges: tuple[float, ...] | None = None
    """A band release: the edges; only the band of each logit leaves (``None``: the logit)."""
    comparer: str | None = None
    """A band release: the contributor that takes the sums and compares with the analyst."""

    @property
    def release(self) -> str:
        return "logit" if self.band_edges is None else "band"

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "query": self.query,
            "protocol": self.protocol,
            "mode": self.mode,
            "purpose": self.purpose,
            "agreement": self.agreement,
            "dataset": self.dataset,
            "idKind": self.id_kind,
            "missing": self.missing,
            "operator": self.operator,
            "contributors": list(self.contributors),
            "entities": self.entities,
            "block": self.block,
            "featureBound": self.feature_bound,
            "partialBound": self.partial_bound,
            "params": dict(self.params),
        }
        if self.columns is not None:
            header["columns"] = list(self.columns)
        if self.model is not None:
            header["model"] = self.model
        if self.scales is not None:
            header["scales"] = list(self.scales)
        if self.band_edges is not None:
            header["release"] = {"edges": list(self.band_edges), "comparer": self.comparer}
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        query = header_str(header, "query")
        protocol = _choice(header, "protocol", PROTOCOLS)
        mode = _choice(header, "mode", MODES)
        operator = header_str(header, "operator")
        contributors = header_participants(header, "contributors")
        purpose = header_str(header, "purpose")
        agreement = header_str(header, "agreement")
        dataset = header_str(header, "dataset")
        id_kind = _choice(header, "idKind", ID_KINDS)
        missing = _choice(header, "missing", MISSING_RULES)
        entities = header_int(header, "entities", 1, MAX_ENTITIES)
        block = header_int(header, "block", 1, MAX_BLOCK_ROWS)
        feature_bound = header_float(header, "featureBound")
        partial_bound = header_float(header, "partialBound")
        columns: tuple[str, ...] | None = None
        model: str | None = None
        if mode == "analyst-held":
            columns = _columns(header)
        else:
            model = header_str(header, "model")
        params = header.get("params")
        if not isinstance(params, dict):
            raise ValidationError("header.params: expected an object")
        scales: tuple[int, ...] | None = None
        if "scales" in header:
            raw = header["scales"]
            if (
                columns is None
                or not isinstance(raw, list)
                or len(raw) != len(columns)
                or any(isinstance(e, bool) or not isinstance(e, int) or abs(e) > 60 for e in raw)
            ):
                raise ValidationError(
                    "header.scales: expected one integer exponent in [-60, 60] per column"
                )
            scales = tuple(raw)
        band_edges, comparer = _release(header, contributors)
        return cls(
            query=query,
            protocol=protocol,
            mode=mode,
            purpose=purpose,
            agreement=agreement,
            dataset=dataset,
            id_kind=id_kind,
            missing=missing,
            operator=operator,
            contributors=contributors,
            entities=entities,
            block=block,
            feature_bound=feature_bound,
            partial_bound=partial_bound,
            params=params,
            columns=columns,
            model=model,
            scales=scales,
            band_edges=band_edges,
            comparer=comparer,
        )


def _release(
    header: Mapping[str, Any], contributors: Sequence[str]
) -> tuple[tuple[float, ...] | None, str | None]:
    """``header.release``: a band release's edges and comparing contributor, or none."""
    if "release" not in header:
        return None, None
    value = header["release"]
    if not isinstance(value, dict) or set(value) != {"edges", "comparer"}:
        raise ValidationError("header.release: expected {edges, comparer}")
    edges = value["edges"]
    if (
        not isinstance(edges, list)
        or not 1 <= len(edges) <= MAX_BAND_EDGES
        or not all(
            isinstance(e, int | float) and not isinstance(e, bool) and abs(e) <= 2.0**40
            for e in edges
        )
        or any(b <= a for a, b in itertools.pairwise(edges))
    ):
        raise ValidationError(
            f"header.release.edges: expected 1-{MAX_BAND_EDGES} increasing numbers within ±2^40"
        )
    comparer = header_str(value, "comparer")
    if comparer not in contributors:
        raise ValidationError("header.release.comparer: not one of the contributors")
    return tuple(float(e) for e in edges), comparer


@dataclass(frozen=True)
class ScoreOpened:
    """The ``score.open`` reply: the session is open with this many columns."""

    query: str
    columns: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "columns": self.columns}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_str(header, "query"), header_int(header, "columns", 0, MAX_BLOCK_ROWS))


@dataclass(frozen=True)
class ScoreEntities:
    """``score.entities``: ``count`` entity ids from ``offset`` (the payload, one per line)."""

    query: str
    offset: int
    count: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "offset": self.offset, "count": self.count}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(
            header_str(header, "query"),
            header_int(header, "offset", 0, MAX_ENTITIES),
            header_int(header, "count", 1, ENTITY_CHUNK),
        )


@dataclass(frozen=True)
class EntitiesReceived:
    """The ``score.entities`` reply: ids received so far."""

    received: int

    def to_header(self) -> dict[str, Any]:
        return {"received": self.received}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_int(header, "received", 0, MAX_ENTITIES))


@dataclass(frozen=True)
class ScoreRun:
    """``score.run``: enforce and read (payload: analyst-held weights, encrypted)."""

    query: str

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_str(header, "query"))


@dataclass(frozen=True)
class ScoreRan:
    """The ``score.run`` reply: the provider's receipt and how many entities it lacks.

    The payload is the missing-entity bitmap. ``extras`` are the protocol's own fields
    (:meth:`~trusted_space.protocols.base.ProviderSide.reply_extras`, e.g. the additive mask
    seed), at the top level of the header beside the others.
    """

    query: str
    receipt: Mapping[str, Any]
    rows: int
    missing: int
    extras: Mapping[str, Any] = field(default_factory=dict)

    def to_header(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "receipt": dict(self.receipt),
            "rows": self.rows,
            "missing": self.missing,
            **self.extras,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any], provider: str) -> Self:
        """The reply of ``provider`` (named in the errors: the analyst reports who failed).

        Raises:
            VerificationError: no receipt.
            ValidationError: the missing count is not a count.
        """
        receipt = header.get("receipt")
        if not isinstance(receipt, dict):
            raise VerificationError(f"{provider} returned no receipt")
        missing = header.get("missing")
        if isinstance(missing, bool) or not isinstance(missing, int) or missing < 0:
            raise ValidationError(f"{provider}: reply.missing is not a count")
        return cls(
            query=header_str(header, "query"),
            receipt=receipt,
            rows=header_int(header, "rows", 0, MAX_ENTITIES),
            missing=missing,
            extras={k: v for k, v in header.items() if k not in _RAN_KEYS},
        )


@dataclass(frozen=True)
class ScoreBlock:
    """``score.block`` (and ``score.beaver``): compute block ``block`` of the query."""

    query: str
    block: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "block": self.block}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], blocks: int) -> Self:
        """Block numbers run over the ``blocks`` of the receiver's session."""
        return cls(header_str(header, "query"), header_int(header, "block", 0, blocks - 1))


@dataclass(frozen=True)
class BlockDone:
    """The ``score.block`` / ``score.beaver`` reply (``score.beaver``: the payload answers)."""

    query: str
    block: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "block": self.block}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_str(header, "query"), header_int(header, "block", 0, MAX_ENTITIES))
