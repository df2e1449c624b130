"""The data-interface service: ``POST /data/lookup``, a few entities' rows of a conditional dataset.

A member holding an agreement for a ``conditional`` dataset of this node reads the named columns
of one entity (or up to :data:`MAX_ENTITIES`) in one signed call, without a DSP transfer process
per call. The route

1. authenticates the sender (``MemberDep``: signature, credential, audience, expiry, replay and
   body hash, before anything else);
2. checks and records the use through the provider's one enforcement point
   (:func:`trusted_space.enforcement.authorize_use` with kind ``lookup``): the agreement is
   ``FINALIZED``, in its window, standing ``active``, granted by this node to the sender for this
   dataset; every column exists, is not the key, is numeric and below grade 5; the dataset is tier
   ``conditional``; the agreement's policy allows a raw pull (``computation: transfer``,
   ``output: raw``) for the purpose, with consent of every entity where it asks for it and within
   its ``count``. One call is one use: one ``policy.decision``, one metered use, one
   ``query.use`` entry whose entities are a salted commitment (never the ids in clear);
3. only then reads the rows and answers them with the receipt of that ``query.use`` entry (its
   ``openings`` carry the commitment's salt, so the caller can recompute it from its own ids).

A refusal is ``403`` with the decision's ``trace`` and reveals no row. An entity the provider
does not hold is answered ``found: false`` with no values (the use is still recorded: the caller
was allowed to ask).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from connectors.node.compute import compute_node
from connectors.node.deps import MemberDep, RuntimeDep
from connectors.node.runtime import NodeRuntime
from trusted_space.catalog import FieldType
from trusted_space.contracts import new_id
from trusted_space.enforcement import LOOKUP, UseRequest, authorize_use
from trusted_space.errors import NotReadyError
from trusted_space.identity import VerifiedRequest

__all__ = ["MAX_ENTITIES", "LookupBody", "LookupRow", "LookupView", "lookup", "router"]

router = APIRouter(prefix="/data", tags=["data"])

MAX_ENTITIES: Final = 16
"""Entities one lookup may name (a loan officer's applicant and a few related enterprises)."""

_Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class LookupBody(BaseModel):
    """One lookup: the agreement, its dataset, the entities and the columns."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    agreement_id: _Name = Field(alias="agreementId")
    dataset_id: _Name = Field(alias="datasetId")
    entities: list[_Name] = Field(min_length=1, max_length=MAX_ENTITIES)
    columns: list[_Name] = Field(min_length=1, max_length=64)
    purpose: _Name
    query_id: _Name | None = Field(
        default=None, alias="queryId", description="The caller's id for this use (else minted)."
    )


class LookupRow(BaseModel):
    """One entity's answer: its values, or ``found: false`` and none."""

    entity: str
    found: bool
    values: dict[str, float | int | bool | None] | None


class LookupView(BaseModel):
    """The rows, in request order, and the receipt of the use."""

    query_id: str = Field(serialization_alias="queryId")
    dataset_id: str = Field(serialization_alias="datasetId")
    columns: list[str]
    rows: list[LookupRow]
    receipt: dict[str, Any] = Field(
        description="The `query.use` entry's receipt (`verify_receipt`), with `vkey`, "
        "`participant` and `openings.entities_commitment` (the commitment's salt)."
    )


def _cell(kind: FieldType, value: float) -> float | int | bool | None:
    if math.isnan(value):
        return None
    if kind is FieldType.INT:
        return int(value)
    if kind is FieldType.BOOL:
        return bool(value)
    return float(value)


def _lookup(runtime: NodeRuntime, body: LookupBody, sender: VerifiedRequest) -> LookupView:
    node = compute_node(runtime)
    if node.data is None:
        raise NotReadyError(f"{runtime.id} holds no data")
    entities = tuple(dict.fromkeys(body.entities))  # one answer per entity, in request order
    query_id = body.query_id or new_id()
    grant = authorize_use(
        node,
        UseRequest(
            query_id=query_id,
            analyst=sender.participant_id,
            agreement_id=body.agreement_id,
            dataset_id=body.dataset_id,
            columns=tuple(body.columns),
            kind=LOOKUP,
            purpose=body.purpose,
            protocol=None,
            entities=entities,
        ),
        roles=sender.roles,
    )
    found, values = node.data.lookup(body.dataset_id, entities, body.columns)
    types = {f.name: f.type for f in grant.dataset.dataset.table.fields}
    rows = [
        LookupRow(
            entity=entity,
            found=bool(found[i]),
            values={c: _cell(types[c], float(values[i, j])) for j, c in enumerate(body.columns)}
            if found[i]
            else None,
        )
        for i, entity in enumerate(entities)
    ]
    return LookupView(
        query_id=query_id,
        dataset_id=body.dataset_id,
        columns=list(body.columns),
        rows=rows,
        receipt=grant.receipt,
    )


@router.post(
    "/lookup",
    responses={
        403: {
            "description": "Refused: agreement, dataset, columns, tier or policy (with `trace`)."
        },
    },
    response_model_by_alias=True,
)
async def lookup(body: LookupBody, verified: MemberDep, runtime: RuntimeDep) -> LookupView:
    """A few entities' columns of a conditional dataset, under the sender's agreement."""
    return await run_in_threadpool(_lookup, runtime, body, verified)
