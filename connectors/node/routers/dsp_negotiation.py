"""DSP 2025-1 contract negotiation endpoints (HTTPS binding), provider and consumer side.

Provider paths (``pid`` is the provider's process id)::

    POST /negotiations/request                          initial ContractRequestMessage -> 201
    POST /negotiations/{pid}/request                    counter-request
    POST /negotiations/{pid}/events                     ACCEPTED (from the consumer)
    POST /negotiations/{pid}/agreement/verification     ContractAgreementVerificationMessage
    POST /negotiations/{pid}/termination                ContractNegotiationTerminationMessage
    GET  /negotiations/{pid}                            the ContractNegotiation (counter-party only)

Consumer callback paths (``pid`` is the consumer's process id)::

    POST /negotiations/offers                           initial ContractOfferMessage -> 201
    POST /negotiations/{pid}/offers                     counter-offer
    POST /negotiations/{pid}/agreement                  ContractAgreementMessage
    POST /negotiations/{pid}/events                     FINALIZED (from the provider)
    POST /negotiations/{pid}/termination                ContractNegotiationTerminationMessage

``events`` and ``termination`` exist on both sides under the same path: one handler serves both,
and the pid in the path says which of this node's records (and so which role) is meant.

Every call must be a signed request of a member of the space; the sender is the verified signer,
never a claim in the body. The path's pid must be the body's pid of the receiving role (``400``
otherwise), and the message type must be the one of the path. The answer is the ACK (a
``ContractNegotiation``). After the ACK, the next automatic step is scheduled
(:mod:`connectors.node.negotiation`). Errors are problem+json that also carry the DSP
``ContractNegotiationError`` members (``@context``, ``@type``, ``providerPid``/``consumerPid``
when known, ``code``, ``reason``), so a refusal says why to both kinds of client.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

from connectors.node import negotiation
from connectors.node.deps import MemberDep, RuntimeDep
from connectors.node.problems import problem_for
from connectors.node.runtime import NodeRuntime
from trusted_space import dsp
from trusted_space.contracts import (
    MessageKind,
    Role,
    load_negotiation,
    negotiation_ack,
    parse_message,
)
from trusted_space.errors import NotFoundError, RefusedError, TrustedSpaceError, ValidationError
from trusted_space.identity import VerifiedRequest

__all__ = [
    "agreement",
    "counter_offer",
    "counter_request",
    "events",
    "get_negotiation",
    "initial_offer",
    "initial_request",
    "negotiation_error",
    "router",
    "termination",
    "verification",
]

router = APIRouter(tags=["dsp-negotiation"])

_DSP_JSON = {"application/json": {"schema": {"type": "object"}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "ACK: the ContractNegotiation", "content": _DSP_JSON},
    201: {"description": "ACK: the new ContractNegotiation", "content": _DSP_JSON},
}
Message = Annotated[dict[str, Any], Body(description="A DSP contract negotiation message")]

_REQUEST = "ContractRequestMessage"
_OFFER = "ContractOfferMessage"
_EVENT = "ContractNegotiationEventMessage"
_AGREEMENT = "ContractAgreementMessage"
_VERIFICATION = "ContractAgreementVerificationMessage"
_TERMINATION = "ContractNegotiationTerminationMessage"


def negotiation_error(
    exc: BaseException, *, provider_pid: str | None, consumer_pid: str | None
) -> JSONResponse:
    """The problem response for ``exc`` with the DSP ``ContractNegotiationError`` members.

    The body validates against the DSP error schema whenever both pids are known.
    """
    response = problem_for(exc)
    body = json.loads(bytes(response.body))
    body |= {"@context": list(dsp.DSP_CONTEXT), "@type": "ContractNegotiationError"}
    if provider_pid:
        body["providerPid"] = provider_pid
    if consumer_pid:
        body["consumerPid"] = consumer_pid
    body["code"] = str(body["type"]).rsplit("/", 1)[-1]
    body["reason"] = [body["detail"]]
    if provider_pid and consumer_pid:
        dsp.validate(body, "negotiation/contract-negotiation-error-schema.json")
    headers = {k: v for k, v in response.headers.items() if k.lower() == "www-authenticate"}
    return JSONResponse(
        body, status_code=response.status_code, media_type=response.media_type, headers=headers
    )


def _pid(message: dict[str, Any], key: str) -> str | None:
    value = message.get(key)
    return value if isinstance(value, str) and value else None


def _require_role(verified: VerifiedRequest, role: str, what: str) -> None:
    if role not in verified.roles:
        raise RefusedError(
            f"{verified.participant_id!r} is not admitted as a {role}, so it cannot {what}",
            [{"rule": "sender-role", "required": role, "actual": sorted(verified.roles)}],
            participant=verified.participant_id,
        )


def _check_path(
    runtime: NodeRuntime,
    message: dict[str, Any],
    sender: str,
    path_pid: str,
    role: Role | None,
) -> None:
    """The path names this node's pid in ``role`` (``None``: whichever role the record has)."""
    provider_pid, consumer_pid = _pid(message, "providerPid"), _pid(message, "consumerPid")
    if role is None:
        if path_pid not in (provider_pid, consumer_pid):
            raise ValidationError(
                f"the path names negotiation {path_pid!r}, the message providerPid "
                f"{provider_pid!r} and consumerPid {consumer_pid!r}"
            )
        with runtime.transaction(readonly=True) as tx:
            try:
                record = load_negotiation(tx, path_pid)
            except NotFoundError:
                record = None
        if record is None or record.counterparty != sender:
            raise NotFoundError(f"no negotiation {path_pid!r} with {sender!r}")
        role = record.role
    key, claimed = (
        ("providerPid", provider_pid) if role is Role.PROVIDER else ("consumerPid", consumer_pid)
    )
    if claimed != path_pid:
        raise ValidationError(
            f"the path names {key} {path_pid!r} but the message carries {key} {claimed!r}"
        )


def _handle(
    runtime: NodeRuntime,
    verified: VerifiedRequest,
    message: dict[str, Any],
    *,
    accepts: tuple[str, ...],
    path_pid: str | None = None,
    role: Role | None = None,
) -> JSONResponse:
    """Check, receive, ACK and schedule the next step; map every refusal to a DSP error."""
    sender = verified.participant_id
    provider_pid, consumer_pid = _pid(message, "providerPid"), _pid(message, "consumerPid")
    try:
        dsp_type = message.get("@type")
        if dsp_type not in accepts:
            raise ValidationError(
                f"@type {dsp_type!r} is not accepted at this path (expected {' or '.join(accepts)})"
            )
        parsed = parse_message(message)
        if path_pid is None:
            _check_initial(runtime, verified, parsed.kind, message)
        else:
            _check_path(runtime, message, sender, path_pid, role)
        ack = runtime.negotiator.receive(message, sender=sender)
    except TrustedSpaceError as exc:
        return negotiation_error(exc, provider_pid=provider_pid, consumer_pid=consumer_pid)
    negotiation.after_receipt(runtime, parsed.kind, ack)
    return JSONResponse(ack, status_code=201 if path_pid is None else 200)


def _check_initial(
    runtime: NodeRuntime, verified: VerifiedRequest, kind: MessageKind, message: dict[str, Any]
) -> None:
    if kind is MessageKind.REQUEST:
        if "provider" not in runtime.roles:
            raise NotFoundError(f"{runtime.id!r} is not a provider: it takes no contract requests")
        if "providerPid" in message:
            raise ValidationError(
                "an initial ContractRequestMessage has no providerPid; a counter-request goes to "
                "/negotiations/{providerPid}/request"
            )
        _require_role(verified, "consumer", "request a contract")
    else:
        if "consumer" not in runtime.roles:
            raise NotFoundError(f"{runtime.id!r} is not a consumer: it takes no contract offers")
        if "consumerPid" in message:
            raise ValidationError(
                "an initial ContractOfferMessage has no consumerPid; a counter-offer goes to "
                "/negotiations/{consumerPid}/offers"
            )
        _require_role(verified, "provider", "offer a contract")
    negotiation.check_callback(runtime, verified.participant_id, message.get("callbackAddress"))


# -- provider paths -------------------------------------------------------------------------------


@router.post("/negotiations/request", status_code=201, responses=_RESPONSES)
def initial_request(runtime: RuntimeDep, verified: MemberDep, message: Message) -> JSONResponse:
    """A consumer asks for a contract on a published offer (a new negotiation)."""
    return _handle(runtime, verified, message, accepts=(_REQUEST,))


@router.post("/negotiations/{pid}/request", responses=_RESPONSES)
def counter_request(
    runtime: RuntimeDep, verified: MemberDep, pid: str, message: Message
) -> JSONResponse:
    """The consumer answers an offer with another request."""
    return _handle(
        runtime, verified, message, accepts=(_REQUEST,), path_pid=pid, role=Role.PROVIDER
    )


@router.post("/negotiations/{pid}/agreement/verification", responses=_RESPONSES)
def verification(
    runtime: RuntimeDep, verified: MemberDep, pid: str, message: Message
) -> JSONResponse:
    """The consumer countersigns the agreement."""
    return _handle(
        runtime, verified, message, accepts=(_VERIFICATION,), path_pid=pid, role=Role.PROVIDER
    )


# -- shared paths ---------------------------------------------------------------------------------


@router.post("/negotiations/{pid}/events", responses=_RESPONSES)
def events(runtime: RuntimeDep, verified: MemberDep, pid: str, message: Message) -> JSONResponse:
    """ACCEPTED (consumer to provider) or FINALIZED (provider to consumer)."""
    return _handle(runtime, verified, message, accepts=(_EVENT,), path_pid=pid)


@router.post("/negotiations/{pid}/termination", responses=_RESPONSES)
def termination(
    runtime: RuntimeDep, verified: MemberDep, pid: str, message: Message
) -> JSONResponse:
    """Either side ends the negotiation."""
    return _handle(runtime, verified, message, accepts=(_TERMINATION,), path_pid=pid)


@router.get("/negotiations/{pid}", responses={200: _RESPONSES[200]})
def get_negotiation(runtime: RuntimeDep, verified: MemberDep, pid: str) -> JSONResponse:
    """This node's state of negotiation ``pid``; only its counter-party may read it."""
    try:
        with runtime.transaction(readonly=True) as tx:
            try:
                record = load_negotiation(tx, pid)
            except NotFoundError:
                record = None
        if record is None or record.counterparty != verified.participant_id:
            raise NotFoundError(f"no negotiation {pid!r} with {verified.participant_id!r}")
        ack = negotiation_ack(
            provider_pid=record.provider_pid, consumer_pid=record.consumer_pid, state=record.state
        )
    except TrustedSpaceError as exc:
        return negotiation_error(exc, provider_pid=None, consumer_pid=None)
    return JSONResponse(ack)


# -- consumer callback paths ----------------------------------------------------------------------


@router.post("/negotiations/offers", status_code=201, responses=_RESPONSES)
def initial_offer(runtime: RuntimeDep, verified: MemberDep, message: Message) -> JSONResponse:
    """A provider offers a contract (a new negotiation; it waits for this node's staff)."""
    return _handle(runtime, verified, message, accepts=(_OFFER,))


@router.post("/negotiations/{pid}/offers", responses=_RESPONSES)
def counter_offer(
    runtime: RuntimeDep, verified: MemberDep, pid: str, message: Message
) -> JSONResponse:
    """The provider answers a request with another offer."""
    return _handle(runtime, verified, message, accepts=(_OFFER,), path_pid=pid, role=Role.CONSUMER)


@router.post("/negotiations/{pid}/agreement", responses=_RESPONSES)
def agreement(runtime: RuntimeDep, verified: MemberDep, pid: str, message: Message) -> JSONResponse:
    """The provider's signed agreement."""
    return _handle(
        runtime, verified, message, accepts=(_AGREEMENT,), path_pid=pid, role=Role.CONSUMER
    )
