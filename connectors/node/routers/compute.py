"""Joint computations on the wire: ``POST /compute/{operation}`` and ``GET /compute/operations``.

Every protocol step another node asks of this one (a provider's partial logit, a PSI response, the
operator summing partials or dealing a Beaver triple) arrives here as one signed request whose
body is a compute frame (:func:`trusted_space.transport.frame`: a small JSON header and a binary
payload). The route

1. authenticates the sender (``MemberDep``: signature, credential, audience, expiry, replay and
   body hash, before anything else; the body limit of ``/compute`` is the larger
   ``max_compute_body_bytes``);
2. unframes the body (a malformed frame is ``400``);
3. runs the operation on the node's :class:`~trusted_space.compute.ComputeNode` in the threadpool,
   with the *authenticated* participant id as sender;
4. answers the framed reply as ``application/octet-stream``.

Errors are problem documents like everywhere else: an unknown operation is ``404``; a provider's
policy refusal (:class:`~trusted_space.errors.RefusedError`) is ``403`` with its ``trace``; bad
headers are ``400``; a failure of a node this operation called onward (a provider's call to the
operator's aggregator: a :class:`~trusted_space.errors.RemoteError`) is ``502`` with that node's
problem as ``peerProblem``. The in-memory transport answers the same, from the same table.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from connectors.node.compute import COMPUTE_CONTENT_TYPE, compute_node
from connectors.node.deps import MemberDep, RuntimeDep
from trusted_space.errors import NotFoundError, ValidationError
from trusted_space.transport import OPERATION_PATTERN, frame, unframe

__all__ = ["OperationsView", "call_operation", "list_operations", "router"]

router = APIRouter(prefix="/compute", tags=["compute"])


class OperationsView(BaseModel):
    """The compute operations this node serves."""

    participant: str
    operations: list[str] = Field(description="Operation names, e.g. `score.open`.")


_FRAME_DOC = (
    'A compute frame: `b"TSF1"`, the header length (u32, big-endian), the header (canonical '
    "JSON object) and the binary payload."
)


@router.get("/operations")
def list_operations(_: MemberDep, runtime: RuntimeDep) -> OperationsView:
    """The operations members may call on this node (they depend on its roles)."""
    return OperationsView(participant=runtime.id, operations=compute_node(runtime).operations)


@router.post(
    "/{operation}",
    response_class=Response,
    responses={
        200: {"content": {COMPUTE_CONTENT_TYPE: {}}, "description": "The framed reply."},
        400: {"description": "Malformed frame or header."},
        403: {"description": "Refused by the provider's usage policy (with `trace`)."},
        404: {"description": "No such operation on this node."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": _FRAME_DOC,
            "content": {COMPUTE_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def call_operation(
    operation: Annotated[str, Path(max_length=140, description="e.g. `score.run`")],
    request: Request,
    verified: MemberDep,
    runtime: RuntimeDep,
) -> Response:
    """Run one operation of a joint computation for the authenticated sender."""
    node = compute_node(runtime)
    if OPERATION_PATTERN.fullmatch(operation) is None or operation not in node.operations:
        raise NotFoundError(f"no compute operation {operation!r} on {runtime.id}")
    body = await request.body()  # already read (and hashed) by the authentication
    header, payload = unframe(body)
    try:
        reply = await run_in_threadpool(
            node.handle, verified.participant_id, operation, header, payload
        )
    except RecursionError as exc:  # a pathologically nested header
        raise ValidationError("compute header is nested too deeply") from exc
    return Response(frame(reply.header, reply.payload), media_type=COMPUTE_CONTENT_TYPE)
