"""The bank's side of the data-interface service: ``POST /management/lookup`` (admin token).

Body: the provider, and the lookup (``agreementId``, ``datasetId``, ``entities`` (at most
:data:`~connectors.node.routers.lookup.MAX_ENTITIES`), ``columns``, ``purpose``, optional
``queryId``). The node signs the call to the provider's ``POST /data/lookup`` and answers the
provider's rows and receipt, after checking the receipt against the provider's ledger key as
registered at the operator (never the key the answer carries) and the entity commitment against
the ids it asked for. A provider's refusal is ``403`` with its trace; a receipt that does not
verify is ``502``.

Mounted on consumer nodes only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from connectors.node.deps import AdminDep, RuntimeDep
from connectors.node.queries import provider_vkeys
from connectors.node.routers.lookup import LookupBody
from connectors.node.runtime import NodeRuntime
from trusted_space.commitments import verify_opening
from trusted_space.enforcement import entities_digest
from trusted_space.errors import (
    NotReadyError,
    RefusedError,
    RemoteError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import decode_event
from trusted_space.identity import check_participant_id
from trusted_space.ledger import Receipt, verify_receipt

__all__ = ["LookupOrder", "lookup_now", "router", "verified_answer"]

router = APIRouter(prefix="/management/lookup", tags=["data"])


class LookupOrder(LookupBody):
    """A lookup, and the provider it goes to."""

    provider: str = Field(min_length=1, max_length=140)


def _unverified(provider: str, why: str) -> RemoteError:
    """A provider's answer whose receipt does not hold (``502 peer-error``)."""
    return RemoteError(provider, 200, {"title": "Receipt not verified", "detail": why})


def verified_answer(answer: Any, provider: str, vkey: str, entities: list[str]) -> dict[str, Any]:
    """The provider's answer, once its receipt is the ``query.use`` of these entities.

    Raises:
        RemoteError: no receipt, a receipt ``vkey`` does not verify, or one that is not the
            ``query.use`` committing to ``entities`` (answered ``502 peer-error``).
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("receipt"), dict):
        raise _unverified(provider, f"{provider} answered a lookup without a receipt")
    receipt: dict[str, Any] = answer["receipt"]
    try:
        proof = Receipt.from_json(
            {k: v for k, v in receipt.items() if k not in ("vkey", "participant", "openings")}
        )
        verify_receipt(proof.checkpoint, vkey, proof.entry, proof.index, proof.proof)
        use = decode_event(proof.index, proof.entry)
        opening = receipt["openings"]["entities_commitment"]
        ok = use.kind == "query.use" and verify_opening(
            use.body["entities_commitment"], opening, entities_digest(entities)
        )
    except (KeyError, TypeError, ValueError, ValidationError, VerificationError) as exc:
        raise _unverified(provider, f"{provider}'s lookup receipt does not verify: {exc}") from exc
    if not ok:
        raise _unverified(provider, f"{provider}'s lookup receipt is not the use of these entities")
    return answer


def _lookup(runtime: NodeRuntime, body: LookupOrder) -> dict[str, Any]:
    provider = check_participant_id(body.provider)
    vkey = provider_vkeys(runtime, [provider]).get(provider)
    if vkey is None:
        raise NotReadyError(f"the operator has no ledger key of {provider!r}")
    entities = list(dict.fromkeys(body.entities))
    wire = body.model_dump(by_alias=True, exclude_none=True, exclude={"provider"})
    wire["entities"] = entities
    try:
        answer = runtime.client.post_json(
            f"{runtime.peer_url(provider)}/data/lookup", wire, audience=provider
        )
    except RemoteError as exc:
        problem = exc.problem or {}
        if exc.status == 403 and isinstance(problem.get("trace"), list):
            raise RefusedError(
                str(problem.get("detail") or "refused"),
                problem["trace"],
                participant=provider,
                decision_index=problem.get("decisionIndex"),
            ) from exc
        raise
    return verified_answer(answer, provider, vkey, entities) | {"provider": provider}


@router.post("")
async def lookup_now(
    _: AdminDep,
    runtime: RuntimeDep,
    body: LookupOrder,
) -> dict[str, Any]:
    """One or a few entities' columns from a provider's conditional dataset, with its receipt."""
    return await run_in_threadpool(_lookup, runtime, body)
