"""Cancelling a query at every party: the ``query.cancel`` operation and the analyst's call.

Why a message: a query's work runs at its providers and compute parties, in sessions the analyst
opened (:class:`~trusted_space.compute.SessionStore`). An analyst that stops calling leaves them
holding keys, rows and process pools until they expire, and a provider that had not yet
authorised the use would still do so if a late call came. ``query.cancel`` drops every session
the *sender* opened for that query (a member can only cancel its own), marks the query so no
later call of it opens or reaches a session (``409``), and records the cancellation on the
party's ledger (``query.cancelled``: query and analyst, nothing about data). A block being
computed when the message arrives finishes (its handler then releases the session's keys and
process pools); none starts after it.

Every node serves the operation (providers, and the operator whose aggregator and dealer a query
uses): :func:`register_cancel`. The analyst calls :func:`cancel_at`, which never raises: each
party's outcome (``cancelled`` or the reason it could not be told) is returned for the job's
record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

from trusted_space.compute import CallContext, ComputeNode
from trusted_space.errors import TrustedSpaceError, ValidationError
from trusted_space.events import record_event
from trusted_space.protocols._common import header_int, header_str
from trusted_space.protocols.base import AnalystSide, ProviderJob, ProviderSide
from trusted_space.transport import Reply, Transport

__all__ = [
    "CANCEL_OPERATION",
    "CancelDone",
    "QueryCancel",
    "cancel_at",
    "register_cancel",
]

CANCEL_OPERATION: Final = "query.cancel"


@dataclass(frozen=True)
class QueryCancel:
    """``query.cancel``: the sender's query ``query`` is over; stop its work here."""

    query: str

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        unknown = sorted(set(header) - {"query"})
        if unknown:  # a cancel names its query and nothing else
            raise ValidationError(f"header.{unknown[0]}: not a member of query.cancel")
        return cls(header_str(header, "query"))


@dataclass(frozen=True)
class CancelDone:
    """The reply: how many sessions were dropped, and the ledger entry of the cancellation."""

    query: str
    sessions: int
    entry: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "sessions": self.sessions, "entry": self.entry}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(
            header_str(header, "query"),
            header_int(header, "sessions", 0, 1 << 31),
            header_int(header, "entry", 0, 1 << 62),
        )


def _release(state: Mapping[str, Any]) -> None:
    job = state.get("job")
    if isinstance(job, ProviderJob) and not job.cancel():
        return  # a block is being computed: its handler releases the session when it ends
    for held in state.values():
        if isinstance(held, ProviderSide | AnalystSide):
            held.close()


def _query_cancel(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    query = QueryCancel.from_header(header).query
    node = ctx.node
    states = node.sessions.cancel(ctx.sender, query)
    for state in states:
        _release(state)
    with node.store.transaction() as tx:
        entry = record_event(
            tx,
            "query.cancelled",
            {"query": query, "analyst": ctx.sender, "sessions": len(states)},
            time=node.clock(),
        )
    return Reply(CancelDone(query, len(states), entry).to_header())


def register_cancel(node: ComputeNode) -> None:
    """Register ``query.cancel`` on ``node`` (every node: providers and the operator)."""
    node.register(CANCEL_OPERATION, _query_cancel)


def cancel_at(transport: Transport, parties: Sequence[str], query: str) -> dict[str, str]:
    """Tell each party that ``query`` is cancelled; ``party -> "cancelled"`` or why not.

    Never raises for a party's failure: the query is cancelled here whatever they answer, and a
    party that was not told still refuses nothing it would otherwise serve only until its
    sessions expire.
    """
    outcome: dict[str, str] = {}
    for party in dict.fromkeys(parties):
        try:
            reply = transport.call(party, CANCEL_OPERATION, QueryCancel(query).to_header())
            done = CancelDone.from_header(reply.header)
        except TrustedSpaceError as exc:
            outcome[party] = f"not told: {exc}"
        else:
            outcome[party] = f"cancelled (ledger entry {done.entry})"
    return outcome
