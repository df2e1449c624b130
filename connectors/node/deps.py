"""Dependencies shared by the routers, as ``Annotated`` aliases.

- ``RuntimeDep``: the node's :class:`~connectors.node.runtime.NodeRuntime`.
- ``AdminDep``: the caller presented the node's admin token (``Authorization: Bearer``); the
  institution's own staff only. Compared in constant time. Without an ``Authorization`` header, a
  live console session (cookie, and the CSRF header on requests that change something; see
  :mod:`connectors.node.console.sessions`) is accepted instead, so the console calls exactly the
  API the CLI calls. A bad bearer token is refused, never downgraded to the cookie.
- ``MemberDep``: the caller is a member of the space and signed this very request
  (``TS-Request`` token, see :mod:`connectors.client.http`); the verified sender is returned. Runs
  before the handler: signature, credential, audience, expiry, replay and body hash are checked
  first, and every failure answers the same ``401``.
- ``OptionalMemberDep``: as ``MemberDep`` when a ``TS-Request`` header is present, ``None`` for
  an anonymous caller (the open-data catalog). A present but bad token is refused, never
  downgraded to anonymous.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from connectors.client.http import CREDENTIAL_HEADER, REQUEST_HEADER
from connectors.node.console.sessions import CSRF_HEADER, SessionStore, session_cookie
from connectors.node.runtime import NodeRuntime
from trusted_space.errors import VerificationError
from trusted_space.identity import VerifiedRequest

__all__ = [
    "OPTIONAL_MEMBER_OPENAPI",
    "AdminDep",
    "MemberDep",
    "OptionalMemberDep",
    "RuntimeDep",
    "console_sessions",
    "get_runtime",
    "optional_member",
    "request_target",
    "require_admin",
    "require_member",
]


def get_runtime(request: Request) -> NodeRuntime:
    runtime: NodeRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[NodeRuntime, Depends(get_runtime)]

# Each scheme has its own name in the OpenAPI document (the class name is the default, and two
# APIKeyHeader schemes would collapse into one). The credential is not a scheme of its own: it
# authenticates nothing without a request token, so it is documented as an optional header.
_admin_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="The node's admin token (staff only).",
)
_request_scheme = APIKeyHeader(
    name=REQUEST_HEADER,
    auto_error=False,
    scheme_name=REQUEST_HEADER,
    description="A request token signed by a member of the space for this one request.",
)
_CredentialHeader = Annotated[
    str | None,
    Header(
        alias=CREDENTIAL_HEADER,
        description="The sender's membership credential, signed by the operator (optional when "
        "the receiver already knows the sender).",
    ),
]


def console_sessions(request: Request) -> SessionStore | None:
    """The node's console sessions (``None`` on an app built without the console)."""
    sessions = getattr(request.app.state, "console_sessions", None)
    return sessions if isinstance(sessions, SessionStore) else None


def require_admin(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_scheme)],
) -> None:
    """Refuse unless the bearer token is the node's admin token (or a live console session)."""
    if credentials is None and "authorization" not in request.headers:
        sessions = console_sessions(request)
        if sessions is not None and sessions.allows(
            request.cookies.get(session_cookie(runtime.id)),
            request.method,
            request.headers.get(CSRF_HEADER),
        ):
            return
        raise VerificationError("admin-token")
    presented = "" if credentials is None else credentials.credentials
    if not presented or not hmac.compare_digest(
        presented.encode("utf-8", "replace"), runtime.admin_token.encode()
    ):
        raise VerificationError("admin-token")


AdminDep = Annotated[None, Depends(require_admin)]


def request_target(request: Request) -> str:
    """The path and query exactly as sent (what the sender signed as ``htp``)."""
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    query: bytes = request.scope.get("query_string", b"")
    target = raw + (b"?" + query if query else b"")
    return target.decode("latin-1")


async def require_member(
    request: Request,
    runtime: RuntimeDep,
    token: Annotated[str | None, Depends(_request_scheme)],
    credential: _CredentialHeader = None,
) -> VerifiedRequest:
    """Verify the signed request before the handler runs (the body is read and hashed here)."""
    body = await request.body()
    return await run_in_threadpool(
        runtime.authenticate,
        token=token,
        credential=credential,
        body=body,
        method=request.method,
        path=request_target(request),
    )


MemberDep = Annotated[VerifiedRequest, Depends(require_member)]


async def optional_member(
    request: Request,
    runtime: RuntimeDep,
    token: Annotated[str | None, Depends(_request_scheme)],
    credential: _CredentialHeader = None,
) -> VerifiedRequest | None:
    if token is None:
        return None
    return await require_member(request, runtime, token, credential)


OptionalMemberDep = Annotated[VerifiedRequest | None, Depends(optional_member)]

OPTIONAL_MEMBER_OPENAPI: dict[str, Any] = {"security": [{}]}
"""``openapi_extra`` of a route taking ``OptionalMemberDep``: the empty security requirement says
in the OpenAPI document that anonymous callers are served too (their own view)."""
