"""``/console``: the console's files and its session (sign-in, who am I, sign-out).

- ``GET /console/``: the page; ``GET /console/assets/{name}``: its script, style and icon, all
  from this package (no CDN, no font service: the console works offline).
- ``POST /console/session`` ``{"token"}``: sign in with the node's admin token. The answer sets
  the session cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over TLS) and carries the
  CSRF token; a wrong token is the usual ``401``.
- ``GET /console/session``: the signed-in view (node, roles, CSRF token) or ``401``.
- ``DELETE /console/session``: sign out (needs the CSRF header): the session is revoked at once.

Every answer under ``/console`` carries a strict Content-Security-Policy (scripts, styles and
connections to this origin only, no inline script or style, no framing), ``nosniff`` and no
referrer. Without a session nothing is usable but the sign-in form: the page itself is public,
and every datum comes from the staff API, which refuses without a session.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import FileResponse, RedirectResponse

from connectors.node.console.sessions import (
    CSRF_HEADER,
    IDLE_SECONDS,
    SessionStore,
    session_cookie,
)
from connectors.node.deps import RuntimeDep, console_sessions
from connectors.node.wire.console import SessionView, SignIn
from trusted_space.errors import NotFoundError, VerificationError

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "STATIC_DIR",
    "asset",
    "index",
    "root",
    "router",
    "security_headers",
    "session",
    "sign_in",
    "sign_out",
]

log = logging.getLogger("trusted_space.console")

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)


def security_headers(response: Response) -> None:
    """The headers every console answer carries."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"


def _sessions(request: Request) -> SessionStore:
    sessions = console_sessions(request)
    if sessions is None:  # pragma: no cover - the app always installs it with this router
        raise NotFoundError("the console is not enabled on this node")
    return sessions


def _file(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR or not path.is_file() or path.suffix not in _TYPES:
        raise NotFoundError(f"no console asset {name!r}")
    response = FileResponse(path, media_type=_TYPES[path.suffix])
    security_headers(response)
    response.headers["Cache-Control"] = "no-cache"
    return response


@router.get("")
def root() -> RedirectResponse:
    response = RedirectResponse("/console/", status_code=307)
    security_headers(response)
    return response


@router.get("/")
def index() -> FileResponse:
    """The console page (public: it holds no data)."""
    return _file("index.html")


@router.get("/assets/{name}")
def asset(name: str) -> FileResponse:
    """A script, style sheet or image of the console."""
    return _file(name)


def _view(runtime: RuntimeDep, csrf: str) -> SessionView:
    return SessionView(
        node=runtime.id,
        roles=sorted(runtime.roles),
        operator=None if runtime.anchor is None else runtime.anchor.operator_id,
        admitted=runtime.credential_token() is not None,
        csrf=csrf,
    )


@router.post("/session")
def sign_in(body: SignIn, request: Request, response: Response, runtime: RuntimeDep) -> SessionView:
    """Exchange the admin token for a session cookie and a CSRF token."""
    if not hmac.compare_digest(
        body.token.strip().encode("utf-8", "replace"), runtime.admin_token.encode()
    ):
        log.warning("console sign-in refused (wrong admin token) from %s", _client(request))
        raise VerificationError("console-sign-in")
    sessions = _sessions(request)
    session_id, session = sessions.create()
    secure = request.url.scheme == "https" or runtime.settings.url.startswith("https://")
    response.set_cookie(
        session_cookie(runtime.id),
        session_id,
        max_age=int(IDLE_SECONDS * 12),
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    security_headers(response)
    response.headers["Cache-Control"] = "no-store"
    log.info("console sign-in from %s", _client(request))
    return _view(runtime, session.csrf)


@router.get("/session")
def session(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
) -> SessionView:
    """The signed-in view, or ``401`` without a live session."""
    live = _sessions(request).get(request.cookies.get(session_cookie(runtime.id)))
    if live is None:
        raise VerificationError("console-session")
    security_headers(response)
    response.headers["Cache-Control"] = "no-store"
    return _view(runtime, live.csrf)


@router.delete("/session", status_code=204)
def sign_out(
    request: Request,
    runtime: RuntimeDep,
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
) -> Response:
    """Sign out: the session is revoked on the node, the cookie cleared in the browser."""
    sessions = _sessions(request)
    cookie = session_cookie(runtime.id)
    session_id = request.cookies.get(cookie)
    if not sessions.allows(session_id, "DELETE", csrf):
        raise VerificationError("console-session")
    sessions.revoke(session_id)
    response = Response(status_code=204)
    response.delete_cookie(cookie, path="/", httponly=True, samesite="strict")
    security_headers(response)
    return response


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "?"
