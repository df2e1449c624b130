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
    decode_ids,
    encode_ids,
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
    "MAX_REQUESTS",
    "MAX_SERVED_IDS",
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
MAX_REQUESTS: Final = 1024
"""Requests one served run may carry (:attr:`ScoreOpen.requests`)."""
MAX_SERVED_IDS: Final = 4096
"""Entity ids ``score.open`` may carry itself (:attr:`ScoreOpen.ids`)."""
_RAN_KEYS: Final = frozenset({"query", "receipt", "rows", "missing", "uses", "refused"})


def _requests(header: Mapping[str, Any], entities: int) -> tuple[tuple[str, int], ...] | None:
    """``header.requests``: ``[{"id", "count"}, ...]`` covering the entities in order."""
    if "requests" not in header:
        return None
    value = header["requests"]
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_REQUESTS:
        raise ValidationError(f"header.requests: expected a list of 1 to {MAX_REQUESTS} requests")
    out = tuple(
        (header_str(r, "id"), header_int(r, "count", 1, MAX_ENTITIES))
        if isinstance(r, dict)
        else ("", 0)
        for r in value
    )
    if any(not i for i, _ in out) or len({i for i, _ in out}) != len(out):
        raise ValidationError("header.requests: expected objects with distinct ids")
    if sum(c for _, c in out) != entities:
        raise ValidationError("header.requests: the counts do not add up to header.entities")
    return out


def _ids(header: Mapping[str, Any], entities: int, id_kind: str) -> tuple[str, ...] | None:
    """``header.ids``: the entity ids of a small run, one per line."""
    if "ids" not in header:
        return None
    value = header["ids"]
    if not isinstance(value, str) or entities > MAX_SERVED_IDS:
        raise ValidationError(f"header.ids: expected at most {MAX_SERVED_IDS} ids, one per line")
    return tuple(decode_ids(value.encode("utf-8"), entities, id_kind))


def _documents(header: Mapping[str, Any], name: str) -> dict[str, dict[str, Any]]:
    value = header.get(name, {})
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValidationError(f"header.{name}: expected an object of objects")
    return {str(k): dict(v) for k, v in value.items()}


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
    requests: tuple[tuple[str, int], ...] | None = None
    """A served run (:mod:`trusted_space.protocols.score.serving`): the requests it carries, as
    ``(request id, entity count)`` in entity order; each is authorised and recorded as a use
    of its own (its own ``query.use`` and receipt), and a refused one is left out."""
    ids: tuple[str, ...] | None = None
    """A served run's entity ids, carried here instead of in ``score.entities`` calls (at most
    :data:`MAX_SERVED_IDS`): one message fewer on the path a loan officer waits on."""
    run_bytes: int | None = None
    """A served run: ``score.open`` also runs (no ``score.run`` call); the last ``run_bytes``
    bytes of its payload are ``score.run``'s payload (the encrypted weights) and its reply is
    ``score.run``'s (:class:`ScoreRan`)."""

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
        if self.requests is not None:
            header["requests"] = [{"id": i, "count": c} for i, c in self.requests]
        if self.ids is not None:
            header["ids"] = encode_ids(self.ids).decode("utf-8")
        if self.run_bytes is not None:
            header["runBytes"] = self.run_bytes
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
        requests = _requests(header, entities)
        ids = _ids(header, entities, id_kind)
        run_bytes: int | None = None
        if "runBytes" in header:
            if requests is None or ids is None:
                raise ValidationError("header.runBytes: only a served run with its ids runs here")
            run_bytes = header_int(header, "runBytes", 0, MAX_ENTITIES)
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
            requests=requests,
            ids=ids,
            run_bytes=run_bytes,
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

    A served run (``ScoreOpen.requests``) answers per request instead of one ``receipt``:
    ``uses`` maps each allowed request id to its receipt, ``refused`` each refused one to its
    refusal's problem document (with the trace).
    """

    query: str
    receipt: Mapping[str, Any]
    rows: int
    missing: int
    extras: Mapping[str, Any] = field(default_factory=dict)
    uses: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    refused: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "query": self.query,
            "rows": self.rows,
            "missing": self.missing,
            **self.extras,
        }
        if self.receipt:
            header["receipt"] = dict(self.receipt)
        if self.uses or self.refused:
            header["uses"] = {k: dict(v) for k, v in self.uses.items()}
            header["refused"] = {k: dict(v) for k, v in self.refused.items()}
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any], provider: str) -> Self:
        """The reply of ``provider`` (named in the errors: the analyst reports who failed).

        Raises:
            VerificationError: no receipt.
            ValidationError: the missing count is not a count.
        """
        receipt = header.get("receipt", {})
        served = "uses" in header
        if not isinstance(receipt, dict) or not ("receipt" in header or served):
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
            uses=_documents(header, "uses"),
            refused=_documents(header, "refused"),
        )


@dataclass(frozen=True)
class ScoreBlock:
    """``score.block`` (and ``score.beaver``): compute block ``block`` of the query.

    ``skip``: in a served run, the requests another provider refused; their rows count as
    zero here, so no partial of theirs reaches the analyst.
    """

    query: str
    block: int
    skip: tuple[str, ...] = ()

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"query": self.query, "block": self.block}
        if self.skip:
            header["skip"] = list(self.skip)
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any], blocks: int) -> Self:
        """Block numbers run over the ``blocks`` of the receiver's session."""
        skip = header.get("skip", [])
        if (
            not isinstance(skip, list)
            or len(skip) > MAX_REQUESTS
            or not all(isinstance(i, str) and i for i in skip)
        ):
            raise ValidationError("header.skip: expected a list of request ids")
        return cls(
            header_str(header, "query"), header_int(header, "block", 0, blocks - 1), tuple(skip)
        )


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
