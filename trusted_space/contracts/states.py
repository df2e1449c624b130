"""The DSP 2025-1 contract negotiation state machine: states, roles, messages, transitions.

:func:`next_state` is the one place that says which message a sender may send in which state;
both sides call it, the sender before anything leaves and the receiver again on arrival. Also the
small shared helpers of the package (ids, ``xsd:dateTime``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from trusted_space.catalog import TS_NAMESPACE
from trusted_space.errors import IllegalTransitionError, ValidationError

__all__ = [
    "AGREEMENT_NAMESPACE",
    "NEGOTIATION_NAMESPACE",
    "OFFER_PROPERTY",
    "RULE_KINDS",
    "SIGNATURE_PROPERTY",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "VALID_FROM_PROPERTY",
    "VALID_UNTIL_PROPERTY",
    "MessageKind",
    "NegotiationState",
    "Role",
    "check_message_offer",
    "new_id",
    "next_state",
    "parse_xsd_datetime",
    "utc_now",
    "xsd_datetime",
]

NEGOTIATION_NAMESPACE = "negotiation"
AGREEMENT_NAMESPACE = "agreement"
SIGNATURE_PROPERTY = TS_NAMESPACE + "signature"
"""Extra property carrying an agreement signature in agreement and verification messages."""
VALID_FROM_PROPERTY = TS_NAMESPACE + "validFrom"
VALID_UNTIL_PROPERTY = TS_NAMESPACE + "validUntil"
OFFER_PROPERTY = TS_NAMESPACE + "offer"
RULE_KINDS = ("permission", "prohibition", "obligation")


class NegotiationState(StrEnum):
    REQUESTED = "REQUESTED"
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    AGREED = "AGREED"
    VERIFIED = "VERIFIED"
    FINALIZED = "FINALIZED"
    TERMINATED = "TERMINATED"


TERMINAL_STATES = frozenset({NegotiationState.FINALIZED, NegotiationState.TERMINATED})


class Role(StrEnum):
    PROVIDER = "provider"
    CONSUMER = "consumer"

    @property
    def other(self) -> Role:
        return Role.CONSUMER if self is Role.PROVIDER else Role.PROVIDER


class MessageKind(StrEnum):
    """DSP negotiation messages; the event message is split by its ``eventType``."""

    REQUEST = "ContractRequestMessage"
    OFFER = "ContractOfferMessage"
    ACCEPTED = "ContractNegotiationEventMessage:ACCEPTED"
    AGREEMENT = "ContractAgreementMessage"
    VERIFICATION = "ContractAgreementVerificationMessage"
    FINALIZED = "ContractNegotiationEventMessage:FINALIZED"
    TERMINATION = "ContractNegotiationTerminationMessage"

    @property
    def dsp_type(self) -> str:
        return self.value.split(":", 1)[0]

    @property
    def senders(self) -> frozenset[Role]:
        return _SENDERS[self]


_SENDERS: dict[MessageKind, frozenset[Role]] = {
    MessageKind.REQUEST: frozenset({Role.CONSUMER}),
    MessageKind.OFFER: frozenset({Role.PROVIDER}),
    MessageKind.ACCEPTED: frozenset({Role.CONSUMER}),
    MessageKind.AGREEMENT: frozenset({Role.PROVIDER}),
    MessageKind.VERIFICATION: frozenset({Role.CONSUMER}),
    MessageKind.FINALIZED: frozenset({Role.PROVIDER}),
    MessageKind.TERMINATION: frozenset({Role.CONSUMER, Role.PROVIDER}),
}

_S = NegotiationState
_M = MessageKind
TRANSITIONS: Mapping[tuple[NegotiationState | None, MessageKind], NegotiationState] = {
    (None, _M.REQUEST): _S.REQUESTED,
    (None, _M.OFFER): _S.OFFERED,
    (_S.REQUESTED, _M.OFFER): _S.OFFERED,
    (_S.REQUESTED, _M.AGREEMENT): _S.AGREED,
    (_S.OFFERED, _M.REQUEST): _S.REQUESTED,
    (_S.OFFERED, _M.ACCEPTED): _S.ACCEPTED,
    (_S.ACCEPTED, _M.AGREEMENT): _S.AGREED,
    (_S.AGREED, _M.VERIFICATION): _S.VERIFIED,
    (_S.VERIFIED, _M.FINALIZED): _S.FINALIZED,
    **{(s, _M.TERMINATION): _S.TERMINATED for s in _S if s not in TERMINAL_STATES},
}
"""(state before, or ``None`` for a new negotiation; message) → state after."""


def next_state(state: NegotiationState | None, kind: MessageKind, sender: Role) -> NegotiationState:
    """The state after ``kind`` sent by ``sender`` in ``state``.

    Raises:
        IllegalTransitionError: the message is not allowed from this sender in this state.
    """
    where = "a new negotiation" if state is None else f"state {state.value}"
    if sender not in kind.senders:
        raise IllegalTransitionError(
            f"{kind.value} cannot be sent by the {sender.value} (in {where})"
        )
    after = TRANSITIONS.get((state, kind))
    if after is None:
        raise IllegalTransitionError(
            f"{kind.value} from the {sender.value} is not allowed in {where}"
        )
    return after


def new_id() -> str:
    """A fresh ``urn:uuid:`` identifier."""
    return f"urn:uuid:{uuid.uuid4()}"


def utc_now() -> datetime:
    return datetime.now(UTC)


def xsd_datetime(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValidationError("datetimes must be timezone-aware (UTC)")
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_xsd_datetime(value: object, path: str) -> datetime:
    if not isinstance(value, str):
        raise ValidationError(f"{path}: expected an xsd:dateTime string")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationError(f"{path}: {value!r} is not an xsd:dateTime") from exc
    if dt.tzinfo is None:
        raise ValidationError(f"{path}: {value!r} has no time zone")
    return dt.astimezone(UTC)


def check_message_offer(offer: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(offer, Mapping):
        raise ValidationError("offer: expected an object")
    for key in ("@id", "target"):
        if not isinstance(offer.get(key), str) or not offer[key]:
            raise ValidationError(f"offer.{key}: a negotiated offer needs a non-empty {key}")
    return dict(offer)
