"""Wire models of the DSP routes and of the contracts admin API, and their conversions.

DSP messages themselves are JSON-LD documents checked against the vendored 2025-1 JSON schemas
(:func:`trusted_space.dsp.validate`), not pydantic models: the schemas are the contract with
foreign connectors, and a second, hand-written description of them could only drift. The models
here are the ones the schemas do not cover: the version document of
``/.well-known/dspace-version``, and the staff's view of negotiations and agreements.

A negotiation view carries ids, state and the dataset, never the offer's private context or any
key; an agreement view carries the signed terms and both public signatures, which is what an
auditor needs to check the contract offline.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trusted_space.contracts import (
    Negotiation,
    NegotiationState,
    SignedAgreement,
)

__all__ = [
    "AgreementView",
    "NegotiationCreate",
    "NegotiationView",
    "ProtocolVersion",
    "SignatureView",
    "TerminateRequest",
    "VersionResponse",
    "agreement_view",
    "negotiation_view",
]

_ID = Field(min_length=1, max_length=512)


class ProtocolVersion(BaseModel):
    """One protocol version this node speaks (DSP ``Version``)."""

    version: str
    path: str
    binding: str


class VersionResponse(BaseModel):
    """``GET /.well-known/dspace-version`` (DSP ``VersionResponse``)."""

    protocolVersions: list[ProtocolVersion]


class NegotiationCreate(BaseModel):
    """Start a negotiation as consumer: which provider, which dataset, optionally which offer."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(
        pattern=r"^[a-z0-9][a-z0-9.-]{1,62}$", description="The provider's participant id"
    )
    datasetId: str = _ID
    offerId: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="The offer to request; required when the dataset has several",
    )


class TerminateRequest(BaseModel):
    """Terminate a negotiation; the reason is sent to the counter-party and kept in the ledger."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)


class NegotiationView(BaseModel):
    """One side's view of a negotiation (``id`` is this side's process id)."""

    id: str
    role: str
    state: str
    counterparty: str
    datasetId: str
    offerId: str
    providerPid: str
    consumerPid: str
    agreementId: str | None = Field(
        description="Set once both parties have signed (VERIFIED, FINALIZED, or terminated after)"
    )


class SignatureView(BaseModel):
    """A party's public Ed25519 signature over the canonical agreement."""

    signer: str
    role: str
    alg: str
    keyId: str
    value: str


class AgreementView(BaseModel):
    """A signed agreement: the ODRL terms, both signatures, and whether it authorises use now."""

    id: str
    providerPid: str
    consumerPid: str
    agreement: dict[str, Any]
    providerSignature: SignatureView
    consumerSignature: SignatureView
    state: str = Field(description="State of the negotiation that produced it")
    standing: str = Field(
        default="active",
        description="active, suspended or terminated (by its provider; checked on every use)",
    )
    authorises: bool = Field(description="FINALIZED, inside its validity window and active, now")


def negotiation_view(record: Negotiation) -> NegotiationView:
    """The staff's view of one side's negotiation record."""
    signed = record.signed_agreement()
    return NegotiationView(
        id=record.pid,
        role=record.role.value,
        state=record.state.value,
        counterparty=record.counterparty,
        datasetId=record.dataset_id,
        offerId=str(record.offer.get("@id", "")),
        providerPid=record.provider_pid,
        consumerPid=record.consumer_pid,
        agreementId=None if signed is None else signed.id,
    )


def agreement_view(
    signed: SignedAgreement, state: NegotiationState, *, authorises: bool, standing: str = "active"
) -> AgreementView:
    """The staff's view of a signed agreement."""
    doc = signed.to_json()
    return AgreementView(
        id=signed.id,
        providerPid=signed.provider_pid,
        consumerPid=signed.consumer_pid,
        agreement=doc["agreement"],
        providerSignature=SignatureView(**doc["providerSignature"]),
        consumerSignature=SignatureView(**doc["consumerSignature"]),
        state=state.value,
        standing=standing,
        authorises=authorises,
    )
