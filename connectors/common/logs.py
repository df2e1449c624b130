"""The node's logs: request ids on every line, and one JSON object per line when asked.

**Request ids.** Every incoming HTTP request gets an id: the caller's ``X-Request-Id`` when it
is well formed (8 to 128 characters of ``A-Z a-z 0-9 . _ : -``), else a fresh one. It is
returned in the response's ``X-Request-Id`` header, attached to every log line written while the
request is served (:data:`request_id` context variable, :class:`RequestContext` filter), and
sent on the node's own calls to peers (:func:`outgoing_headers`, used by the signed client), so
one query's lines can be followed across the analyst, its providers and the operator. A query
job keeps the id of the request that submitted it.

**JSON lines** (``log_format = "json"`` in ``node.toml``, ``TS_LOG_FORMAT``, or ``node serve
--log-format json``): :class:`JsonFormatter` writes ``time``, ``level``, ``logger``,
``message`` and ``request_id``; the access line of each request (logger
``trusted_space.access``, written by :class:`RequestIds`) adds ``method``, ``path`` (never the
query string), ``status`` and ``duration_ms``. An exception's traceback is in ``exc``.

Threat: a log is read by more people than the node's staff (operations, a log collector), so no
line may carry a secret. The node never logs tokens, keys or signatures on purpose, and every
line also goes through :func:`redact`, which blanks an ``Authorization`` value and anything
shaped like a signed token (three base64url parts) or a bearer token, wherever a library put it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, Final

# Plain ASGI (this package does not import the web framework).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = [
    "LOG_FORMATS",
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestContext",
    "RequestIds",
    "configure_logging",
    "outgoing_headers",
    "redact",
    "request_id",
]

REQUEST_ID_HEADER: Final = "X-Request-Id"
LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s]: %(message)s"

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "trusted_space_request_id", default=None
)
"""The id of the request being served (``None`` outside one)."""

_WELL_FORMED: Final = re.compile(r"[A-Za-z0-9._:-]{8,128}")
_SECRETS: Final = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"),
    re.compile(r"()\b[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}\b"),
)
_ACCESS: Final = logging.getLogger("trusted_space.access")


def redact(text: str) -> str:
    """``text`` with bearer tokens, ``Authorization`` values and signed tokens blanked."""
    for pattern in _SECRETS:
        text = pattern.sub(r"\1[redacted]", text)
    return text


def outgoing_headers() -> dict[str, str]:
    """Headers for a call this node makes while serving a request: its request id."""
    current = request_id.get()
    return {REQUEST_ID_HEADER: current} if current else {}


def _incoming_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _WELL_FORMED.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestIds:
    """ASGI middleware: a request id per request (see the module), and its access line.

    Args:
        app: the app.
        access_log: write one ``trusted_space.access`` line per request (JSON logs; the text
            format keeps the server's own access line).
    """

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming_id(scope)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                _ACCESS.info(
                    "%s %s %d",
                    scope.get("method", ""),
                    scope.get("path", ""),
                    status,
                    extra={
                        "method": scope.get("method", ""),
                        "path": scope.get("path", ""),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )
            request_id.reset(token)


class RequestContext(logging.Filter):
    """Puts the current request id on every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get() or "-"
        return True


class _RedactingText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the fields of the module docstring, secrets redacted."""

    _FIELDS: Final = ("method", "path", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        fields: Mapping[str, Any] = record.__dict__
        for name in self._FIELDS:
            if name in fields:
                doc[name] = fields[name]
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """The node process's root logger: ``text`` or ``json`` lines on stderr, request ids on."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestContext())
    handler.setFormatter(JsonFormatter() if log_format == "json" else _RedactingText(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
