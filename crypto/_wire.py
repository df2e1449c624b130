"""Checks every binary format of ours makes before reading bytes that came from another party.

The type, the size limit, the header length and the magic are checked before any field is
trusted, and before bytes reach a third-party parser (TenSEAL's deserialiser aborts the process on
some garbage).
"""

from __future__ import annotations

import struct
from typing import Any

from crypto.errors import SerializationError

__all__ = ["read_header"]


def read_header(
    data: object, header: struct.Struct, magic: bytes, *, max_bytes: int, what: str
) -> tuple[bytes, tuple[Any, ...]]:
    """Return ``(bytes, header fields)`` after the checks common to all our formats.

    The first header field must be ``magic``; the caller checks the rest.

    Raises:
        SerializationError: not bytes, over ``max_bytes``, shorter than the header, or bad magic.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SerializationError("expected bytes")
    buf = bytes(data)
    if len(buf) > max_bytes:
        raise SerializationError(f"{what} exceeds the size limit")
    if len(buf) < header.size:
        raise SerializationError(f"truncated {what} header")
    fields = header.unpack_from(buf)
    if fields[0] != magic:
        raise SerializationError(f"not a {what} (bad magic)")
    return buf, fields
