"""Console sessions: the admin token exchanged once for a cookie, with a CSRF token beside it.

Why: a browser should not keep the node's admin token (a long-lived master key) in script
memory or storage, where any injected script could read it. Signing in sends the token once;
the node answers with a random session id in an ``HttpOnly``, ``SameSite=Strict`` cookie
(``Secure`` over TLS) that script cannot read, and a separate CSRF token that the console's own
script sends in the ``X-CSRF-Token`` header of every request that changes something.

Threats:

- **Cross-site request forgery**: another site cannot make the browser send the cookie
  (``SameSite=Strict``), and even if it could, it cannot read the CSRF token nor set a custom
  header without a CORS preflight the node never grants. Every mutating request without the
  right header is the usual indistinguishable ``401``.
- **A stolen session id** is worth less than the token: it expires after an idle hour and at
  most twelve hours after sign-in, sign-out revokes it at once, and a restart of the node
  forgets every session (they live in memory only). Only SHA-256 digests of the ids are kept.
- **Token guessing at sign-in**: the admin token has 256 bits; failures are logged (never the
  presented value) and answered with the same ``401`` as any other authentication failure.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CSRF_HEADER",
    "IDLE_SECONDS",
    "MAX_SECONDS",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "Session",
    "SessionStore",
    "session_cookie",
]

SESSION_COOKIE = "ts_console"
"""Prefix of the cookie's name; the node's id follows (:func:`session_cookie`)."""
CSRF_HEADER = "X-CSRF-Token"
IDLE_SECONDS = 3600.0
MAX_SECONDS = 12 * 3600.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_SESSIONS = 256


def session_cookie(node_id: str) -> str:
    """The session cookie's name on node ``node_id``.

    Cookies are scoped by host, not port, so the nodes of a local space (one host, many ports)
    would overwrite each other's session under one name; with the node's id in the name each
    keeps its own (a node only ever accepts the ids it issued itself).
    """
    return f"{SESSION_COOKIE}_{node_id}"


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


@dataclass
class Session:
    """One signed-in browser: its CSRF token and when it was created and last used."""

    csrf: str
    created: float
    last_used: float


class SessionStore:
    """Sessions of one node, in memory (a restart signs everybody out).

    Args:
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def create(self) -> tuple[str, Session]:
        """A new session: returns its id (for the cookie only) and the session (CSRF token)."""
        now = self._clock()
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), created=now, last_used=now)
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= _MAX_SESSIONS:  # the oldest gives way
                oldest = min(self._sessions, key=lambda k: self._sessions[k].created)
                del self._sessions[oldest]
            self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle clock restarts), or ``None``."""
        if not session_id:
            return None
        now = self._clock()
        with self._lock:
            self._expire(now)
            session = self._sessions.get(_digest(session_id))
            if session is not None:
                session.last_used = now
            return session

    def revoke(self, session_id: str | None) -> bool:
        """End a session; ``True`` if it was live."""
        if not session_id:
            return False
        with self._lock:
            return self._sessions.pop(_digest(session_id), None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._sessions)

    def allows(self, session_id: str | None, method: str, csrf: str | None) -> bool:
        """Whether a request with this cookie, method and CSRF header may act as staff."""
        session = self.get(session_id)
        if session is None:
            return False
        if method.upper() in SAFE_METHODS:
            return True
        return csrf is not None and hmac.compare_digest(
            csrf.encode("utf-8", "replace"), session.csrf.encode()
        )

    def _expire(self, now: float) -> None:
        dead = [
            k
            for k, s in self._sessions.items()
            if now - s.last_used > IDLE_SECONDS or now - s.created > MAX_SECONDS
        ]
        for k in dead:
            del self._sessions[k]
