"""Contract negotiation after the Dataspace Protocol 2025-1, and agreements signed by both parties.

A bank may use a department's data only under an agreement, and an agreement is only worth
something if neither side can later deny it or quietly change it. So:

- The negotiation is the DSP 2025-1 state machine, kept by **both** sides, each in its own store
  (namespace ``negotiation``, one record per side keyed by that side's process id). A side moves
  only when the counter-party acknowledges its message, or when it acknowledges one itself; every
  move is a compare-and-set on the record's version, so two concurrent transitions of the same
  negotiation cannot both win, and each is written to the ledger (``negotiation.transition``) in
  the same transaction.
- A message that the state machine does not allow in the current state is refused with
  :class:`~trusted_space.errors.IllegalTransitionError` naming the state, the message and the
  sender's role — on the sending side before anything leaves, and again on the receiving side,
  which never trusts the sender to have checked.
- Every message built here, and every message accepted, validates against the vendored DSP
  2025-1 JSON schemas.
- The agreement (an ODRL ``Agreement`` with a validity window) is canonicalised (sorted-key JSON)
  and signed with Ed25519 by the provider inside the ``ContractAgreementMessage``; the consumer
  verifies that signature, checks that the terms are the offer it negotiated, and countersigns in
  the ``ContractAgreementVerificationMessage``. Only an agreement carrying both signatures is
  written to namespace ``agreement`` — insert-only, so it can never be changed — and recorded as
  ``agreement.signed``. Until then the provider-signed terms live in the negotiation record.
- :func:`agreement_authorises` is the one check other modules call: only an agreement whose
  negotiation is ``FINALIZED`` and whose validity window contains the instant authorises anything;
  a terminated or expired one authorises nothing.

Transition table (sender: C consumer, P provider; "—" is a new negotiation)::

    —          ContractRequestMessage (C)                 → REQUESTED
    —          ContractOfferMessage (P)                   → OFFERED
    REQUESTED  ContractOfferMessage (P)                   → OFFERED     (counter-offer)
    REQUESTED  ContractAgreementMessage (P)               → AGREED
    OFFERED    ContractRequestMessage (C)                 → REQUESTED   (counter-request)
    OFFERED    ContractNegotiationEventMessage ACCEPTED (C) → ACCEPTED
    ACCEPTED   ContractAgreementMessage (P)               → AGREED
    AGREED     ContractAgreementVerificationMessage (C)   → VERIFIED
    VERIFIED   ContractNegotiationEventMessage FINALIZED (P) → FINALIZED
    any non-terminal state  ContractNegotiationTerminationMessage (C or P) → TERMINATED

FINALIZED and TERMINATED are terminal. The specification's prose lets either party terminate "at
any state"; its diagram draws only some of those arrows. We follow the prose.

The same :class:`Negotiator` objects run in-process (tests, :func:`deliver`,
:func:`run_negotiation`) and behind the connector's HTTP endpoints, which carry the same messages.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from trusted_space import dsp
from trusted_space.catalog import TS_NAMESPACE, check_participant_id
from trusted_space.errors import (
    ConflictError,
    IllegalTransitionError,
    NotFoundError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import canonical_json, record_event
from trusted_space.keys import ALGORITHM, SigningKey, VerifyKey, b64url_decode, b64url_encode
from trusted_space.store import Store, Transaction

__all__ = [
    "AGREEMENT_NAMESPACE",
    "NEGOTIATION_NAMESPACE",
    "SIGNATURE_PROPERTY",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "AgreementSignature",
    "MessageKind",
    "Negotiation",
    "NegotiationState",
    "Negotiator",
    "Outgoing",
    "ParsedMessage",
    "Role",
    "SignedAgreement",
    "agreement_authorises",
    "agreement_verification_message",
    "build_agreement",
    "contract_agreement_message",
    "contract_offer_message",
    "contract_request_message",
    "deliver",
    "load_agreement",
    "load_negotiation",
    "negotiation_ack",
    "negotiation_error",
    "negotiation_event_message",
    "new_id",
    "next_state",
    "offer_for",
    "parse_message",
    "run_negotiation",
    "sign_agreement",
    "store_agreement",
    "termination_message",
    "verify_agreement_signature",
]

NEGOTIATION_NAMESPACE = "negotiation"
AGREEMENT_NAMESPACE = "agreement"
SIGNATURE_PROPERTY = TS_NAMESPACE + "signature"
"""Extra property carrying an agreement signature in agreement and verification messages."""
_VALID_FROM = TS_NAMESPACE + "validFrom"
_VALID_UNTIL = TS_NAMESPACE + "validUntil"
_OFFER_ID = TS_NAMESPACE + "offer"
_RULES = ("permission", "prohibition", "obligation")
_SIGNING_DOMAIN = b"trusted-space/agreement/v1/"


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

_SCHEMAS = {
    "ContractRequestMessage": "negotiation/contract-request-message-schema.json",
    "ContractOfferMessage": "negotiation/contract-offer-message-schema.json",
    "ContractNegotiationEventMessage": "negotiation/contract-negotiation-event-message-schema.json",
    "ContractAgreementMessage": "negotiation/contract-agreement-message-schema.json",
    "ContractAgreementVerificationMessage": (
        "negotiation/contract-agreement-verification-message-schema.json"
    ),
    "ContractNegotiationTerminationMessage": (
        "negotiation/contract-negotiation-termination-message-schema.json"
    ),
}


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


def _now() -> datetime:
    return datetime.now(UTC)


def _xsd(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValidationError("datetimes must be timezone-aware (UTC)")
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_dt(value: object, path: str) -> datetime:
    if not isinstance(value, str):
        raise ValidationError(f"{path}: expected an xsd:dateTime string")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationError(f"{path}: {value!r} is not an xsd:dateTime") from exc
    if dt.tzinfo is None:
        raise ValidationError(f"{path}: {value!r} has no time zone")
    return dt.astimezone(UTC)


# -- message builders and parser ---------------------------------------------------------------


def _finish(message: dict[str, Any]) -> dict[str, Any]:
    dsp.validate(message, _SCHEMAS[message["@type"]])
    return message


def _base(dsp_type: str) -> dict[str, Any]:
    return {"@context": list(dsp.DSP_CONTEXT), "@type": dsp_type}


def offer_for(dataset_id: str, offer: Mapping[str, Any]) -> dict[str, Any]:
    """A catalog offer (no ``target``) made into a message offer targeting ``dataset_id``."""
    if not isinstance(offer.get("@id"), str) or not offer["@id"]:
        raise ValidationError("offer.@id: an offer needs an id")
    return {**dict(offer), "@type": "Offer", "target": dataset_id}


def _check_message_offer(offer: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(offer, Mapping):
        raise ValidationError("offer: expected an object")
    for key in ("@id", "target"):
        if not isinstance(offer.get(key), str) or not offer[key]:
            raise ValidationError(f"offer.{key}: a negotiated offer needs a non-empty {key}")
    return dict(offer)


def contract_request_message(
    *,
    consumer_pid: str,
    offer: Mapping[str, Any],
    provider_pid: str | None = None,
    callback_address: str | None = None,
) -> dict[str, Any]:
    """``ContractRequestMessage``: a new negotiation (``callback_address``) or a counter-request."""
    msg = _base("ContractRequestMessage") | {
        "consumerPid": consumer_pid,
        "offer": _check_message_offer(offer),
    }
    if provider_pid is not None:
        msg["providerPid"] = provider_pid
    if callback_address is not None:
        msg["callbackAddress"] = callback_address
    return _finish(msg)


def contract_offer_message(
    *,
    provider_pid: str,
    offer: Mapping[str, Any],
    consumer_pid: str | None = None,
    callback_address: str | None = None,
) -> dict[str, Any]:
    """``ContractOfferMessage``: a provider-initiated negotiation or a counter-offer."""
    msg = _base("ContractOfferMessage") | {
        "providerPid": provider_pid,
        "offer": _check_message_offer(offer),
    }
    if consumer_pid is not None:
        msg["consumerPid"] = consumer_pid
    if callback_address is not None:
        msg["callbackAddress"] = callback_address
    return _finish(msg)


def contract_agreement_message(
    *,
    provider_pid: str,
    consumer_pid: str,
    agreement: Mapping[str, Any],
    signature: AgreementSignature,
) -> dict[str, Any]:
    """``ContractAgreementMessage`` carrying the provider's signature over the agreement."""
    return _finish(
        _base("ContractAgreementMessage")
        | {
            "providerPid": provider_pid,
            "consumerPid": consumer_pid,
            "agreement": dict(agreement),
            SIGNATURE_PROPERTY: signature.to_json(),
        }
    )


def agreement_verification_message(
    *, provider_pid: str, consumer_pid: str, signature: AgreementSignature
) -> dict[str, Any]:
    """``ContractAgreementVerificationMessage`` carrying the consumer's countersignature."""
    return _finish(
        _base("ContractAgreementVerificationMessage")
        | {
            "providerPid": provider_pid,
            "consumerPid": consumer_pid,
            SIGNATURE_PROPERTY: signature.to_json(),
        }
    )


def negotiation_event_message(
    *, provider_pid: str, consumer_pid: str, event_type: str
) -> dict[str, Any]:
    """``ContractNegotiationEventMessage`` with ``eventType`` ``ACCEPTED`` or ``FINALIZED``."""
    return _finish(
        _base("ContractNegotiationEventMessage")
        | {"providerPid": provider_pid, "consumerPid": consumer_pid, "eventType": event_type}
    )


def termination_message(
    *,
    provider_pid: str,
    consumer_pid: str,
    code: str | None = None,
    reason: list[Any] | None = None,
) -> dict[str, Any]:
    """``ContractNegotiationTerminationMessage`` with an optional code and reasons."""
    msg = _base("ContractNegotiationTerminationMessage") | {
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
    }
    if code is not None:
        msg["code"] = code
    if reason:
        msg["reason"] = list(reason)
    return _finish(msg)


def negotiation_ack(
    *, provider_pid: str, consumer_pid: str, state: NegotiationState
) -> dict[str, Any]:
    """The ``ContractNegotiation`` object a side returns as ACK (and for ``GET``)."""
    msg = _base("ContractNegotiation") | {
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "state": state.value,
    }
    dsp.validate(msg, "negotiation/contract-negotiation-schema.json")
    return msg


def negotiation_error(
    *, provider_pid: str, consumer_pid: str, code: str, reason: list[Any] | None = None
) -> dict[str, Any]:
    """The ``ContractNegotiationError`` object returned with a refusal (no state change)."""
    msg = _base("ContractNegotiationError") | {
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "code": code,
    }
    if reason:
        msg["reason"] = list(reason)
    dsp.validate(msg, "negotiation/contract-negotiation-error-schema.json")
    return msg


@dataclass(frozen=True)
class ParsedMessage:
    """An incoming negotiation message after schema validation."""

    kind: MessageKind
    consumer_pid: str | None
    provider_pid: str | None
    body: dict[str, Any]


def parse_message(message: Mapping[str, Any]) -> ParsedMessage:
    """Validate an incoming negotiation message against its DSP schema and classify it.

    Raises:
        ValidationError: unknown ``@type``.
        SchemaValidationError: the message does not validate.
    """
    if not isinstance(message, Mapping):
        raise ValidationError("a DSP message is a JSON object")
    dsp_type = message.get("@type")
    if not isinstance(dsp_type, str) or dsp_type not in _SCHEMAS:
        raise ValidationError(f"@type: {dsp_type!r} is not a contract negotiation message")
    dsp.validate(message, _SCHEMAS[dsp_type])
    kind = MessageKind(
        f"{dsp_type}:{message['eventType']}"
        if dsp_type == "ContractNegotiationEventMessage"
        else dsp_type
    )
    return ParsedMessage(
        kind, message.get("consumerPid"), message.get("providerPid"), dict(message)
    )


# -- agreements and signatures -------------------------------------------------------------------


@dataclass(frozen=True)
class AgreementSignature:
    """An Ed25519 signature by one party over the canonical agreement."""

    signer: str
    role: Role
    key_id: str
    value: str

    def to_json(self) -> dict[str, Any]:
        return {
            "signer": self.signer,
            "role": self.role.value,
            "alg": ALGORITHM,
            "keyId": self.key_id,
            "value": self.value,
        }

    @classmethod
    def from_json(cls, doc: object) -> AgreementSignature:
        if not isinstance(doc, Mapping):
            raise ValidationError("signature: expected an object")
        if doc.get("alg") != ALGORITHM:
            raise ValidationError(f"signature.alg: only {ALGORITHM} is accepted")
        try:
            role = Role(str(doc.get("role")))
        except ValueError:
            raise ValidationError("signature.role: expected provider or consumer") from None
        fields = {k: doc.get(k) for k in ("signer", "keyId", "value")}
        for k, v in fields.items():
            if not isinstance(v, str) or not v:
                raise ValidationError(f"signature.{k}: expected a non-empty string")
        return cls(str(fields["signer"]), role, str(fields["keyId"]), str(fields["value"]))


def _signing_bytes(agreement: Mapping[str, Any], role: Role) -> bytes:
    # The role is bound into the signed bytes so a provider signature can never pass as the
    # consumer's countersignature (or the reverse), whoever holds which key.
    return _SIGNING_DOMAIN + role.value.encode() + b"\n" + canonical_json(dict(agreement))


def sign_agreement(
    agreement: Mapping[str, Any], key: SigningKey, *, signer: str, role: Role
) -> AgreementSignature:
    """Sign the canonical form of ``agreement`` as ``signer`` in ``role``."""
    return AgreementSignature(
        signer=signer,
        role=role,
        key_id=key.verify_key.fingerprint,
        value=b64url_encode(key.sign(_signing_bytes(agreement, role))),
    )


def verify_agreement_signature(
    agreement: Mapping[str, Any],
    signature: AgreementSignature,
    key: VerifyKey,
    *,
    signer: str,
    role: Role,
) -> None:
    """Raise :class:`VerificationError` unless ``signature`` is ``signer``'s, as ``role``."""
    if signature.signer != signer:
        raise VerificationError(f"agreement signed by {signature.signer!r}, expected {signer!r}")
    if signature.role is not role:
        raise VerificationError(f"agreement signature is the {signature.role}'s, not the {role}'s")
    if signature.key_id != key.fingerprint:
        raise VerificationError("agreement signature names another key")
    try:
        raw = b64url_decode(signature.value)
    except ValidationError as exc:
        raise VerificationError("agreement signature is not base64url") from exc
    if not key.verify(raw, _signing_bytes(agreement, role)):
        raise VerificationError("agreement signature does not verify")


def build_agreement(
    *,
    offer: Mapping[str, Any],
    assigner: str,
    assignee: str,
    valid_from: datetime,
    valid_until: datetime,
    timestamp: datetime | None = None,
    agreement_id: str | None = None,
) -> dict[str, Any]:
    """The ODRL ``Agreement`` accepting ``offer``: same target and rules, parties, validity.

    Raises:
        ValidationError: an empty validity window, naive datetimes, bad participant ids.
    """
    check_participant_id(assigner, "agreement.assigner")
    check_participant_id(assignee, "agreement.assignee")
    if assigner == assignee:
        raise ValidationError("agreement: assigner and assignee must be different participants")
    if valid_until <= valid_from:
        raise ValidationError("agreement: validUntil must be after validFrom")
    offer = _check_message_offer(offer)
    agreement: dict[str, Any] = {
        "@id": agreement_id or new_id(),
        "@type": "Agreement",
        "target": offer["target"],
        "assigner": assigner,
        "assignee": assignee,
        "timestamp": _xsd(timestamp or _now()),
        _OFFER_ID: offer["@id"],
        _VALID_FROM: _xsd(valid_from),
        _VALID_UNTIL: _xsd(valid_until),
    }
    if "profile" in offer:
        agreement["profile"] = offer["profile"]
    for rule in _RULES:
        if rule in offer:
            agreement[rule] = offer[rule]
    return agreement


@dataclass(frozen=True)
class SignedAgreement:
    """An agreement with both parties' signatures: the immutable record of a contract."""

    agreement: dict[str, Any]
    provider_signature: AgreementSignature
    consumer_signature: AgreementSignature
    provider_pid: str
    consumer_pid: str

    @property
    def id(self) -> str:
        return str(self.agreement["@id"])

    @property
    def target(self) -> str:
        return str(self.agreement["target"])

    @property
    def assigner(self) -> str:
        return str(self.agreement["assigner"])

    @property
    def assignee(self) -> str:
        return str(self.agreement["assignee"])

    @property
    def valid_from(self) -> datetime:
        return _parse_dt(self.agreement.get(_VALID_FROM), "agreement.validFrom")

    @property
    def valid_until(self) -> datetime:
        return _parse_dt(self.agreement.get(_VALID_UNTIL), "agreement.validUntil")

    def verify(self, provider_key: VerifyKey, consumer_key: VerifyKey) -> None:
        """Raise :class:`VerificationError` unless both signatures verify."""
        verify_agreement_signature(
            self.agreement,
            self.provider_signature,
            provider_key,
            signer=self.assigner,
            role=Role.PROVIDER,
        )
        verify_agreement_signature(
            self.agreement,
            self.consumer_signature,
            consumer_key,
            signer=self.assignee,
            role=Role.CONSUMER,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "agreement": self.agreement,
            "providerSignature": self.provider_signature.to_json(),
            "consumerSignature": self.consumer_signature.to_json(),
            "providerPid": self.provider_pid,
            "consumerPid": self.consumer_pid,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SignedAgreement:
        try:
            return cls(
                agreement=dict(doc["agreement"]),
                provider_signature=AgreementSignature.from_json(doc["providerSignature"]),
                consumer_signature=AgreementSignature.from_json(doc["consumerSignature"]),
                provider_pid=str(doc["providerPid"]),
                consumer_pid=str(doc["consumerPid"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValidationError(f"stored agreement is malformed: {exc}") from exc


def store_agreement(tx: Transaction, signed: SignedAgreement) -> None:
    """Insert ``signed`` (namespace ``agreement``) and record ``agreement.signed``.

    Raises:
        ConflictError: an agreement with this id exists; agreements are never overwritten.
    """
    tx.insert(AGREEMENT_NAMESPACE, signed.id, signed.to_json())
    record_event(
        tx,
        "agreement.signed",
        {
            "agreementId": signed.id,
            "target": signed.target,
            "assigner": signed.assigner,
            "assignee": signed.assignee,
            "providerPid": signed.provider_pid,
            "consumerPid": signed.consumer_pid,
            "digest": b64url_encode(_digest(signed.agreement)),
            "providerSignature": signed.provider_signature.value,
            "consumerSignature": signed.consumer_signature.value,
        },
    )


def _digest(agreement: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(canonical_json(dict(agreement))).digest()


def load_agreement(tx: Transaction, agreement_id: str) -> SignedAgreement:
    """A signed agreement by id (:class:`NotFoundError` if unknown)."""
    return SignedAgreement.from_json(tx.require(AGREEMENT_NAMESPACE, agreement_id).body)


def agreement_authorises(agreement: SignedAgreement, state: NegotiationState, at: datetime) -> bool:
    """Whether ``agreement`` authorises use at instant ``at``.

    Only a ``FINALIZED`` negotiation's agreement authorises, and only inside its validity window
    ``[validFrom, validUntil)``. A terminated or expired agreement authorises nothing.
    """
    if at.tzinfo is None:
        raise ValidationError("authorisation instant must be timezone-aware")
    if state is not NegotiationState.FINALIZED:
        return False
    return agreement.valid_from <= at.astimezone(UTC) < agreement.valid_until


# -- negotiation records -------------------------------------------------------------------------


@dataclass(frozen=True)
class Negotiation:
    """One side's record of a negotiation (stored under its own process id ``pid``)."""

    role: Role
    provider_pid: str
    consumer_pid: str
    participant: str
    counterparty: str
    state: NegotiationState
    offer: dict[str, Any]
    callback_address: str | None = None
    agreement: dict[str, Any] | None = None
    provider_signature: AgreementSignature | None = None
    consumer_signature: AgreementSignature | None = None
    version: int = 0

    @property
    def pid(self) -> str:
        return self.provider_pid if self.role is Role.PROVIDER else self.consumer_pid

    @property
    def dataset_id(self) -> str:
        return str(self.offer["target"])

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "providerPid": self.provider_pid,
            "consumerPid": self.consumer_pid,
            "participant": self.participant,
            "counterparty": self.counterparty,
            "state": self.state.value,
            "offer": self.offer,
            "callbackAddress": self.callback_address,
            "agreement": self.agreement,
            "providerSignature": (
                self.provider_signature.to_json() if self.provider_signature else None
            ),
            "consumerSignature": (
                self.consumer_signature.to_json() if self.consumer_signature else None
            ),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], version: int) -> Negotiation:
        ps, cs = doc.get("providerSignature"), doc.get("consumerSignature")
        return cls(
            role=Role(doc["role"]),
            provider_pid=str(doc["providerPid"]),
            consumer_pid=str(doc["consumerPid"]),
            participant=str(doc["participant"]),
            counterparty=str(doc["counterparty"]),
            state=NegotiationState(doc["state"]),
            offer=dict(doc["offer"]),
            callback_address=doc.get("callbackAddress"),
            agreement=dict(doc["agreement"]) if doc.get("agreement") else None,
            provider_signature=AgreementSignature.from_json(ps) if ps else None,
            consumer_signature=AgreementSignature.from_json(cs) if cs else None,
            version=version,
        )

    def signed_agreement(self) -> SignedAgreement | None:
        if self.agreement and self.provider_signature and self.consumer_signature:
            return SignedAgreement(
                self.agreement,
                self.provider_signature,
                self.consumer_signature,
                self.provider_pid,
                self.consumer_pid,
            )
        return None


def load_negotiation(tx: Transaction, pid: str) -> Negotiation:
    """This side's negotiation record by its own process id (:class:`NotFoundError`)."""
    doc = tx.require(NEGOTIATION_NAMESPACE, pid)
    return Negotiation.from_json(doc.body, doc.version)


def _write(
    tx: Transaction,
    before: NegotiationState | None,
    record: Negotiation,
    kind: MessageKind,
    expect_version: int,
) -> Negotiation:
    doc = tx.put(NEGOTIATION_NAMESPACE, record.pid, record.to_json(), expect_version=expect_version)
    record_event(
        tx,
        "negotiation.transition",
        {
            "role": record.role.value,
            "providerPid": record.provider_pid,
            "consumerPid": record.consumer_pid,
            "counterparty": record.counterparty,
            "message": kind.value,
            "from": before.value if before else None,
            "to": record.state.value,
        },
    )
    if before is not NegotiationState.VERIFIED and record.state is NegotiationState.VERIFIED:
        signed = record.signed_agreement()
        if signed is None:  # pragma: no cover - guarded by the message handlers
            raise ConflictError("VERIFIED without both agreement signatures")
        store_agreement(tx, signed)
    return replace(record, version=doc.version)


@dataclass(frozen=True)
class Outgoing:
    """A message ready to send, and the transition this side makes once it is acknowledged."""

    message: dict[str, Any]
    kind: MessageKind
    recipient: str
    before: NegotiationState | None
    pending: Negotiation
    expect_version: int


class Negotiator:
    """One participant's side of every negotiation it takes part in, as provider or consumer.

    Args:
        participant_id: this participant's slug.
        store: this participant's store (negotiations, agreements, ledger events).
        signing_key: this participant's Ed25519 key (signs agreements).
        resolve_key: participant id → its verify key (from membership credentials); raises
            :class:`NotFoundError` for unknown participants.
        callback_address: where counter-parties send messages for this participant.
        offer_check: called on every offer received as provider in a new negotiation; raises to
            refuse an offer this provider never made (the connector plugs in the catalog).
        clock: the current time (tests inject one).
        agreement_validity: default validity window of agreements this provider signs.
    """

    def __init__(
        self,
        participant_id: str,
        store: Store,
        signing_key: SigningKey,
        resolve_key: Callable[[str], VerifyKey],
        *,
        callback_address: str,
        offer_check: Callable[[Mapping[str, Any]], None] | None = None,
        clock: Callable[[], datetime] = _now,
        agreement_validity: timedelta = timedelta(days=365),
    ) -> None:
        self.participant_id = check_participant_id(participant_id)
        self.store = store
        self._key = signing_key
        self._resolve_key = resolve_key
        self.callback_address = callback_address
        self._offer_check = offer_check
        self._clock = clock
        self._validity = agreement_validity

    # -- queries ------------------------------------------------------------------------------
    def negotiation(self, pid: str) -> Negotiation:
        with self.store.transaction() as tx:
            return load_negotiation(tx, pid)

    def agreement(self, agreement_id: str) -> SignedAgreement:
        with self.store.transaction() as tx:
            return load_agreement(tx, agreement_id)

    def authorises(self, agreement_id: str, at: datetime | None = None) -> bool:
        """Whether the agreement ``agreement_id`` authorises use now (or at ``at``)."""
        with self.store.transaction() as tx:
            signed = load_agreement(tx, agreement_id)
            pid = (
                signed.provider_pid
                if signed.assigner == self.participant_id
                else signed.consumer_pid
            )
            state = load_negotiation(tx, pid).state
        return agreement_authorises(signed, state, at or self._clock())

    # -- actions (prepare a message; the transition happens on acknowledge) -------------------
    def _prepare(self, pid: str, kind: MessageKind, role: Role) -> Negotiation:
        record = self.negotiation(pid)
        if record.role is not role:
            raise IllegalTransitionError(
                f"{kind.value}: this participant is the {record.role.value} in negotiation "
                f"{pid!r}, not the {role.value}"
            )
        next_state(record.state, kind, role)
        return record

    def _outgoing(
        self, record: Negotiation, kind: MessageKind, message: dict[str, Any], **changes: Any
    ) -> Outgoing:
        after = next_state(record.state, kind, record.role)
        return Outgoing(
            message=message,
            kind=kind,
            recipient=record.counterparty,
            before=record.state,
            pending=replace(record, state=after, **changes),
            expect_version=record.version,
        )

    def request(self, provider_id: str, offer: Mapping[str, Any]) -> Outgoing:
        """Consumer: start a negotiation for ``offer`` (which names its dataset in ``target``)."""
        check_participant_id(provider_id, "provider")
        if provider_id == self.participant_id:
            raise ValidationError("a participant cannot negotiate a contract with itself")
        offer = _check_message_offer(offer)
        consumer_pid = new_id()
        msg = contract_request_message(
            consumer_pid=consumer_pid, offer=offer, callback_address=self.callback_address
        )
        pending = Negotiation(
            Role.CONSUMER, "", consumer_pid, self.participant_id, provider_id,
            next_state(None, MessageKind.REQUEST, Role.CONSUMER), offer,
        )  # fmt: skip
        return Outgoing(msg, MessageKind.REQUEST, provider_id, None, pending, 0)

    def offer(self, consumer_id: str, offer: Mapping[str, Any]) -> Outgoing:
        """Provider: start a negotiation by offering ``offer`` to ``consumer_id``."""
        check_participant_id(consumer_id, "consumer")
        if consumer_id == self.participant_id:
            raise ValidationError("a participant cannot negotiate a contract with itself")
        offer = _check_message_offer(offer)
        provider_pid = new_id()
        msg = contract_offer_message(
            provider_pid=provider_pid, offer=offer, callback_address=self.callback_address
        )
        pending = Negotiation(
            Role.PROVIDER, provider_pid, "", self.participant_id, consumer_id,
            next_state(None, MessageKind.OFFER, Role.PROVIDER), offer,
        )  # fmt: skip
        return Outgoing(msg, MessageKind.OFFER, consumer_id, None, pending, 0)

    def counter_request(self, pid: str, offer: Mapping[str, Any]) -> Outgoing:
        """Consumer, in OFFERED: answer the provider's offer with another request."""
        record = self._prepare(pid, MessageKind.REQUEST, Role.CONSUMER)
        offer = _check_message_offer(offer)
        msg = contract_request_message(
            consumer_pid=record.consumer_pid, provider_pid=record.provider_pid, offer=offer
        )
        return self._outgoing(record, MessageKind.REQUEST, msg, offer=offer)

    def counter_offer(self, pid: str, offer: Mapping[str, Any]) -> Outgoing:
        """Provider, in REQUESTED: answer the consumer's request with another offer."""
        record = self._prepare(pid, MessageKind.OFFER, Role.PROVIDER)
        offer = _check_message_offer(offer)
        msg = contract_offer_message(
            provider_pid=record.provider_pid, consumer_pid=record.consumer_pid, offer=offer
        )
        return self._outgoing(record, MessageKind.OFFER, msg, offer=offer)

    def accept(self, pid: str) -> Outgoing:
        """Consumer, in OFFERED: accept the latest offer."""
        record = self._prepare(pid, MessageKind.ACCEPTED, Role.CONSUMER)
        msg = negotiation_event_message(
            provider_pid=record.provider_pid,
            consumer_pid=record.consumer_pid,
            event_type="ACCEPTED",
        )
        return self._outgoing(record, MessageKind.ACCEPTED, msg)

    def agree(
        self,
        pid: str,
        *,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
    ) -> Outgoing:
        """Provider, in REQUESTED or ACCEPTED: agree to the latest offer and sign the agreement."""
        record = self._prepare(pid, MessageKind.AGREEMENT, Role.PROVIDER)
        now = self._clock()
        start = valid_from or now
        agreement = build_agreement(
            offer=record.offer,
            assigner=self.participant_id,
            assignee=record.counterparty,
            valid_from=start,
            valid_until=valid_until or start + self._validity,
            timestamp=now,
        )
        signature = sign_agreement(
            agreement, self._key, signer=self.participant_id, role=Role.PROVIDER
        )
        msg = contract_agreement_message(
            provider_pid=record.provider_pid,
            consumer_pid=record.consumer_pid,
            agreement=agreement,
            signature=signature,
        )
        return self._outgoing(
            record, MessageKind.AGREEMENT, msg, agreement=agreement, provider_signature=signature
        )

    def verify(self, pid: str) -> Outgoing:
        """Consumer, in AGREED: countersign the provider-signed agreement."""
        record = self._prepare(pid, MessageKind.VERIFICATION, Role.CONSUMER)
        if record.agreement is None:  # pragma: no cover - AGREED always carries it
            raise ConflictError(f"negotiation {pid!r} is AGREED without an agreement")
        signature = sign_agreement(
            record.agreement, self._key, signer=self.participant_id, role=Role.CONSUMER
        )
        msg = agreement_verification_message(
            provider_pid=record.provider_pid, consumer_pid=record.consumer_pid, signature=signature
        )
        return self._outgoing(record, MessageKind.VERIFICATION, msg, consumer_signature=signature)

    def finalize(self, pid: str) -> Outgoing:
        """Provider, in VERIFIED: finalize; the agreement now authorises use."""
        record = self._prepare(pid, MessageKind.FINALIZED, Role.PROVIDER)
        msg = negotiation_event_message(
            provider_pid=record.provider_pid,
            consumer_pid=record.consumer_pid,
            event_type="FINALIZED",
        )
        return self._outgoing(record, MessageKind.FINALIZED, msg)

    def terminate(
        self, pid: str, *, code: str | None = None, reason: list[Any] | None = None
    ) -> Outgoing:
        """Either side, in any non-terminal state: terminate the negotiation."""
        record = self.negotiation(pid)
        next_state(record.state, MessageKind.TERMINATION, record.role)
        msg = termination_message(
            provider_pid=record.provider_pid,
            consumer_pid=record.consumer_pid,
            code=code,
            reason=reason,
        )
        return self._outgoing(record, MessageKind.TERMINATION, msg)

    # -- acknowledgement of our own message -----------------------------------------------------
    def acknowledge(self, outgoing: Outgoing, ack: Mapping[str, Any]) -> Negotiation:
        """Apply our own transition after the counter-party's ACK (a ``ContractNegotiation``).

        Raises:
            ValidationError: the ACK is malformed or names another negotiation or state.
            ConflictError: our record changed since the message was prepared.
        """
        dsp.validate(ack, "negotiation/contract-negotiation-schema.json")
        if ack.get("@type") != "ContractNegotiation":
            raise ValidationError("ACK: expected a ContractNegotiation")
        pending = outgoing.pending
        if ack["state"] != pending.state.value:
            raise ValidationError(f"ACK: state {ack['state']} but expected {pending.state.value}")
        mine = "providerPid" if pending.role is Role.PROVIDER else "consumerPid"
        theirs = "consumerPid" if pending.role is Role.PROVIDER else "providerPid"
        if ack[mine] != pending.pid:
            raise ValidationError(f"ACK: {mine} {ack[mine]!r} is not {pending.pid!r}")
        other = pending.consumer_pid if pending.role is Role.PROVIDER else pending.provider_pid
        if other and ack[theirs] != other:
            raise ValidationError(f"ACK: {theirs} {ack[theirs]!r} is not {other!r}")
        if not other and pending.role is Role.PROVIDER:
            pending = replace(pending, consumer_pid=str(ack["consumerPid"]))
        elif not other:
            pending = replace(pending, provider_pid=str(ack["providerPid"]))
        with self.store.transaction() as tx:
            return _write(tx, outgoing.before, pending, outgoing.kind, outgoing.expect_version)

    # -- receiving the counter-party's messages -------------------------------------------------
    def receive(self, message: Mapping[str, Any], *, sender: str) -> dict[str, Any]:
        """Handle a message from ``sender`` (authenticated by the transport); return the ACK.

        Raises:
            SchemaValidationError / ValidationError: malformed message or terms.
            NotFoundError: no negotiation with these ids for this sender.
            IllegalTransitionError: the message is not allowed in the current state.
            VerificationError: an agreement signature does not verify.
            ConflictError: a concurrent transition won.
        """
        parsed = parse_message(message)
        kind = parsed.kind
        with self.store.transaction() as tx:
            record = self._find(tx, parsed, sender)
            if record is None:
                record = self._new_from(parsed, sender)
                before: NegotiationState | None = None
                sender_role = record.role.other
                expect = 0
            else:
                before = record.state
                sender_role = record.role.other
                expect = record.version
            after = next_state(before, kind, sender_role)
            record = self._apply(record, parsed, sender)
            saved = _write(tx, before, replace(record, state=after), kind, expect)
        return negotiation_ack(
            provider_pid=saved.provider_pid, consumer_pid=saved.consumer_pid, state=saved.state
        )

    def _find(self, tx: Transaction, msg: ParsedMessage, sender: str) -> Negotiation | None:
        roles = {r.other for r in msg.kind.senders}  # our possible roles
        for role in (Role.PROVIDER, Role.CONSUMER):
            if role not in roles:
                continue
            pid = msg.provider_pid if role is Role.PROVIDER else msg.consumer_pid
            if pid is None:
                continue
            doc = tx.get(NEGOTIATION_NAMESPACE, pid)
            if doc is None:
                continue
            record = Negotiation.from_json(doc.body, doc.version)
            other = msg.consumer_pid if role is Role.PROVIDER else msg.provider_pid
            other_known = record.consumer_pid if role is Role.PROVIDER else record.provider_pid
            # Unknown ids and someone else's negotiation look the same: not found.
            if record.role is role and record.counterparty == sender and other == other_known:
                return record
            raise NotFoundError(f"no negotiation {pid!r} with {sender!r}")
        if msg.kind is MessageKind.REQUEST and msg.provider_pid is None:
            return None
        if msg.kind is MessageKind.OFFER and msg.consumer_pid is None:
            return None
        raise NotFoundError(
            f"no negotiation for providerPid={msg.provider_pid!r} consumerPid={msg.consumer_pid!r}"
        )

    def _new_from(self, msg: ParsedMessage, sender: str) -> Negotiation:
        check_participant_id(sender, "sender")
        if sender == self.participant_id:
            raise ValidationError("a participant cannot negotiate a contract with itself")
        offer = _check_message_offer(msg.body["offer"])
        callback = msg.body.get("callbackAddress")
        if msg.kind is MessageKind.REQUEST:
            if self._offer_check is not None:
                self._offer_check(offer)
            return Negotiation(
                Role.PROVIDER, new_id(), str(msg.consumer_pid), self.participant_id, sender,
                NegotiationState.REQUESTED, offer, callback,
            )  # fmt: skip
        return Negotiation(
            Role.CONSUMER, str(msg.provider_pid), new_id(), self.participant_id, sender,
            NegotiationState.OFFERED, offer, callback,
        )  # fmt: skip

    def _apply(self, record: Negotiation, msg: ParsedMessage, sender: str) -> Negotiation:
        body = msg.body
        if msg.kind in (MessageKind.REQUEST, MessageKind.OFFER):
            offer = _check_message_offer(body["offer"])
            if offer["target"] != record.dataset_id:
                raise ValidationError(
                    f"offer.target {offer['target']!r} is not the negotiated dataset "
                    f"{record.dataset_id!r}"
                )
            return replace(record, offer=offer)
        if msg.kind is MessageKind.AGREEMENT:
            agreement = dict(body["agreement"])
            self._check_terms(record, agreement, sender)
            signature = _signature_of(body)
            verify_agreement_signature(
                agreement, signature, self._resolve_key(sender), signer=sender, role=Role.PROVIDER
            )
            return replace(record, agreement=agreement, provider_signature=signature)
        if msg.kind is MessageKind.VERIFICATION:
            if record.agreement is None:  # pragma: no cover - AGREED always carries it
                raise ConflictError("verification of a negotiation without an agreement")
            signature = _signature_of(body)
            verify_agreement_signature(
                record.agreement,
                signature,
                self._resolve_key(sender),
                signer=sender,
                role=Role.CONSUMER,
            )
            return replace(record, consumer_signature=signature)
        return record

    def _check_terms(self, record: Negotiation, agreement: dict[str, Any], sender: str) -> None:
        """The consumer's check that the agreement is the offer it negotiated, for it."""
        expected = {
            "target": record.dataset_id,
            "assigner": sender,
            "assignee": self.participant_id,
            _OFFER_ID: record.offer["@id"],
        }
        for key, value in expected.items():
            if agreement.get(key) != value:
                raise ValidationError(
                    f"agreement.{key}: {agreement.get(key)!r} does not match {value!r}"
                )
        for rule in _RULES:
            if agreement.get(rule) != record.offer.get(rule):
                raise ValidationError(f"agreement.{rule} differs from the negotiated offer")
        start = _parse_dt(agreement.get(_VALID_FROM), "agreement.validFrom")
        end = _parse_dt(agreement.get(_VALID_UNTIL), "agreement.validUntil")
        if end <= start:
            raise ValidationError("agreement: validUntil must be after validFrom")


def _signature_of(body: Mapping[str, Any]) -> AgreementSignature:
    if SIGNATURE_PROPERTY not in body:
        raise VerificationError("message carries no agreement signature")
    try:
        return AgreementSignature.from_json(body[SIGNATURE_PROPERTY])
    except ValidationError as exc:
        raise VerificationError(f"malformed agreement signature: {exc}") from exc


# -- in-process driver ---------------------------------------------------------------------------


def deliver(sender: Negotiator, outgoing: Outgoing, receiver: Negotiator) -> dict[str, Any]:
    """Carry one message: the receiver handles it, then the sender applies the ACK.

    If the receiver refuses (any exception), the sender does not move either. The connector layer
    does the same over HTTP.
    """
    if outgoing.recipient != receiver.participant_id:
        raise ValidationError(
            f"message for {outgoing.recipient!r} delivered to {receiver.participant_id!r}"
        )
    ack = receiver.receive(outgoing.message, sender=sender.participant_id)
    sender.acknowledge(outgoing, ack)
    return ack


def run_negotiation(
    provider: Negotiator,
    consumer: Negotiator,
    offer: Mapping[str, Any],
    *,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
) -> SignedAgreement:
    """A full negotiation to FINALIZED: request → agreement → verification → finalization.

    Returns the consumer's copy of the signed agreement (identical to the provider's).
    """
    out = consumer.request(provider.participant_id, offer)
    deliver(consumer, out, provider)
    consumer_pid = out.pending.consumer_pid
    with consumer.store.transaction() as tx:
        provider_pid = load_negotiation(tx, consumer_pid).provider_pid
    deliver(
        provider,
        provider.agree(provider_pid, valid_from=valid_from, valid_until=valid_until),
        consumer,
    )
    deliver(consumer, consumer.verify(consumer_pid), provider)
    deliver(provider, provider.finalize(provider_pid), consumer)
    signed = consumer.negotiation(consumer_pid).signed_agreement()
    if signed is None:  # pragma: no cover - VERIFIED guarantees both signatures
        raise ConflictError("negotiation finalized without a signed agreement")
    return signed
