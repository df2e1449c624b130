"""Two-party secure SGD for logistic regression over Z_2^64: the arithmetic, without a transport.

Why a separate module: joint training (:mod:`trusted_space.protocols.train`) moves bytes between
the bank, the designated provider and the operator; *this* module is what each of the two compute
parties does with those bytes, written as a generator per party (``theirs = yield mine``) so that
the same code runs in one process (tests pair two generators directly) and across nodes (the
flow module feeds each generator the other side's messages).

Parties and roles. Party 0 is the bank (it holds the label), party 1 the designated provider.
Every feature column of every party is additively shared between them over Z_2^64 with
``f = 16`` fractional bits: a column of the bank is ``(x, 0)``, of the designated provider
``(0, x)``, of any other provider ``(x - r, r)`` with ``r`` from a seed that provider sent to
party 1 only. The weights ``w`` start as shares of zero and never leave their shares until the
end. The operator is the **dealer**: it hands out correlated randomness and is never a compute
party (with a party's shares it could unmask everything: dealer and party must not collude).

One mini-batch (``m`` rows ``S``, ``d`` columns including the intercept column of ones), ten
opening rounds, each party sending one message per round::

    R1      open D = X_S - A, F = w - Bw          z = X_S·w      (matrix triple A, Bw, A·Bw)
    R2-R7   carry circuit on the low 32 bits      [z > t_k] for each knot t_k, XOR-shared
    R8      open c = bit XOR r                    the bits as arithmetic shares (B2A)
    R9      open beta - a, z - b                  beta(z)·z         (elementwise triple)
    R10     open F' = δ - Bg                      g = X_Sᵀ·δ      (triple Aᵀ, Bg, Aᵀ·Bg; same A)
    local   w ← w - (lr/m)·g - lr·λ·w             (public constants at 2^-12 relative precision)

**Sigmoid.** ``sigmoid(z)`` is replaced by the piecewise-linear interpolation of the sigmoid at
public knots
``t_1 < … < t_K`` (0 below ``t_1``, 1 above ``t_K``), written as hinges
``alpha(z) + beta(z)·z`` with ``alpha = Σ_k [z > t_k]·Δalpha_k`` and
``beta = Σ_k [z > t_k]·Δbeta_k`` — one
comparison per knot (all in the same rounds) and a single product. Polynomials cannot do this job
on real data: with standardised but heavy-tailed features a logit of -25 appears during training,
where any low-degree polynomial explodes (``docs/protocols.md`` has the measurements).

**Comparison** ``[z > t] = MSB(t - z)``. With ``|t - z| < 2^32`` at ``2^-8`` resolution the sign
is bit 32 of ``(x₀ mod 2^33) + (x₁ mod 2^33)``: the two top bits XOR the carry out of the low 32
bits, ``carry = G`` of a Kogge-Stone-style prefix over ``g = a∧b``, ``p = a⊕b`` where ``a`` is
party 0's low word and ``b`` party 1's — one AND round for the leaves, five for the tree (two
comparisons share one 64-bit word: the tree never crosses bit 32). ANDs use XOR-shared Beaver
triples; every opened word is masked by a uniform triple word, so openings are uniform.

**Truncation** is SecureML's local 2-party truncation (:func:`crypto.sharing.truncate_2pc`). It
fails (an error of about ``2^48``) with probability ``|x|/2^64`` for a ring value ``x``; every
truncation here is placed where ``|x| ≤ 2^40`` (probability ≤ 2^-24, typically 2^-30), see
:func:`update_scale`. A failure shows as an absurd held-out loss or weight, which the flow refuses
to release.

**Dealer material, compressed with seeds.** Each party receives a 32-byte seed once. For batch
``b`` of epoch ``e`` a party expands AES-256-CTR(seed, nonce ``e‖b‖0``) into the batch's
:class:`Layout`: its share of every *random* value (``A``, ``Bw``, triple inputs, ...). Party 0
takes its shares of the *derived* values (``A·Bw``, ``u∧v``, ...) from its stream too; party 1
receives them explicitly from the dealer (:func:`dealer_correction`: the derived value minus
party 0's share). So party 0 never fetches anything after its seed, and party 1 fetches only the
derived parts (about a third of the material). The dealer learns shapes only: not the rows, not
the schedule, not a single opening.

**Validation** (early stopping): the bank keeps a held-out split; per epoch the parties compute
shares of ``Σ z²/8 - (2y-1)·z/2`` (the second-order Taylor expansion of the log-loss around 0:
one square pair and one dot-product triple) and only party 0 learns the sum — a single scalar per
epoch. No gradient, logit or prediction is ever opened.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto.sharing import truncate_2pc
from trusted_space.errors import ValidationError

__all__ = [
    "CMP_FRAC_BITS",
    "FRAC_BITS",
    "MASK_SIGN_BITS",
    "SEED_BYTES",
    "Exchange",
    "Layout",
    "Party",
    "PartyProgram",
    "Segment",
    "Sigmoid",
    "batch_sizes",
    "dealer_correction",
    "decode_ring",
    "encode_ring",
    "expand",
    "layout_for",
    "material_share",
    "pack_messages",
    "run_pair",
    "unpack_messages",
    "update_scale",
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
_LOW32: Final = np.uint64((1 << 32) - 1)
_ONE: Final = np.uint64(1)
_LEVELS: Final = 5  # log2(32): the carry tree over 32-bit halves
_PRECISION_BITS: Final = 12  # relative precision of the public update constants
_MAX_KNOTS: Final = 16


def _level_mask(level: int) -> np.uint64:
    """Bits at positions that are multiples of ``2^level`` (level 5: bits 0 and 32)."""
    step = 1 << level
    value = 0
    for p in range(0, 64, step):
        value |= 1 << p
    return np.uint64(value)


_MASKS: Final = tuple(_level_mask(j) for j in range(_LEVELS + 1))


# ----------------------------------------------------------------------------------------------
# Ring helpers
# ----------------------------------------------------------------------------------------------


def encode_ring(values: npt.ArrayLike, frac_bits: int = FRAC_BITS) -> Ring:
    """Reals as two's-complement fixed point in Z_2^64, refusing non-finite or huge values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size and not np.all(np.isfinite(x)):
        raise ValidationError("a value to encode is not finite")
    scaled = np.rint(np.ldexp(x, frac_bits))
    if scaled.size and float(np.max(np.abs(scaled))) >= 2.0**62:
        raise ValidationError("a value is too large for the fixed-point ring")
    return scaled.astype(np.int64).view(np.uint64)


def decode_ring(values: Ring, frac_bits: int = FRAC_BITS) -> FloatArray:
    """Inverse of :func:`encode_ring`."""
    return np.ldexp(
        np.asarray(values, dtype=np.uint64).view(np.int64).astype(np.float64), -frac_bits
    )


def _ring_const(value: int) -> np.uint64:
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


# ----------------------------------------------------------------------------------------------
# Sigmoid approximation
# ----------------------------------------------------------------------------------------------


def _sigmoid(z: npt.ArrayLike) -> FloatArray:
    x = np.asarray(z, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ez = np.exp(x[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


@dataclass(frozen=True)
class Sigmoid:
    """The piecewise-linear interpolation of the sigmoid at ``knots`` (0 below, 1 above).

    Attributes:
        knots: strictly increasing public knots, ``|t| ≤ 64``, at most 16, multiples of ``2^-8``.
    """

    knots: tuple[float, ...] = (-6.0, -3.0, -1.0, 1.0, 3.0, 6.0)

    def __post_init__(self) -> None:
        knots = tuple(float(t) for t in self.knots)
        object.__setattr__(self, "knots", knots)
        if not 2 <= len(knots) <= _MAX_KNOTS:
            raise ValidationError(f"sigmoid knots: 2 to {_MAX_KNOTS} knots")
        if any(not math.isfinite(t) or abs(t) > 64 for t in knots):
            raise ValidationError("sigmoid knots must be finite and within [-64, 64]")
        if any(b <= a for a, b in itertools.pairwise(knots)):
            raise ValidationError("sigmoid knots must be strictly increasing")
        if any(t * (1 << CMP_FRAC_BITS) != round(t * (1 << CMP_FRAC_BITS)) for t in knots):
            raise ValidationError(f"sigmoid knots must be multiples of 2^-{CMP_FRAC_BITS}")

    @property
    def words(self) -> int:
        """Packed comparison words per row (two comparisons per 64-bit word)."""
        return (len(self.knots) + 1) // 2

    def hinges(self) -> tuple[FloatArray, FloatArray]:
        """``(Δα, Δβ)``: the change of intercept and slope at each knot."""
        t = np.array(self.knots)
        s = _sigmoid(t)
        alpha = np.zeros(len(t) + 1)
        beta = np.zeros(len(t) + 1)
        slopes = np.diff(s) / np.diff(t)
        beta[1:-1] = slopes
        alpha[1:-1] = s[:-1] - slopes * t[:-1]
        alpha[-1] = 1.0
        return np.diff(alpha), np.diff(beta)

    def __call__(self, z: npt.ArrayLike) -> FloatArray:
        """The approximation in float64 (what the shares compute, up to fixed point)."""
        x = np.asarray(z, dtype=np.float64)
        d_alpha, d_beta = self.hinges()
        above = x[..., None] > np.array(self.knots)
        return np.asarray(above @ d_alpha + (above @ d_beta) * x, dtype=np.float64)

    def to_json(self) -> list[float]:
        return list(self.knots)


# ----------------------------------------------------------------------------------------------
# Dealer material
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One named array of a batch's correlated randomness.

    Attributes:
        name: what it is (``A``, ``Cz``, ``l3.u``, ...).
        shape: its shape.
        boolean: XOR-shared (words of bits) rather than additively shared.
        derived: computed by the dealer from random segments (party 1 receives it explicitly).
        offset: position in the party's flat stream.
    """

    name: str
    shape: tuple[int, ...]
    boolean: bool
    derived: bool
    offset: int

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
    if kind not in ("t", "v") or rows < 1 or columns < 1 or not 1 <= knots <= _MAX_KNOTS:
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
            ("sa", (m,), False, False),
            ("sb", (m,), False, False),
            ("sc", (m,), False, True),
            ("rb", (m, words), True, False),
            ("ra", (m, knots), False, True),
        ]
        ands = ["leaf"] + [f"l{j}{x}" for j in range(1, _LEVELS) for x in "ab"] + [f"l{_LEVELS}a"]
        for name in ands:
            spec += [
                (f"{name}.u", (m, words), True, False),
                (f"{name}.v", (m, words), True, False),
                (f"{name}.w", (m, words), True, True),
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
    for name, shape, boolean, derived in spec:
        segments.append(Segment(name, shape, boolean, derived, offset))
        offset += math.prod(shape)
    return Layout(kind, rows, columns, knots, tuple(segments))


def _views(layout: Layout, flat: Ring) -> dict[str, Ring]:
    return {s.name: flat[s.offset : s.offset + s.size].reshape(s.shape) for s in layout.segments}


def _derive(layout: Layout, value: dict[str, Ring]) -> dict[str, Ring]:
    """The derived segments' values from the random segments' values (the dealer's secret)."""
    out: dict[str, Ring] = {"Cz": value["A"] @ value["Bw"]}
    if layout.kind == "t":
        out["Cg"] = value["A"].T @ value["Bg"]
        out["sc"] = value["sa"] * value["sb"]
        rb = value["rb"] & MASK_SIGN_BITS
        bits = np.stack([rb & _ONE, (rb >> 32) & _ONE], axis=2).reshape(layout.rows, -1)
        out["ra"] = np.ascontiguousarray(bits[:, : layout.knots])
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
        if not s.derived:
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


# ----------------------------------------------------------------------------------------------
# The party program
# ----------------------------------------------------------------------------------------------

Message = Ring
PartyProgram = Generator[Message, Message, Any]
MaterialSource = Callable[[int, int, Layout], dict[str, Ring]]


def _receive(theirs: Message, size: int) -> Ring:
    if not isinstance(theirs, np.ndarray) or theirs.dtype != np.uint64 or theirs.shape != (size,):
        raise ValidationError(f"the other party's message has the wrong size (expected {size})")
    return theirs


def _exchange(mine: Ring, expect: int) -> Generator[Message, Message, Ring]:
    theirs = yield np.ascontiguousarray(mine, dtype=np.uint64).ravel()
    return _receive(theirs, expect)


def _u64(x: Any) -> Ring:
    return np.asarray(x, dtype=np.uint64)


def _trunc(x: Ring, party: int, bits: int) -> Ring:
    return truncate_2pc(np.ascontiguousarray(x, dtype=np.uint64), party, bits)


@dataclass
class Party:
    """One compute party's state: its shares of the features, the label and the weights.

    Attributes:
        party: 0 (the bank) or 1 (the designated provider).
        x: its share of the feature matrix ``(n, d)`` (column 0 is the intercept's ones).
        y: party 0: the label at ``2^16`` (0 or 1); party 1: ``None`` (its share is zero).
        sigmoid: the approximation.
        learning_rate: ``lr``.
        l2: ``λ`` (the intercept, column 0, is not penalised).
        material: ``(epoch, batch, layout) -> share`` of that batch's dealer material.
        w: its share of the weights (``d``), starting at zero.
        history: its share of the weights after each epoch (epoch number -> share).
    """

    party: int
    x: Ring
    y: Ring | None
    sigmoid: Sigmoid
    learning_rate: float
    l2: float
    material: MaterialSource
    w: Ring = field(init=False)
    history: dict[int, Ring] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.party not in (0, 1):
            raise ValidationError("party must be 0 or 1")
        if self.x.dtype != np.uint64 or self.x.ndim != 2:
            raise ValidationError("x must be an (n, d) ring matrix")
        if (self.party == 0) != (self.y is not None):
            raise ValidationError("only party 0 holds the label")
        if self.y is not None and self.y.shape != (self.x.shape[0],):
            raise ValidationError("y must have one value per row")
        self.w = np.zeros(self.x.shape[1], dtype=np.uint64)
        d_alpha, d_beta = self.sigmoid.hinges()
        self._d_alpha = encode_ring(d_alpha)
        self._d_beta = encode_ring(d_beta)
        knots = encode_ring(np.array(self.sigmoid.knots), CMP_FRAC_BITS)
        self._knots = knots if self.party == 0 else np.zeros_like(knots)

    @property
    def columns(self) -> int:
        return int(self.x.shape[1])

    # -- one epoch -------------------------------------------------------------------------
    def epoch(
        self,
        epoch: int,
        order: npt.NDArray[np.int64],
        valid: npt.NDArray[np.int64],
        batch_size: int,
    ) -> PartyProgram:
        """The epoch's rounds; returns the held-out loss sum (party 0, ``2^32``) or ``None``.

        Args:
            epoch: the epoch number (1-based; selects the dealer streams).
            order: training rows in this epoch's order.
            valid: held-out rows (may be empty).
            batch_size: rows per batch.
        """
        sizes = batch_sizes(len(order), len(valid), batch_size)
        index = 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            layout = layout_for("t", len(rows), self.columns, len(self.sigmoid.knots))
            mat = self.material(epoch, index, layout)
            yield from self._train_batch(rows, mat)
            index += 1
        total = np.zeros(1, dtype=np.uint64)
        if len(valid):
            for start in range(0, len(valid), batch_size):
                rows = valid[start : start + batch_size]
                layout = layout_for("v", len(rows), self.columns, len(self.sigmoid.knots))
                mat = self.material(epoch, index, layout)
                total += yield from self._valid_batch(rows, mat)
                index += 1
            if index != len(sizes):  # pragma: no cover - both loops follow batch_sizes
                raise ValidationError("batch count mismatch")
            # Only party 0 learns the sum: party 1 sends its share, party 0 sends nothing.
            if self.party == 0:
                theirs = yield from _exchange(np.zeros(0, dtype=np.uint64), 1)
                self.history[epoch] = self.w.copy()
                return total + theirs
            yield from _exchange(total, 0)
        self.history[epoch] = self.w.copy()
        return None

    # -- training batch --------------------------------------------------------------------
    def _forward(
        self, rows: npt.NDArray[np.int64], mat: dict[str, Ring]
    ) -> Generator[Message, Message, tuple[Ring, Ring]]:
        """R1: shares of ``z = X_S·w`` at ``2^32``; returns ``(D, z32)``."""
        p0 = self.party == 0
        xs = self.x[rows]
        m, d = xs.shape
        mine_d = xs - mat["A"]
        mine_f = self.w - mat["Bw"]
        theirs = yield from _exchange(np.concatenate([mine_d.ravel(), mine_f]), m * d + d)
        big_d = mine_d + theirs[: m * d].reshape(m, d)
        big_f = mine_f + theirs[m * d :]
        z32 = big_d @ mat["Bw"] + mat["A"] @ big_f + mat["Cz"]
        if p0:
            z32 = z32 + big_d @ big_f
        return big_d, z32

    def _and(
        self, x: Ring, y: Ring, triples: Sequence[tuple[Ring, Ring, Ring]]
    ) -> Generator[Message, Message, Ring]:
        """XOR-shared AND of ``x`` and ``y`` (each split into ``len(triples)`` equal parts)."""
        u = np.concatenate([t[0].ravel() for t in triples])
        v = np.concatenate([t[1].ravel() for t in triples])
        w = np.concatenate([t[2].ravel() for t in triples])
        mine_d = x.ravel() ^ u
        mine_e = y.ravel() ^ v
        size = mine_d.size
        theirs = yield from _exchange(np.concatenate([mine_d, mine_e]), 2 * size)
        d = mine_d ^ theirs[:size]
        e = mine_e ^ theirs[size:]
        out = (d & v) ^ (e & u) ^ w
        if self.party == 0:
            out = out ^ (d & e)
        return _u64(out.reshape(x.shape))

    def _compare(self, zc: Ring, mat: dict[str, Ring]) -> Generator[Message, Message, Ring]:
        """R2-R8: arithmetic shares of ``[z > t_k]`` for every knot, ``(m, K)``."""
        p0 = self.party == 0
        m = zc.shape[0]
        k = len(self.sigmoid.knots)
        words = self.sigmoid.words
        x = self._knots[None, :] - zc[:, None]  # shares of t_k - z at 2^-8
        pad = np.zeros((m, 2 * words), dtype=np.uint64)
        pad[:, :k] = x
        low = _u64(pad & _LOW32)
        top = _u64((pad >> 32) & _ONE)
        low_w = _u64(low[:, 0::2] | (low[:, 1::2] << 32))
        top_w = _u64(top[:, 0::2] | (top[:, 1::2] << 32))
        zero = np.zeros_like(low_w)

        def triple(name: str) -> tuple[Ring, Ring, Ring]:
            return mat[f"{name}.u"], mat[f"{name}.v"], mat[f"{name}.w"]

        # Leaves: g = a AND b with a = party 0's low word, b = party 1's; p = a XOR b.
        g = yield from self._and(low_w if p0 else zero, zero if p0 else low_w, [triple("leaf")])
        p = low_w
        for level in range(1, _LEVELS + 1):
            shift = 1 << (level - 1)
            mask = _MASKS[level]
            p_hi = _u64(p >> shift)
            if level < _LEVELS:
                both = yield from self._and(
                    np.concatenate([p_hi, p_hi]),
                    np.concatenate([g, p]),
                    [triple(f"l{level}a"), triple(f"l{level}b")],
                )
                g = _u64(((g >> shift) ^ both[:m]) & mask)
                p = _u64(both[m:] & mask)
            else:
                last = yield from self._and(p_hi, g, [triple(f"l{level}a")])
                g = _u64(((g >> shift) ^ last) & mask)
        msb = _u64((top_w ^ g) & MASK_SIGN_BITS)
        # R8: XOR-shared bits to additive shares with the dealer's random bit r.
        mine_c = msb ^ (mat["rb"] & MASK_SIGN_BITS)
        theirs = yield from _exchange(mine_c, mine_c.size)
        c = (mine_c ^ theirs.reshape(mine_c.shape)) & MASK_SIGN_BITS
        c_bits = np.stack([c & _ONE, (c >> 32) & _ONE], axis=2).reshape(m, -1)[:, :k]
        ra = mat["ra"]
        # bit = c + r - 2cr = c + r·(1 - 2c)
        bits = ra * (_ONE - (c_bits << 1))
        if p0:
            bits = bits + c_bits
        return np.asarray(bits, dtype=np.uint64)

    def _train_batch(
        self, rows: npt.NDArray[np.int64], mat: dict[str, Ring]
    ) -> Generator[Message, Message, None]:
        p0 = self.party == 0
        m = len(rows)
        big_d, z32 = yield from self._forward(rows, mat)
        z16 = _trunc(z32, self.party, FRAC_BITS)
        zc = _trunc(z32, self.party, 2 * FRAC_BITS - CMP_FRAC_BITS)
        bits = yield from self._compare(zc, mat)
        alpha = bits @ self._d_alpha
        beta = bits @ self._d_beta
        # R9: β(z)·z (β carries 2^16, z 2^16: truncate once).
        mine_d = beta - mat["sa"]
        mine_e = z16 - mat["sb"]
        theirs = yield from _exchange(np.concatenate([mine_d, mine_e]), 2 * m)
        d = mine_d + theirs[:m]
        e = mine_e + theirs[m:]
        prod = d * mat["sb"] + mat["sa"] * e + mat["sc"]
        if p0:
            prod = prod + d * e
        delta = alpha + _trunc(prod, self.party, FRAC_BITS)
        if self.y is not None:
            delta = delta - self.y[rows]
        # R10: g = X_Sᵀ·δ with the same mask A (X_S - A is already open).
        mine_f = delta - mat["Bg"]
        theirs = yield from _exchange(mine_f, m)
        big_f = mine_f + theirs
        g32 = big_d.T @ mat["Bg"] + mat["A"].T @ big_f + mat["Cg"]
        if p0:
            g32 = g32 + big_d.T @ big_f
        g16 = _trunc(g32, self.party, FRAC_BITS)
        c_grad = self.learning_rate / m
        c_decay = self.learning_rate * self.l2
        bits_k = update_scale([c_grad, c_decay])
        grad_const = _ring_const(round(c_grad * 2**bits_k))
        decay = np.full(self.columns, round(c_decay * 2**bits_k), dtype=np.int64)
        decay[0] = 0  # the intercept is not penalised
        step = g16 * grad_const + self.w * decay.view(np.uint64)
        self.w = self.w - _trunc(step, self.party, bits_k)

    # -- validation batch ------------------------------------------------------------------
    def _valid_batch(
        self, rows: npt.NDArray[np.int64], mat: dict[str, Ring]
    ) -> Generator[Message, Message, Ring]:
        """Shares of ``8·Σ (z²/8 - (2y-1)·z/2)`` over the rows, at ``2^32``."""
        p0 = self.party == 0
        m = len(rows)
        _, z32 = yield from self._forward(rows, mat)
        z16 = _trunc(z32, self.party, FRAC_BITS)
        y = self.y[rows] if self.y is not None else np.zeros(m, dtype=np.uint64)
        mine = [z16 - mat["qa"], y - mat["da"], z16 - mat["db"]]
        theirs = yield from _exchange(np.concatenate(mine), 3 * m)
        e1 = mine[0] + theirs[:m]
        d2 = mine[1] + theirs[m : 2 * m]
        e2 = mine[2] + theirs[2 * m :]
        sq = (e1 << 1) * mat["qa"] + mat["qa2"]
        yz = d2[None, :] @ mat["db"] + mat["da"][None, :] @ e2 + mat["dc"]
        if p0:
            sq = sq + e1 * e1
            yz = yz + d2[None, :] @ e2
        sz = np.atleast_1d(np.sum(z16, dtype=np.uint64)).astype(np.uint64) << FRAC_BITS
        total = np.atleast_1d(np.sum(sq, dtype=np.uint64)).astype(np.uint64)
        return np.asarray(total - (yz << 3) + (sz << 2), dtype=np.uint64)


# ----------------------------------------------------------------------------------------------
# Running two programs
# ----------------------------------------------------------------------------------------------


class Exchange:
    """One party's program, fed the other side's messages as they arrive.

    ``start()`` returns the first message; ``feed(messages)`` feeds the other party's messages
    in order and returns this party's messages produced meanwhile. When the program returns,
    :attr:`done` is set and :attr:`result` holds its value.
    """

    def __init__(self, program: PartyProgram) -> None:
        self._program = program
        self.done = False
        self.result: Any = None
        self._started = False

    def start(self) -> list[Message]:
        if self._started:
            raise ValidationError("the program already started")
        self._started = True
        try:
            return [next(self._program)]
        except StopIteration as stop:
            self.done, self.result = True, stop.value
            return []

    def feed(self, messages: Sequence[Message]) -> list[Message]:
        if not self._started:
            raise ValidationError("the program has not started")
        out: list[Message] = []
        for message in messages:
            if self.done:
                raise ValidationError("a message arrived after the program ended")
            try:
                out.append(self._program.send(message))
            except StopIteration as stop:
                self.done, self.result = True, stop.value
        return out


def run_pair(first: PartyProgram, second: PartyProgram) -> tuple[Any, Any, int]:
    """Run two party programs against each other in-process (tests, benchmarks).

    Returns:
        ``(result of first, result of second, exchanges)``, where an exchange is one message
        batch from the first party answered by the second — the number of calls the flow makes.
    """
    a, b = Exchange(first), Exchange(second)
    pending = a.start()
    calls = 0
    started = False
    while not (a.done and b.done):
        if not pending:
            raise ValidationError("protocol deadlock: party 0 has nothing to send")
        calls += 1
        replies = b.start() if not started else []
        started = True
        replies += b.feed(pending)
        pending = a.feed(replies)
    return a.result, b.result, calls
