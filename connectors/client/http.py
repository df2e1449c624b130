"""HTTP clients: node-to-node calls signed per request, and the staff's admin client.

**Signed calls.** Every request one node sends another carries two headers:

- ``TS-Request``: a request token (:func:`trusted_space.identity.issue_request_token`) binding
  issuer, audience (the receiving participant), method, path with query, a SHA-256 of the exact
  body bytes, a unique ``jti`` and a lifetime of at most two minutes;
- ``TS-Credential``: the sender's membership credential signed by the operator, so a receiver
  that has not met the sender yet can verify it against the operator's key (nothing unverified is
  stored).

The body is serialised once, here, and those exact bytes are both hashed and sent, so the receiver
hashes what the sender signed. Errors from the other node become :class:`RemoteError` carrying its
problem document; transport failures (refused connection, timeout) become :class:`NotReadyError`.

**Admin calls.** The institution's own staff (CLI, scripts) call ``/management`` with the node's
admin token as ``Authorization: Bearer``; :class:`AdminClient` reads it from the node directory.
A list comes in pages (:mod:`connectors.node.pagination`): :meth:`AdminClient.get` follows each
``Link: <...>; rel="next"`` and returns the whole list.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from connectors.common.logs import outgoing_headers
from connectors.common.settings import load_settings
from connectors.common.tls import client_context
from trusted_space.errors import NotReadyError, RemoteError
from trusted_space.identity import issue_request_token
from trusted_space.keys import SigningKey

__all__ = [
    "CLIENT_KEEP_ALIVE",
    "CONNECT_TIMEOUT",
    "CREDENTIAL_HEADER",
    "SERVER_KEEP_ALIVE",
    "REQUEST_HEADER",
    "AdminClient",
    "SignedClient",
    "encode_json",
    "raise_for_problem",
]

REQUEST_HEADER = "TS-Request"
CREDENTIAL_HEADER = "TS-Credential"
CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection to a node: a peer that does not accept one by then is down."""
CLIENT_KEEP_ALIVE = 5.0
"""Seconds a client reuses an idle connection to a node before opening a fresh one."""
SERVER_KEEP_ALIVE = 30
"""Seconds a node keeps an idle connection open. Longer than :data:`CLIENT_KEEP_ALIVE` on
purpose: with equal limits a client could send a request on a connection the server is closing
at that moment ("Server disconnected without sending a response"), a failed call that the
client cannot safely repeat. A provider's block computed in about the limit hit it once."""
_LIMITS = httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE)


def encode_json(body: Any) -> bytes:
    """Compact UTF-8 JSON, the one encoding used for signed bodies."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def raise_for_problem(response: httpx.Response, peer: str) -> httpx.Response:
    """Return ``response`` if it is 2xx, else raise :class:`RemoteError` with its problem body."""
    if response.is_success:
        return response
    problem: dict[str, Any] | None = None
    try:
        doc = response.json()
        problem = doc if isinstance(doc, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        problem = None
    raise RemoteError(peer, response.status_code, problem)


class SignedClient:
    """A node's client for calls to other nodes; signs every request.

    Args:
        participant_id: this node's participant id (the token's issuer).
        key: this node's signing key.
        credential: returns this node's current membership credential token (``None`` before
            admission: requests then go without ``TS-Credential`` and only the operator, which
            knows every member, accepts them).
        timeout: seconds for a read (connecting gets at most :data:`CONNECT_TIMEOUT`).
        transport: an httpx transport (tests pass an ASGI or mock transport).
        clock: the current time (tests inject one).
        verify: how ``https`` peers are checked: the node's TLS client context
            (:func:`connectors.common.tls.client_context`), or ``True`` for httpx's defaults.
    """

    def __init__(
        self,
        participant_id: str,
        key: SigningKey,
        credential: Callable[[], str | None],
        *,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.participant_id = participant_id
        self._key = key
        self._credential = credential
        self._clock = clock
        # A peer that does not even accept a connection is down: say so in seconds, not after
        # the read timeout that a long computation may need.
        limits = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT))
        self._http = httpx.Client(
            timeout=limits,
            limits=_LIMITS,
            transport=transport,
            follow_redirects=False,
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SignedClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def headers_for(self, audience: str, method: str, url: str, body: bytes) -> dict[str, str]:
        """The two authentication headers for one request (exposed for tests of hostile input)."""
        target = httpx.URL(url)
        path = target.raw_path.decode("ascii")
        token = issue_request_token(
            self._key,
            issuer=self.participant_id,
            audience=audience,
            method=method.upper(),
            path=path,
            body=body,
            now=self._clock(),
        )
        headers = {REQUEST_HEADER: token}
        credential = self._credential()
        if credential:
            headers[CREDENTIAL_HEADER] = credential
        return headers

    def request(
        self,
        method: str,
        url: str,
        *,
        audience: str,
        json_body: Any = None,
        content: bytes | None = None,
        content_type: str = "application/json",
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> httpx.Response:
        """Send one signed request to ``audience`` at ``url``.

        Args:
            method: HTTP method.
            url: full URL of the endpoint (query parameters may be given in ``params``).
            audience: the receiving node's participant id.
            json_body: a JSON-serialisable body (mutually exclusive with ``content``).
            content: raw body bytes (e.g. ciphertexts), sent with ``content_type``.
            content_type: media type of the body.
            params: query parameters (they are part of the signed path).
            headers: extra headers.
            check: raise :class:`RemoteError` on a non-2xx answer (default).

        Raises:
            RemoteError: the peer answered with an error status (``check=True``).
            NotReadyError: the peer could not be reached.
        """
        if json_body is not None and content is not None:
            raise ValueError("give json_body or content, not both")
        target = httpx.URL(url, params=params) if params else httpx.URL(url)
        body = encode_json(json_body) if json_body is not None else (content or b"")
        send_headers = {**outgoing_headers(), **(headers or {})}
        if body or method.upper() in {"POST", "PUT", "PATCH"}:
            send_headers.setdefault("Content-Type", content_type)
        send_headers.update(self.headers_for(audience, method, str(target), body))
        try:
            response = self._http.request(method, target, content=body, headers=send_headers)
        except httpx.TransportError as exc:
            raise NotReadyError(f"cannot reach {audience} at {target}: {exc}") from exc
        return raise_for_problem(response, audience) if check else response

    def get_json(self, url: str, *, audience: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", url, audience=audience, params=params).json()

    def post_json(self, url: str, body: Any, *, audience: str) -> Any:
        response = self.request("POST", url, audience=audience, json_body=body)
        return response.json() if response.content else None

    @contextmanager
    def stream(
        self, url: str, *, audience: str, headers: Mapping[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A signed ``GET`` whose response body is read incrementally (large downloads).

        Errors as :meth:`request`: :class:`RemoteError` on a non-2xx answer (its body is read, it is
        a small problem document), :class:`NotReadyError` when the peer cannot be reached.
        """
        target = httpx.URL(url)
        send_headers = {**outgoing_headers(), **(headers or {})}
        send_headers.update(self.headers_for(audience, "GET", str(target), b""))
        try:
            with self._http.stream("GET", target, headers=send_headers) as response:
                if not response.is_success:
                    response.read()
                    raise_for_problem(response, audience)
                yield response
        except httpx.TransportError as exc:
            raise NotReadyError(f"cannot reach {audience} at {target}: {exc}") from exc


class AdminClient:
    """The institution's staff talking to their own node's ``/management`` (and friends).

    Args:
        base_url: the node's URL.
        token: the node's admin token (see :meth:`from_dir`).
        timeout: seconds.
        transport: an httpx transport (tests).
        verify: how an ``https`` node is checked (see :class:`SignedClient`).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            limits=_LIMITS,
            transport=transport,
            verify=verify,
            headers={"Authorization": f"Bearer {token}"},
        )

    @classmethod
    def from_dir(cls, base_url: str, node_dir: str | Path, **kwargs: Any) -> AdminClient:
        """The node's staff: token from ``<node_dir>/keys/admin.token``, TLS from its settings."""
        settings = load_settings(node_dir)
        token = settings.layout.admin_token.read_text(encoding="utf-8").strip()
        kwargs.setdefault("verify", client_context(settings))
        return cls(base_url, token, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send: :class:`RemoteError` on an error status, :class:`NotReadyError` if down."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise NotReadyError(f"cannot reach {self.base_url}: {exc}") from exc
        return raise_for_problem(response, self.base_url)

    def get(self, path: str, **kwargs: Any) -> Any:
        """The JSON at ``path``; a paged list whole (every ``next`` link followed)."""
        response = self.request("GET", path, **kwargs)
        doc = response.json()
        if not isinstance(doc, list):
            return doc
        items = list(doc)
        seen: set[str] = set()
        while (link := response.links.get("next", {}).get("url")) and link not in seen:
            seen.add(link)  # a server that sends the same link twice does not loop us
            response = self.request("GET", link)
            items.extend(response.json())
        return items

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        response = self.request("POST", path, json=body, **kwargs)
        return response.json() if response.content else None

    def put(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        response = self.request("PUT", path, json=body, **kwargs)
        return response.json() if response.content else None

    def delete(self, path: str, **kwargs: Any) -> Any:
        response = self.request("DELETE", path, **kwargs)
        return response.json() if response.content else None
