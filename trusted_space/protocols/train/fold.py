"""Training on raw columns: each party standardises its own, the model is folded back.

Every party (the bank and each provider) standardises its own columns over the cohort,
``z = (x - m)/s`` (``s`` the population standard deviation, 1 for a constant column), before
anything is shared; the secure SGD runs on ``z``; the released model is expressed on the raw
scale: ``w·z = (w/s)·x - w·m/s``, so column ``j``'s weight becomes ``w_j/s_j`` and the party's
*correction* ``c = Σ_j w_j·m_j/s_j`` leaves the intercept. ``m`` and ``s`` never leave their
party; the bank learns the folded weights its mode releases and the intercept ``b - Σ_p c_p``,
never one party's correction, nor a standardised weight of another party's column.

How the folding runs at the end of a training (the weights ``w`` are shared between the bank,
``A``, and the compute party, ``B``, in Z_2^64 at :data:`FRAC_BITS`):

- **The intercept** (both modes): each provider splits ``-c_p`` (in the ring) into two uniform
  shares ``u_p + v_p``: ``u_p`` to the compute party, which adds it to its share of the
  intercept, ``v_p`` to the bank, which adds it to its own. Each sees uniform values; their sum
  opens ``b - Σ_p c_p`` only. The bank subtracts its own correction in the clear.
- **Party-held**: the provider reconstructs its weights ``A_p + B_p`` (its own to keep), folds
  them, and splits its correction as above (:func:`fold`, :func:`split_offset`).
- **Analyst-held** (the bank learns the folded weights, the provider nothing): the bank draws
  ``R_j`` uniform in ``[2^K, 2^64 - 2^K)`` (``K`` = :data:`WEIGHT_BITS`), sends ``A_j + R_j``
  and its Paillier encryptions ``E(R_j)``; the provider adds the compute party's ``B_j``:
  ``Z_j = W_j + R_j`` exactly (no wrap while ``|W_j| < 2^K``; ``Z`` is within ``2^(K+1-64)`` of
  uniform: a statistical distance of ``2^-27``), and returns ``E(C_j·(Z_j - R_j)) = E(C_j·W_j)``
  with ``C_j = round(2^G/s_j)`` (``G`` = :data:`FOLD_BITS`) and ``E(μ·2^G - Σ_j D_j·W_j)``
  with ``D_j = round(2^G·m_j/s_j)`` and ``μ`` uniform over :data:`OFFSET_MASK_BITS` bits;
  ``-μ`` goes to the compute party as its intercept share ``u_p`` (:func:`masked_request`,
  :func:`masked_fold`, :func:`masked_result`). The bank decrypts the folded weights and
  ``μ + round(-c_p·2^16)``, statistically hiding ``c_p``.

Precision: the folding costs no fixed-point error beyond the trained weights' own (``2^-16`` in
``w``): ``C_j`` and ``D_j`` keep 128 fractional bits in the Paillier plaintext space.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from crypto import paillier
from trusted_space.errors import ValidationError
from trusted_space.protocols.train_mpc import FRAC_BITS, encode_ring

__all__ = [
    "FOLD_BITS",
    "MAX_CENTRES",
    "OFFSET_MASK_BITS",
    "WEIGHT_BITS",
    "MaskedRequest",
    "Standardised",
    "check_standardised",
    "fold",
    "masked_fold",
    "masked_request",
    "masked_result",
    "split_offset",
    "standardise",
]

FloatArray = npt.NDArray[np.float64]
Ring = npt.NDArray[np.uint64]

FOLD_BITS: Final = 128
"""Fractional bits of ``1/s_j`` and ``m_j/s_j`` in the Paillier plaintext."""
WEIGHT_BITS: Final = FRAC_BITS + 20
"""Trained weights stay below ``2^20`` (``check_weights`` refuses beyond 1e6): ``|W| < 2^K``."""
MAX_CENTRES: Final = 2.0**20
"""``Σ_j |m_j|/s_j`` per party: with weights below ``2^20`` its correction stays below ``2^40``."""
OFFSET_MASK_BITS: Final = 64 + 40
"""The bank's view of a provider's correction is masked by ``μ`` of this many bits."""
_RING: Final = 1 << 64


@dataclass(frozen=True)
class Standardised:
    """A party's columns standardised over the cohort: ``z = (x - mean)/scale``."""

    z: FloatArray
    mean: FloatArray
    scale: FloatArray


def standardise(x: npt.ArrayLike) -> Standardised:
    """Standardise each column of ``x`` (``n by k``): mean 0, population sd 1.

    A constant column carries nothing to learn: its scale is infinite, so it standardises to 0
    and folds to weight 0 (and no correction). The one formula every party and the plaintext
    reference use.
    """
    values = np.asarray(x, dtype=np.float64)
    if values.ndim != 2:
        raise ValidationError("features must be (n, k)")
    if not values.shape[0]:
        k = values.shape[1]
        return Standardised(values.copy(), np.zeros(k), np.ones(k))
    constant = np.ptp(values, axis=0) == 0
    mean = np.where(constant, 0.0, np.mean(values, axis=0))
    scale = np.where(constant, np.inf, np.std(values, axis=0))
    return Standardised((values - mean) / scale, mean, scale)


def check_standardised(standard: Standardised, columns: Sequence[str], bound: float) -> None:
    """Refuse what the fixed-point training cannot hold, naming the column, never a value.

    A standardised value beyond the training's ``featureBound`` (at most ``sqrt(n)`` for ``n``
    rows: only extreme outliers in a large cohort reach it), and columns whose means lie more
    than :data:`MAX_CENTRES` standard deviations from zero in all (a column that barely
    varies around a large value): the party's correction of the intercept must fit the ring.
    """
    z = standard.z
    if z.size:
        largest = np.max(np.abs(z), axis=0)
        if float(np.max(largest)) > bound:
            worst = columns[int(np.argmax(largest))]
            raise ValidationError(
                f"column {worst!r}: its standardised values exceed the training's featureBound "
                f"{bound:g}"
            )
    centres = np.abs(standard.mean) / standard.scale
    if float(np.sum(centres)) > MAX_CENTRES:
        worst = columns[int(np.argmax(centres))]
        raise ValidationError(
            f"column {worst!r} varies too little around its mean to be trained on in fixed point "
            f"(the columns' means total more than {MAX_CENTRES:g} standard deviations)"
        )


def fold(
    weights: npt.ArrayLike, mean: npt.ArrayLike, scale: npt.ArrayLike
) -> tuple[FloatArray, float]:
    """``(w/s, Σ w·m/s)``: weights on the raw scale and the correction leaving the intercept."""
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    return w / s, float(np.sum(w * np.asarray(mean, dtype=np.float64) / s))


def split_offset(correction: float) -> tuple[np.uint64, np.uint64]:
    """Uniform ring shares ``(u, v)`` of ``-correction`` at :data:`FRAC_BITS`."""
    total = int(encode_ring(np.array([-correction]))[0])
    u = secrets.randbits(64)
    return np.uint64(u), np.uint64((total - u) % _RING)


@dataclass(frozen=True)
class MaskedRequest:
    """What the bank sends a provider (analyst-held) and what it keeps.

    Attributes:
        masked: ``A_j + R_j`` (ring), sent.
        encrypted: ``E(R_j)``, sent.
        masks: ``R_j``, kept.
    """

    masked: Ring
    encrypted: paillier.CiphertextVector
    masks: tuple[int, ...]


def masked_request(share_a: Ring, engine: paillier.PaillierEngine) -> MaskedRequest:
    """The bank's masked share of one provider's weights and ``E(R)`` under its key."""
    low, high = 1 << WEIGHT_BITS, _RING - (1 << WEIGHT_BITS)
    masks = tuple(low + secrets.randbelow(high - low) for _ in range(len(share_a)))
    masked = (share_a + np.array(masks, dtype=np.uint64)).astype(np.uint64)
    return MaskedRequest(masked, engine.encrypt_ints(masks), masks)


def masked_fold(
    masked: Ring,
    share_b: Ring,
    encrypted: paillier.CiphertextVector,
    mean: FloatArray,
    scale: FloatArray,
    engine: paillier.PaillierEngine,
) -> tuple[paillier.CiphertextVector, np.uint64]:
    """The provider's side (analyst-held): the folded weights, encrypted, and its offset.

    Returns ``E(C_j·W_j)`` for each column and ``E(μ·2^G - Σ D_j·W_j)`` last, and ``u = -μ``
    (mod 2^64) for the compute party.
    """
    k = len(masked)
    if share_b.shape != (k,) or len(encrypted) != k or mean.shape != (k,):
        raise ValidationError("payload: one masked share and one ciphertext per column")
    z = [int(v) for v in (masked + share_b).astype(np.uint64)]
    c = [round(2**FOLD_BITS / float(s)) for s in scale]
    d = [round(2**FOLD_BITS * float(m) / float(s)) for m, s in zip(mean, scale, strict=True)]
    mu = secrets.randbits(OFFSET_MASK_BITS)
    plain = [cj * zj for cj, zj in zip(c, z, strict=True)]
    plain.append((mu << FOLD_BITS) - sum(dj * zj for dj, zj in zip(d, z, strict=True)))
    fresh = engine.encrypt_ints(plain)
    n, n2 = engine.public_key.n, engine.public_key.n_square
    r = encrypted.values
    values = [fresh.values[j] * pow(r[j], (-c[j]) % n, n2) % n2 for j in range(k)]
    correction = fresh.values[k]
    for j in range(k):
        correction = correction * pow(r[j], d[j] % n, n2) % n2
    values.append(correction)
    out = paillier.CiphertextVector(tuple(values), fresh.key_id, 0)
    return out, np.uint64((-mu) % _RING)


def masked_result(
    folded: paillier.CiphertextVector, k: int, engine: paillier.PaillierEngine
) -> tuple[FloatArray, np.uint64]:
    """The bank's side: the provider's folded weights and its intercept share ``v``."""
    if len(folded) != k + 1:
        raise ValidationError(f"expected {k + 1} folded values, got {len(folded)}")
    ints = engine.decrypt_ints(folded)
    scale = FOLD_BITS + FRAC_BITS
    weights = np.array([v / (1 << scale) for v in ints[:k]], dtype=np.float64)
    offset = (ints[k] + (1 << (FOLD_BITS - 1))) >> FOLD_BITS
    return weights, np.uint64(offset % _RING)
