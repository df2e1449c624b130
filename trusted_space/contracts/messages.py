"""DSP 2025-1 contract negotiation messages: builders and the strict parser.

Every message built here, and every message accepted (:func:`parse_message`), validates against
the vendored DSP 2025-1 JSON schemas.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trusted_space import dsp
from trusted_space.contracts.agreements import AgreementSignature
from trusted_space.contracts.states import (
    SIGNATURE_PROPERTY,
    MessageKind,
    NegotiationState,
    check_message_offer,
)
from trusted_space.errors import ValidationError

__all__ = [
    "ParsedMessage",
    "agreement_verification_message",
    "contract_agreement_message",
    "contract_offer_message",
    "contract_request_message",
    "negotiation_ack",
    "negotiation_error",
    "negotiation_event_message",
    "offer_for",
    "parse_message",
    "termination_message",
]

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
        "offer": check_message_offer(offer),
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
        "offer": check_message_offer(offer),
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
