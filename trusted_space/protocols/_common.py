"""Helpers shared by the protocol modules: header parsing, blocks, ids on the wire, ring codecs.

Every header value read here comes from another node, so each is checked (type, range) and a bad
one is a :class:`~trusted_space.errors.ValidationError` naming the field; errors raised by the
``crypto`` primitives are converted to ``ValidationError`` where they enter protocol code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto.errors import CryptoError
from trusted_space.catalog import check_participant_id
from trusted_space.errors import ValidationError
from trusted_space.uscc import validate_uscc

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "MAX_BLOCK_ROWS",
    "MAX_MESSAGE_BYTES",
    "RING_FRAC_BITS",
    "block_ranges",
    "check_size",
    "crypto_errors",
    "decode_ids",
    "decode_ring",
    "encode_ids",
    "encode_ring",
    "header_float",
    "header_int",
    "header_participants",
    "header_str",
    "mask_stream",
    "ring_from_bytes",
    "ring_to_bytes",
]

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""No single call carries more than this: large vectors travel in blocks."""
DEFAULT_BLOCK_ROWS: Final = 1 << 16
"""Entities per block (a multiple of every CKKS preset's slot count)."""
MAX_BLOCK_ROWS: Final = 1 << 20
RING_FRAC_BITS: Final = 32
"""Fractional bits of every Z_2^64 value summed at the aggregator (a product of two f=16 values)."""


@contextmanager
def crypto_errors(what: str) -> Iterator[None]:
    """Convert a ``crypto`` error into a :class:`ValidationError` about ``what``."""
    try:
        yield
    except CryptoError as exc:
        raise ValidationError(f"{what}: {exc}") from exc


def check_size(payload: bytes, what: str) -> bytes:
    """Refuse to send (or accept) one message above :data:`MAX_MESSAGE_BYTES`."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ValidationError(f"{what} of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return payload


def header_str(header: Mapping[str, Any], name: str) -> str:
    value = header.get(name)
    if not isinstance(value, str) or not value or len(value) > 512:
        raise ValidationError(f"header.{name}: expected a non-empty string")
    return value


def header_int(header: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"header.{name}: expected an integer in [{low}, {high}]")
    return value


def header_float(header: Mapping[str, Any], name: str) -> float:
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"header.{name}: expected a number")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValidationError(f"header.{name}: expected a positive finite number")
    return number


def header_participants(header: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A non-empty, sorted, duplicate-free list of participant ids."""
    value = header.get(name)
    if not isinstance(value, list) or not value or len(value) > 256:
        raise ValidationError(f"header.{name}: expected a non-empty list of participant ids")
    ids = tuple(check_participant_id(v, f"header.{name}") for v in value)
    if list(ids) != sorted(set(ids)):
        raise ValidationError(f"header.{name}: must be sorted and without duplicates")
    return ids


def block_ranges(count: int, rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of ``rows`` entities covering ``count``."""
    if rows < 1:
        raise ValidationError("block rows must be positive")
    return [(s, min(s + rows, count)) for s in range(0, count, rows)]


def encode_ids(ids: Sequence[str]) -> bytes:
    """Entity ids as UTF-8 lines (ids never contain a newline: the query checks it)."""
    return "\n".join(ids).encode("utf-8")


def decode_ids(payload: bytes, count: int, id_kind: str) -> list[str]:
    """Parse :func:`encode_ids` output, checking the count and the id kind."""
    if count == 0:
        if payload:
            raise ValidationError("payload: expected no ids")
        return []
    try:
        ids = payload.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise ValidationError("payload: entity ids are not UTF-8") from exc
    if len(ids) != count:
        raise ValidationError(f"payload: {len(ids)} ids, header says {count}")
    for i, e in enumerate(ids):
        if id_kind == "uscc":
            try:
                validate_uscc(e)
            except ValidationError as exc:
                raise ValidationError(f"payload id {i}: {exc}") from exc
        elif not e or len(e) > 128 or not e.isprintable():
            raise ValidationError(f"payload id {i}: not an opaque id")
    return ids


def ring_to_bytes(values: npt.NDArray[np.uint64]) -> bytes:
    """A ring vector as little-endian u64 bytes."""
    return np.ascontiguousarray(values, dtype="<u8").tobytes()


def ring_from_bytes(payload: bytes, count: int) -> npt.NDArray[np.uint64]:
    """Parse :func:`ring_to_bytes` output of exactly ``count`` elements."""
    if len(payload) != 8 * count:
        raise ValidationError(f"payload: {len(payload)} bytes for {count} ring elements")
    return np.frombuffer(payload, dtype="<u8").astype(np.uint64)


def encode_ring(values: npt.ArrayLike, frac_bits: int = RING_FRAC_BITS) -> npt.NDArray[np.uint64]:
    """Reals as two's-complement fixed point in Z_2^64 (``round(x·2^f)``), refusing overflow."""
    x = np.asarray(values, dtype=np.float64)
    if x.size and not np.all(np.isfinite(x)):
        raise ValidationError("a value to encode is not finite")
    scaled = np.rint(np.ldexp(x, frac_bits))
    if scaled.size and float(np.max(np.abs(scaled))) >= 2.0**62:
        raise ValidationError("a value is too large for the fixed-point ring")
    return scaled.astype(np.int64).view(np.uint64)


def decode_ring(
    values: npt.NDArray[np.uint64], frac_bits: int = RING_FRAC_BITS
) -> npt.NDArray[np.float64]:
    """Inverse of :func:`encode_ring`."""
    return np.ldexp(values.view(np.int64).astype(np.float64), -frac_bits)


def mask_stream(seed: bytes, block: int, count: int) -> npt.NDArray[np.uint64]:
    """``count`` uniform ring elements from AES-256-CTR keyed by ``seed``, one stream per block.

    A provider in party-held additive mode masks its partial with this stream and gives the
    analyst only the 32-byte seed: the analyst's share costs 32 bytes instead of 8 per entity.
    """
    if len(seed) != 32:
        raise ValidationError("mask seed must be 32 bytes")
    nonce = block.to_bytes(16, "big")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    raw = encryptor.update(bytes(8 * count)) + encryptor.finalize()
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)
