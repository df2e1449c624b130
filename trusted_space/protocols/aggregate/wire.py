"""What the aggregate protocols put on the wire: payload packing, ring encoding, CKKS totals.

Shared by the provider and the analyst: the fixed-point ring encoding of the additive protocol
(:data:`RING_FRAC_BITS`), the row blocks of Beaver material, and the CKKS slot sum that adds
noise or a mask through a fresh encryption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from crypto import ckks
from crypto.fixedpoint import FixedPoint
from trusted_space.errors import ValidationError
from trusted_space.protocols._common import crypto_errors

__all__ = [
    "MAX_MATERIAL",
    "RING_FRAC_BITS",
    "ckks_total",
    "dealer_session",
    "encode_ring",
    "material_blocks",
    "pack",
    "unpack",
]

FloatArray = npt.NDArray[np.float64]
Ring = npt.NDArray[np.uint64]
RING_FRAC_BITS: Final = 16
"""Fixed-point fractional bits of the provider's values in the additive protocol."""
MAX_MATERIAL: Final = 1 << 36
# ----------------------------------------------------------------------------------------------
# Wire helpers
# ----------------------------------------------------------------------------------------------


def pack(blobs: Sequence[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(8, "big") + b for b in blobs)


def unpack(data: bytes, count: int) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 8 > len(data):
            raise ValidationError("payload is truncated")
        size = int.from_bytes(data[offset : offset + 8], "big")
        offset += 8
        if offset + size > len(data):
            raise ValidationError("payload is truncated")
        out.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise ValidationError("payload has trailing bytes")
    return out


def ckks_total(
    context: ckks.PublicContext, indicator: ckks.EncryptedVector, row: FloatArray, extra: float
) -> ckks.EncryptedVector:
    """``Σ s_i·row_i + extra`` in every slot of one ciphertext (a vector of length 1).

    ``extra`` (noise or mask) enters through a *fresh* encryption added to every chunk, which
    also re-randomises the result (the analyst knows the randomness of its own indicator
    ciphertexts). The slots are summed by rotations *after* that, so every slot holds the same
    noisy value: decrypting the other slots with the raw secret key reveals nothing more.
    """
    with crypto_errors("ckks aggregate"):
        product = ckks.mul_plain(indicator, row)
        fresh = np.zeros(indicator.length)
        fresh[0] = extra
        mixed = ckks.add(product, context.encrypt(fresh))
        return ckks.sum_slots(context, mixed)


def encode_ring(values: npt.ArrayLike) -> Ring:
    with crypto_errors("fixed point"):
        return FixedPoint(RING_FRAC_BITS).encode(np.asarray(values, dtype=np.float64))


def material_blocks(rows: int, terms: int) -> list[tuple[int, int]]:
    """Row blocks whose triples (and Beaver messages) stay far below the message limit."""
    size = max(1, min(1 << 16, (1 << 22) // (terms + 1)))
    return [(s, min(s + size, rows)) for s in range(0, rows, size)]


def dealer_session(query: str, dataset: str) -> str:
    return f"stats/{query}/{dataset}"
