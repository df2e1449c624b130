"""Raw-integer Paillier kernels that run in worker processes.

Why a separate module: the hot paths (encryption, CRT decryption, obfuscator generation and the
multi-exponentiations behind packed linear combinations) work on plain integers with ``gmpy2``
rather than on ``phe`` objects, which are slow and carry floating exponents. Everything here takes
and returns ``int`` (or lists of ``int``) so that it can cross a process boundary cheaply and
without pickling any object of ours or of ``phe``; nothing here checks its inputs, because the
public module :mod:`crypto.paillier` validates them before they get here.

Notation: ``n`` the public modulus, ``n2 = n**2``, generator ``g = n + 1`` so that
``g**m = 1 + m*n (mod n2)``; a full obfuscator is ``r**n mod n2`` for a fresh uniform unit ``r``,
a fixed-base one ``h**s * prod(subset of Y) mod n2`` (:func:`djn_obfuscators`).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence

import gmpy2
import numpy as np
import numpy.typing as npt

__all__ = [
    "DjnTables",
    "bucket_block",
    "bucket_blocks",
    "crt_decrypt_many",
    "djn_obfuscators",
    "encrypt_many",
    "fixed_base_table",
    "make_obfuscators",
    "multiexp_powmod",
    "multiexp_straus",
]


def _random_unit(n: int) -> int:
    while True:
        r = secrets.randbelow(n)
        if r > 1 and gmpy2.gcd(r, n) == 1:
            return r


def make_obfuscators(n: int, count: int, p: int = 0, q: int = 0) -> list[int]:
    """Return ``count`` fresh obfuscators ``r**n mod n**2``.

    With the factors ``p`` and ``q`` (only the key owner has them) each power is computed modulo
    ``p**2`` and ``q**2`` with the exponent reduced modulo ``p*(p-1)`` and ``q*(q-1)`` and then
    recombined, which is about three times faster than the public computation.
    """
    n_m = gmpy2.mpz(n)
    n2 = n_m * n_m
    out: list[int] = []
    if p and q:
        p_m, q_m = gmpy2.mpz(p), gmpy2.mpz(q)
        p2, q2 = p_m * p_m, q_m * q_m
        ep, eq = n_m % (p_m * (p_m - 1)), n_m % (q_m * (q_m - 1))
        q2_inv = gmpy2.invert(q2, p2)
        for _ in range(count):
            r = gmpy2.mpz(_random_unit(n))
            xp = gmpy2.powmod(r % p2, ep, p2)
            xq = gmpy2.powmod(r % q2, eq, q2)
            out.append(int(xq + ((xp - xq) * q2_inv % p2) * q2))
        return out
    for _ in range(count):
        out.append(int(gmpy2.powmod(_random_unit(n), n_m, n2)))
    return out


_DJN_WINDOW = 8
_SUBSET_GROUP = 8


class DjnTables:
    """Fixed-base obfuscators ``h**s * prod_{i in S} Y_i mod n**2`` for one key, base and subset.

    ``h`` and every ``Y_i`` are full obfuscators (``x**n``, ``y_i**n`` for uniform units) drawn
    once by the caller. Per obfuscator, ``s`` is uniform in ``[0, 2**exponent_bits)`` and ``S``
    a uniform subset (``secrets``). ``h**s`` costs one multiplication per 8-bit window of ``s``,
    from a table of ``h**(d * 2**(8*i))`` (about 16 MB for a 1024-bit ``s`` under a 2048-bit key,
    built once), and the subset one per group of 8 ``Y_i``, from a table of their 256 products.
    :class:`crypto.paillier.ObfuscatorPool` says why both parts are there.
    """

    def __init__(self, n: int, h: int, subset: Sequence[int], exponent_bits: int) -> None:
        n_m = gmpy2.mpz(n)
        self.n2 = n2 = n_m * n_m
        self.exponent_bits = exponent_bits
        size = 1 << _DJN_WINDOW
        self.windows: list[list[gmpy2.mpz]] = []
        base = gmpy2.mpz(h)
        for _ in range(-(-exponent_bits // _DJN_WINDOW)):
            row = [gmpy2.mpz(1), base]
            for _d in range(2, size):
                row.append(row[-1] * base % n2)
            self.windows.append(row)
            base = row[-1] * base % n2
        self.groups: list[list[gmpy2.mpz]] = []
        for start in range(0, len(subset), _SUBSET_GROUP):
            products = [gmpy2.mpz(1)]
            for y in subset[start : start + _SUBSET_GROUP]:
                products += [v * gmpy2.mpz(y) % n2 for v in products]
            self.groups.append(products)

    @property
    def subset_bits(self) -> int:
        """Bits of the subset mask: one per ``Y_i``, rounded up to whole groups of 8."""
        return _SUBSET_GROUP * len(self.groups)

    def compose(self, s: int, pick: int) -> int:
        """``h**s * prod_{i : bit i of pick is set} Y_i mod n**2`` for ``0 <= s < 2**bits``."""
        n2 = self.n2
        window_mask = (1 << _DJN_WINDOW) - 1
        group_mask = (1 << _SUBSET_GROUP) - 1
        acc = gmpy2.mpz(1)
        for row in self.windows:
            digit = s & window_mask
            if digit:
                acc = acc * row[digit] % n2
            s >>= _DJN_WINDOW
        for products in self.groups:
            chosen = pick & group_mask
            if chosen:
                acc = acc * products[chosen] % n2
            pick >>= _SUBSET_GROUP
        return int(acc)

    def draw(self, count: int) -> list[int]:
        """Return ``count`` fresh obfuscators (``s`` and the subset from ``secrets``)."""
        bits, subset_bits = self.exponent_bits, self.subset_bits
        return [
            self.compose(secrets.randbits(bits), secrets.randbits(subset_bits))
            for _ in range(count)
        ]


_WORKER_TABLES: dict[tuple[int, int, tuple[int, ...], int], DjnTables] = {}
_WORKER_LOCK = threading.Lock()


def djn_obfuscators(
    n: int, h: int, subset: Sequence[int], count: int, exponent_bits: int
) -> list[int]:
    """:meth:`DjnTables.draw` in a worker process, whose tables are built on its first call.

    A worker keeps the tables of the last (key, base, subset) only: a pool's workers live as long
    as its engine, which serves one key.
    """
    key = (n, h, tuple(subset), exponent_bits)
    with _WORKER_LOCK:
        tables = _WORKER_TABLES.get(key)
        if tables is None:
            _WORKER_TABLES.clear()
            tables = _WORKER_TABLES[key] = DjnTables(n, h, subset, exponent_bits)
    return tables.draw(count)


def encrypt_many(n: int, plaintexts: Sequence[int], obfuscators: Sequence[int]) -> list[int]:
    """Encrypt residues ``0 <= m < n`` as ``(1 + m*n) * obfuscator mod n**2``."""
    n_m = gmpy2.mpz(n)
    n2 = n_m * n_m
    return [int((1 + m * n_m) * o % n2) for m, o in zip(plaintexts, obfuscators, strict=True)]


def crt_decrypt_many(p: int, q: int, ciphertexts: Sequence[int]) -> list[int]:
    """Decrypt with the Chinese remainder theorem; returns residues modulo ``n``.

    ``m_p = L_p(c**(p-1) mod p**2) * h_p mod p`` with ``h_p = L_p(g**(p-1) mod p**2)**-1 mod p``
    and ``L_p(u) = (u - 1) / p``; likewise for ``q``; then recombine modulo ``n = p*q``.
    """
    p_m, q_m = gmpy2.mpz(p), gmpy2.mpz(q)
    p2, q2 = p_m * p_m, q_m * q_m
    n_m = p_m * q_m
    g = n_m + 1
    hp = gmpy2.invert((gmpy2.powmod(g, p_m - 1, p2) - 1) // p_m, p_m)
    hq = gmpy2.invert((gmpy2.powmod(g, q_m - 1, q2) - 1) // q_m, q_m)
    q_inv = gmpy2.invert(q_m, p_m)
    out: list[int] = []
    for c in ciphertexts:
        c_m = gmpy2.mpz(c)
        mp = (gmpy2.powmod(c_m % p2, p_m - 1, p2) - 1) // p_m * hp % p_m
        mq = (gmpy2.powmod(c_m % q2, q_m - 1, q2) - 1) // q_m * hq % q_m
        out.append(int(mq + ((mp - mq) * q_inv % p_m) * q_m))
    return out


def multiexp_powmod(n2: int, bases: Sequence[int], exponents: Sequence[int]) -> int:
    """Reference product ``prod_j bases[j]**exponents[j] mod n2``: one ``powmod`` per term.

    Negative exponents use the modular inverse of the base.
    """
    n2_m = gmpy2.mpz(n2)
    acc = gmpy2.mpz(1)
    for b, e in zip(bases, exponents, strict=True):
        if e == 0:
            continue
        acc = acc * gmpy2.powmod(b, e, n2_m) % n2_m
    return int(acc)


def multiexp_straus(
    n2: int, bases: Sequence[int], exponents: Sequence[int], window: int = 4
) -> int:
    """Simultaneous (Straus / Shamir) multi-exponentiation with shared squarings.

    One chain of squarings serves every term; each term contributes a table lookup and one
    multiplication per non-zero ``window``-bit digit. Negative exponents use the inverse base.
    """
    n2_m = gmpy2.mpz(n2)
    size = 1 << window
    mask = size - 1
    tables: list[list[gmpy2.mpz]] = []
    mags: list[int] = []
    for b, e in zip(bases, exponents, strict=True):
        if e == 0:
            continue
        base = gmpy2.mpz(b) if e > 0 else gmpy2.invert(gmpy2.mpz(b), n2_m)
        row = [gmpy2.mpz(1), base]
        for _ in range(2, size):
            row.append(row[-1] * base % n2_m)
        tables.append(row)
        mags.append(abs(e))
    if not mags:
        return 1
    top = (max(mags).bit_length() + window - 1) // window
    acc = gmpy2.mpz(1)
    for t in range(top - 1, -1, -1):
        for _ in range(window):
            acc = acc * acc % n2_m
        shift = t * window
        for row, mag in zip(tables, mags, strict=True):
            d = (mag >> shift) & mask
            if d:
                acc = acc * row[d] % n2_m
    return int(acc)


def fixed_base_table(
    n2: int, base: int, slots: int, slot_bits: int, windows: int, window: int
) -> tuple[list[int], list[int]]:
    """Powers ``base**(±2**(slot*slot_bits + t*window))`` for the fixed-base bucket method.

    Returns ``(positive, negative)``, each indexed by ``slot * windows + t``.
    """
    n2_m = gmpy2.mpz(n2)
    pos: list[int] = []
    cur = gmpy2.mpz(base)
    for _ in range(slots):
        row = cur
        for _t in range(windows):
            pos.append(int(row))
            for _ in range(window):
                row = row * row % n2_m
        for _ in range(slot_bits):
            cur = cur * cur % n2_m
    neg = [int(gmpy2.invert(v, n2_m)) for v in pos]
    return pos, neg


def bucket_block(
    n2: int,
    table: Sequence[int],
    features: npt.NDArray[np.int64],
    windows: int,
    window: int,
    slots: int,
) -> int:
    """One packed block ``prod_j E(w_j)**(sum_i x_ij * 2**(i*s))`` by the bucket method.

    ``table`` is the flattened ``[sign][j][slot][t]`` list of :func:`fixed_base_table` outputs for
    every term ``j``; ``features`` has shape ``(rows, terms)`` with ``rows <= slots``. ``|x_ij|``
    is written in balanced base ``2**window`` (digits in ``(-2**(window-1), 2**(window-1)]``, so
    ``windows * window`` must exceed its bit length); every non-zero digit ``d`` multiplies its
    precomputed base, or the inverse base when ``d`` and ``x_ij`` differ in sign, into bucket
    ``|d|`` (no squarings at all). The buckets are then folded as ``prod_d B_d**d`` with two
    running products: ``2**window`` multiplications per block, half of what unsigned digits
    need for the same window.
    """
    n2_m = gmpy2.mpz(n2)
    rows, terms = features.shape
    mask = (1 << window) - 1
    half = 1 << (window - 1)
    neg = features < 0
    mag = np.abs(features)
    slot_idx = np.arange(rows, dtype=np.int64)[:, None]
    term_idx = np.arange(terms, dtype=np.int64)[None, :]
    base_idx = (term_idx * slots + slot_idx) * windows
    flip = terms * slots * windows
    buckets: list[gmpy2.mpz | None] = [None] * (half + 1)
    carry = np.zeros_like(mag)
    for t in range(windows):
        digits = ((mag >> (t * window)) & mask) + carry
        carry = (digits > half).astype(np.int64)
        digits -= carry << window
        nz = np.nonzero(digits)
        picked = digits[nz]
        index = base_idx[nz] + t + flip * (neg[nz] ^ (picked < 0))
        for d, b in zip(np.abs(picked).tolist(), index.tolist(), strict=True):
            cur = buckets[d]
            base = table[b]
            buckets[d] = gmpy2.mpz(base) if cur is None else cur * base % n2_m
    running: gmpy2.mpz | None = None
    acc: gmpy2.mpz | None = None
    for d in range(half, 0, -1):
        bucket = buckets[d]
        if bucket is not None:
            running = bucket if running is None else running * bucket % n2_m
        if running is not None:
            acc = running if acc is None else acc * running % n2_m
    return 1 if acc is None else int(acc)


def bucket_blocks(
    n2: int,
    table: Sequence[int],
    blocks: Sequence[npt.NDArray[np.int64]],
    windows: int,
    window: int,
    slots: int,
) -> list[int]:
    """Apply :func:`bucket_block` to several blocks (one task for a worker process)."""
    tab = [gmpy2.mpz(v) for v in table]
    return [bucket_block(n2, tab, blk, windows, window, slots) for blk in blocks]
