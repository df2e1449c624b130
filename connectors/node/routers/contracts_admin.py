"""Contracts admin API: the institution's staff start and follow negotiations, read agreements.

- ``POST /management/negotiations`` ``{"provider","datasetId","offerId"?}`` (consumer): request a
  contract; ``201`` with this side's record. The provider agrees, this node countersigns and the
  provider finalizes without further calls (:mod:`connectors.node.negotiation`).
- ``GET /management/negotiations[?state=]``, ``GET /management/negotiations/{id}``: this node's
  records (``id`` is this side's process id); ``agreementId`` once both parties have signed.
- ``POST /management/negotiations/{id}/terminate`` ``{"reason"?}``: end it and tell the
  counter-party; this side terminates even if the counter-party cannot be told
  (``peerNotified`` says which).
- ``GET /management/agreements``, ``GET /management/agreements/{id}``: signed agreements with
  both public signatures, the state of their negotiation, their standing, and whether they
  authorise use now.
- ``POST /management/agreements/{id}/suspend|resume|terminate`` ``{"reason"}`` (provider): change
  a FINALIZED agreement's standing (:mod:`trusted_space.contracts.standing`); every later use
  and transfer is refused with a trace step ``standing`` until it is resumed; ``terminated`` is
  final. Recorded as an ``agreement.standing`` ledger entry; ``409`` for a transition that is
  not allowed, ``404`` for an agreement this node did not grant.
- ``PUT /management/grants/mode`` ``{"mode": "auto"|"policy"|"staff", "offerId"?}`` (provider):
  how requests are granted, node-wide or for one offer
  (:mod:`trusted_space.contracts.granting`); ``GET /management/grants/pending``: the requests held
  for the staff (they stay ``REQUESTED`` for the consumer);
  ``POST /management/grants/pending/{pid}/approve`` (the provider agrees now) and
  ``.../reject`` ``{"reason"}`` (it terminates the negotiation and tells the consumer).

Staff only (the node's admin token). Nothing here returns a key or a token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict, Field

from connectors.node import negotiation
from connectors.node.deps import AdminDep, RuntimeDep
from connectors.node.pagination import PagerDep
from connectors.node.runtime import NodeRuntime
from connectors.node.wire.dsp import (
    AgreementView,
    NegotiationCreate,
    NegotiationView,
    TerminateRequest,
    agreement_view,
    negotiation_view,
)
from trusted_space.contracts import (
    AGREEMENT_NAMESPACE,
    NEGOTIATION_NAMESPACE,
    Negotiation,
    NegotiationState,
    SignedAgreement,
    Standing,
    agreement_authorises,
    agreement_standing,
    change_standing,
    load_agreement,
    load_negotiation,
)
from trusted_space.contracts.granting import GrantMode, grant_mode, holds, set_grant_mode
from trusted_space.errors import NotFoundError, ValidationError
from trusted_space.store import Transaction

__all__ = [
    "GrantModeChange",
    "GrantModeView",
    "HeldView",
    "RejectRequest",
    "StandingChange",
    "approve_request",
    "TerminationView",
    "change_agreement_standing",
    "create_negotiation",
    "get_agreement",
    "get_negotiation",
    "list_agreements",
    "list_held",
    "list_negotiations",
    "reject_request",
    "router",
    "set_mode",
    "terminate_negotiation",
]

router = APIRouter(prefix="/management", tags=["contracts"])


class TerminationView(NegotiationView):
    """A terminated negotiation, and whether the counter-party acknowledged the termination."""

    peerNotified: bool


@router.post("/negotiations", status_code=201, response_model=NegotiationView)
def create_negotiation(
    _: AdminDep, runtime: RuntimeDep, body: NegotiationCreate
) -> NegotiationView:
    """Request a contract from a provider for one of its datasets (this node is the consumer)."""
    if "consumer" not in runtime.roles:
        raise ValidationError(f"{runtime.id!r} is not a consumer: it cannot request contracts")
    record = negotiation.start_negotiation(runtime, body.provider, body.datasetId, body.offerId)
    return negotiation_view(record)


@router.get("/negotiations", response_model=list[NegotiationView])
def list_negotiations(
    _: AdminDep,
    runtime: RuntimeDep,
    pages: PagerDep,
    state: Annotated[NegotiationState | None, Query(description="Only this state")] = None,
) -> list[NegotiationView]:
    """Every negotiation this node takes part in, as provider or consumer (paged by id)."""
    with runtime.transaction(readonly=True) as tx:
        records = [
            Negotiation.from_json(doc.body, doc.version) for doc in tx.scan(NEGOTIATION_NAMESPACE)
        ]
    views = [negotiation_view(r) for r in records if state is None or r.state is state]
    return pages(views, lambda v: (v.id,))


@router.get("/negotiations/{pid}", response_model=NegotiationView)
def get_negotiation(_: AdminDep, runtime: RuntimeDep, pid: str) -> NegotiationView:
    """One negotiation by this side's process id."""
    with runtime.transaction(readonly=True) as tx:
        return negotiation_view(load_negotiation(tx, pid))


@router.post("/negotiations/{pid}/terminate", response_model=TerminationView)
def terminate_negotiation(
    _: AdminDep,
    runtime: RuntimeDep,
    pid: str,
    body: Annotated[TerminateRequest | None, Body()] = None,
) -> TerminationView:
    """Terminate a negotiation that is not FINALIZED or TERMINATED yet (409 otherwise)."""
    reason = body.reason if body is not None and body.reason else "terminated by the staff"
    record, notified = negotiation.terminate(
        runtime, pid, reason=reason, code="terminated-by-staff"
    )
    return TerminationView(**negotiation_view(record).model_dump(), peerNotified=notified)


def _agreement(runtime: NodeRuntime, tx: Transaction, signed: SignedAgreement) -> AgreementView:
    pid = signed.provider_pid if signed.assigner == runtime.id else signed.consumer_pid
    state = load_negotiation(tx, pid).state
    standing = agreement_standing(tx, signed.id).standing
    authorises = agreement_authorises(signed, state, runtime.clock()) and standing == "active"
    return agreement_view(signed, state, authorises=authorises, standing=standing)


@router.get("/agreements", response_model=list[AgreementView])
def list_agreements(
    _: AdminDep,
    runtime: RuntimeDep,
    pages: PagerDep,
) -> list[AgreementView]:
    """Every agreement signed by both parties with this node as one of them (paged by id)."""
    with runtime.transaction(readonly=True) as tx:
        docs = tx.scan(AGREEMENT_NAMESPACE)
        chosen = pages(docs, lambda d: (d.key,))
        return [_agreement(runtime, tx, SignedAgreement.from_json(d.body)) for d in chosen]


@router.get("/agreements/{agreement_id}", response_model=AgreementView)
def get_agreement(_: AdminDep, runtime: RuntimeDep, agreement_id: str) -> AgreementView:
    """One signed agreement: its terms and both signatures (checkable with the public keys)."""
    with runtime.transaction(readonly=True) as tx:
        return _agreement(runtime, tx, load_agreement(tx, agreement_id))


class StandingChange(BaseModel):
    """Why the provider's staff suspend, resume or terminate an agreement (kept in the ledger)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


_STANDING_OF: dict[str, Standing] = {
    "suspend": "suspended",
    "resume": "active",
    "terminate": "terminated",
}


@router.post("/agreements/{agreement_id}/{action}", response_model=AgreementView)
def change_agreement_standing(
    _: AdminDep, runtime: RuntimeDep, agreement_id: str, action: str, body: StandingChange
) -> AgreementView:
    """Suspend, resume or terminate a FINALIZED agreement this node granted (as provider)."""
    standing = _STANDING_OF.get(action)
    if standing is None:
        raise NotFoundError(f"no action {action!r}; use suspend, resume or terminate")
    with runtime.transaction() as tx:
        signed = load_agreement(tx, agreement_id)
        if signed.assigner != runtime.id:
            raise NotFoundError(f"agreement {agreement_id!r} was not granted by {runtime.id}")
        change_standing(tx, agreement_id, standing, reason=body.reason, at=runtime.clock())
        return _agreement(runtime, tx, signed)


class GrantModeChange(BaseModel):
    """How requests are granted: node-wide, or for one offer (``offerId``)."""

    model_config = ConfigDict(extra="forbid")

    mode: GrantMode
    offerId: str | None = Field(default=None, min_length=1, max_length=512)


class GrantModeView(BaseModel):
    """The mode now in force for the node (or the offer)."""

    mode: str
    offerId: str | None


class HeldView(BaseModel):
    """A contract request held for the staff (the consumer sees it REQUESTED)."""

    id: str = Field(description="The provider's process id of the negotiation")
    consumer: str
    datasetId: str
    offerId: str
    mode: str
    since: str


class RejectRequest(BaseModel):
    """Why the staff reject a held request (sent to the consumer, kept in the ledger)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)


def _provider_only(runtime: NodeRuntime) -> None:
    if "provider" not in runtime.roles:
        raise ValidationError(f"{runtime.id!r} is not a provider: it grants no agreements")


@router.put("/grants/mode", response_model=GrantModeView)
def set_mode(_: AdminDep, runtime: RuntimeDep, body: GrantModeChange) -> GrantModeView:
    """Set how this provider grants requests (``auto``, ``policy`` or ``staff``)."""
    _provider_only(runtime)
    with runtime.transaction() as tx:
        set_grant_mode(tx, body.mode, offer_id=body.offerId, at=runtime.clock())
        return GrantModeView(mode=grant_mode(tx, body.offerId), offerId=body.offerId)


@router.get("/grants/pending", response_model=list[HeldView])
def list_held(
    _: AdminDep,
    runtime: RuntimeDep,
    pages: PagerDep,
) -> list[HeldView]:
    """The contract requests waiting for the staff, oldest first."""
    with runtime.transaction(readonly=True) as tx:
        views = [
            HeldView(
                id=h.pid,
                consumer=h.consumer,
                datasetId=h.dataset_id,
                offerId=h.offer_id,
                mode=h.mode,
                since=h.since,
            )
            for h in holds(tx)
        ]
    return pages(views, lambda v: (v.since, v.id))


@router.post("/grants/pending/{pid}/approve", response_model=NegotiationView)
def approve_request(_: AdminDep, runtime: RuntimeDep, pid: str) -> NegotiationView:
    """Approve a held request: the provider agrees and signs (the consumer then countersigns)."""
    return negotiation_view(negotiation.approve(runtime, pid))


@router.post("/grants/pending/{pid}/reject", response_model=TerminationView)
def reject_request(
    _: AdminDep, runtime: RuntimeDep, pid: str, body: RejectRequest
) -> TerminationView:
    """Reject a held request: the negotiation is terminated and the consumer told why."""
    record, notified = negotiation.reject(runtime, pid, reason=body.reason)
    return TerminationView(**negotiation_view(record).model_dump(), peerNotified=notified)
