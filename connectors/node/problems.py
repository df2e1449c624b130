"""Errors at the edge: RFC 9457 ``application/problem+json``, one stable ``type`` per kind.

Every refusal says *why* in ``detail`` and never leaks *how* authentication failed: a
:class:`~trusted_space.errors.VerificationError` always answers ``401`` with the same body, and the
real reason goes to the ledger. Malformed input is a 4xx naming what was wrong; a 500 means a bug
(it is logged with a correlation id, and the body says nothing else).

Which error answers which status and slug is one table for the whole project,
:data:`trusted_space.errors.PROBLEM_TYPES` (the error tree is drawn in :mod:`trusted_space.errors`);
:func:`problem_for` sends :func:`trusted_space.errors.problem_document`, the same body the
in-memory transport hands to protocol code, and adds only what is HTTP's own (the
``WWW-Authenticate`` header of a ``401``, the incident id of a ``500``, the framework's own
4xx answers).

Problem types (``https://w3id.org/trusted-space/problems/<slug>``):

=====================  ======  ================================================================
slug                   status  when
=====================  ======  ================================================================
invalid-request        422     the body or parameters do not match the operation's schema
invalid-input          400     well-formed but invalid content (bad USCC, bad policy, ...)
invalid-dsp-message    400     a DSP message that does not validate against the 2025-1 schemas
grade-floor            400     a tier or policy looser than the data's security grade allows
unauthorized           401     missing or failed authentication (one body for every cause)
policy-refused         403     a usage policy refused the request; ``trace`` says which rule
limit-exceeded         403     a count limit or privacy budget would be exceeded
not-found              404     unknown id (or one this caller may not see)
conflict               409     concurrent change or duplicate id
illegal-transition     409     a negotiation message not allowed in the current state
payload-too-large      413     the body exceeds the route's size limit
not-ready              503     the node is not admitted to a space yet, or a peer is unreachable
peer-refused           4xx     a node this request depended on refused it (its status; 401 → 403)
peer-error             502     a node this request depended on failed or answered nonsense
store-unavailable      503     the durable store failed; nothing was written
internal               500     a bug; the log has the details under ``instance``
=====================  ======  ================================================================
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.common.errors import PROBLEM_MEDIA_TYPE
from trusted_space.errors import (
    INTERNAL,
    PROBLEM_BASE,
    TrustedSpaceError,
    VerificationError,
    problem_document,
    problem_type,
)

__all__ = [
    "PROBLEM_SCHEMA",
    "BodySizeLimit",
    "document_problems",
    "install_error_handlers",
    "problem",
    "problem_for",
]

log = logging.getLogger("trusted_space.http")


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """An RFC 9457 response; ``extensions`` become extra members (``trace``, DSP fields, ...)."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in extensions.items() if v is not None})
    return JSONResponse(
        body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=dict(headers or {})
    )


_HTTP_SLUGS = {
    400: ("invalid-input", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-request", "Invalid request"),
    429: ("too-many-requests", "Too many requests"),
    503: ("not-ready", "Not ready"),
}


def problem_for(exc: BaseException) -> JSONResponse:
    """Map an exception to its problem response (the table in the module docstring).

    Errors of ours answer from :data:`trusted_space.errors.PROBLEM_TYPES`; the framework's
    HTTP exceptions (404 and 405 routing, 413, ...) keep their status; anything else is a bug,
    logged under an incident id that the body names and that says nothing else.
    """
    if isinstance(exc, StarletteHTTPException):
        slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem(
            exc.status_code, slug, title, detail, headers=getattr(exc, "headers", None) or {}
        )
    body = problem_document(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, VerificationError):
        headers["WWW-Authenticate"] = "TS-Request"
    elif problem_type(exc) is INTERNAL:
        incident = uuid.uuid4().hex
        log.error("unhandled error, incident %s", incident, exc_info=exc)
        body["instance"] = f"urn:trusted-space:incident:{incident}"
    return JSONResponse(
        body, status_code=body["status"], media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors()[:20]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        out.append({"location": loc, "message": str(err.get("msg", ""))})
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping above on ``app`` (including request validation and 404/405)."""

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"location": "", "message": "invalid"}
        return problem(
            422,
            "invalid-request",
            "Invalid request",
            f"{first['location']}: {first['message']}",
            errors=errors,
        )

    async def on_error(_: Request, exc: Exception) -> JSONResponse:
        return problem_for(exc)

    app.add_exception_handler(RequestValidationError, on_validation)
    for kind in (TrustedSpaceError, StarletteHTTPException, HTTPException):
        app.add_exception_handler(kind, on_error)
    app.add_exception_handler(Exception, on_error)


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; extension members depend on the type.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": PROBLEM_BASE + "<slug>"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "trace": {"type": "array", "items": {"type": "object"}},
        "errors": {"type": "array", "description": "what failed validation, where"},
    },
}
_PROBLEM_CONTENT = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def document_problems(app: FastAPI) -> None:
    """Describe every error answer of every operation as problem+json in the OpenAPI document.

    The handlers installed by :func:`install_error_handlers` answer every 4xx and 5xx with a
    problem document, whatever the route (request validation included, which FastAPI would
    otherwise document as its own ``HTTPValidationError`` JSON). This says so in each operation:
    every error code a route lists gets the problem content, and the ``4XX`` and ``5XX`` ranges are
    declared, so clients and API fuzzers can hold the node to it.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for code, response in responses.items():
                    if code[0] in "45":
                        response["content"] = _PROBLEM_CONTENT
                responses.setdefault(
                    "4XX", {"description": "Refused (a problem document says why)"}
                )["content"] = _PROBLEM_CONTENT
                responses.setdefault(
                    "5XX", {"description": "Not ready, or a node this depends on failed"}
                )["content"] = _PROBLEM_CONTENT
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = PROBLEM_SCHEMA
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class BodySizeLimit:
    """ASGI middleware refusing bodies over a limit with 413, before the app reads them.

    ``limit_for(path)`` gives the limit of a path (``/compute`` routes carry ciphertext batches and
    get a larger one). Both a declared ``Content-Length`` and the bytes actually streamed count.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", "/"))
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    await self._refuse(scope, receive, send, limit)
                    return
        seen = 0
        too_large = False

        async def limited() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_large = True
                    raise _TooLarge
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send, limit)
        except Exception:
            if too_large and not started:
                await self._refuse(scope, receive, send, limit)
            else:
                raise

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem(
            413, "payload-too-large", "Payload too large", f"the body exceeds {limit} bytes"
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
