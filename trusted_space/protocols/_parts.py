"""Large messages in parts: every call stays far below the per-call size limit.

Why: a PSI response for a million ids is 64 MB of points, an encrypted indicator over a provider's
table can be hundreds of megabytes, and one compute call may carry at most
:data:`~trusted_space.protocols._common.MAX_MESSAGE_BYTES`. So a large payload is cut into parts
of :data:`PART_BYTES` and sent in order (:func:`send_in_parts`; the receiver reassembles with
:func:`receive_part`), and a large answer is kept by the node that made it and fetched part by
part (:func:`reply_part` / :func:`fetch_rest`). Parts are bytes of one serialised message whose
own format checks its integrity (the PSI digest, the ciphertext documents' structure): this layer
only enforces order, the declared total, and an upper bound on what a peer may make us buffer.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, Final

from trusted_space.errors import ConflictError, ValidationError
from trusted_space.protocols._common import MAX_MESSAGE_BYTES, header_int
from trusted_space.transport import Reply, Transport

__all__ = [
    "PART_BYTES",
    "fetch_rest",
    "receive_part",
    "reply_part",
    "send_in_parts",
]

PART_BYTES: Final = 16 * 1024 * 1024
"""Bytes per part (a quarter of the per-call limit, so headers and framing always fit)."""
_MAX_PARTS: Final = 1 << 16

if PART_BYTES * 2 > MAX_MESSAGE_BYTES:  # pragma: no cover - a constant check
    raise RuntimeError("PART_BYTES must leave room under MAX_MESSAGE_BYTES")


def send_in_parts(
    transport: Transport,
    peer: str,
    operation: str,
    header: Mapping[str, Any],
    payload: bytes,
    *,
    part_bytes: int | None = None,
) -> Reply:
    """Send ``payload`` to ``operation`` in order, in parts; return the reply to the last part.

    Each call's header is ``header`` plus ``part`` (0-based), ``parts`` and ``total`` (bytes).
    ``part_bytes`` defaults to :data:`PART_BYTES` and may not exceed it.
    """
    if part_bytes is None:
        part_bytes = PART_BYTES
    if not 1 <= part_bytes <= PART_BYTES:
        raise ValidationError(f"part_bytes must be in [1, {PART_BYTES}]")
    total = len(payload)
    parts = max(1, -(-total // part_bytes))
    if parts > _MAX_PARTS:
        raise ValidationError(f"a message of {total} bytes needs more than {_MAX_PARTS} parts")
    view = memoryview(payload)
    reply = Reply()
    for part in range(parts):
        chunk = bytes(view[part * part_bytes : (part + 1) * part_bytes])
        reply = transport.call(
            peer, operation, {**header, "part": part, "parts": parts, "total": total}, chunk
        )
    return reply


def receive_part(
    state: MutableMapping[str, Any],
    slot: str,
    header: Mapping[str, Any],
    payload: bytes,
    *,
    max_total: int,
) -> bytes | None:
    """Accumulate one part into ``state[slot]``; the whole message once its last part arrived.

    Args:
        state: the session's state (the buffer lives there between calls).
        slot: a name for this message within the session.
        header: the call's header (``part``, ``parts``, ``total``).
        payload: this part.
        max_total: the most bytes this message may have (checked before buffering anything).

    Returns:
        The complete message after the last part, else ``None``.

    Raises:
        ValidationError: inconsistent part numbers or sizes, or a message above ``max_total``.
        ConflictError: a part out of order, or the message was already complete.
    """
    parts = header_int(header, "parts", 1, _MAX_PARTS)
    part = header_int(header, "part", 0, parts - 1)
    total = header_int(header, "total", 0, max(0, max_total))
    key = f"parts:{slot}"
    if part == 0:
        if key in state:
            raise ConflictError(f"message {slot!r} was already started")
        state[key] = {"parts": parts, "total": total, "next": 0, "buffer": bytearray()}
    entry = state.get(key)
    if entry is None:
        raise ConflictError(f"message {slot!r}: part {part} before part 0")
    if entry["next"] is None:
        raise ConflictError(f"message {slot!r} is already complete")
    if (parts, total) != (entry["parts"], entry["total"]) or part != entry["next"]:
        raise ConflictError(f"message {slot!r}: part {part} out of order or inconsistent")
    buffer: bytearray = entry["buffer"]
    if len(buffer) + len(payload) > total:
        raise ValidationError(f"message {slot!r}: more bytes than the declared {total}")
    buffer += payload
    if part + 1 < parts:
        entry["next"] = part + 1
        return None
    if len(buffer) != total:
        raise ValidationError(f"message {slot!r}: {len(buffer)} bytes, declared {total}")
    entry["next"] = None
    entry["buffer"] = bytearray()
    return bytes(buffer)


def reply_part(data: bytes, offset: int, header: Mapping[str, Any] | None = None) -> Reply:
    """One part of a message kept by this node, from ``offset``; the header says the ``total``."""
    if not 0 <= offset <= len(data):
        raise ValidationError(f"offset {offset} is outside the message")
    return Reply(
        {**(header or {}), "total": len(data), "offset": offset},
        bytes(memoryview(data)[offset : offset + PART_BYTES]),
    )


def fetch_rest(
    transport: Transport,
    peer: str,
    operation: str,
    header: Mapping[str, Any],
    first: Reply,
    *,
    max_total: int,
) -> bytes:
    """The whole message whose first part came in ``first``, fetching the rest by offset.

    Raises:
        ValidationError: the peer announced more than ``max_total`` bytes or sent parts that do
            not add up.
    """
    total = header_int(first.header, "total", 0, max(0, max_total))
    buffer = bytearray(first.payload)
    while len(buffer) < total:
        reply = transport.call(peer, operation, {**header, "offset": len(buffer)})
        if header_int(reply.header, "offset", 0, total) != len(buffer) or not reply.payload:
            raise ValidationError(f"{peer} sent a part that does not continue the message")
        buffer += reply.payload
    if len(buffer) != total:
        raise ValidationError(f"{peer} sent {len(buffer)} bytes of a {total}-byte message")
    return bytes(buffer)
