"""The party program: one compute party's side of secure SGD, written as a generator of messages."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from crypto.sharing import truncate_2pc
from trusted_space.errors import ValidationError
from trusted_space.protocols.train_mpc.material import (
    FIRST_LEVELS,
    MONOMIALS,
    Layout,
    batch_sizes,
    layout_for,
    sign_bits,
    update_scale,
)
from trusted_space.protocols.train_mpc.ring import (
    CARRY_LEVELS,
    CMP_FRAC_BITS,
    FRAC_BITS,
    MASK_SIGN_BITS,
    RING_ONE,
    Ring,
    encode_ring,
    ring_const,
)
from trusted_space.protocols.train_mpc.sigmoid import Sigmoid

__all__ = ["MaterialSource", "Party", "PartyProgram", "and_shares", "level_mask", "with_opening"]

_LOW32: Final = np.uint64((1 << 32) - 1)


def level_mask(level: int) -> np.uint64:
    """Bits at positions that are multiples of ``2^level`` (level 5: bits 0 and 32)."""
    step = 1 << level
    value = 0
    for p in range(0, 64, step):
        value |= 1 << p
    return np.uint64(value)


_MASKS: Final = tuple(level_mask(j) for j in range(CARRY_LEVELS + 1))


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


def with_opening(
    program: Generator[Message, Message, Any], extra: Ring
) -> Generator[Message, Message, tuple[Any, Ring]]:
    """Run ``program`` with ``extra`` opened in its first round: ``(its result, extra opened)``.

    ``extra`` (this party's share) travels after the program's first message, and the other
    party's share of it after theirs, so an opening that is ready early costs no round of its own.
    """
    mine = np.ascontiguousarray(extra, dtype=np.uint64).ravel()
    first = next(program)
    theirs = yield np.concatenate([first, mine])
    if not isinstance(theirs, np.ndarray) or theirs.dtype != np.uint64:
        raise ValidationError("the other party's message has the wrong type")
    if theirs.shape[0] < mine.size:
        raise ValidationError("the other party's message is too short")
    split = theirs.shape[0] - mine.size
    opened = mine + _receive(theirs[split:], mine.size)
    message = theirs[:split]
    while True:
        try:
            message = yield program.send(message)
        except StopIteration as stop:
            return stop.value, opened.reshape(np.shape(extra))


def _u64(x: Any) -> Ring:
    return np.asarray(x, dtype=np.uint64)


def _trunc(x: Ring, party: int, bits: int) -> Ring:
    return truncate_2pc(np.ascontiguousarray(x, dtype=np.uint64), party, bits)


def and_shares(
    party: int, x: Ring, y: Ring, triples: Sequence[tuple[Ring, Ring, Ring]]
) -> Generator[Message, Message, Ring]:
    """Party ``party``'s share of the XOR-shared AND of ``x`` and ``y``, one opening round.

    ``triples`` are its shares ``(u, v, w)`` of XOR Beaver triples ``w = u AND v`` covering ``x``
    (each split into ``len(triples)`` equal parts). The opened ``x XOR u`` and ``y XOR v`` are
    uniform: the triple words are known to neither party.
    """
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
    if party == 0:
        out = out ^ (d & e)
    return _u64(out.reshape(x.shape))


def _private_and(party: int, own: Ring, mat: dict[str, Ring]) -> Generator[Message, Message, Ring]:
    """XOR shares of ``X AND Y`` for ``X`` party 0 knows and ``Y`` party 1 knows, one round.

    Party 0 opens ``X ⊕ u`` with ``u`` only it holds, party 1 ``Y ⊕ v`` with ``v`` only it
    holds (``first.u``, ``first.v``); the dealer shares ``u AND v`` (``first.w``). Then
    ``X·Y = X·(Y⊕v) ⊕ (X⊕u)·v ⊕ u·v``: party 0 takes the first term, party 1 the second.
    """
    mask = mat["first.u"] if party == 0 else mat["first.v"]
    mine = _u64(own ^ mask)
    theirs = yield from _exchange(mine, mine.size)
    theirs = theirs.reshape(mine.shape)
    out = (own & theirs) if party == 0 else (theirs & mask)
    return _u64(out ^ mat["first.w"])


Term = tuple[bool | None, Ring]
"""One product ``X·Y`` of a value ``X`` party 0 knows with a value ``Y`` party 1 knows, seen by
one party: ``(local, its side)``. ``local`` is ``None`` for a product that needs an AND round;
``True`` when the other side is 1 (this party holds the product), ``False`` when its own is."""


def _first_terms(low: Ring, p0: bool) -> tuple[list[Term], list[Term]]:
    """The carry tree's first :data:`FIRST_LEVELS` levels as sums of products of private values.

    With ``a`` party 0's low word and ``b`` party 1's, a bit's generate ``g = a·b`` and propagate
    ``p = a ⊕ b = a·1 ⊕ 1·b`` are XOR-sums of products ``X·Y`` (``X`` from ``a``'s bits, ``Y``
    from ``b``'s). A level's ``G = G_hi ⊕ P_hi·G_lo`` and ``P = P_hi·P_lo`` stay such sums (a
    product of two terms is the term of the products), so every product of the first levels is
    one AND of a value one party knows with one the other knows: all in one round.
    """
    ones = np.full_like(low, np.uint64(0xFFFF_FFFF_FFFF_FFFF))
    # (x is 1, y is 1, this party's side)
    g: list[tuple[bool, bool, Ring]] = [(False, False, low)]
    p: list[tuple[bool, bool, Ring]] = [(False, True, low if p0 else ones)]
    p.append((True, False, ones if p0 else low))
    for level in range(1, FIRST_LEVELS + 1):
        shift = 1 << (level - 1)

        def times(
            hi: list[tuple[bool, bool, Ring]], lo: list[tuple[bool, bool, Ring]], shift: int = shift
        ) -> list[tuple[bool, bool, Ring]]:
            return [
                (xh and xl, yh and yl, _u64((wh >> shift) & wl))
                for xh, yh, wh in hi
                for xl, yl, wl in lo
            ]

        g = [(x, y, _u64(w >> shift)) for x, y, w in g] + times(p, g)
        p = times(p, p)

    def term(x_one: bool, y_one: bool, word: Ring) -> Term:
        if not (x_one or y_one):
            return None, word
        return (y_one if p0 else x_one), word

    return [term(*t) for t in g], [term(*t) for t in p]


def _bit_polynomial(opened: Sequence[Ring], one: Any, mono: Ring) -> Ring:
    """Shares of ``one·bit`` for ``bit = S XOR (X AND Y)``, ``(m, K)``, from the opened bits.

    ``opened`` is ``(D_s, D_x, D_y)``, each ``D = B XOR r`` with the dealer's mask bit ``r``, so
    ``B = D + (1 - 2D)·r`` is linear in ``r`` and the bit is a polynomial in ``(r_s, r_x, r_y)``
    with public coefficients. ``mono`` holds shares of
    ``one`` times each monomial (:data:`MONOMIALS` order); ``one`` is the share of the constant
    term (party 0: 1, party 1: 0, for the bit itself; both parties' shares of ``z`` for ``bit·z``).
    """
    d_s, d_x, d_y = opened
    a_s, a_x, a_y = (RING_ONE - (d << 1) for d in opened)
    u_s, u_x, u_y, u_xy, u_sx, u_sy, u_sxy = (mono[:, :, i] for i in range(len(MONOMIALS)))
    # W = X·Y, S·W and S, each as one·(public) + Σ (public)·monomial.
    w = one * (d_x * d_y) + (d_x * a_y) * u_y + (d_y * a_x) * u_x + (a_x * a_y) * u_xy
    sw = d_s * w + a_s * (
        (d_x * d_y) * u_s + (d_x * a_y) * u_sy + (d_y * a_x) * u_sx + (a_x * a_y) * u_sxy
    )
    s = one * d_s + a_s * u_s
    return np.asarray(s + w - (sw << 1), dtype=np.uint64)


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
        return (yield from and_shares(self.party, x, y, triples))

    def _compare(
        self, zc: Ring, mat: dict[str, Ring]
    ) -> Generator[Message, Message, tuple[Ring, list[Ring]]]:
        """R2-R7: arithmetic shares of ``[z > t_k]`` for every knot, ``(m, K)``.

        Returns them and the last round's opened bits (for :func:`_bit_polynomial` on ``z``).
        """
        p0 = self.party == 0
        m = zc.shape[0]
        k = len(self.sigmoid.knots)
        words = self.sigmoid.words
        x = self._knots[None, :] - zc[:, None]  # shares of t_k - z at 2^-8
        pad = np.zeros((m, 2 * words), dtype=np.uint64)
        pad[:, :k] = x
        low = _u64(pad & _LOW32)
        top = _u64((pad >> 32) & RING_ONE)
        low_w = _u64(low[:, 0::2] | (low[:, 1::2] << 32))
        top_w = _u64(top[:, 0::2] | (top[:, 1::2] << 32))
        zero = np.zeros_like(low_w)

        def triple(name: str) -> tuple[Ring, Ring, Ring]:
            return mat[f"{name}.u"], mat[f"{name}.v"], mat[f"{name}.w"]

        # R2: the leaves and the first FIRST_LEVELS levels in one round (see _first_terms).
        g_terms, p_terms = _first_terms(low_w, p0)
        own = np.concatenate([t[1] for t in g_terms + p_terms if t[0] is None])
        first = yield from _private_and(self.party, own, mat)
        g, p = zero, zero
        at = 0
        for i, (local, word) in enumerate(g_terms + p_terms):
            if local is None:
                value = first[at * m : (at + 1) * m]
                at += 1
            else:
                value = word if local else zero
            if i < len(g_terms):
                g = _u64(g ^ value)
            else:
                p = _u64(p ^ value)
        g = _u64(g & _MASKS[FIRST_LEVELS])
        p = _u64(p & _MASKS[FIRST_LEVELS])
        for level in range(FIRST_LEVELS + 1, CARRY_LEVELS):
            shift = 1 << (level - 1)
            mask = _MASKS[level]
            p_hi = _u64(p >> shift)
            both = yield from self._and(
                np.concatenate([p_hi, p_hi]),
                np.concatenate([g, p]),
                [triple(f"l{level}a"), triple(f"l{level}b")],
            )
            g = _u64(((g >> shift) ^ both[:m]) & mask)
            p = _u64(both[m:] & mask)
        # R6: the last carry level and the bits' arithmetic form in one round. With
        # s = top XOR (g >> 16), x = p_hi, y = g: bit = s XOR (x AND y). Open s, x, y masked by the
        # dealer's bits r_s, r_x, r_y; then bit is a polynomial in the opened values and the masks
        # whose monomials' arithmetic shares the dealer sent (``mono``).
        shift = 1 << (CARRY_LEVELS - 1)
        mine = [
            _u64(((top_w ^ (g >> shift)) & MASK_SIGN_BITS) ^ mat["rb"]),
            _u64((p >> shift) ^ mat["last.u"]),
            _u64(g ^ mat["last.v"]),
        ]
        size = mine[0].size
        theirs = yield from _exchange(np.concatenate([w.ravel() for w in mine]), 3 * size)
        c = [
            sign_bits(w ^ theirs[i * size : (i + 1) * size].reshape(w.shape), k)
            for i, w in enumerate(mine)
        ]
        return _bit_polynomial(c, RING_ONE if p0 else np.uint64(0), mat["mono"]), c

    def _train_batch(
        self, rows: npt.NDArray[np.int64], mat: dict[str, Ring]
    ) -> Generator[Message, Message, None]:
        p0 = self.party == 0
        m = len(rows)
        big_d, z32 = yield from self._forward(rows, mat)
        z16 = _trunc(z32, self.party, FRAC_BITS)
        zc = _trunc(z32, self.party, 2 * FRAC_BITS - CMP_FRAC_BITS)
        # R2 also opens e = z - b, so that each [z > t_k]·z is local once the bit is (R7):
        # monomial·z = e·monomial + monomial·b, with the dealer's monomial·b (``monob``).
        (bits, opened), e = yield from with_opening(self._compare(zc, mat), z16 - mat["sb"])
        alpha = bits @ self._d_alpha
        # β(z)·z = Σ_k Δβ_k·[z > t_k]·z (β carries 2^16, z 2^16: truncate once).
        mono_z = e[:, None, None] * mat["mono"] + mat["monob"]
        bits_z = _bit_polynomial(opened, z16[:, None], mono_z)
        delta = alpha + _trunc(bits_z @ self._d_beta, self.party, FRAC_BITS)
        if self.y is not None:
            delta = delta - self.y[rows]
        # R8: g = X_Sᵀ·δ with the same mask A (X_S - A is already open).
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
        grad_const = ring_const(round(c_grad * 2**bits_k))
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
