"""The ``align.*`` messages as typed headers: one frozen dataclass per message, paired serde.

Each message has ``to_header()`` (what the sender frames) beside ``from_header(header)`` (what
the receiver accepts), so the keys and their checks live in one place
(:mod:`trusted_space.protocols.align` sends and serves them). ``from_header`` is strict: a
missing or wrongly typed field is a :class:`~trusted_space.errors.ValidationError` naming it
(``header.<name>: ...``; a 4xx at the edge). Checks that need the receiving node (the policy,
the session's state, the declared size against the PSI request) stay with the operation.

Requests (analyst → provider): :class:`AlignOpen`, :class:`AlignRequest` (the reference that
:func:`~trusted_space.protocols._parts.send_in_parts` extends with its ``part``, ``parts`` and
``total``, parsed by :func:`~trusted_space.protocols._parts.receive_part`) and
:class:`AlignResponse` (the reference plus the ``offset`` that
:func:`~trusted_space.protocols._parts.fetch_rest` adds). Replies (provider → analyst):
:class:`AlignOpened`, :class:`AlignReceived` (a part that was not the last); the PSI response
itself comes in the parts layer's ``{total, offset}`` replies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

from crypto import psi
from trusted_space.errors import ValidationError
from trusted_space.policy import COMPUTATIONS, PROTOCOLS
from trusted_space.protocols._common import header_int, header_str

__all__ = [
    "MAX_COLUMNS",
    "MAX_OFFSET",
    "PSI_METHODS",
    "AlignOpen",
    "AlignOpened",
    "AlignReceived",
    "AlignRequest",
    "AlignResponse",
]

MAX_COLUMNS: Final = 256
"""Columns one alignment may declare."""
MAX_OFFSET: Final = 1 << 40
"""Largest offset into a PSI response an ``align.response`` may ask for."""
_MAX_PARTS: Final = 1 << 16
PSI_METHODS: Final = ("ecdh", "ot")
"""PSI constructions an alignment may run: ECDH on X25519 (:mod:`crypto.psi`) or KKRT OT
extension (:mod:`crypto.psi_ot`)."""


def _choice(header: Mapping[str, Any], name: str, choices: Sequence[str]) -> str:
    value = header_str(header, name)
    if value not in choices:
        raise ValidationError(f"header.{name}: {value!r} not in {list(choices)}")
    return value


def _columns(header: Mapping[str, Any]) -> tuple[str, ...]:
    value = header.get("columns")
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_COLUMNS:
        raise ValidationError("header.columns: expected a non-empty list of column names")
    return tuple(header_str({"column": v}, "column") for v in value)


def _epsilon(header: Mapping[str, Any]) -> float | None:
    value = header.get("epsilon")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("header.epsilon: expected a number")
    return float(value)


@dataclass(frozen=True)
class AlignOpen:
    """``align.open``: the enclosing query's declared use, and the analyst's number of ids.

    ``epsilon`` (optional) is the privacy budget the query will ask for: the provider checks it
    before reading any id. ``psi`` (optional) asks for one of :data:`PSI_METHODS`; without it
    the provider chooses by the declared size. The call carries no payload.
    """

    query: str
    agreement: str
    dataset: str
    purpose: str
    kind: str
    protocol: str
    columns: tuple[str, ...]
    size: int
    epsilon: float | None = None
    psi: str | None = None

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "query": self.query,
            "agreement": self.agreement,
            "dataset": self.dataset,
            "purpose": self.purpose,
            "kind": self.kind,
            "protocol": self.protocol,
            "columns": list(self.columns),
            "size": self.size,
        }
        if self.epsilon is not None:
            header["epsilon"] = self.epsilon
        if self.psi is not None:
            header["psi"] = self.psi
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(
            query=header_str(header, "query"),
            agreement=header_str(header, "agreement"),
            dataset=header_str(header, "dataset"),
            purpose=header_str(header, "purpose"),
            kind=_choice(header, "kind", COMPUTATIONS),
            protocol=_choice(header, "protocol", PROTOCOLS),
            columns=_columns(header),
            size=header_int(header, "size", 1, psi.MAX_SET_SIZE),
            epsilon=_epsilon(header),
            psi=None if header.get("psi") is None else _choice(header, "psi", PSI_METHODS),
        )


@dataclass(frozen=True)
class AlignOpened:
    """The ``align.open`` reply: session id, ``query.use`` receipt and PSI method.

    The session id is fresh, chosen by the provider; for the ``ot`` method the reply's payload
    is the provider's OT-PSI setup (:meth:`crypto.psi_ot.OtPsiSender.setup`).
    """

    session: bytes
    receipt: Mapping[str, Any]
    psi: str = "ecdh"

    def to_header(self) -> dict[str, Any]:
        return {"session": self.session.hex(), "receipt": dict(self.receipt), "psi": self.psi}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], provider: str) -> Self:
        """The reply of ``provider`` (named in the errors: the analyst reports who failed).

        Raises:
            ValidationError: no session id, one that is not hex, no receipt, or an unknown
                PSI method.
        """
        session_hex = header_str(header, "session")
        try:
            session = bytes.fromhex(session_hex)
        except ValueError as exc:
            raise ValidationError(f"{provider}: PSI session id is not hex") from exc
        receipt = header.get("receipt")
        if not isinstance(receipt, dict):
            raise ValidationError(f"{provider}: no receipt for the alignment")
        return cls(session, receipt, _choice(header, "psi", PSI_METHODS))


@dataclass(frozen=True)
class AlignRequest:
    """``align.request``: a part of the PSI request (the payload) for one alignment.

    The header is this reference plus the parts layer's ``part``, ``parts`` and ``total``.
    """

    query: str
    dataset: str

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "dataset": self.dataset}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_str(header, "query"), header_str(header, "dataset"))


@dataclass(frozen=True)
class AlignReceived:
    """The reply to an ``align.request`` part that was not the last: parts received so far."""

    received: int

    def to_header(self) -> dict[str, Any]:
        return {"received": self.received}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_int(header, "received", 1, _MAX_PARTS))


@dataclass(frozen=True)
class AlignResponse:
    """``align.response``: the part of the PSI response from ``offset`` (no payload)."""

    query: str
    dataset: str
    offset: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "dataset": self.dataset, "offset": self.offset}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(
            header_str(header, "query"),
            header_str(header, "dataset"),
            header_int(header, "offset", 0, MAX_OFFSET),
        )
