"""Additive secret sharing over Z_2^64 with Beaver-triple multiplication and truncation.

Why: in the ``additive`` protocol a provider's features and an analyst's weights are split into
random-looking shares held by different nodes, so that joint scores are computed without any node
seeing another's inputs. This module holds the arithmetic only; moving bytes between nodes is the
job of the protocol code in ``trusted_space`` (every party-side step here takes and returns plain
values or wire messages, so it runs unchanged in-process or across real nodes).

Threat model (DESIGN section 10): semi-honest, non-colluding parties; the operator acts as a
semi-trusted *dealer* of correlated randomness and never sees data. What each party learns:

* A single share is uniformly random in the ring: it reveals nothing about the secret.
* A Beaver multiplication opens ``d = x - a`` and ``e = y - b``; ``a`` and ``b`` are uniform and
  known only to the dealer, so the openings are uniform and reveal nothing to the parties. The
  dealer never sees ``d`` or ``e`` (it would learn ``x`` and ``y`` if it did: dealer and party must
  not collude). **Reusing a triple is fatal**: two openings ``x - a`` and ``x' - a`` give away
  ``x - x'``. So every triple has an id, the dealer issues an id once, a :class:`TripleBatch`
  hands each party's share out once, and each party's :class:`TripleLedger` refuses to consume an
  id twice; all three raise :class:`~crypto.errors.TripleReuseError`.
* Randomness comes from a CSPRNG (AES-256-CTR under a fresh key from :mod:`secrets`). numpy's PCG64
  is *not* used by default: it is not cryptographically secure, and a party that sees part of a
  dealer's PCG stream (its own share) could try to predict the rest (another party's share).
  An explicit ``numpy.random.Generator`` can be passed for reproducible tests only.

Truncation (fixed point products carry ``2f`` fractional bits, see :mod:`crypto.fixedpoint`):

* **Two parties**: :func:`truncate_2pc`, the local truncation of SecureML (Mohassel and Zhang,
  2017): party 0 shifts its share arithmetically, party 1 computes ``ceil(x1 / 2^f)`` (equal to
  ``-((-x1) >> f)``). No interaction. The result is within one unit (``2^-f``) of ``x / 2^f`` unless
  the two signed shares overflow when added, which for a uniform share happens with probability
  exactly ``|x| / 2^64`` (:func:`truncation_failure_probability`); SecureML states the bound
  ``2^(l_x + 1 - 64)`` for ``|x| < 2^l_x`` (:func:`truncation_failure_bound`). A failure gives an
  error of about ``2^(64-f)``, which the fixed-point ``decode(bound=...)`` check catches.
* **More than two parties**: the local trick fails with constant probability, so the dealer hands
  out *truncation pairs* ``(r, ceil(r / 2^f))`` (:meth:`TripleDealer.truncation_pairs`); the parties
  open ``m = x - r`` (uniform, so nothing leaks) and set ``z = floor(m / 2^f) + ceil(r / 2^f)``.
  Same error and the same failure probability ``|x| / 2^64``, one round of communication.
  :func:`truncate` uses the local method for two parties and requires pairs for more.

Wire format (``to_bytes`` / ``from_bytes`` on :class:`ShareFrame`, :class:`TripleShare`,
:class:`TruncationPairShare`, :class:`BeaverMessage`): little-endian, never pickle::

    magic "TSAS" | version u8 | kind u8 | party u16 | n_parties u16 | aux u16 | tag_len u16
    | n_arrays u8 | tag (utf-8) | per array: ndim u8, ndim x dim u64 | payloads (uint64 LE)

Malformed, truncated, oversized or inconsistent bytes raise
:class:`~crypto.errors.SerializationError`, never another exception.
"""

from __future__ import annotations

import math
import re
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto._wire import read_header
from crypto.errors import (
    CryptoError,
    EncodingError,
    KeyMismatchError,
    ParameterError,
    SerializationError,
    TripleReuseError,
)

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "MAX_WIRE_BYTES",
    "BeaverMessage",
    "BeaverOpening",
    "ShareFrame",
    "TripleBatch",
    "TripleDealer",
    "TripleKind",
    "TripleLedger",
    "TripleShare",
    "TruncationBatch",
    "TruncationPairShare",
    "add",
    "add_public",
    "beaver_finish",
    "beaver_mask",
    "beaver_multiply",
    "beaver_open",
    "matmul_public",
    "mul_public",
    "neg",
    "public_matmul",
    "random_ring",
    "reconstruct",
    "row_blocks",
    "share",
    "sub",
    "truncate",
    "truncate_2pc",
    "truncation_failure_bound",
    "truncation_failure_probability",
    "truncation_finish",
    "truncation_mask",
    "truncation_open",
]

Ring = npt.NDArray[np.uint64]
TripleKind = Literal["elementwise", "matmul"]

DEFAULT_BLOCK_ROWS: Final = 1 << 16
"""Rows per block when a large matrix product is streamed block by block (8 MiB at k = 16)."""

MAX_WIRE_BYTES: Final = 1 << 31
"""Default cap on a message accepted by ``from_bytes`` (2 GiB): larger input is refused."""

_RING_BITS: Final = 64
_MAX_PARTIES: Final = 1024
_MAX_NDIM: Final = 4
_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
_RNG_CHUNK: Final = 1 << 22
_MAGIC: Final = b"TSAS"
_VERSION: Final = 1
_HEADER: Final = struct.Struct("<4sBBHHHHB")
_KIND_SHARE: Final = 1
_KIND_TRIPLE_ELEMENTWISE: Final = 2
_KIND_TRIPLE_MATMUL: Final = 3
_KIND_TRUNCATION_PAIR: Final = 4
_KIND_BEAVER_MESSAGE: Final = 5
_ARRAYS_PER_KIND: Final = {
    _KIND_SHARE: 1,
    _KIND_TRIPLE_ELEMENTWISE: 3,
    _KIND_TRIPLE_MATMUL: 3,
    _KIND_TRUNCATION_PAIR: 2,
    _KIND_BEAVER_MESSAGE: 2,
}
_WIRE_DTYPE: Final = np.dtype("<u8")


# --------------------------------------------------------------------------------------------
# Randomness and validation helpers
# --------------------------------------------------------------------------------------------


def random_ring(shape: int | Sequence[int], rng: np.random.Generator | None = None) -> Ring:
    """Draw uniformly random ring elements.

    Args:
        shape: Shape of the result.
        rng: For reproducible tests only. ``None`` (the default, and the only choice for real use)
            draws from AES-256-CTR keyed with 32 bytes from :mod:`secrets`, a CSPRNG.

    Returns:
        A new ``uint64`` array of the given shape.

    Raises:
        ParameterError: If ``shape`` is invalid or ``rng`` is not a ``numpy.random.Generator``.
    """
    dims = _shape(shape)
    count = math.prod(dims)
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise ParameterError("rng must be a numpy.random.Generator")
        return rng.integers(0, 1 << _RING_BITS, size=dims, dtype=np.uint64)
    nbytes = count * 8
    out = np.empty(count + 2, dtype=np.uint64)  # 16 spare bytes: update_into needs block slack
    view = out.view(np.uint8).data
    encryptor = Cipher(algorithms.AES(secrets.token_bytes(32)), modes.CTR(bytes(16))).encryptor()
    zeros = memoryview(bytes(min(nbytes, _RNG_CHUNK)))
    for offset in range(0, nbytes, _RNG_CHUNK):
        size = min(_RNG_CHUNK, nbytes - offset)
        encryptor.update_into(zeros[:size], view[offset : offset + size + 16])
    return out[:count].reshape(dims)


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    if len(dims) > _MAX_NDIM or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0 for d in dims
    ):
        raise ParameterError(f"shape must be up to {_MAX_NDIM} non-negative ints")
    return tuple(int(d) for d in dims)


def _ring(values: object, what: str = "share") -> Ring:
    if not isinstance(values, np.ndarray) or values.dtype != np.uint64:
        raise EncodingError(f"{what} must be a numpy uint64 array (ring elements)")
    return values


def _same_shape(x: Ring, y: Ring) -> None:
    if x.shape != y.shape:
        raise ParameterError(f"shape mismatch: {x.shape} vs {y.shape}")


def _public(value: object) -> Ring:
    """Convert a public integer (or integer array) to ring elements, two's complement."""
    if isinstance(value, bool | np.bool_):
        raise EncodingError("public values must be integers, not booleans")
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 64):
            raise EncodingError("public integer outside [-2^63, 2^64)")
        return np.asarray(value % (1 << 64), dtype=np.uint64)
    arr = np.asarray(value)
    if arr.dtype.kind == "u":
        return arr.astype(np.uint64)
    if arr.dtype.kind == "i":
        return arr.astype(np.int64).view(np.uint64)
    raise EncodingError(
        f"public values must be integers (encode reals with FixedPoint first), got {arr.dtype}"
    )


def _broadcasts_to(public: tuple[int, ...], target: tuple[int, ...]) -> None:
    try:
        result = np.broadcast_shapes(target, public)
    except ValueError as exc:
        raise ParameterError("public value does not broadcast to the share's shape") from exc
    if result != target:
        raise ParameterError("public value does not broadcast to the share's shape")


def _party(party: int, n_parties: int) -> None:
    if isinstance(n_parties, bool) or not isinstance(n_parties, int):
        raise ParameterError("n_parties must be an int")
    if not 2 <= n_parties <= _MAX_PARTIES:
        raise ParameterError(f"n_parties must lie in [2, {_MAX_PARTIES}]")
    if isinstance(party, bool) or not isinstance(party, int) or not 0 <= party < n_parties:
        raise ParameterError("party must be an int in [0, n_parties)")


def _frac_bits(frac_bits: int) -> None:
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int):
        raise ParameterError("frac_bits must be an int")
    if not 0 <= frac_bits <= _RING_BITS - 2:
        raise ParameterError("frac_bits must lie in [0, 62]")


def _check_id(identifier: str) -> None:
    if not isinstance(identifier, str) or not _ID_PATTERN.fullmatch(identifier):
        raise ParameterError("ids are 1-128 characters of [A-Za-z0-9._:/-]")


def row_blocks(n_rows: int, block_rows: int = DEFAULT_BLOCK_ROWS) -> list[tuple[int, int]]:
    """Split ``range(n_rows)`` into ``[start, stop)`` blocks of at most ``block_rows`` rows.

    Raises:
        ParameterError: If ``n_rows < 0`` or ``block_rows < 1``.
    """
    for value, low in ((n_rows, 0), (block_rows, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ParameterError("n_rows must be >= 0 and block_rows >= 1")
    return [(start, min(start + block_rows, n_rows)) for start in range(0, n_rows, block_rows)]


def _matmul(left: Ring, right: Ring) -> Ring:
    """Ring matrix product (wraps mod 2^64); einsum is numpy's fastest integer path for 2-D."""
    if left.ndim == 2 and right.ndim == 1:
        return np.asarray(np.einsum("ij,j->i", left, right), dtype=np.uint64)
    if left.ndim == 2 and right.ndim == 2:
        return np.asarray(np.einsum("ij,jk->ik", left, right), dtype=np.uint64)
    return np.asarray(np.matmul(left, right), dtype=np.uint64)


def _check_matmul_shapes(left: tuple[int, ...], right: tuple[int, ...]) -> None:
    if len(left) != 2 or len(right) not in (1, 2) or left[1] != right[0]:
        raise ParameterError(f"matmul needs (n, k) @ (k,) or (k, m); got {left} @ {right}")


# --------------------------------------------------------------------------------------------
# Sharing, reconstruction, local linear operations
# --------------------------------------------------------------------------------------------


def share(values: Ring, n: int, rng: np.random.Generator | None = None) -> list[Ring]:
    """Split ring elements into ``n`` additive shares that sum to them mod 2^64.

    Shares ``1..n-1`` are uniformly random; share 0 is the remainder. Any ``n - 1`` shares are
    jointly uniform and independent of ``values``.

    Args:
        values: Secret ring elements (``uint64``; encode reals with ``FixedPoint`` first).
        n: Number of parties, ``n >= 2``.
        rng: For reproducible tests only; see :func:`random_ring`.

    Returns:
        ``n`` new arrays, the share for party ``i`` at index ``i``.

    Raises:
        EncodingError: If ``values`` is not a ``uint64`` array.
        ParameterError: If ``n`` is out of range.
    """
    secret = _ring(values, "values")
    _party(0, n)
    masks = random_ring((n - 1, *secret.shape), rng)
    first = np.subtract(secret, masks.sum(axis=0, dtype=np.uint64), dtype=np.uint64)
    return [np.asarray(first, dtype=np.uint64), *(masks[i] for i in range(n - 1))]


def reconstruct(shares: Sequence[Ring]) -> Ring:
    """Sum all parties' shares mod 2^64.

    Args:
        shares: One share per party (at least two), all of the same shape.

    Returns:
        The secret ring elements.

    Raises:
        EncodingError: If a share is not a ``uint64`` array.
        ParameterError: If fewer than two shares are given or shapes differ.
    """
    if len(shares) < 2:
        raise ParameterError("reconstruction needs the shares of at least two parties")
    arrays = [_ring(s) for s in shares]
    total = arrays[0].copy()
    for other in arrays[1:]:
        _same_shape(total, other)
        np.add(total, other, out=total)
    return total


def add(x: Ring, y: Ring) -> Ring:
    """Add two shares held by the same party (local): a share of ``x + y``."""
    _same_shape(_ring(x), _ring(y))
    return np.asarray(np.add(x, y, dtype=np.uint64))


def sub(x: Ring, y: Ring) -> Ring:
    """Subtract two shares held by the same party (local): a share of ``x - y``."""
    _same_shape(_ring(x), _ring(y))
    return np.asarray(np.subtract(x, y, dtype=np.uint64))


def neg(x: Ring) -> Ring:
    """Negate a share (local): a share of ``-x``."""
    return np.asarray(np.subtract(np.uint64(0), _ring(x), dtype=np.uint64))


def add_public(x: Ring, value: int | npt.ArrayLike, party: int) -> Ring:
    """Add a public integer (array) to a shared value: only party 0 adds it, others copy.

    Args:
        x: This party's share.
        value: Public integer(s), broadcastable to ``x``; negative values are two's complement.
        party: This party's index.

    Returns:
        This party's share of ``x + value``.

    Raises:
        EncodingError: If ``value`` is not integral.
        ParameterError: If ``value`` does not broadcast to ``x``'s shape, or ``party < 0``.
    """
    share_ = _ring(x)
    public = _public(value)
    if isinstance(party, bool) or not isinstance(party, int) or party < 0:
        raise ParameterError("party must be a non-negative int")
    _broadcasts_to(public.shape, share_.shape)
    if party != 0:
        return share_.copy()
    return np.asarray(np.add(share_, public, dtype=np.uint64))


def mul_public(x: Ring, value: int | npt.ArrayLike) -> Ring:
    """Multiply a share by a public integer scalar or elementwise by a public integer array (local).

    Fixed-point callers: a public value encoded with ``f`` fractional bits makes the product carry
    ``2f``; truncate afterwards.

    Raises:
        EncodingError: If ``value`` is not integral.
        ParameterError: If ``value`` does not broadcast to ``x``'s shape.
    """
    share_ = _ring(x)
    public = _public(value)
    _broadcasts_to(public.shape, share_.shape)
    return np.asarray(np.multiply(share_, public, dtype=np.uint64))


def matmul_public(x: Ring, matrix: npt.ArrayLike) -> Ring:
    """Shared matrix times public integer matrix/vector (local): a share of ``x @ matrix``.

    Raises:
        EncodingError: If ``matrix`` is not integral.
        ParameterError: If the shapes do not chain.
    """
    share_ = _ring(x)
    public = _public(matrix)
    _check_matmul_shapes(share_.shape, public.shape)
    return _matmul(share_, public)


def public_matmul(matrix: npt.ArrayLike, x: Ring) -> Ring:
    """Public integer matrix times shared vector/matrix (local): a share of ``matrix @ x``.

    Raises:
        EncodingError: If ``matrix`` is not integral.
        ParameterError: If the shapes do not chain.
    """
    share_ = _ring(x)
    public = _public(matrix)
    _check_matmul_shapes(public.shape, share_.shape)
    return _matmul(public, share_)


# --------------------------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------------------------


def _pack(
    kind: int, party: int, n_parties: int, aux: int, tag: str, arrays: Sequence[Ring]
) -> bytes:
    tag_bytes = tag.encode("utf-8")
    parts = [
        _HEADER.pack(_MAGIC, _VERSION, kind, party, n_parties, aux, len(tag_bytes), len(arrays)),
        tag_bytes,
    ]
    for arr in arrays:
        parts.append(struct.pack(f"<B{arr.ndim}Q", arr.ndim, *arr.shape))
    parts.extend(np.ascontiguousarray(arr, dtype=_WIRE_DTYPE).tobytes() for arr in arrays)
    return b"".join(parts)


@dataclass(frozen=True)
class _Unpacked:
    kind: int
    party: int
    n_parties: int
    aux: int
    tag: str
    arrays: tuple[Ring, ...]


def _unpack(data: bytes, expected_kinds: tuple[int, ...], max_bytes: int) -> _Unpacked:
    raw, fields = read_header(data, _HEADER, _MAGIC, max_bytes=max_bytes, what="share message")
    _, version, kind, party, n_parties, aux, tag_len, n_arrays = fields
    if version != _VERSION:
        raise SerializationError(f"unsupported version {version}")
    if kind not in expected_kinds:
        raise SerializationError(f"unexpected message kind {kind}")
    if n_arrays != _ARRAYS_PER_KIND[kind]:
        raise SerializationError("wrong number of arrays for the message kind")
    offset = _HEADER.size
    if len(raw) < offset + tag_len:
        raise SerializationError("truncated tag")
    try:
        tag = raw[offset : offset + tag_len].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SerializationError("tag is not utf-8") from exc
    offset += tag_len
    shapes: list[tuple[int, ...]] = []
    for _ in range(n_arrays):
        if len(raw) < offset + 1:
            raise SerializationError("truncated array header")
        ndim = raw[offset]
        offset += 1
        if ndim > _MAX_NDIM:
            raise SerializationError("too many dimensions")
        if len(raw) < offset + 8 * ndim:
            raise SerializationError("truncated array shape")
        shapes.append(struct.unpack_from(f"<{ndim}Q", raw, offset))
        offset += 8 * ndim
    arrays: list[Ring] = []
    for dims in shapes:
        nbytes = 8 * math.prod(dims)
        if len(raw) - offset < nbytes:
            raise SerializationError("truncated payload")
        flat = np.frombuffer(raw, dtype=_WIRE_DTYPE, count=nbytes // 8, offset=offset)
        arrays.append(flat.astype(np.uint64).reshape(dims))
        offset += nbytes
    if offset != len(raw):
        raise SerializationError("trailing bytes after the payload")
    return _Unpacked(kind, party, n_parties, aux, tag, tuple(arrays))


def _checked_max(max_bytes: int) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ParameterError("max_bytes must be a non-negative int")
    return max_bytes


@dataclass(frozen=True, eq=False)
class ShareFrame:
    """One party's share of a tensor, as sent over the wire.

    Attributes:
        values: The share (``uint64``); not copied.
        party: Index of the party the share belongs to.
        n_parties: Number of parties in the sharing.
        tag: Session / message id binding the share to one protocol step (may be empty).
    """

    values: Ring
    party: int
    n_parties: int
    tag: str = ""

    def __post_init__(self) -> None:
        _ring(self.values)
        _party(self.party, self.n_parties)
        if self.tag:
            _check_id(self.tag)
        if self.values.ndim > _MAX_NDIM:
            raise ParameterError("too many dimensions")

    def to_bytes(self) -> bytes:
        """Serialise (versioned little-endian format, see the module docstring)."""
        return _pack(_KIND_SHARE, self.party, self.n_parties, 0, self.tag, [self.values])

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_WIRE_BYTES) -> ShareFrame:
        """Parse bytes from :meth:`to_bytes`.

        Raises:
            SerializationError: If the bytes are malformed, truncated, oversized or inconsistent.
        """
        msg = _unpack(data, (_KIND_SHARE,), _checked_max(max_bytes))
        try:
            return cls(msg.arrays[0], msg.party, msg.n_parties, msg.tag)
        except CryptoError as exc:
            raise SerializationError(f"inconsistent share frame: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Beaver triples: dealer, batches, per-party shares and ledger
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TripleShare:
    """One party's share ``(a_i, b_i, c_i)`` of a Beaver triple batch with ``c = a * b``.

    For ``kind="elementwise"`` all three arrays have the same shape and ``c = a * b`` elementwise;
    for ``kind="matmul"`` ``a`` is ``(n, k)``, ``b`` is ``(k,)`` or ``(k, m)`` and ``c = a @ b``.

    Attributes:
        triple_id: Unique id of the batch; a party consumes it at most once.
        kind: ``"elementwise"`` or ``"matmul"``.
        party: Index of the party holding this share.
        n_parties: Number of parties.
        a: Share of ``a``.
        b: Share of ``b``.
        c: Share of ``c``.
    """

    triple_id: str
    kind: TripleKind
    party: int
    n_parties: int
    a: Ring
    b: Ring
    c: Ring

    def __post_init__(self) -> None:
        _check_id(self.triple_id)
        _party(self.party, self.n_parties)
        for arr in (self.a, self.b, self.c):
            _ring(arr, "triple share")
        if self.kind == "elementwise":
            if not self.a.shape == self.b.shape == self.c.shape:
                raise ParameterError("elementwise triple arrays must share one shape")
        elif self.kind == "matmul":
            _check_matmul_shapes(self.a.shape, self.b.shape)
            if self.c.shape != self.a.shape[:1] + self.b.shape[1:]:
                raise ParameterError("matmul triple c has the wrong shape")
        else:
            raise ParameterError(f"unknown triple kind {self.kind!r}")

    def to_bytes(self) -> bytes:
        """Serialise for delivery from the dealer to this party (send over a confidential link)."""
        kind = _KIND_TRIPLE_ELEMENTWISE if self.kind == "elementwise" else _KIND_TRIPLE_MATMUL
        arrays = [self.a, self.b, self.c]
        return _pack(kind, self.party, self.n_parties, 0, self.triple_id, arrays)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_WIRE_BYTES) -> TripleShare:
        """Parse bytes from :meth:`to_bytes`.

        Raises:
            SerializationError: If the bytes are malformed, truncated, oversized or inconsistent.
        """
        kinds = (_KIND_TRIPLE_ELEMENTWISE, _KIND_TRIPLE_MATMUL)
        msg = _unpack(data, kinds, _checked_max(max_bytes))
        kind: TripleKind = "elementwise" if msg.kind == _KIND_TRIPLE_ELEMENTWISE else "matmul"
        try:
            return cls(msg.tag, kind, msg.party, msg.n_parties, *msg.arrays)
        except CryptoError as exc:
            raise SerializationError(f"inconsistent triple share: {exc}") from exc


@dataclass(frozen=True, eq=False)
class TruncationPairShare:
    """One party's share of a truncation pair ``(r, ceil(r / 2^f))`` for n-party truncation.

    Attributes:
        pair_id: Unique id of the batch; consumed at most once.
        party: Index of the party holding this share.
        n_parties: Number of parties.
        frac_bits: The shift ``f`` the pair was made for.
        r: Share of the uniform mask ``r``.
        r_shifted: Share of ``ceil(r / 2^f)`` (``r`` read as a signed integer).
    """

    pair_id: str
    party: int
    n_parties: int
    frac_bits: int
    r: Ring
    r_shifted: Ring

    def __post_init__(self) -> None:
        _check_id(self.pair_id)
        _party(self.party, self.n_parties)
        _frac_bits(self.frac_bits)
        _same_shape(_ring(self.r, "pair share"), _ring(self.r_shifted, "pair share"))

    def to_bytes(self) -> bytes:
        """Serialise for delivery from the dealer to this party (send over a confidential link)."""
        arrays = [self.r, self.r_shifted]
        return _pack(
            _KIND_TRUNCATION_PAIR, self.party, self.n_parties, self.frac_bits, self.pair_id, arrays
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_WIRE_BYTES) -> TruncationPairShare:
        """Parse bytes from :meth:`to_bytes`.

        Raises:
            SerializationError: If the bytes are malformed, truncated, oversized or inconsistent.
        """
        msg = _unpack(data, (_KIND_TRUNCATION_PAIR,), _checked_max(max_bytes))
        try:
            return cls(msg.tag, msg.party, msg.n_parties, msg.aux, *msg.arrays)
        except CryptoError as exc:
            raise SerializationError(f"inconsistent truncation pair: {exc}") from exc


class _SingleUseBatch:
    """Hands out each party's share once; a second take of the same party raises."""

    def __init__(self, batch_id: str, items: Sequence[object]) -> None:
        self._id = batch_id
        self._items: list[object | None] = list(items)

    @property
    def batch_id(self) -> str:
        return self._id

    @property
    def n_parties(self) -> int:
        return len(self._items)

    def _take(self, party: int) -> object:
        _party(party, len(self._items))
        item = self._items[party]
        if item is None:
            raise TripleReuseError(f"share of party {party} in batch {self._id} already taken")
        self._items[party] = None
        return item


class TripleBatch(_SingleUseBatch):
    """The dealer's output for one triple id: one :class:`TripleShare` per party, taken once."""

    @property
    def triple_id(self) -> str:
        """The batch id."""
        return self.batch_id

    def take(self, party: int) -> TripleShare:
        """Remove and return party ``party``'s share.

        Raises:
            TripleReuseError: If that share was already taken.
            ParameterError: If ``party`` is out of range.
        """
        item = self._take(party)
        if not isinstance(item, TripleShare):  # pragma: no cover - construction guarantees it
            raise TypeError("corrupted batch")
        return item


class TruncationBatch(_SingleUseBatch):
    """The dealer's output for one truncation-pair id: one share per party, each taken once."""

    @property
    def pair_id(self) -> str:
        """The batch id."""
        return self.batch_id

    def take(self, party: int) -> TruncationPairShare:
        """Remove and return party ``party``'s share.

        Raises:
            TripleReuseError: If that share was already taken.
            ParameterError: If ``party`` is out of range.
        """
        item = self._take(party)
        if not isinstance(item, TruncationPairShare):  # pragma: no cover
            raise TypeError("corrupted batch")
        return item


@dataclass
class TripleLedger:
    """A party's record of consumed triple and truncation-pair ids: each may be used once.

    Keep one ledger per party for the lifetime of its key material (persist it if the party
    restarts), so that a replayed or re-requested triple is refused even if the dealer errs.

    Attributes:
        party: Index of the party owning the ledger.
    """

    party: int
    _consumed: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.party, bool) or not isinstance(self.party, int) or self.party < 0:
            raise ParameterError("party must be a non-negative int")

    def consume(self, item: TripleShare | TruncationPairShare) -> None:
        """Mark a triple or pair share as used.

        Raises:
            TripleReuseError: If its id was consumed before.
            KeyMismatchError: If the share belongs to another party.
        """
        ident = item.triple_id if isinstance(item, TripleShare) else item.pair_id
        if item.party != self.party:
            raise KeyMismatchError(f"share of party {item.party} offered to party {self.party}")
        if ident in self._consumed:
            raise TripleReuseError(f"triple {ident} was already consumed by party {self.party}")
        self._consumed.add(ident)

    def is_consumed(self, identifier: str) -> bool:
        """Whether ``identifier`` was consumed."""
        return identifier in self._consumed

    def __len__(self) -> int:
        return len(self._consumed)


class TripleDealer:
    """The semi-trusted operator's generator of Beaver triples and truncation pairs.

    The dealer sees only its own randomness (never data or openings) and issues each id once.
    Each party's shares must reach it over a confidential, authenticated link.

    Args:
        n_parties: Number of computing parties (``>= 2``).
        rng: For reproducible tests only; see :func:`random_ring`.
    """

    def __init__(self, n_parties: int, rng: np.random.Generator | None = None) -> None:
        _party(0, n_parties)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ParameterError("rng must be a numpy.random.Generator")
        self._n = n_parties
        self._rng = rng
        self._issued: set[str] = set()

    @property
    def n_parties(self) -> int:
        """Number of parties the dealer serves."""
        return self._n

    def _new_id(self, requested: str | None) -> str:
        ident = secrets.token_hex(16) if requested is None else requested
        _check_id(ident)
        if ident in self._issued:
            raise TripleReuseError(f"id {ident} was already issued")
        self._issued.add(ident)
        return ident

    def _split(self, value: Ring) -> list[Ring]:
        return share(value, self._n, self._rng)

    def _random_shares(self, shape: tuple[int, ...]) -> tuple[list[Ring], Ring]:
        parts = random_ring((self._n, *shape), self._rng)
        return [parts[i] for i in range(self._n)], parts.sum(axis=0, dtype=np.uint64)

    def elementwise_triple(
        self, shape: int | Sequence[int], *, triple_id: str | None = None
    ) -> TripleBatch:
        """Issue an elementwise triple batch ``c = a * b`` of the given shape.

        Raises:
            TripleReuseError: If ``triple_id`` was issued before.
            ParameterError: If the shape or id is invalid.
        """
        dims = _shape(shape)
        ident = self._new_id(triple_id)
        a_shares, a = self._random_shares(dims)
        b_shares, b = self._random_shares(dims)
        c_shares = self._split(np.asarray(np.multiply(a, b, dtype=np.uint64)))
        shares = [
            TripleShare(ident, "elementwise", i, self._n, a_shares[i], b_shares[i], c_shares[i])
            for i in range(self._n)
        ]
        return TripleBatch(ident, shares)

    def matmul_triple(
        self,
        left_shape: Sequence[int],
        right_shape: Sequence[int],
        *,
        triple_id: str | None = None,
    ) -> TripleBatch:
        """Issue a matrix triple ``C = A @ B`` with ``A: (n, k)`` and ``B: (k,)`` or ``(k, m)``.

        One matrix triple replaces ``n * k`` scalar triples for a shared matrix-vector product: the
        parties open ``n*k + k`` masked values instead of ``2*n*k`` and the dealer ships
        ``2*n*k + k + n`` ring elements per party instead of ``3*n*k``.

        Raises:
            TripleReuseError: If ``triple_id`` was issued before.
            ParameterError: If the shapes do not chain or the id is invalid.
        """
        left, right = _shape(left_shape), _shape(right_shape)
        _check_matmul_shapes(left, right)
        ident = self._new_id(triple_id)
        a_shares, a = self._random_shares(left)
        b_shares, b = self._random_shares(right)
        c_shares = self._split(_matmul(a, b))
        shares = [
            TripleShare(ident, "matmul", i, self._n, a_shares[i], b_shares[i], c_shares[i])
            for i in range(self._n)
        ]
        return TripleBatch(ident, shares)

    def matmul_triple_blocks(
        self,
        left_shape: Sequence[int],
        right_shape: Sequence[int],
        *,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        triple_id: str | None = None,
    ) -> list[TripleBatch]:
        """Issue one matrix triple per block of rows of ``A`` (see :func:`row_blocks`).

        Streaming a large product block by block keeps every message and temporary small (a few
        MiB instead of ``8 * n * k`` bytes), which is both faster (cache, allocator) and what an
        HTTP transport wants. Block ``j`` has id ``f"{triple_id}.{j}"``.

        Raises:
            TripleReuseError: If any derived id was issued before.
            ParameterError: If the shapes do not chain, ``block_rows < 1`` or the id is invalid.
        """
        left, right = _shape(left_shape), _shape(right_shape)
        _check_matmul_shapes(left, right)
        base = secrets.token_hex(16) if triple_id is None else triple_id
        _check_id(base)
        return [
            self.matmul_triple((stop - start, left[1]), right, triple_id=f"{base}.{j}")
            for j, (start, stop) in enumerate(row_blocks(left[0], block_rows))
        ]

    def truncation_pairs(
        self, shape: int | Sequence[int], frac_bits: int, *, pair_id: str | None = None
    ) -> TruncationBatch:
        """Issue truncation pairs ``(r, ceil(r / 2^f))`` of the given shape.

        Raises:
            TripleReuseError: If ``pair_id`` was issued before.
            ParameterError: If the shape, ``frac_bits`` or id is invalid.
        """
        dims = _shape(shape)
        _frac_bits(frac_bits)
        ident = self._new_id(pair_id)
        r_shares, r = self._random_shares(dims)
        r_shifted_shares = self._split(_ceil_shift(r, frac_bits))
        shares = [
            TruncationPairShare(ident, i, self._n, frac_bits, r_shares[i], r_shifted_shares[i])
            for i in range(self._n)
        ]
        return TruncationBatch(ident, shares)


# --------------------------------------------------------------------------------------------
# Beaver multiplication, per party and in-process
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BeaverMessage:
    """A party's masked opening shares ``d_i = x_i - a_i``, ``e_i = y_i - b_i``, sent to all.

    Attributes:
        triple_id: The triple the masks come from.
        party: Sender's index.
        n_parties: Number of parties.
        d: ``x_i - a_i``.
        e: ``y_i - b_i``.
    """

    triple_id: str
    party: int
    n_parties: int
    d: Ring
    e: Ring

    def __post_init__(self) -> None:
        _check_id(self.triple_id)
        _party(self.party, self.n_parties)
        _ring(self.d, "d")
        _ring(self.e, "e")

    def to_bytes(self) -> bytes:
        """Serialise (versioned little-endian format, see the module docstring)."""
        arrays = [self.d, self.e]
        return _pack(_KIND_BEAVER_MESSAGE, self.party, self.n_parties, 0, self.triple_id, arrays)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_WIRE_BYTES) -> BeaverMessage:
        """Parse bytes from :meth:`to_bytes`.

        Raises:
            SerializationError: If the bytes are malformed, truncated, oversized or inconsistent.
        """
        msg = _unpack(data, (_KIND_BEAVER_MESSAGE,), _checked_max(max_bytes))
        try:
            return cls(msg.tag, msg.party, msg.n_parties, *msg.arrays)
        except CryptoError as exc:
            raise SerializationError(f"inconsistent Beaver message: {exc}") from exc


@dataclass(frozen=True, eq=False)
class BeaverOpening:
    """The opened masked values ``d = x - a`` and ``e = y - b`` of one triple (public to parties).

    Attributes:
        triple_id: The triple the openings belong to.
        d: ``x - a``.
        e: ``y - b``.
    """

    triple_id: str
    d: Ring
    e: Ring


def beaver_mask(x: Ring, y: Ring, triple: TripleShare, ledger: TripleLedger) -> BeaverMessage:
    """Party step 1: consume the triple and mask this party's inputs.

    Args:
        x: This party's share of the left operand (shape of ``triple.a``).
        y: This party's share of the right operand (shape of ``triple.b``).
        triple: This party's triple share; consumed in ``ledger``.
        ledger: This party's ledger of used triples.

    Returns:
        The message to send to every other party.

    Raises:
        TripleReuseError: If the triple was consumed before.
        KeyMismatchError: If the triple or ledger belongs to another party.
        ParameterError: If shapes do not match the triple.
        EncodingError: If a share is not a ``uint64`` array.
    """
    _same_shape(_ring(x), triple.a)
    _same_shape(_ring(y), triple.b)
    ledger.consume(triple)
    d = np.asarray(np.subtract(x, triple.a, dtype=np.uint64))
    e = np.asarray(np.subtract(y, triple.b, dtype=np.uint64))
    return BeaverMessage(triple.triple_id, triple.party, triple.n_parties, d, e)


def beaver_open(messages: Sequence[BeaverMessage]) -> BeaverOpening:
    """Party step 2: sum everyone's masked shares (each party does this on the same messages).

    Raises:
        KeyMismatchError: If messages belong to different triples or parties are missing/repeated.
        ParameterError: If shapes differ.
    """
    if not messages:
        raise ParameterError("no messages to open")
    first = messages[0]
    parties = sorted(m.party for m in messages)
    if parties != list(range(first.n_parties)):
        raise KeyMismatchError("openings need exactly one message from every party")
    d = first.d.copy()
    e = first.e.copy()
    for msg in messages[1:]:
        if msg.triple_id != first.triple_id or msg.n_parties != first.n_parties:
            raise KeyMismatchError("messages from different triples cannot be combined")
        _same_shape(d, msg.d)
        _same_shape(e, msg.e)
        np.add(d, msg.d, out=d)
        np.add(e, msg.e, out=e)
    return BeaverOpening(first.triple_id, d, e)


def beaver_finish(triple: TripleShare, opening: BeaverOpening) -> Ring:
    """Party step 3: this party's share of the product, ``c_i + d*b_i + a_i*e (+ d*e if party 0)``.

    For ``kind="matmul"`` the products are matrix products: ``C_i + D@B_i + A_i@E (+ D@E)``.

    Raises:
        KeyMismatchError: If the opening belongs to another triple.
        ParameterError: If the opening's shapes do not match the triple.
    """
    if opening.triple_id != triple.triple_id:
        raise KeyMismatchError("opening belongs to another triple")
    _same_shape(opening.d, triple.a)
    _same_shape(opening.e, triple.b)
    # Party 0 folds d*e into d*(b_0 + e): one product fewer.
    b_term = np.add(triple.b, opening.e, dtype=np.uint64) if triple.party == 0 else triple.b
    if triple.kind == "matmul":
        out = _matmul(opening.d, np.asarray(b_term, dtype=np.uint64))
        out += _matmul(triple.a, opening.e)
    else:
        out = np.asarray(np.multiply(opening.d, b_term, dtype=np.uint64))
        out += np.multiply(triple.a, opening.e, dtype=np.uint64)
    out += triple.c
    return out


def beaver_multiply(
    x_shares: Sequence[Ring],
    y_shares: Sequence[Ring],
    batch: TripleBatch,
    ledgers: Sequence[TripleLedger] | None = None,
) -> list[Ring]:
    """Run all parties of a Beaver multiplication in-process (tests and benchmarks).

    Elementwise or matrix product depending on the batch's kind.

    Args:
        x_shares: Every party's share of the left operand.
        y_shares: Every party's share of the right operand.
        batch: The dealer's batch; every party's share is taken from it.
        ledgers: Per-party ledgers (fresh ones if omitted; the batch still refuses reuse).

    Returns:
        Every party's share of the product.

    Raises:
        TripleReuseError: If the batch (or a ledger) was used before.
        ParameterError: If the number of shares does not match the parties.
    """
    n = batch.n_parties
    if len(x_shares) != n or len(y_shares) != n:
        raise ParameterError(f"expected {n} shares per operand")
    books = [TripleLedger(i) for i in range(n)] if ledgers is None else list(ledgers)
    if len(books) != n:
        raise ParameterError(f"expected {n} ledgers")
    triples = [batch.take(i) for i in range(n)]
    messages = [beaver_mask(x_shares[i], y_shares[i], triples[i], books[i]) for i in range(n)]
    opening = beaver_open(messages)
    return [beaver_finish(triples[i], opening) for i in range(n)]


# --------------------------------------------------------------------------------------------
# Truncation
# --------------------------------------------------------------------------------------------


def _floor_shift(x: Ring, frac_bits: int) -> Ring:
    return np.asarray(np.right_shift(x.view(np.int64), frac_bits)).view(np.uint64)


def _ceil_shift(x: Ring, frac_bits: int) -> Ring:
    """``ceil(signed(x) / 2^f)`` exactly (no overflow even at -2^63)."""
    low = np.bitwise_and(x, np.uint64((1 << frac_bits) - 1))
    out = _floor_shift(x, frac_bits).copy()
    out += np.asarray(low != 0).astype(np.uint64)
    return np.asarray(out)


def truncate_2pc(x: Ring, party: int, frac_bits: int) -> Ring:
    """Two-party local truncation (SecureML): this party's share of ``x / 2^f``.

    Party 0 returns ``floor(x0 / 2^f)``; party 1 returns ``ceil(x1 / 2^f)`` (``-((-x1) >> f)``),
    both reading shares as signed. The sum is within one unit of ``x / 2^f`` except with
    probability ``|x| / 2^64`` (see :func:`truncation_failure_probability`). Only for exactly two
    parties holding shares of which one is uniformly random (true for :func:`share` and
    :func:`beaver_finish` outputs).

    Raises:
        ParameterError: If ``party`` is not 0 or 1, or ``frac_bits`` out of range.
        EncodingError: If ``x`` is not a ``uint64`` array.
    """
    share_ = _ring(x)
    _party(party, 2)
    _frac_bits(frac_bits)
    if party == 0:
        return _floor_shift(share_, frac_bits).copy()
    return _ceil_shift(share_, frac_bits)


def truncation_mask(x: Ring, pair: TruncationPairShare, ledger: TripleLedger) -> ShareFrame:
    """n-party truncation step 1: consume the pair and send ``m_i = x_i - r_i`` to all parties.

    Raises:
        TripleReuseError: If the pair was consumed before.
        KeyMismatchError: If the pair belongs to another party.
        ParameterError: If shapes differ.
    """
    _same_shape(_ring(x), pair.r)
    ledger.consume(pair)
    masked = np.asarray(np.subtract(x, pair.r, dtype=np.uint64))
    return ShareFrame(masked, pair.party, pair.n_parties, pair.pair_id)


def truncation_open(frames: Sequence[ShareFrame]) -> ShareFrame:
    """n-party truncation step 2: sum everyone's masked shares into the public ``m = x - r``.

    Returns:
        A frame holding ``m`` (``party`` 0, same tag).

    Raises:
        KeyMismatchError: If frames carry different tags or parties are missing/repeated.
    """
    if not frames:
        raise ParameterError("no frames to open")
    first = frames[0]
    if sorted(f.party for f in frames) != list(range(first.n_parties)):
        raise KeyMismatchError("openings need exactly one frame from every party")
    if any(f.tag != first.tag or f.n_parties != first.n_parties for f in frames):
        raise KeyMismatchError("frames from different pairs cannot be combined")
    total = reconstruct([f.values for f in frames])
    return ShareFrame(total, 0, first.n_parties, first.tag)


def truncation_finish(pair: TruncationPairShare, opened: ShareFrame) -> Ring:
    """n-party truncation step 3: ``ceil(r_i / 2^f)`` share, plus ``floor(m / 2^f)`` for party 0.

    Raises:
        KeyMismatchError: If ``opened`` belongs to another pair.
    """
    if opened.tag != pair.pair_id:
        raise KeyMismatchError("opening belongs to another truncation pair")
    _same_shape(opened.values, pair.r_shifted)
    if pair.party != 0:
        return pair.r_shifted.copy()
    return np.asarray(
        np.add(pair.r_shifted, _floor_shift(opened.values, pair.frac_bits), dtype=np.uint64)
    )


def truncate(
    shares: Sequence[Ring], frac_bits: int, pairs: TruncationBatch | None = None
) -> list[Ring]:
    """Truncate a shared value by ``frac_bits`` in-process (tests and benchmarks).

    Two parties without ``pairs``: local SecureML truncation. Otherwise dealer truncation pairs
    (required for more than two parties).

    Raises:
        ParameterError: If more than two parties and no pairs, or counts/shapes mismatch.
        TripleReuseError: If the pair batch was used before.
    """
    n = len(shares)
    _party(0, n)
    if pairs is None:
        if n != 2:
            raise ParameterError("more than two parties need truncation pairs from the dealer")
        return [truncate_2pc(shares[i], i, frac_bits) for i in range(2)]
    if pairs.n_parties != n:
        raise ParameterError("pair batch is for another number of parties")
    taken = [pairs.take(i) for i in range(n)]
    if any(p.frac_bits != frac_bits for p in taken):
        raise ParameterError("pairs were made for another frac_bits")
    frames = [truncation_mask(shares[i], taken[i], TripleLedger(i)) for i in range(n)]
    opened = truncation_open(frames)
    return [truncation_finish(taken[i], opened) for i in range(n)]


def truncation_failure_probability(magnitude: float) -> float:
    """Exact per-element failure probability of truncation for a value of ring magnitude ``|x|``.

    Both :func:`truncate_2pc` and the dealer-pair protocol fail (error about ``2^(64-f)``) exactly
    when two signed 64-bit numbers, one uniform, overflow when added: probability ``|x| / 2^64``.

    Args:
        magnitude: ``|x|`` as an integer in the ring (i.e. already scaled by ``2^(2f)`` for a
            fixed-point product).

    Raises:
        ParameterError: If ``magnitude`` is negative, not finite or ``>= 2^63``.
    """
    if not math.isfinite(magnitude) or not 0 <= magnitude < 2.0**63:
        raise ParameterError("magnitude must lie in [0, 2^63)")
    return magnitude / 2.0**64


def truncation_failure_bound(magnitude_bits: int) -> float:
    """SecureML's stated bound ``2^(l_x + 1 - 64)`` on the failure probability for ``|x| < 2^l_x``.

    Raises:
        ParameterError: If ``magnitude_bits`` is not in ``[0, 63]``.
    """
    if isinstance(magnitude_bits, bool) or not isinstance(magnitude_bits, int):
        raise ParameterError("magnitude_bits must be an int")
    if not 0 <= magnitude_bits <= _RING_BITS - 1:
        raise ParameterError("magnitude_bits must lie in [0, 63]")
    return min(1.0, math.ldexp(1.0, magnitude_bits + 1 - _RING_BITS))
