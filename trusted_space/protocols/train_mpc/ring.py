"""The ring Z_2^64 the shares live in: fixed-point encoding, seeded expansion, message packing."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trusted_space.errors import ValidationError
from trusted_space.protocols import _common

__all__ = [
    "CARRY_LEVELS",
    "CMP_FRAC_BITS",
    "FRAC_BITS",
    "MASK_SIGN_BITS",
    "RING_ONE",
    "SEED_BYTES",
    "decode_ring",
    "encode_ring",
    "expand",
    "pack_messages",
    "ring_const",
    "unpack_messages",
]

Ring = npt.NDArray[np.uint64]
FloatArray = npt.NDArray[np.float64]

FRAC_BITS: Final = 16
"""Fractional bits of features, weights, logits and gradients."""
CMP_FRAC_BITS: Final = 8
"""Fractional bits of the logit compared against the knots."""
SEED_BYTES: Final = 32
MASK_SIGN_BITS: Final = np.uint64((1 << 32) | 1)
"""Bits 0 and 32: the two comparison results held in one word."""
RING_ONE: Final = np.uint64(1)
CARRY_LEVELS: Final = 5  # log2(32): the carry tree over 32-bit halves


def encode_ring(values: npt.ArrayLike, frac_bits: int = FRAC_BITS) -> Ring:
    """Reals as two's-complement fixed point in Z_2^64, refusing non-finite or huge values.

    The codec of the joint protocols (:func:`trusted_space.protocols._common.encode_ring`), at
    the training's :data:`FRAC_BITS` by default.
    """
    return _common.encode_ring(values, frac_bits)


def decode_ring(values: npt.ArrayLike, frac_bits: int = FRAC_BITS) -> FloatArray:
    """Inverse of :func:`encode_ring`."""
    return _common.decode_ring(np.asarray(values, dtype=np.uint64), frac_bits)


def ring_const(value: int) -> np.uint64:
    return np.uint64(value % (1 << 64))


def expand(seed: bytes, epoch: int, batch: int, words: int) -> Ring:
    """``words`` uniform ring elements: AES-256-CTR under ``seed``, one stream per batch.

    The counter block is ``epoch (4 bytes) ‖ batch (4 bytes) ‖ 0 (8 bytes)``: the running counter
    lives in the low 64 bits, so streams of different batches never overlap.
    """
    if len(seed) != SEED_BYTES:
        raise ValidationError(f"seed must be {SEED_BYTES} bytes")
    if not (0 <= epoch < 1 << 32 and 0 <= batch < 1 << 32) or words < 0:
        raise ValidationError("epoch, batch or size out of range")
    nonce = struct.pack(">IIQ", epoch, batch, 0)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    raw = encryptor.update(bytes(8 * words)) + encryptor.finalize()
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


def pack_messages(messages: Sequence[Ring]) -> bytes:
    """Several flat ring vectors as one payload: ``count u32 | (len u64 | words)*``."""
    parts = [struct.pack("<I", len(messages))]
    for m in messages:
        flat = np.ascontiguousarray(m, dtype="<u8").ravel()
        parts.append(struct.pack("<Q", flat.size))
        parts.append(flat.tobytes())
    return b"".join(parts)


def unpack_messages(payload: bytes, *, max_messages: int = 64) -> list[Ring]:
    """Inverse of :func:`pack_messages` (``ValidationError`` when malformed)."""
    if len(payload) < 4:
        raise ValidationError("payload: no message count")
    (count,) = struct.unpack_from("<I", payload, 0)
    if count > max_messages:
        raise ValidationError(f"payload: {count} messages, at most {max_messages}")
    out: list[Ring] = []
    at = 4
    for _ in range(count):
        if at + 8 > len(payload):
            raise ValidationError("payload: truncated message header")
        (size,) = struct.unpack_from("<Q", payload, at)
        at += 8
        if size > (len(payload) - at) // 8:
            raise ValidationError("payload: truncated message")
        out.append(np.frombuffer(payload, dtype="<u8", count=size, offset=at).astype(np.uint64))
        at += 8 * size
    if at != len(payload):
        raise ValidationError("payload: trailing bytes")
    return out
