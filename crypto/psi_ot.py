"""Entity alignment at OT-extension speed: KKRT private set intersection, receiver learns.

Why: ECDH-PSI (:mod:`crypto.psi`) costs two elliptic-curve multiplications per id and side. The
KKRT protocol (Kolesnikov, Kumaresan, Rosulek, Trieu, CCS 2016) replaces them with a batched
oblivious PRF built from IKNP-style OT extension: 512 public-key operations per session, then
only AES, a hash and XORs per id. Semi-honest security, as in the paper.

Protocol (the provider, *sender* S with ids Y, speaks first; the analyst, *receiver* R with ids
X, learns)::

    S: secret s ∈ {0,1}^512; per i one X25519 key pair (b_i, b_i·G) and one point with no
       known logarithm; setup = [(P_i^0, P_i^1)] with P_i^{s_i} = b_i·G      ───▶ R
    R: cuckoo-hashes X into m bins with 3 hash functions (seed chosen by R);
       e fresh, E = e·G; k_i^c = KDF(i, c, E, P_i^c, e·P_i^c)  (512 random OTs, S gets k_i^{s_i})
       column i: t^i = G(k_i^0), u^i = t^i ⊕ G(k_i^1) ⊕ c^i, c_j = C(x_j ‖ h_j) for bin j
       request = E ‖ hash seed ‖ rows u_j                                     ───▶ S
    S: q^i = G(k_i^{s_i}) ⊕ s_i·u^i, so row q_j = t_j ⊕ (c_j ∧ s);
       for each y (shuffled) and h ∈ {0,1,2}, j = bin_h(y):
       v_h(y) = H(j, q_j ⊕ (C(y ‖ h) ∧ s)) truncated to l bits
       response = the three lists v_0, v_1, v_2 in S's shuffled order         ───▶ R
    R: for bin j holding x with hash h, H(j, t_j) equals v_h(y) exactly when y = x.

``C`` is a pseudorandom code of 512 bits (AES-128 under a key derived from the session id,
which the sender chose, over a 120-bit digest of the id and a block counter): any two distinct
ids' codewords differ in far more than 128 positions except with negligible probability, which
is what KKRT's security needs. ``G`` is AES-128-CTR keyed by the OT seed, ``H`` BLAKE2b keyed by
the session. ``l = 40 + log2(|X|·|Y|)`` bits rounded up to bytes, so a false match has
probability below 2^-40.

The base OTs are the "oblivious public key" construction of Bellare-Micali / Naor-Pinkas in its
simplest form: the sender's second point of each pair is ``r·H2C(session, label)`` with ``r``
clamped (a multiple of the cofactor), a uniform point of the prime-order subgroup whose discrete
logarithm nobody knows, exactly as ``b·G`` is uniform there; so the pair hides ``s_i`` perfectly,
and a semi-honest sender cannot compute ``e·P_i^{1-s_i}`` (computational Diffie-Hellman), so
``k_i^{1-s_i}`` stays pseudorandom to it (KDF as a random oracle). One ``e`` serves all pairs
(hashed ElGamal with shared randomness over distinct keys).

What each party learns (semi-honest, non-colluding): as :mod:`crypto.psi` — the **receiver**
learns the intersection in its own order, the sender's number of distinct ids, and the position
of each match in the sender's uniformly shuffled order; every sender value of an id outside the
intersection is pseudorandom to it. The **sender** learns the receiver's number of distinct ids
(through ``m`` and the declared count) and nothing else: the rows ``u_j`` are one-time padded by
``G(k_i^{1-s_i})``, which it cannot compute. The cuckoo hash seed is one for which the receiver's
set fits; a seed fails with probability below 2^-30 for the sizes used, so the seed says nothing
useful about the set.

Role split against ECDH: the same (analyst receives, provider sends), but the provider now
speaks first (the setup), so the exchange takes one and a half round trips.

Wire format (version 1), integers big-endian; each message ends in SHA-256 of what precedes it::

    b"TSPO" | version u8 | kind u8 | flags u8 | len(session_id) u8 | session_id | body | digest
    setup    body: 512 x (P^0 ‖ P^1), 32 bytes each
    request  body: n_receiver u32 | m u32 | setup digest (32) | E (32) | hash seed (16)
                   | m rows of 64 bytes
    response body: n_receiver u32 | n_sender u32 | l u8 | request digest (32)
                   | 3 x n_sender values of l bytes
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto.errors import EncodingError, KeyMismatchError, ParameterError, SerializationError
from crypto.psi import (
    MAX_SET_SIZE,
    POINT_SIZE,
    PsiResult,
    check_session_id,
    distinct_ids,
    encode_id,
    hash_to_point,
    new_session_id,
    random_permutation,
)

__all__ = [
    "CODE_BITS",
    "OtPsiReceiver",
    "OtPsiSender",
    "bins_for",
    "intersect",
    "request_size",
    "response_limit",
    "transpose_columns",
]

CODE_BITS = 512
"""Width of the pseudorandom code, and number of base OTs per session."""

_ROW = CODE_BITS // 8
_HASHES = 3
_MAGIC = b"TSPO"
_VERSION = 1
_KIND_SETUP = 1
_KIND_REQUEST = 2
_KIND_RESPONSE = 3
_FLAG_ALIGNED = 0x01
_PREFIX = struct.Struct(">4sBBBB")
_REQUEST_HEAD = struct.Struct(">II32s32s16s")
_RESPONSE_HEAD = struct.Struct(">IIB32s")
_DIGEST = 32
_ID_DIGEST = 15
_STATISTICAL_BITS = 40
_CUCKOO_TRIES = 64
_CUCKOO_ROUNDS = 2000
_DOMAIN = b"trusted-space/psi-ot/v1"
_CHUNK = 1 << 16
_T = TypeVar("_T")


def bins_for(n_receiver: int) -> int:
    """Number of cuckoo bins for ``n_receiver`` ids: 1.3·n rounded up to 64, at least 128."""
    return max(128, -(-(13 * n_receiver) // 640) * 64)


def _value_bytes(n_receiver: int, n_sender: int) -> int:
    """The value length l in bytes: 40 + log2(|X|·|Y|) bits (false match below 2^-40)."""
    bits = _STATISTICAL_BITS + math.log2(max(1, n_receiver) * max(1, n_sender))
    return min(16, math.ceil(bits / 8))


def _key(session_id: bytes, label: bytes) -> bytes:
    return hashlib.blake2b(session_id, digest_size=16, key=_DOMAIN, person=label).digest()


def _encrypt(cipher: Cipher[Any], data: bytes) -> bytes:
    """``data`` through ``cipher``, without a second copy of a large output.

    The tail ``finalize`` returns is empty for ECB on whole blocks and for CTR, so it is not
    concatenated (which would copy the whole output).
    """
    encryptor = cipher.encryptor()
    out = encryptor.update(data)
    tail = encryptor.finalize()
    return out + tail if tail else out


def _aes_ecb(key: bytes, data: bytes) -> bytes:
    # ECB on purpose: AES as a keyed permutation of independent blocks, never to hide a message.
    return _encrypt(Cipher(algorithms.AES(key), modes.ECB()), data)  # noqa: S305


def _prg(seed: bytes, size: int) -> bytes:
    """``size`` pseudorandom bytes: AES-128-CTR keyed by ``seed`` from a zero counter."""
    return _encrypt(Cipher(algorithms.AES(seed), modes.CTR(bytes(16))), bytes(size))


def _digest_chunk(key: bytes, ids: Sequence[bytes]) -> bytes:
    """Worker: the 120-bit keyed BLAKE2b digest of each encoded id, concatenated."""
    blake = hashlib.blake2b
    return b"".join([blake(e, digest_size=_ID_DIGEST, key=key).digest() for e in ids])


def _hash_chunk(key: bytes, size: int, data: bytes) -> bytes:
    """Worker: keyed BLAKE2b of each ``4 + 64``-byte record of ``data``, truncated to ``size``."""
    view = memoryview(data)
    step = 4 + _ROW
    blake = hashlib.blake2b
    return b"".join(
        [
            blake(view[i : i + step], digest_size=size, key=key).digest()
            for i in range(0, len(data), step)
        ]
    )


def _spread(executor: Executor | None, fn: Callable[[_T], bytes], chunks: list[_T]) -> bytes:
    if executor is None or len(chunks) <= 1:
        return b"".join(fn(chunk) for chunk in chunks)
    return b"".join(executor.map(fn, chunks))


def _id_digests(session_id: bytes, ids: Sequence[str], executor: Executor | None) -> np.ndarray:
    """A 120-bit keyed digest of each id, as an ``(n, 16)`` array with a zero last byte."""
    encoded = [encode_id(e) for e in ids]
    chunks = [encoded[i : i + _CHUNK] for i in range(0, len(encoded), _CHUNK)]
    joined = _spread(executor, partial(_digest_chunk, _key(session_id, b"id")), chunks)
    out = np.zeros((len(ids), 16), dtype=np.uint8)
    out[:, :_ID_DIGEST] = np.frombuffer(joined, dtype=np.uint8).reshape(-1, _ID_DIGEST)
    return out


def _bins(seed: bytes, digests: np.ndarray, m: int) -> np.ndarray:
    """The three cuckoo bins of each id, ``(n, 3)``, from AES under the receiver's hash seed."""
    if len(digests) == 0:
        return np.zeros((0, _HASHES), dtype=np.int64)
    raw = np.frombuffer(_aes_ecb(seed, digests.tobytes()), dtype="<u4").reshape(-1, 4)
    return (raw[:, :_HASHES].astype(np.int64)) % m


def _code(key: bytes, digests: np.ndarray, h: int | np.ndarray) -> np.ndarray:
    """The 512-bit codewords ``C(id ‖ h)``, ``(n, 64)``: AES over ``digest ‖ (4h + block)``."""
    n = len(digests)
    blocks = np.repeat(digests, CODE_BITS // 128, axis=0).reshape(n, CODE_BITS // 128, 16)
    tweak = np.asarray(h, dtype=np.uint8).reshape(-1, 1) * 4 + np.arange(4, dtype=np.uint8)
    blocks[:, :, 15] = tweak
    return np.frombuffer(_aes_ecb(key, blocks.tobytes()), dtype=np.uint8).reshape(n, _ROW)


_MASKS = tuple(
    (np.uint64(shift), np.uint64(mask))
    for shift, mask in ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0))
)
_TRANSPOSE_BYTES = 1 << 12


def _transpose8(x: np.ndarray, t: np.ndarray, u: np.ndarray) -> None:
    """Transpose, in place, the 8-by-8 bit matrix in each uint64 (byte k = row k, bit c = column c).

    ``t`` and ``u`` are scratch arrays of ``x``'s shape (Hacker's Delight, ``transpose8``).
    """
    for shift, mask in _MASKS:
        np.right_shift(x, shift, out=t)
        np.bitwise_xor(t, x, out=t)
        np.bitwise_and(t, mask, out=t)
        np.bitwise_xor(x, t, out=x)
        np.left_shift(t, shift, out=u)
        np.bitwise_xor(x, u, out=x)


def transpose_columns(columns: np.ndarray) -> np.ndarray:
    """Bit-transpose ``(w, m/8)`` column strings into ``(m, w/8)`` rows (w, m multiples of 8).

    Bits are little-endian within bytes on both sides: row ``r`` is bit ``r % 8`` of byte
    ``r // 8`` of a column; column ``i`` is bit ``i % 8`` of byte ``i // 8`` of a row. Works in
    slices of 4096 column bytes so the scratch stays in cache.
    """
    width, size = columns.shape
    groups = width // 8
    out = np.empty((8 * size, groups), dtype=np.uint8)
    grouped = columns.reshape(groups, 8, size)
    for start in range(0, size, _TRANSPOSE_BYTES):
        stop = min(size, start + _TRANSPOSE_BYTES)
        x = np.ascontiguousarray(grouped[:, :, start:stop].transpose(0, 2, 1)).view("<u8")
        x = x.reshape(groups, stop - start)
        _transpose8(x, np.empty_like(x), np.empty_like(x))
        rows = x.view(np.uint8).reshape(groups, stop - start, 8).transpose(1, 2, 0)
        out[8 * start : 8 * stop] = rows.reshape(8 * (stop - start), groups)
    return out


def _expand(seeds: Sequence[bytes], m: int) -> np.ndarray:
    """Columns ``G(seed_i)`` of ``m`` bits each, ``(CODE_BITS, m/8)``, written row by row."""
    out = np.empty((len(seeds), m // 8), dtype=np.uint8)
    for i, seed in enumerate(seeds):
        out[i] = np.frombuffer(_prg(seed, m // 8), dtype=np.uint8)
    return out


def _output(
    key: bytes, bins: np.ndarray, rows: np.ndarray, size: int, executor: Executor | None
) -> np.ndarray:
    """``H(j, row)`` truncated to ``size`` bytes for each (bin, row), as an ``S{size}`` array."""
    n = len(bins)
    buf = np.empty((n, 4 + _ROW), dtype=np.uint8)
    buf[:, :4] = bins.astype(">u4").view(np.uint8).reshape(n, 4)
    buf[:, 4:] = rows
    chunks = [buf[i : i + _CHUNK].tobytes() for i in range(0, n, _CHUNK)]
    joined = _spread(executor, partial(_hash_chunk, key, size), chunks)
    return np.frombuffer(joined, dtype=f"S{size}")


def _kdf(
    session_id: bytes, index: int, bit: int, ephemeral: bytes, point: bytes, shared: bytes
) -> bytes:
    h = hashlib.blake2b(digest_size=16, key=_DOMAIN, person=b"base-ot")
    h.update(session_id + struct.pack(">HB", index, bit) + ephemeral + point + shared)
    return h.digest()


def _exchange(private: X25519PrivateKey, point: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(point))
    except ValueError as exc:
        raise SerializationError("a received point is of small order") from exc


def _cuckoo(bins: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Place each id in one of its bins, at most one per bin (vectorised cuckoo insertion).

    Returns ``(table, choice)``: ``table[j]`` the id in bin ``j`` or -1, ``choice[k]`` the hash
    index id ``k`` was placed with; ``None`` when the ids did not fit within the round budget.
    """
    n = len(bins)
    table = np.full(m, -1, dtype=np.int64)
    choice = np.zeros(n, dtype=np.int64)
    pending = np.arange(n, dtype=np.int64)
    for _ in range(_CUCKOO_ROUNDS):
        if len(pending) == 0:
            return table, choice
        target = bins[pending, choice[pending]]
        previous = table[target]
        table[target] = pending  # several writers of one bin: exactly one stays
        won = table[target] == pending
        evicted = previous[won & (previous >= 0)]
        evicted = evicted[table[bins[evicted, choice[evicted]]] != evicted]
        lost = pending[~won]
        pending = np.unique(np.concatenate([lost, evicted]))
        choice[pending] = (choice[pending] + 1) % _HASHES
    return None


def _pack(kind: int, flags: int, session_id: bytes, *body: bytes | memoryview) -> bytes:
    """One message: the frame, the body's parts (bytes, or views of contiguous arrays), a digest.

    Built with one copy of the body: a request at 10^6 ids is ≈ 85 MB.
    """
    prefix = _PREFIX.pack(_MAGIC, _VERSION, kind, flags, len(session_id)) + session_id
    digest = hashlib.sha256(prefix)
    for part in body:
        digest.update(part)
    return b"".join([prefix, *body, digest.digest()])


def _unpack(
    message: bytes | bytearray | memoryview, kind: int, session_id: bytes
) -> tuple[int, memoryview]:
    """Check one message's frame and digest; return its flags and a view of its body.

    No copy: a request at 10^6 ids is ≈ 85 MB (the view keeps ``message`` alive; nothing here
    or in the callers writes to it).
    """
    if not isinstance(message, bytes | bytearray | memoryview):
        raise SerializationError(f"a PSI message must be bytes, not {type(message).__name__}")
    data = memoryview(message).cast("B")
    if len(data) < _PREFIX.size + _DIGEST:
        raise SerializationError("PSI message truncated")
    magic, version, got_kind, flags, sid_len = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise SerializationError("not an OT-PSI message")
    if version != _VERSION:
        raise SerializationError(f"unsupported OT-PSI message version {version}")
    if got_kind != kind:
        raise SerializationError(f"expected OT-PSI message kind {kind}, got {got_kind}")
    if len(data) < _PREFIX.size + sid_len + _DIGEST:
        raise SerializationError("PSI message truncated")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise SerializationError("PSI message is corrupted (digest mismatch)")
    if bytes(data[_PREFIX.size : _PREFIX.size + sid_len]) != session_id:
        raise KeyMismatchError("PSI message belongs to another session")
    if flags & ~_FLAG_ALIGNED:
        raise SerializationError("PSI message has unknown flags")
    return flags, data[_PREFIX.size + sid_len : -_DIGEST]


def request_size(session_id: bytes, n_receiver: int) -> int:
    """Exact length of a request for ``n_receiver`` ids (the sender checks a declared size)."""
    m = bins_for(n_receiver)
    return _PREFIX.size + len(session_id) + _REQUEST_HEAD.size + m * _ROW + _DIGEST


def response_limit(session_id: bytes, n_receiver: int) -> int:
    """Largest response a receiver of ``n_receiver`` ids accepts."""
    size = _value_bytes(n_receiver, MAX_SET_SIZE)
    return (
        _PREFIX.size
        + len(session_id)
        + _RESPONSE_HEAD.size
        + _HASHES * MAX_SET_SIZE * size
        + _DIGEST
    )


class OtPsiSender:
    """The party that answers and learns only the receiver's set size (the provider).

    Usage: ``setup = s.setup()`` (send it); ``response = s.respond(request)``.

    Args:
        ids: The sender's ids (duplicates are removed, first occurrence kept).
        session_id: Id of this session (16..64 bytes); the sender should choose it.
        align: Tell the receiver that positions are meaningful (:attr:`aligned_ids`).
    """

    def __init__(
        self,
        ids: Iterable[str],
        session_id: bytes,
        *,
        executor: Executor | None = None,
        align: bool = False,
    ) -> None:
        self._session_id = check_session_id(session_id)
        self._executor = executor
        self._ids, _ = distinct_ids(ids)
        self._align = align
        self._choices = np.frombuffer(os.urandom(_ROW), dtype=np.uint8)
        self._keys = [X25519PrivateKey.generate() for _ in range(CODE_BITS)]
        self._setup: bytes | None = None
        self._shuffled: list[str] | None = None
        self._digests: np.ndarray | None = None
        self._answered = False

    def __repr__(self) -> str:
        return f"OtPsiSender(size={len(self._ids)}, align={self._align})"

    @property
    def size(self) -> int:
        """Number of distinct ids this sender holds."""
        return len(self._ids)

    @property
    def aligned_ids(self) -> tuple[str, ...]:
        """This sender's ids in the shuffled order of its response; position j ↔ positions.

        Raises:
            ParameterError: The sender was created without ``align=True``, or has not prepared.
        """
        if not self._align:
            raise ParameterError("alignment was not agreed (create the sender with align=True)")
        if self._shuffled is None:
            raise ParameterError("aligned_ids is known only after prepare() or respond()")
        return tuple(self._shuffled)

    def setup(self) -> bytes:
        """The first message: 512 pairs of points, one of each pair this side's public key."""
        if self._setup is None:
            bits = np.unpackbits(self._choices, bitorder="little")
            body = bytearray()
            for i, private in enumerate(self._keys):
                real = private.public_key().public_bytes_raw()
                label = f"base-ot/{i}/{os.urandom(16).hex()}"
                other = X25519PrivateKey.generate().exchange(
                    X25519PublicKey.from_public_bytes(hash_to_point(self._session_id, label))
                )
                body += real + other if bits[i] == 0 else other + real
            self._setup = _pack(_KIND_SETUP, 0, self._session_id, bytes(body))
        return self._setup

    def prepare(self) -> None:
        """Shuffle this side's ids and digest them; may run before the request arrives."""
        if self._digests is None:
            order = random_permutation(len(self._ids))
            self._shuffled = [self._ids[i] for i in order]
            self._digests = _id_digests(self._session_id, self._shuffled, self._executor)

    def respond(
        self, request: bytes | bytearray | memoryview, *, receiver_size: int | None = None
    ) -> bytes:
        """Answer one request with the OPRF values of this side's ids under each hash.

        Args:
            request: The receiver's request bytes.
            receiver_size: The number of ids the receiver declared earlier, if it did; a request
                for another number is refused.

        Raises:
            SerializationError: The request is malformed, truncated or corrupted.
            KeyMismatchError: The request belongs to another session or setup, or this sender
                has already answered one.
        """
        if self._answered:
            raise KeyMismatchError("this PSI session has already been answered")
        setup = self.setup()
        _, body = _unpack(request, _KIND_REQUEST, self._session_id)
        if len(body) < _REQUEST_HEAD.size:
            raise SerializationError("OT-PSI request truncated")
        n_receiver, m, bound, ephemeral, seed = _REQUEST_HEAD.unpack_from(body)
        if n_receiver > MAX_SET_SIZE or m != bins_for(n_receiver):
            raise SerializationError("OT-PSI request announces an invalid number of bins")
        if receiver_size is not None and n_receiver != receiver_size:
            raise KeyMismatchError(f"OT-PSI request for {n_receiver} ids, {receiver_size} declared")
        if len(body) != _REQUEST_HEAD.size + m * _ROW:
            raise SerializationError("OT-PSI request has the wrong length")
        if bound != hashlib.sha256(setup).digest():
            raise KeyMismatchError("OT-PSI request answers another setup")
        self.prepare()
        if self._digests is None:  # pragma: no cover - prepare() always sets it
            raise ParameterError("sender not prepared")
        self._answered = True
        bits = np.unpackbits(self._choices, bitorder="little")
        pairs = setup[_PREFIX.size + len(self._session_id) : -_DIGEST]
        seeds = []
        for i, private in enumerate(self._keys):
            point = pairs[(2 * i + int(bits[i])) * POINT_SIZE :][:POINT_SIZE]
            shared = _exchange(private, ephemeral)
            seeds.append(_kdf(self._session_id, i, int(bits[i]), ephemeral, point, shared))
        rows_u = np.frombuffer(body, dtype=np.uint8, offset=_REQUEST_HEAD.size).reshape(m, _ROW)
        q = transpose_columns(_expand(seeds, m))
        q ^= rows_u & self._choices
        size = _value_bytes(n_receiver, len(self._ids))
        code_key = _key(self._session_id, b"code")
        out_key = _key(self._session_id, b"out")
        where = _bins(seed, self._digests, m)
        values = []
        for h in range(_HASHES):  # in slices of ids: MBs of temporaries, not GBs
            for start in range(0, len(self._ids), 4 * _CHUNK):
                at = where[start : start + 4 * _CHUNK, h]
                code = _code(code_key, self._digests[start : start + 4 * _CHUNK], h)
                rows = code & self._choices
                rows ^= q[at]
                values.append(_output(out_key, at, rows, size, self._executor).tobytes())
        head = _RESPONSE_HEAD.pack(
            n_receiver, len(self._ids), size, hashlib.sha256(request).digest()
        )
        flags = _FLAG_ALIGNED if self._align else 0
        return _pack(_KIND_RESPONSE, flags, self._session_id, head, *values)


class OtPsiReceiver:
    """The party that learns the intersection (the analyst).

    Usage: ``request = r.request(setup)``; send it; ``result = r.finish(response)``.

    Args:
        ids: The receiver's ids (duplicates are removed, first occurrence kept).
        session_id: Id of this session, as the sender chose it.
    """

    def __init__(
        self, ids: Iterable[str], session_id: bytes, *, executor: Executor | None = None
    ) -> None:
        self._session_id = check_session_id(session_id)
        self._executor = executor
        self._ids, self._first_index = distinct_ids(ids)
        self._request_digest: bytes | None = None  # the request itself is the caller's to send
        self._mine: np.ndarray | None = None
        self._bin_of: np.ndarray | None = None
        self._choice: np.ndarray | None = None
        self._done = False

    def __repr__(self) -> str:
        return f"OtPsiReceiver(size={len(self._ids)})"

    @property
    def size(self) -> int:
        """Number of distinct ids this receiver holds."""
        return len(self._ids)

    def request(self, setup: bytes) -> bytes:
        """Answer the sender's setup: the extended-OT rows for this side's cuckoo table.

        Raises:
            SerializationError: The setup is malformed, corrupted or has a point of small order.
            KeyMismatchError: The setup belongs to another session, or a request was made.
            EncodingError: The ids did not fit any of 64 cuckoo hash seeds (probability below
                2^-1000 for the sizes used).
        """
        if self._request_digest is not None:
            raise KeyMismatchError("this receiver has already answered a setup")
        _, view = _unpack(setup, _KIND_SETUP, self._session_id)
        body = bytes(view)  # 32 KB of points
        if len(body) != 2 * CODE_BITS * POINT_SIZE:
            raise SerializationError("OT-PSI setup has the wrong length")
        n = len(self._ids)
        m = bins_for(n)
        digests = _id_digests(self._session_id, self._ids, self._executor)
        for _ in range(_CUCKOO_TRIES):
            seed = os.urandom(16)
            where = _bins(seed, digests, m)
            placed = _cuckoo(where, m)
            if placed is not None:
                break
        else:  # pragma: no cover - each try fails with probability below 2^-30
            raise EncodingError("the ids did not fit the cuckoo table")
        table, choice = placed
        ephemeral_key = X25519PrivateKey.generate()
        ephemeral = ephemeral_key.public_key().public_bytes_raw()
        seeds0, seeds1 = [], []
        for i in range(CODE_BITS):
            p0 = body[2 * i * POINT_SIZE :][:POINT_SIZE]
            p1 = body[(2 * i + 1) * POINT_SIZE :][:POINT_SIZE]
            seeds0.append(_kdf(self._session_id, i, 0, ephemeral, p0, _exchange(ephemeral_key, p0)))
            seeds1.append(_kdf(self._session_id, i, 1, ephemeral, p1, _exchange(ephemeral_key, p1)))
        occupied = np.flatnonzero(table >= 0)
        items = table[occupied]
        bin_of = np.empty(n, dtype=np.int64)
        bin_of[items] = occupied
        # At 10^6 ids every (512, 1.3M-bit) matrix is 83 MB: each is built in place and freed
        # as soon as it is used, and the codewords are made in slices of ids.
        g0 = _expand(seeds0, m)
        self._mine = transpose_columns(g0)[bin_of]  # t_j of the occupied bins only
        columns = _expand(seeds1, m)
        np.bitwise_xor(columns, g0, out=columns)
        del g0
        rows_u = transpose_columns(columns)
        del columns
        code_key = _key(self._session_id, b"code")
        for start in range(0, len(occupied), 4 * _CHUNK):
            at = occupied[start : start + 4 * _CHUNK]
            got = items[start : start + 4 * _CHUNK]
            rows_u[at] ^= _code(code_key, digests[got], choice[got])
        del digests
        self._bin_of, self._choice = bin_of, choice
        head = _REQUEST_HEAD.pack(n, m, hashlib.sha256(bytes(setup)).digest(), ephemeral, seed)
        request = _pack(_KIND_REQUEST, 0, self._session_id, head, rows_u.data)
        self._request_digest = hashlib.sha256(request).digest()
        return request

    def finish(self, response: bytes | bytearray | memoryview) -> PsiResult:
        """Compare this side's OPRF values with the sender's and return the intersection.

        Raises:
            SerializationError: The response is malformed, truncated or corrupted.
            KeyMismatchError: The response belongs to another session or answers another
                request, or this receiver has already finished.
        """
        if self._request_digest is None or self._mine is None or self._bin_of is None:
            raise KeyMismatchError("finish() called before request()")
        if self._choice is None:  # pragma: no cover - set with _mine
            raise KeyMismatchError("finish() called before request()")
        if self._done:
            raise KeyMismatchError("this PSI session has already finished")
        flags, body = _unpack(response, _KIND_RESPONSE, self._session_id)
        if len(body) < _RESPONSE_HEAD.size:
            raise SerializationError("OT-PSI response truncated")
        n_receiver, n_sender, size, bound = _RESPONSE_HEAD.unpack_from(body)
        if bound != self._request_digest or n_receiver != len(self._ids):
            raise KeyMismatchError("PSI response answers another request")
        if n_sender > MAX_SET_SIZE or size != _value_bytes(n_receiver, n_sender):
            raise SerializationError("OT-PSI response announces invalid sizes")
        if len(body) != _RESPONSE_HEAD.size + _HASHES * n_sender * size:
            raise SerializationError("OT-PSI response has the wrong length")
        self._done = True
        values = np.frombuffer(body, dtype=f"S{size}", offset=_RESPONSE_HEAD.size)
        mine = _output(
            _key(self._session_id, b"out"), self._bin_of, self._mine, size, self._executor
        )
        receiver_index: list[np.ndarray] = []
        sender_index: list[np.ndarray] = []
        for h in range(_HASHES):
            ours = np.flatnonzero(self._choice == h)
            theirs = values[h * n_sender : (h + 1) * n_sender]
            _, a, b = np.intersect1d(mine[ours], theirs, assume_unique=False, return_indices=True)
            receiver_index.append(ours[a])
            sender_index.append(b)
        got_r = np.concatenate(receiver_index)
        got_s = np.concatenate(sender_index)
        order = np.argsort(got_r, kind="stable")
        got_r, got_s = got_r[order], got_s[order]
        aligned = bool(flags & _FLAG_ALIGNED)
        return PsiResult(
            ids=tuple(self._ids[i] for i in got_r),
            receiver_indices=tuple(self._first_index[i] for i in got_r),
            sender_positions=tuple(int(j) for j in got_s) if aligned else None,
            receiver_size=n_receiver,
            sender_size=n_sender,
        )


def intersect(
    receiver_ids: Iterable[str],
    sender_ids: Iterable[str],
    *,
    session_id: bytes | None = None,
    executor: Executor | None = None,
    align: bool = False,
) -> PsiResult:
    """Run the whole protocol in one process (tests, benchmarks); both parties are simulated."""
    sid = new_session_id() if session_id is None else session_id
    sender = OtPsiSender(sender_ids, sid, executor=executor, align=align)
    receiver = OtPsiReceiver(receiver_ids, sid, executor=executor)
    return receiver.finish(sender.respond(receiver.request(sender.setup())))
