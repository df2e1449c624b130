"""Helpers for driving a node's API the way a legitimate member would: a signing proxy.

A signed request binds method, path, body hash, audience and a fresh ``jti``, so a fuzzer cannot
put a valid ``TS-Request`` into a generated case ahead of time (the body is serialised later).
:class:`SigningProxy` sits in front of a node's ASGI app, where the bytes are final: a request
whose ``TS-Request`` header is :data:`SIGN_ME` is signed there by a real member's key, exactly
as :class:`~connectors.client.http.SignedClient` would sign it; any other request passes through
untouched, so a missing or wrong ``TS-Request`` still reaches the node as sent (and is refused).

The proxy answers ASGI lifespan events itself: the node's app already runs its lifespan under
the in-process space's TestClient, and a second start would double its background jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.client.http import CREDENTIAL_HEADER, REQUEST_HEADER
from trusted_space.errors import ValidationError
from trusted_space.identity import issue_request_token
from trusted_space.keys import SigningKey

__all__ = ["SIGN_ME", "SigningProxy"]

SIGN_ME = "sign-me-at-the-proxy"

_REQUEST = REQUEST_HEADER.lower().encode()
_CREDENTIAL = CREDENTIAL_HEADER.lower().encode()


class SigningProxy:
    """An ASGI wrapper that signs marked requests as member ``issuer`` for node ``audience``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        issuer: str,
        key: SigningKey,
        credential: Callable[[], str | None],
        audience: str,
        clock: Callable[[], datetime],
    ) -> None:
        self.app = app
        self.issuer = issuer
        self.key = key
        self.credential = credential
        self.audience = audience
        self.clock = clock
        self.signed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _answer_lifespan(receive, send)
            return
        if scope["type"] != "http" or (_REQUEST, SIGN_ME.encode()) not in scope["headers"]:
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query: bytes = scope.get("query_string", b"")
        target = (raw + (b"?" + query if query else b"")).decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k not in (_REQUEST, _CREDENTIAL)]
        try:
            token = issue_request_token(
                self.key,
                issuer=self.issuer,
                audience=self.audience,
                method=scope["method"],
                path=target,
                body=body,
                now=self.clock(),
            )
        except ValidationError:
            token = None  # a path no client could sign: it goes unsigned, and is refused
        if token is not None:
            self.signed += 1
            headers.append((_REQUEST, token.encode("ascii")))
            credential = self.credential()
            if credential:
                headers.append((_CREDENTIAL, credential.encode("ascii")))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


async def _answer_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
