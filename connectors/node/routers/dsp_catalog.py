"""DSP 2025-1 catalog protocol: the version document, the catalog and single datasets.

- ``GET /.well-known/dspace-version``: which DSP versions this node speaks and where (public).
- ``POST /catalog/request``: a ``CatalogRequestMessage`` answered with this node's ``Catalog``.
- ``GET /catalog/datasets/{id}``: one ``Dataset`` with its offers.

Who sees what: an anonymous caller (no ``TS-Request`` header) is the open-data public and sees
only ``unconditional`` datasets; a member of the space who signed the request sees every tier
(:func:`trusted_space.catalog.visible_datasets` is the one rule). A present but invalid signature
is refused (``401``), never downgraded to anonymous. The threat is a stranger learning that a
``zone`` dataset exists (its field list and grades are themselves sensitive), so a dataset the
caller may not see answers exactly like one that does not exist: ``404`` with the same detail.

The ``filter`` member of the catalog request is accepted and ignored (the 2025-1 specification
leaves its semantics to the implementation); the answer is always the full view of the caller.
Every document returned validates against the DSP schemas; error bodies are problem+json that
also carry the DSP ``CatalogError`` members, so a DSP client and an RFC 9457 client both
understand them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

from connectors.node.deps import OPTIONAL_MEMBER_OPENAPI, OptionalMemberDep, RuntimeDep
from connectors.node.problems import problem_for
from connectors.node.wire.dsp import ProtocolVersion, VersionResponse
from trusted_space import dsp
from trusted_space.catalog import (
    Caller,
    list_datasets,
    load_dataset,
    to_dsp_catalog,
    to_dsp_dataset,
    visible_datasets,
)
from trusted_space.errors import NotFoundError, TrustedSpaceError, VerificationError
from trusted_space.identity import VerifiedRequest

__all__ = [
    "DSP_VERSION",
    "caller_of",
    "catalog_dataset",
    "catalog_error",
    "catalog_request",
    "dspace_version",
    "router",
]

router = APIRouter(tags=["dsp-catalog"])

DSP_VERSION = "2025-1"
_T = TypeVar("_T")

_DSP_JSON = {"application/json": {"schema": {"type": "object"}}}


def caller_of(verified: VerifiedRequest | None) -> Caller:
    """The catalog's view of who is asking: anonymous, or a member with its (first) role."""
    if verified is None:
        return Caller()
    role = sorted(verified.roles)[0] if verified.roles else None
    return Caller(verified.participant_id, member=True, role=role)


def catalog_error(exc: BaseException) -> JSONResponse:
    """The problem response for ``exc`` with the DSP ``CatalogError`` members added.

    Authentication failures keep the one indistinguishable body.
    """
    response = problem_for(exc)
    if isinstance(exc, VerificationError):
        return response
    body = json.loads(bytes(response.body))
    body |= {
        "@context": list(dsp.DSP_CONTEXT),
        "@type": "CatalogError",
        "code": body["type"].rsplit("/", 1)[-1],
        "reason": [body["detail"]],
    }
    dsp.validate(body, "catalog/catalog-error-schema.json")
    return JSONResponse(
        body, status_code=response.status_code, media_type=response.media_type, headers=None
    )


def _guarded(action: Callable[[], _T]) -> _T | JSONResponse:
    try:
        return action()
    except TrustedSpaceError as exc:
        return catalog_error(exc)


@router.get("/.well-known/dspace-version", response_model=VersionResponse)
def dspace_version() -> VersionResponse:
    """The DSP versions spoken here: 2025-1 over HTTPS at the root path."""
    doc = VersionResponse(
        protocolVersions=[ProtocolVersion(version=DSP_VERSION, path="/", binding="HTTPS")]
    )
    dsp.validate(doc.model_dump(), "common/protocol-version-schema.json")
    return doc


@router.post(
    "/catalog/request",
    responses={200: {"description": "DSP Catalog", "content": _DSP_JSON}},
    openapi_extra=OPTIONAL_MEMBER_OPENAPI,
)
def catalog_request(
    runtime: RuntimeDep,
    verified: OptionalMemberDep,
    message: Annotated[dict[str, Any], Body(description="DSP CatalogRequestMessage")],
) -> Any:
    """This node's DSP ``Catalog``, filtered for the caller."""

    def answer() -> dict[str, Any]:
        dsp.validate(message, "catalog/catalog-request-message-schema.json")
        with runtime.transaction(readonly=True) as tx:
            published = list_datasets(tx)
        visible = visible_datasets(published, caller_of(verified))
        return to_dsp_catalog(runtime.id, visible, runtime.url)

    return _guarded(answer)


@router.get(
    "/catalog/datasets/{dataset_id:path}",
    responses={200: {"description": "DSP Dataset", "content": _DSP_JSON}},
    openapi_extra=OPTIONAL_MEMBER_OPENAPI,
)
def catalog_dataset(runtime: RuntimeDep, verified: OptionalMemberDep, dataset_id: str) -> Any:
    """One DSP ``Dataset``; ``404`` when unknown or not visible to the caller (same answer)."""

    def answer() -> dict[str, Any]:
        hidden = NotFoundError(f"no dataset {dataset_id!r} in this catalog")
        with runtime.transaction(readonly=True) as tx:
            try:
                published = load_dataset(tx, dataset_id)
            except NotFoundError:
                raise hidden from None
        if not visible_datasets([published], caller_of(verified)):
            raise hidden
        doc = to_dsp_dataset(published.dataset, published.offers)
        dsp.validate(doc, "catalog/dataset-schema.json")
        return doc

    return _guarded(answer)
