"""Ledger events: what a node writes to its append-only log, in one canonical encoding.

An event is appended *inside the same store transaction* as the state change it records, so the
ledger and the state can never disagree after a crash. The entry bytes are canonical JSON (sorted
keys, no insignificant whitespace, UTF-8), and those exact bytes are what the Merkle tree hashes and
what ``GET /ledger/entries`` returns, so a third party can recompute every leaf.

Event kinds used across the product (``kind`` field): ``policy.decision``,
``negotiation.transition``, ``agreement.signed``, ``query.use``, ``consent.check``,
``consent.registered``, ``consent.revoked``, ``consent.key_registered``,
``credential.issued``, ``credential.revoked``, ``auth.refused``,
``dataset.published``, ``policy.published``, ``triple.consumed``, ``checkpoint.cosigned``,
``checkpoint.refused``, ``witness.silent``, ``agreement.standing``, ``contracts.grant_mode``,
``budget.charged``, ``budget.limit``, ``budget.reset``, ``query.cancelled``.

Entries are public: none names a data subject, a consent subject or a member's customers; where
one must refer to them it carries a salted commitment (:mod:`trusted_space.commitments`).

Each kind has one writer, so every path records the same fields: ``policy.decision`` is built
only by :func:`trusted_space.policy.record_decision`, ``query.use`` by
:func:`trusted_space.enforcement.authorize_use`, ``agreement.signed`` by
:mod:`trusted_space.contracts.agreements`, ``consent.*`` by :mod:`trusted_space.consent`,
``auth.refused`` by :func:`trusted_space.identity.record_refusal`, ``transfer.transition`` and
``transfer.served`` by :mod:`trusted_space.contracts.transfer` (``write_transfer``,
``record_served``), ``checkpoint.cosigned``, ``checkpoint.refused`` and ``witness.silent`` by
:class:`trusted_space.ledger.Witness` (``cosign``, ``record_witness_refusal``, ``flag_silent``),
``agreement.standing`` by :mod:`trusted_space.contracts.standing`, ``contracts.grant_mode`` by
:mod:`trusted_space.contracts.granting`, ``budget.charged``, ``budget.limit`` and
``budget.reset`` by :mod:`trusted_space.budget`, ``query.cancelled`` by
:mod:`trusted_space.protocols.cancel`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from trusted_space.merkle import leaf_hash
from trusted_space.store import Transaction

__all__ = [
    "EVENT_LOG",
    "EVENT_VERSION",
    "Event",
    "canonical_json",
    "decode_event",
    "encode_event",
    "record_event",
]

EVENT_LOG = "events"
EVENT_VERSION = 1


@dataclass(frozen=True)
class Event:
    """A decoded ledger entry."""

    index: int
    kind: str
    time: str
    body: dict[str, Any]


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: the same value always gives the same bytes (and hash)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def encode_event(kind: str, body: Mapping[str, Any], *, time: datetime | None = None) -> bytes:
    """The exact entry bytes for an event (what the ledger hashes and serves)."""
    if not kind or not isinstance(kind, str):
        raise ValueError("event kind must be a non-empty string")
    stamp = (time or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
    return canonical_json({"v": EVENT_VERSION, "kind": kind, "time": stamp, "body": dict(body)})


def decode_event(index: int, entry: bytes) -> Event:
    """Parse entry bytes back into an :class:`Event` (``ValueError`` if they are not one)."""
    doc = json.loads(entry.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("v") != EVENT_VERSION:
        raise ValueError("not a version-1 ledger event")
    return Event(index=index, kind=str(doc["kind"]), time=str(doc["time"]), body=dict(doc["body"]))


def record_event(
    tx: Transaction,
    kind: str,
    body: Mapping[str, Any],
    *,
    log: str = EVENT_LOG,
    time: datetime | None = None,
) -> int:
    """Append an event to ``log`` within ``tx`` and return its leaf index."""
    entry = encode_event(kind, body, time=time)
    return tx.log_append(log, entry, leaf_hash(entry))
