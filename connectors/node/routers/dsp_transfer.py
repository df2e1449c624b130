"""DSP 2025-1 transfer process endpoints (HTTPS binding), provider and consumer paths.

Control plane (members only, every request signed by the sender; the sender is who the signature
says, never a body claim):

- ``POST /transfers/request``: a consumer asks for the rows of an agreement's dataset. ``201``
  with ``TransferProcess`` (``REQUESTED``); the start message with the data address and pull
  token follows to the consumer's callback, after the response.
- ``GET /transfers/{pid}``: the process, for its counter-party only (anyone else: ``404``).
- ``POST /transfers/{pid}/start|completion|suspension|termination``: the counter-party's
  messages; ``pid`` is this side's process id (provider or consumer, the record tells which).

Data plane:

- ``GET /transfers/{providerPid}/data`` with ``Authorization: Bearer <pull token>`` (the token
  from the start message, not a member signature): the dataset's declared columns, streamed as
  ``text/csv`` (default) or ``application/x-ndjson`` (``Accept``). Every token failure answers
  the same ``401``.

The protocol lives in :mod:`trusted_space.contracts.transfer`, its HTTP half in
:mod:`connectors.node.transfer`; these handlers carry HTTP in and out.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Body, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from connectors.node import transfer
from connectors.node.deps import MemberDep, RuntimeDep, request_target
from connectors.node.transfer import MEDIA_CSV, MEDIA_NDJSON
from trusted_space.contracts.transfer import TransferMessage

__all__ = [
    "completion",
    "data",
    "get_transfer",
    "request_transfer",
    "router",
    "select_media_type",
    "start",
    "suspension",
    "termination",
]

router = APIRouter(tags=["dsp-transfer"])

_pull_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="PullToken",
    description="The pull token from the TransferStartMessage's dataAddress.",
)
DspMessage = Annotated[dict[str, Any], Body(description="A DSP 2025-1 transfer message.")]
_PROCESS = {"description": "TransferProcess (DSP 2025-1)"}


def select_media_type(accept: str | None) -> str:
    """``text/csv`` unless the caller asks for NDJSON; ``406`` if it accepts neither."""
    wanted = (accept or "").lower()
    if "ndjson" in wanted:
        return MEDIA_NDJSON
    if not wanted.strip() or MEDIA_CSV in wanted or "*/*" in wanted or "text/*" in wanted:
        return MEDIA_CSV
    raise HTTPException(406, f"rows are served as {MEDIA_CSV} or {MEDIA_NDJSON}")


@router.post("/transfers/request", status_code=201, responses={201: _PROCESS})
def request_transfer(
    message: DspMessage,
    runtime: RuntimeDep,
    sender: MemberDep,
    background: BackgroundTasks,
) -> JSONResponse:
    """Provider: a ``TransferRequestMessage`` (``HttpData-PULL``) under an agreement.

    Refusals name their reason: 404 unknown agreement (or not the sender's), 403 agreement not
    in force or policy refused (with the evaluation trace), 400 zone dataset or bad message.
    """
    accepted = transfer.accept_request(runtime, message, sender)
    background.add_task(transfer.send_start, runtime, accepted.record.provider_pid, accepted.token)
    return JSONResponse(accepted.ack, status_code=201)


@router.get("/transfers/{pid}", responses={200: _PROCESS})
def get_transfer(pid: str, runtime: RuntimeDep, sender: MemberDep) -> JSONResponse:
    """The ``TransferProcess`` ``pid`` of this side, for its counter-party."""
    return JSONResponse(transfer.process_of(runtime, pid, sender.participant_id))


def _receive(
    runtime: RuntimeDep, pid: str, message: dict[str, Any], kind: TransferMessage, sender: str
) -> JSONResponse:
    return JSONResponse(transfer.receive(runtime, pid, message, kind, sender))


@router.post("/transfers/{pid}/start", responses={200: _PROCESS})
def start(pid: str, message: DspMessage, runtime: RuntimeDep, sender: MemberDep) -> JSONResponse:
    """Consumer: the provider's ``TransferStartMessage`` (with the data address)."""
    return _receive(runtime, pid, message, TransferMessage.START, sender.participant_id)


@router.post("/transfers/{pid}/completion", responses={200: _PROCESS})
def completion(
    pid: str, message: DspMessage, runtime: RuntimeDep, sender: MemberDep
) -> JSONResponse:
    """Either side: ``TransferCompletionMessage``."""
    return _receive(runtime, pid, message, TransferMessage.COMPLETION, sender.participant_id)


@router.post("/transfers/{pid}/termination", responses={200: _PROCESS})
def termination(
    pid: str, message: DspMessage, runtime: RuntimeDep, sender: MemberDep
) -> JSONResponse:
    """Either side: ``TransferTerminationMessage`` (the pull token dies with the transfer)."""
    return _receive(runtime, pid, message, TransferMessage.TERMINATION, sender.participant_id)


@router.post("/transfers/{pid}/suspension", responses={200: _PROCESS})
def suspension(
    pid: str, message: DspMessage, runtime: RuntimeDep, sender: MemberDep
) -> JSONResponse:
    """Either side: ``TransferSuspensionMessage`` (the pull token dies with it)."""
    return _receive(runtime, pid, message, TransferMessage.SUSPENSION, sender.participant_id)


@router.get(
    "/transfers/{pid}/data",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The dataset's declared columns, streamed.",
            "content": {MEDIA_CSV: {}, MEDIA_NDJSON: {}},
        }
    },
)
def data(
    pid: str,
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_pull_scheme)],
) -> StreamingResponse:
    """Provider: the rows of transfer ``pid``, for the holder of its pull token (one pull)."""
    media_type = select_media_type(request.headers.get("accept"))
    token = None if credentials is None else credentials.credentials
    pull = transfer.open_pull(runtime, pid, token, target=request_target(request))
    return StreamingResponse(
        transfer.stream_rows(runtime, pull, media_type),
        media_type=f"{media_type}; charset=utf-8",
        headers={"Cache-Control": "no-store"},
    )
