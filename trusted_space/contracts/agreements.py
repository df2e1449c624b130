"""Agreements signed by both parties: signatures, the stored agreement, what it authorises.

The agreement is canonicalised (sorted-key JSON) and signed with Ed25519 by the provider, then
countersigned by the consumer; only one carrying both signatures is stored, insert-only.
:func:`agreement_authorises` is the one check other modules call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from trusted_space.catalog import check_participant_id
from trusted_space.contracts.states import (
    AGREEMENT_NAMESPACE,
    OFFER_PROPERTY,
    RULE_KINDS,
    VALID_FROM_PROPERTY,
    VALID_UNTIL_PROPERTY,
    NegotiationState,
    Role,
    check_message_offer,
    new_id,
    parse_xsd_datetime,
    utc_now,
    xsd_datetime,
)
from trusted_space.errors import ValidationError, VerificationError
from trusted_space.events import canonical_json, record_event
from trusted_space.keys import ALGORITHM, SigningKey, VerifyKey, b64url_decode, b64url_encode
from trusted_space.store import Transaction

__all__ = [
    "AgreementSignature",
    "SignedAgreement",
    "agreement_authorises",
    "build_agreement",
    "load_agreement",
    "sign_agreement",
    "store_agreement",
    "verify_agreement_signature",
]

_SIGNING_DOMAIN = b"trusted-space/agreement/v1/"


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
    offer = check_message_offer(offer)
    agreement: dict[str, Any] = {
        "@id": agreement_id or new_id(),
        "@type": "Agreement",
        "target": offer["target"],
        "assigner": assigner,
        "assignee": assignee,
        "timestamp": xsd_datetime(timestamp or utc_now()),
        OFFER_PROPERTY: offer["@id"],
        VALID_FROM_PROPERTY: xsd_datetime(valid_from),
        VALID_UNTIL_PROPERTY: xsd_datetime(valid_until),
    }
    if "profile" in offer:
        agreement["profile"] = offer["profile"]
    for rule in RULE_KINDS:
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
        return parse_xsd_datetime(self.agreement.get(VALID_FROM_PROPERTY), "agreement.validFrom")

    @property
    def valid_until(self) -> datetime:
        return parse_xsd_datetime(self.agreement.get(VALID_UNTIL_PROPERTY), "agreement.validUntil")

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
