"""Dealer material: the correlated randomness of each batch, its layout and the dealer's correction.

Each party expands its share from a seed; the dealer sends only a correction to party 1, so the
material on the wire is one vector per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from trusted_space.errors import ValidationError
from trusted_space.protocols.train_mpc.ring import (
    CARRY_LEVELS,
    MASK_SIGN_BITS,
    RING_ONE,
    Ring,
    expand,
)
from trusted_space.protocols.train_mpc.sigmoid import MAX_KNOTS

__all__ = [
    "FIRST_LEVELS",
    "MONOMIALS",
    "Layout",
    "Segment",
    "batch_sizes",
    "dealer_correction",
    "first_round_ands",
    "layout_for",
    "material_share",
    "sign_bits",
    "update_scale",
]

_PRECISION_BITS: Final = 12  # relative precision of the public update constants

FIRST_LEVELS: Final = 2
"""Levels of the carry tree evaluated with the leaves, in one round."""


def first_round_ands(levels: int = FIRST_LEVELS) -> int:
    """ANDs of the carry tree's first round: the products of the first levels' sums.

    A bit's ``g`` is one product and ``p`` two (``a·1 ⊕ 1·b``); a level makes ``G`` of
    ``g + p·g`` products and ``P`` of ``p²``; the two products of ``P`` with a side of 1 on both
    levels are local (31 - 2 = 29 for two levels).
    """
    g, p = 1, 2
    for _ in range(levels):
        g, p = g + p * g, p * p
    return g + p - 2


MONOMIALS: Final = ("s", "x", "y", "xy", "sx", "sy", "sxy")
"""The products of the last carry round's three mask bits, in the order of ``mono``/``monob``."""


@dataclass(frozen=True)
class Segment:
    """One named array of a batch's correlated randomness.

    Attributes:
        name: what it is (``A``, ``Cz``, ``l3.u``, ...).
        shape: its shape.
        boolean: XOR-shared (words of bits) rather than additively shared.
        derived: computed by the dealer from random segments (party 1 receives it explicitly).
        offset: position in the party's flat stream.
        owner: the party whose stream alone holds the value (the other's words there are
            unused), or ``None`` for a value shared between both streams.
    """

    name: str
    shape: tuple[int, ...]
    boolean: bool
    derived: bool
    offset: int
    owner: int | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    """The segments of one batch: ``kind`` ``t`` (training) or ``v`` (validation)."""

    kind: str
    rows: int
    columns: int
    knots: int
    segments: tuple[Segment, ...]

    @property
    def words(self) -> int:
        """Words of a party's full share of the batch."""
        last = self.segments[-1]
        return last.offset + last.size

    @property
    def derived_words(self) -> int:
        """Words party 1 receives from the dealer."""
        return sum(s.size for s in self.segments if s.derived)

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(name)


def layout_for(kind: str, rows: int, columns: int, knots: int) -> Layout:
    """The material layout of a batch (see the module docstring for the rounds it feeds)."""
    if kind not in ("t", "v") or rows < 1 or columns < 1 or not 1 <= knots <= MAX_KNOTS:
        raise ValidationError("bad batch layout")
    m, d, words = rows, columns, (knots + 1) // 2
    spec: list[tuple[str, tuple[int, ...], bool, bool]] = [
        ("A", (m, d), False, False),
        ("Bw", (d,), False, False),
        ("Cz", (m,), False, True),
    ]
    if kind == "t":
        spec += [
            ("Bg", (m,), False, False),
            ("Cg", (d,), False, True),
            ("sb", (m,), False, False),
            ("rb", (m, words), True, False),
        ]
        # The first round's ANDs have one private input on each side: party 0 masks its input
        # with u, which only its stream holds, party 1 with v, only in its own.
        first = (first_round_ands() * m, words)
        spec += [
            ("first.u", first, True, False),
            ("first.v", first, True, False),
            ("first.w", first, True, True),
        ]
        tree = [f"l{j}{x}" for j in range(FIRST_LEVELS + 1, CARRY_LEVELS) for x in "ab"]
        for name in tree:
            spec += [
                (f"{name}.u", (m, words), True, False),
                (f"{name}.v", (m, words), True, False),
                (f"{name}.w", (m, words), True, True),
            ]
        spec += [
            ("last.u", (m, words), True, False),
            ("last.v", (m, words), True, False),
            ("mono", (m, knots, len(MONOMIALS)), False, True),
            ("monob", (m, knots, len(MONOMIALS)), False, True),
        ]
    else:
        spec += [
            ("qa", (m,), False, False),
            ("qa2", (m,), False, True),
            ("da", (m,), False, False),
            ("db", (m,), False, False),
            ("dc", (1,), False, True),
        ]
    segments = []
    offset = 0
    owners = {"first.u": 0, "first.v": 1}
    for name, shape, boolean, derived in spec:
        segments.append(Segment(name, shape, boolean, derived, offset, owners.get(name)))
        offset += math.prod(shape)
    return Layout(kind, rows, columns, knots, tuple(segments))


def sign_bits(words: Ring, knots: int) -> Ring:
    """The comparison bits (bits 0 and 32 of each word) as ring 0/1 values, ``(m, knots)``."""
    packed = np.asarray(words, dtype=np.uint64) & MASK_SIGN_BITS
    bits = np.stack([packed & RING_ONE, (packed >> 32) & RING_ONE], axis=2)
    return np.ascontiguousarray(bits.reshape(packed.shape[0], -1)[:, :knots])


def _views(layout: Layout, flat: Ring) -> dict[str, Ring]:
    return {s.name: flat[s.offset : s.offset + s.size].reshape(s.shape) for s in layout.segments}


def _derive(layout: Layout, value: dict[str, Ring]) -> dict[str, Ring]:
    """The derived segments' values from the random segments' values (the dealer's secret)."""
    out: dict[str, Ring] = {"Cz": value["A"] @ value["Bw"]}
    if layout.kind == "t":
        out["Cg"] = value["A"].T @ value["Bg"]
        r_s, r_x, r_y = (
            sign_bits(value[name], layout.knots) for name in ("rb", "last.u", "last.v")
        )
        r_xy = r_x * r_y
        mono = np.stack([r_s, r_x, r_y, r_xy, r_s * r_x, r_s * r_y, r_s * r_xy], axis=2)
        out["mono"] = mono
        out["monob"] = mono * value["sb"][:, None, None]
        for s in layout.segments:
            if s.name.endswith(".w"):
                stem = s.name[:-2]
                out[s.name] = value[f"{stem}.u"] & value[f"{stem}.v"]
    else:
        out["qa2"] = value["qa"] * value["qa"]
        out["dc"] = np.atleast_1d(value["da"] @ value["db"]).astype(np.uint64)
    return out


def dealer_correction(seeds: tuple[bytes, bytes], epoch: int, batch: int, layout: Layout) -> Ring:
    """Party 1's derived segments for one batch: ``value - share₀`` (``XOR`` for bits).

    The dealer knows both seeds, so it knows every random value; party 0's shares of derived
    values come from its own stream, party 1's are what this returns (in layout order).
    """
    s0 = _views(layout, expand(seeds[0], epoch, batch, layout.words))
    s1 = _views(layout, expand(seeds[1], epoch, batch, layout.words))
    value: dict[str, Ring] = {}
    for s in layout.segments:
        if s.owner is not None:
            value[s.name] = (s0, s1)[s.owner][s.name]
        elif not s.derived:
            value[s.name] = s0[s.name] ^ s1[s.name] if s.boolean else s0[s.name] + s1[s.name]
    derived = _derive(layout, value)
    parts = []
    for s in layout.segments:
        if s.derived:
            secret = derived[s.name].reshape(s.shape)
            part = secret ^ s0[s.name] if s.boolean else secret - s0[s.name]
            parts.append(np.ascontiguousarray(part, dtype=np.uint64).ravel())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def material_share(
    party: int,
    seed: bytes,
    epoch: int,
    batch: int,
    layout: Layout,
    correction: Ring | None = None,
) -> dict[str, Ring]:
    """A party's share of one batch's material, by segment name.

    Party 0 reads everything from its stream; party 1 replaces the derived segments with the
    dealer's ``correction``.
    """
    flat = expand(seed, epoch, batch, layout.words)
    if party == 1:
        if correction is None or correction.shape != (layout.derived_words,):
            raise ValidationError("party 1 needs the dealer's derived segments of this batch")
        at = 0
        for s in layout.segments:
            if s.derived:
                flat[s.offset : s.offset + s.size] = correction[at : at + s.size]
                at += s.size
    elif party != 0:
        raise ValidationError("party must be 0 or 1")
    return _views(layout, flat)


def batch_sizes(n_train: int, n_valid: int, batch_size: int) -> list[tuple[str, int]]:
    """``(kind, rows)`` of every batch of an epoch: training batches, then validation batches."""
    if batch_size < 1:
        raise ValidationError("batch size must be positive")
    out = [("t", min(batch_size, n_train - s)) for s in range(0, n_train, batch_size)]
    out += [("v", min(batch_size, n_valid - s)) for s in range(0, n_valid, batch_size)]
    return out


def update_scale(constants: Sequence[float]) -> int:
    """Bits ``K`` at which the public update constants are encoded (relative precision 2^-12).

    The update multiplies a weight share (``2^16``) by ``round(c·2^K)`` and truncates by ``K``;
    the product's magnitude is about ``|c·w|·2^(16+K)``, far below ``2^40`` for learning rates
    and penalties in use, which keeps the truncation's failure probability under ``2^-24``.
    """
    largest = max((abs(c) for c in constants if c), default=1.0)
    return max(0, min(40, _PRECISION_BITS - math.floor(math.log2(largest))))
