"""How protocol code talks to other nodes: one small interface, an in-memory twin, one framing.

Why: the multi-party protocols (joint score, aggregate, alignment, training) are written once, here
in ``trusted_space``, and must run unchanged in one process (tests, crypto benchmarks) and across
real nodes over HTTP. So they never see HTTP: they call :meth:`Transport.call` with a peer id, an
operation name, a small JSON header and a binary payload, and get a :class:`Reply` of the same
shape. The connector layer supplies the HTTP transport (``POST /compute/{operation}``, signed by
the sender, the sender authenticated by the receiver before anything runs); tests use
:class:`InMemoryTransport`.

The receiving side is a :data:`Handler`: ``handler(sender, operation, header, payload) -> Reply``,
where ``sender`` is the *authenticated* participant id (from the verified request token over HTTP;
fixed per transport in memory) — a handler never trusts an identity claimed in the header.

Framing (:func:`frame` / :func:`unframe`), used on the wire and, to keep the two paths identical,
by the in-memory transport too::

    b"TSF1" | header length u32 big-endian | header (canonical JSON, UTF-8) | payload bytes

Headers are limited to :data:`MAX_HEADER_BYTES`; a malformed frame is a :class:`ValidationError`
(4xx at the edge), never a crash.

A refusal or failure of the peer reaches the caller as
:class:`~trusted_space.errors.RemoteError` (re-exported here, beside the interface that raises it)
over either transport, with the problem document the HTTP edge would send: both answer from the
one table :data:`trusted_space.errors.PROBLEM_TYPES`.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from trusted_space.errors import NotReadyError, RemoteError, ValidationError, problem_document
from trusted_space.events import canonical_json

__all__ = [
    "FRAME_MAGIC",
    "MAX_HEADER_BYTES",
    "OPERATION_PATTERN",
    "Handler",
    "InMemoryTransport",
    "RemoteError",
    "Reply",
    "Transport",
    "check_operation",
    "frame",
    "unframe",
]

FRAME_MAGIC = b"TSF1"
MAX_HEADER_BYTES = 1 << 20
OPERATION_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}(\.[a-z][a-z0-9-]{0,31}){0,3}")


def check_operation(operation: str) -> str:
    """Operation names are dotted lower-case words, e.g. ``score.partial``."""
    if not isinstance(operation, str) or OPERATION_PATTERN.fullmatch(operation) is None:
        raise ValidationError(f"bad operation name {operation!r}")
    return operation


@dataclass(frozen=True)
class Reply:
    """A JSON header and a binary payload (ciphertexts, shares, PSI points)."""

    header: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""


class Transport(Protocol):
    """Calls to other nodes, as the sending node.

    Attributes:
        sender: the participant this transport speaks as (fixed: an authenticated channel).
        max_concurrency: how many calls may be in flight at once, from as many threads. The
            in-memory twin keeps the default ``1`` so its tests see one deterministic sequence
            of messages; the connector's HTTP transport allows several, and a query then serves
            its providers concurrently. A class implementing the interface by inheriting from it
            gets the default.
    """

    sender: str
    max_concurrency: int = 1

    def call(
        self, peer: str, operation: str, header: Mapping[str, Any], payload: bytes = b""
    ) -> Reply:
        """Send one request to ``peer`` and return its reply.

        Raises:
            RemoteError: the peer refused or failed (its problem document attached).
        """
        ...


Handler = Callable[[str, str, dict[str, Any], bytes], Reply]


def frame(header: Mapping[str, Any], payload: bytes = b"") -> bytes:
    """Encode a header and payload as one body."""
    raw = canonical_json(dict(header))
    if len(raw) > MAX_HEADER_BYTES:
        raise ValidationError(f"frame header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    # One copy of the payload (megabytes of shares per block), not one per concatenation.
    return b"".join((FRAME_MAGIC, struct.pack(">I", len(raw)), raw, payload))


def unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Decode :func:`frame` output.

    Raises:
        ValidationError: not a frame, header too long or not a JSON object.
    """
    if len(data) < 8 or data[:4] != FRAME_MAGIC:
        raise ValidationError("not a trusted-space compute frame")
    (size,) = struct.unpack(">I", data[4:8])
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise ValidationError("compute frame header length is out of range")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValidationError("compute frame header is not JSON") from exc
    if not isinstance(header, dict):
        raise ValidationError("compute frame header must be a JSON object")
    return header, data[8 + size :]


class InMemoryTransport(Transport):
    """The in-process twin: every node's handler in one dict, calls go through the framing.

    ``InMemoryTransport.network()`` gives a shared registry; ``registry.as_sender(pid)`` gives the
    transport a node uses (its identity is fixed, as an authenticated channel would fix it).
    Exceptions raised by a handler become :class:`~trusted_space.errors.RemoteError` carrying the
    problem document the HTTP edge would answer (:func:`~trusted_space.errors.problem_document`:
    same status, slug and body), so protocol code sees the same failures in both settings. A
    :class:`~trusted_space.errors.RemoteError` escaping a handler (its own onward call failed) is
    ``502 peer-error`` with the inner peer's document as ``peerProblem``, as over HTTP.
    """

    def __init__(self, sender: str, handlers: dict[str, Handler]) -> None:
        self.sender = sender
        self._handlers = handlers
        self.calls: list[tuple[str, str, str, int]] = []  # (sender, peer, operation, bytes)

    @classmethod
    def network(cls) -> InMemoryTransport:
        return cls("", {})

    def register(self, participant_id: str, handler: Handler) -> None:
        self._handlers[participant_id] = handler

    def as_sender(self, participant_id: str) -> InMemoryTransport:
        twin = InMemoryTransport(participant_id, self._handlers)
        twin.calls = self.calls
        return twin

    def call(
        self, peer: str, operation: str, header: Mapping[str, Any], payload: bytes = b""
    ) -> Reply:
        if not self.sender:
            raise ValidationError("use as_sender(participant_id) to call")
        check_operation(operation)
        body = frame(header, payload)
        self.calls.append((self.sender, peer, operation, len(body)))
        handler = self._handlers.get(peer)
        if handler is None:
            problem = problem_document(NotReadyError(f"no node {peer!r} on this network"))
            raise RemoteError(peer, 503, problem)
        received_header, received_payload = unframe(body)
        try:
            reply = handler(self.sender, operation, received_header, received_payload)
        except Exception as exc:  # as the HTTP edge answers it (a peer's failure: 502 peer-error)
            problem = problem_document(exc)
            raise RemoteError(peer, problem["status"], problem) from exc
        out_header, out_payload = unframe(frame(reply.header, reply.payload))
        return Reply(out_header, out_payload)
