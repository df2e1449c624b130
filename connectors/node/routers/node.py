"""Liveness, readiness and the node's public identity.

- ``GET /healthz``: the process answers (no dependencies checked).
- ``GET /readyz``: the store answers a read, and the node is part of a space (it has an operator
  anchor and its own credential); ``503`` with the missing piece named otherwise.
- ``GET /identity``: participant id, roles, URL, public key, ledger verifier key, admission
  status. Public: other nodes and auditors need it to verify this node's signatures.
- ``POST /identity/revocations``: the operator pushes its signed revocation list here. No token is
  needed: the list is verified against the operator's key, and an older list is refused.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from connectors.node.deps import RuntimeDep
from connectors.node.problems import problem

__all__ = [
    "Health",
    "Identity",
    "RevocationApplied",
    "RevocationPush",
    "healthz",
    "identity",
    "push_revocations",
    "readyz",
    "router",
]

router = APIRouter(tags=["node"])


class Health(BaseModel):
    status: str


class Identity(BaseModel):
    id: str
    roles: list[str]
    url: str
    publicKey: str = Field(description="Ed25519 public key, base64url")
    ledgerVkey: str = Field(description="C2SP note verifier key of this node's ledger")
    ledgerOrigin: str
    operator: str | None
    admitted: bool


class RevocationPush(BaseModel):
    token: str = Field(max_length=1_000_000, description="the operator-signed revocation list")


class RevocationApplied(BaseModel):
    added: int
    sequence: int


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "not ready"}})
def readyz(runtime: RuntimeDep) -> Any:
    runtime.ledger.size()  # the store answers
    if runtime.directory is None:
        return problem(503, "not-ready", "Not ready", "no operator anchor: not part of a space")
    if runtime.credential_token() is None:
        return problem(503, "not-ready", "Not ready", "not admitted: no membership credential")
    return Health(status="ready")


@router.get("/identity", response_model=Identity)
def identity(runtime: RuntimeDep) -> Identity:
    return Identity(
        id=runtime.id,
        roles=sorted(runtime.roles),
        url=runtime.url,
        publicKey=runtime.key.verify_key.to_b64(),
        ledgerVkey=runtime.ledger.vkey,
        ledgerOrigin=runtime.ledger.origin,
        operator=None if runtime.anchor is None else runtime.anchor.operator_id,
        admitted=runtime.credential_token() is not None,
    )


@router.post("/identity/revocations", response_model=RevocationApplied)
def push_revocations(body: RevocationPush, runtime: RuntimeDep) -> RevocationApplied | JSONResponse:
    directory = runtime.require_directory()
    with runtime.transaction() as tx:
        added = directory.apply_revocation_list(tx, body.token)
        sequence = directory.revocation_sequence(tx)
    return RevocationApplied(added=added, sequence=sequence)
