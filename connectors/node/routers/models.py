"""Submitted model parts: the analyst submits, the provider's staff approve or reject.

Analyst's node (admin token):

- ``POST /management/models/submit`` ``{"provider", "agreement", "dataset", "model",
  "weights"}``: send the model part to the provider (``model.submit``, signed); the provider
  checks its model rules on its rows (a broken rule: 403 with the trace naming it) and keeps it
  pending. ``model.sent`` on this node's ledger, by digest.
- ``POST /management/models/status`` ``{"provider", "model"}``: how it stands; a decision is
  recorded once on this node's ledger (``model.approval``).

Provider's staff (admin token):

- ``GET /management/models``: the party-held models stored here (owner, id, source, digest,
  the provider's measurements and the weights of its own columns).
- ``GET /management/models/submissions?state=pending``: the submissions kept here.
- ``POST /management/models/submissions/approve|reject`` ``{"owner", "model", "reason"}``:
  decide one; approval stores the weights as the owner's party-held model (``model.approved``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from connectors.node.compute import compute_node
from connectors.node.deps import RuntimeDep, require_admin
from connectors.node.pagination import PagerDep
from connectors.node.wire.models import (
    ModelDecision,
    ModelStatusRequest,
    ModelSubmit,
    PartyModelView,
    SubmissionView,
)
from trusted_space.protocols.score import (
    decide_submission,
    model_status,
    party_models,
    send_model,
    submissions,
)

__all__ = [
    "decide_model",
    "list_models",
    "list_submissions",
    "router",
    "submission_status",
    "submit_model_part",
]

router = APIRouter(
    prefix="/management/models", tags=["models"], dependencies=[Depends(require_admin)]
)


@router.post("/submit")
def submit_model_part(runtime: RuntimeDep, body: ModelSubmit) -> dict[str, str]:
    """Submit this node's model part for a provider's columns (pending until its staff decide)."""
    node = compute_node(runtime)
    if node.transport is None:  # pragma: no cover - every node has one
        raise RuntimeError("no transport")
    reply = send_model(
        node.transport,
        runtime.store,
        body.provider,
        body.model,
        body.agreement,
        body.dataset,
        body.weights,
    )
    return {k: str(v) for k, v in reply.items()}


@router.post("/status")
def submission_status(runtime: RuntimeDep, body: ModelStatusRequest) -> dict[str, str]:
    """How this node's submission stands at the provider (a decision is recorded once)."""
    node = compute_node(runtime)
    if node.transport is None:  # pragma: no cover - every node has one
        raise RuntimeError("no transport")
    reply = model_status(node.transport, runtime.store, body.provider, body.model)
    return {k: str(v) for k, v in reply.items()}


@router.get("", response_model=list[PartyModelView])
def list_models(
    runtime: RuntimeDep,
    pages: PagerDep,
) -> list[PartyModelView]:
    """The party-held models stored at this node (its staff's view: its own columns' weights)."""
    views = [
        PartyModelView(
            owner=m.owner,
            model=m.model_id,
            source=m.source,
            sha256=m.sha256,
            stats=m.stats,
            weights=m.weights,
        )
        for m in party_models(runtime.store)
    ]
    return pages(views, lambda v: (v.owner, v.model))


@router.get("/submissions", response_model=list[SubmissionView])
def list_submissions(
    runtime: RuntimeDep,
    pages: PagerDep,
    state: Annotated[Literal["pending", "approved", "rejected"] | None, Query()] = None,
) -> list[SubmissionView]:
    """Model parts members submitted to this provider (all, or in ``state``)."""
    views = [SubmissionView.of(s.to_json(weights=True)) for s in submissions(runtime.store, state)]
    return pages(views, lambda v: (v.owner, v.model))


@router.post("/submissions/{action}", response_model=SubmissionView)
def decide_model(
    runtime: RuntimeDep, action: Literal["approve", "reject"], body: ModelDecision
) -> SubmissionView:
    """Approve (store as the owner's party-held model) or reject a pending submission."""
    decided = decide_submission(
        runtime.store, body.owner, body.model, approve=action == "approve", reason=body.reason
    )
    return SubmissionView.of(decided.to_json(weights=True))
