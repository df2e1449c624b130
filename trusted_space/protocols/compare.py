"""Secure comparison of 2-party additive shares over Z_2^64: the bits ``[x < 0]``, nothing else.

Why: a provider may require that only a coarse result of a score leaves (a band among ``k``,
the policy operand ``release``), so the exact logit must never be reconstructed at the analyst.
When the logit ``z`` is additively shared between the analyst (party 0) and a compute party
(party 1), ``[z > t] = MSB(t - z)`` for each public edge ``t`` is computed on the shares, and
only those bits are opened — to party 0 alone. The bits of increasing edges are a unary code
of the band, so opening them reveals exactly the band.

**The circuit.** Each party splits its share ``x_i`` into its top bit and its low 63 bits. The
sign of ``x_0 + x_1`` is ``top_0 XOR top_1 XOR carry``, where ``carry`` is the carry into bit 63
of the low words' sum: the group-generate of a Kogge-Stone-style prefix over ``g = a AND b``,
``p = a XOR b`` (``a``, ``b`` the two low words shifted left by one, so that bit 63 of the tree
is the carry into the original bit 63). One AND round for the leaves and six for the tree
(levels 1-5 update ``g`` and ``p``, level 6 ``g`` only): twelve ANDs of one word per compared
value, with XOR-shared Beaver triples from the dealer. Unlike the training's comparison
(:mod:`trusted_space.protocols.train_mpc`), nothing is truncated first: the full 64-bit word
is compared, so the result is exact whenever ``|x_0 + x_1| < 2^63`` (the caller guarantees it)
— no failure probability.

**What each party sees.** Every opened word is the party's value XOR a triple word that neither
party knows (uniform); the final bits reach party 0 only. The dealer sees only shapes. With the
dealer's triples a party could open everything: dealer and party must not collude (as for every
Beaver protocol here).

Rounds: the party programs are generators (``theirs = yield mine``, as in
:mod:`trusted_space.protocols.train_mpc.party`); party 1 answers each message of party 0 with its
next one, so two AND rounds travel per call: four calls per batch of comparisons.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from crypto.sharing import random_ring
from trusted_space.errors import ValidationError
from trusted_space.protocols.train_mpc.party import PartyProgram, and_shares, level_mask

__all__ = [
    "AND_WORDS",
    "MESSAGES",
    "deal_and_triples",
    "edge_shares",
    "sign_program",
]

Ring = npt.NDArray[np.uint64]

_LEVELS: Final = 6  # log2(64)
AND_WORDS: Final = 1 + 2 * (_LEVELS - 1) + 1
"""AND triples per compared value: the leaves, two per tree level but the last, one for it."""
MESSAGES: Final = (_LEVELS + 1) + 1
"""Messages each party program sends: seven AND rounds, then party 1's bits (party 0: an end)."""
_MASKS: Final = tuple(level_mask(j) for j in range(_LEVELS + 1))
_ONE: Final = np.uint64(1)
_CLIP: Final = float(2**62 - 2**11)  # below 2^62 after float64 rounding
FloatArray = npt.NDArray[np.float64]


def deal_and_triples(values: int) -> tuple[Ring, Ring]:
    """Both parties' shares of the XOR triples for ``values`` comparisons (the dealer's side).

    Each share is ``u | v | w`` with ``AND_WORDS · values`` words each, uniformly random but for
    party 1's ``w``, which makes ``w_0 XOR w_1 = (u_0 XOR u_1) AND (v_0 XOR v_1)``.
    """
    if values < 1:
        raise ValidationError("at least one comparison")
    words = AND_WORDS * values
    u0, v0, w0, u1, v1 = (random_ring(words) for _ in range(5))
    w1 = np.asarray(((u0 ^ u1) & (v0 ^ v1)) ^ w0, dtype=np.uint64)
    return np.concatenate([u0, v0, w0]), np.concatenate([u1, v1, w1])


def sign_program(party: int, x: Ring, triples: Ring) -> PartyProgram:
    """Party ``party``'s side of ``[x_0 + x_1 < 0]`` for every element of its share ``x``.

    Args:
        party: 0 (receives the bits) or 1 (learns nothing).
        x: its share, any shape (flattened in C order).
        triples: its share of :func:`deal_and_triples` for ``x.size`` values.

    Returns:
        Party 0: the bits (``uint8``, the shape of ``x``); party 1: ``None``.
    """
    if party not in (0, 1):
        raise ValidationError("party must be 0 or 1")
    flat = np.ascontiguousarray(x, dtype=np.uint64).ravel()
    n = flat.size
    if n < 1 or triples.shape != (3 * AND_WORDS * n,):
        raise ValidationError(f"expected the triples of {n} comparisons")
    u, v, w = (part.reshape(AND_WORDS, n) for part in np.split(triples, 3))

    def taken(first: int, count: int) -> list[tuple[Ring, Ring, Ring]]:
        return [(u[first + j], v[first + j], w[first + j]) for j in range(count)]

    p0 = party == 0
    low = np.asarray(flat << _ONE, dtype=np.uint64)  # the low 63 bits, shifted into place
    top = np.asarray(flat >> np.uint64(63), dtype=np.uint64)
    zero = np.zeros_like(low)
    g = yield from and_shares(party, low if p0 else zero, zero if p0 else low, taken(0, 1))
    p = low
    used = 1
    for level in range(1, _LEVELS + 1):
        shift = np.uint64(1 << (level - 1))
        p_hi = np.asarray(p >> shift, dtype=np.uint64)
        if level < _LEVELS:
            both = yield from and_shares(
                party, np.concatenate([p_hi, p_hi]), np.concatenate([g, p]), taken(used, 2)
            )
            used += 2
            g = np.asarray(((g >> shift) ^ both[:n]) & _MASKS[level], dtype=np.uint64)
            p = np.asarray(both[n:] & _MASKS[level], dtype=np.uint64)
        else:
            last = yield from and_shares(party, p_hi, g, taken(used, 1))
            used += 1
            g = np.asarray(((g >> shift) ^ last) & _MASKS[level], dtype=np.uint64)
    bits = np.asarray((top ^ g) & _ONE, dtype=np.uint64)
    if not p0:
        yield bits  # its share of the bits, to party 0 only
        return None
    theirs: Any = yield np.zeros(0, dtype=np.uint64)
    if not isinstance(theirs, np.ndarray) or theirs.dtype != np.uint64 or theirs.shape != (n,):
        raise ValidationError("the other party's bits have the wrong size")
    return np.asarray((bits ^ theirs) & _ONE, dtype=np.uint8).reshape(np.shape(x))


def edge_shares(edges: tuple[float, ...], shift: FloatArray, frac_bits: int, local: Ring) -> Ring:
    """The analyst's share of ``t - z`` for every entity (rows) and edge (columns).

    Args:
        edges: the band edges on the total logit.
        shift: per entity, what the analyst adds to the providers' sum (intercept and its own
            columns' partial).
        frac_bits: the fixed point of the aggregated sum.
        local: per entity, the analyst's share of the providers' sum (masks, Beaver shares).

    An edge beyond what any logit can reach is clipped (the comparison's answer is the same),
    so ``|t - z|`` stays below ``2^63`` and the sign is exact.
    """
    scaled = (np.asarray(edges, dtype=np.float64)[None, :] - shift[:, None]) * 2.0**frac_bits
    ring = np.clip(np.round(scaled), -_CLIP, _CLIP).astype(np.int64).view(np.uint64)
    return np.asarray(ring - local[:, None], dtype=np.uint64)
