"""A FINALIZED agreement's standing at its provider: active, suspended or terminated.

Why: DSP ends a negotiation at ``FINALIZED`` and an agreement then runs until its validity
window closes (a year by default). A provider must be able to stop it earlier — a member
misuses it, a regulator asks, a contract ends — and to pause it while it looks into something.
DSP has no message for that (``FINALIZED`` is terminal in its state machine), so the standing is
the provider's own record beside the agreement: the negotiation stays ``FINALIZED`` (every DSP
message stays valid against the schemas) and every use checks the standing first.

Transitions: ``active -> suspended -> active`` (resume), ``active|suspended -> terminated``;
``terminated`` is final. Each change is one ``agreement.standing`` ledger entry (this module is
its only writer) in the same transaction as the record, so the ledger says when the provider
stopped what. Every path that uses data (score, aggregate, train, transfer) calls
:func:`agreement_standing` and refuses anything but ``active`` with a trace step
``agreement / standing`` (via :class:`~trusted_space.policy.Checks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from trusted_space.errors import ConflictError, ValidationError
from trusted_space.events import record_event
from trusted_space.store import Transaction

__all__ = [
    "STANDINGS",
    "STANDING_EVENT",
    "STANDING_NAMESPACE",
    "AgreementStanding",
    "Standing",
    "agreement_standing",
    "change_standing",
]

Standing = Literal["active", "suspended", "terminated"]
STANDINGS: Final[tuple[Standing, ...]] = ("active", "suspended", "terminated")
STANDING_NAMESPACE: Final = "agreement.standing"
"""Document namespace (key: agreement id); no document means ``active``."""
STANDING_EVENT: Final = "agreement.standing"
"""Ledger event kind of every change."""

_ALLOWED: Final[dict[str, frozenset[str]]] = {
    "active": frozenset({"suspended", "terminated"}),
    "suspended": frozenset({"active", "terminated"}),
    "terminated": frozenset(),
}


@dataclass(frozen=True)
class AgreementStanding:
    """An agreement's standing and why.

    Attributes:
        agreement_id: the agreement.
        standing: ``active``, ``suspended`` or ``terminated``.
        reason: the staff's reason for the last change (empty when never changed).
        changed_at: ISO 8601 instant of the last change, or ``None``.
        ledger_index: index of the last ``agreement.standing`` entry, or ``None``.
    """

    agreement_id: str
    standing: Standing
    reason: str = ""
    changed_at: str | None = None
    ledger_index: int | None = None


def agreement_standing(tx: Transaction, agreement_id: str) -> AgreementStanding:
    """The standing of ``agreement_id`` here (``active`` unless the provider changed it)."""
    doc = tx.get(STANDING_NAMESPACE, agreement_id)
    if doc is None:
        return AgreementStanding(agreement_id, "active")
    body = doc.body
    standing = body.get("standing")
    if standing not in STANDINGS:
        raise ValidationError(f"stored standing of {agreement_id!r} is malformed")
    return AgreementStanding(
        agreement_id,
        standing,
        str(body.get("reason", "")),
        body.get("changedAt"),
        body.get("ledgerIndex"),
    )


def change_standing(
    tx: Transaction,
    agreement_id: str,
    standing: Standing,
    *,
    reason: str,
    at: datetime,
) -> AgreementStanding:
    """Suspend, resume (``active``) or terminate an agreement, recorded in the ledger.

    The caller has checked that the agreement exists here and was granted by this node.

    Raises:
        ValidationError: an unknown standing or an empty reason.
        ConflictError: the transition is not allowed (e.g. resuming a terminated agreement).
    """
    if standing not in STANDINGS:
        raise ValidationError(f"standing must be one of {list(STANDINGS)}, not {standing!r}")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
        raise ValidationError("reason: give a non-empty reason of at most 500 characters")
    current = agreement_standing(tx, agreement_id)
    if standing not in _ALLOWED[current.standing]:
        raise ConflictError(
            f"agreement {agreement_id!r} is {current.standing}: it cannot become {standing}"
        )
    stamp = at.astimezone(UTC).isoformat()
    index = record_event(
        tx,
        STANDING_EVENT,
        {"agreement": agreement_id, "from": current.standing, "to": standing, "reason": reason},
        time=at,
    )
    tx.put(
        STANDING_NAMESPACE,
        agreement_id,
        {"standing": standing, "reason": reason, "changedAt": stamp, "ledgerIndex": index},
    )
    return AgreementStanding(agreement_id, standing, reason, stamp, index)
