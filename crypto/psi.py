"""Entity alignment: ECDH private set intersection (DH-PSI) on X25519, receiver learns.

Why: before a joint score or aggregate, an analyst (the *receiver*, usually a bank) must know which
of its applicants a provider (the *sender*, e.g. a tax bureau) holds records for, without either
side handing over its list of enterprise ids. Both sides hash their ids to points of Curve25519 and
blind them with a secret scalar chosen afresh for each session. Scalar multiplication commutes
(``a·(b·P) = b·(a·P)``), so doubly blinded values are equal exactly when the ids are equal, while a
singly blinded value looks random to anyone without the scalar (decisional Diffie-Hellman).

Protocol (one round trip)::

    receiver R (ids X, scalar a)                      sender S (ids Y, scalar b)
    request  = shuffle_R({a·H(x)})          ───────▶
                                            ◀───────  response = [b·v for v in request] (R's order)
                                                                 ‖ shuffle_S({b·H(y)})
    R computes a·(b·H(y)) for S's list and intersects with the first part of the response.

``H`` hashes ``session_id ‖ id`` with domain-separated SHA-512 to a point on Curve25519 (never on
its twist, never of small order; try-and-increment), so blinded values of two sessions cannot be
linked even if a scalar were reused. Both sides shuffle what they send with a permutation drawn
from ``os.urandom``, so positions carry nothing about input order.

What each party learns (semi-honest, non-colluding; DESIGN §10):

* The **receiver** learns ``|Y|`` (the sender's number of distinct ids) and the intersection
  ``X ∩ Y``, returned in its own input order. It learns nothing about sender ids outside the
  intersection. With ``align=True`` on the sender, it also learns the *position* of each matched id
  in the sender's shuffled list; the shuffle is uniform, so a position reveals nothing beyond the
  match itself.
* The **sender** learns ``|X|`` (the receiver's number of distinct ids) and the session id, and
  nothing else: in particular not which of its ids matched. With ``align=True`` it keeps its
  shuffled order (:attr:`PsiSender.aligned_ids`) so that a later protocol can compute on *all* its
  rows in that order while the analyst selects the matched positions — the provider never learns
  the selection. The protocol that does so (``trusted_space``) must not let the analyst decrypt
  per-row results for unmatched positions: it should combine them under encryption with an
  encrypted selection vector, or otherwise release only matched rows.

Inherent to any PSI, not prevented here: the receiver learns whether *any* id it chooses to put in
its set is held by the sender. That is bounded by policy (purpose, consent, set size), not by this
module. A malicious sender could answer with wrong values; authentication and integrity of messages
between nodes is the transport's job (signed messages, DESIGN §7). The digest in each message only
catches accidental corruption and truncation.

Duplicates: ids are compared exactly as given (their UTF-8 bytes; normalise USCCs before calling).
Duplicates within one side are removed, keeping the first occurrence, so the sizes revealed are
numbers of *distinct* ids.

Performance: each side performs two X25519 scalar multiplications per id. Pass a
:class:`concurrent.futures.Executor` (for example :func:`psi_executor`) to spread them over worker
processes of *this* party; the secret scalar is handed to the workers as 32 raw bytes, and only
bytes ever cross the wire between parties.

Wire format (version 1), all integers big-endian::

    b"TSPI" | version u8 | kind u8 | flags u8 | len(session_id) u8 | session_id
            | n_receiver u32 | n_sender u32 | request digest (32 bytes, response only)
            | points (32 bytes each) | SHA-256 of everything before (32 bytes)
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import gmpy2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from crypto.errors import EncodingError, KeyMismatchError, ParameterError, SerializationError
from crypto.workers import worker_pool

__all__ = [
    "MAX_SET_SIZE",
    "POINT_SIZE",
    "PsiReceiver",
    "PsiResult",
    "PsiSender",
    "check_session_id",
    "distinct_ids",
    "encode_id",
    "hash_to_point",
    "intersect",
    "new_session_id",
    "psi_executor",
    "random_permutation",
]

POINT_SIZE = 32
"""Bytes per encoded point (an X25519 u-coordinate, little-endian)."""

MAX_SET_SIZE = 1 << 25
"""Largest number of ids one side may send in one session (bounds message size at ~1 GiB)."""

_T = TypeVar("_T")
_MAGIC = b"TSPI"
_VERSION = 1
_KIND_REQUEST = 1
_KIND_RESPONSE = 2
_FLAG_ALIGNED = 0x01
_PREFIX = struct.Struct(">4sBBBB")
_COUNTS = struct.Struct(">II")
_DIGEST_SIZE = 32
_MIN_SESSION_ID = 16
_MAX_SESSION_ID = 64
_CHUNK = 4096

_HASH_DOMAIN = b"trusted-space/psi/v1/hash-to-curve25519"
_P = 2**255 - 19
_A = 486662
_TOP_BIT_CLEAR = (1 << 255) - 1
# u-coordinates of the points of small order on Curve25519 and its twist (RFC 7748 §6.1 notes that
# they give an all-zero output). We never hash to them; a peer that sends one gets an error.
_SMALL_ORDER_U = frozenset(
    {
        0,
        1,
        _P - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)


def new_session_id() -> bytes:
    """Return a fresh random session id (32 bytes from ``os.urandom``)."""
    return os.urandom(32)


def check_session_id(session_id: bytes) -> bytes:
    if not isinstance(session_id, bytes | bytearray):
        raise TypeError(f"session_id must be bytes, not {type(session_id).__name__}")
    if not _MIN_SESSION_ID <= len(session_id) <= _MAX_SESSION_ID:
        raise ParameterError(
            f"session_id must be {_MIN_SESSION_ID}..{_MAX_SESSION_ID} bytes, got {len(session_id)}"
        )
    return bytes(session_id)


def _hash_prefix(session_id: bytes) -> bytes:
    return _HASH_DOMAIN + bytes([len(_HASH_DOMAIN), len(session_id)]) + session_id


def _hash_to_u(base: hashlib._Hash, entity: bytes) -> bytes:
    """Map ``entity`` to the u-coordinate of a point of large order on Curve25519 itself.

    Candidates are the two halves of ``SHA-512(prefix ‖ counter ‖ entity)`` with the top bit
    cleared; one is kept when it is canonical (< p), not of small order, and ``u³ + A·u² + u`` is a
    square mod p (the point lies on the curve rather than its twist). Each candidate succeeds with
    probability ~1/2, so 255 counters fail with probability 2^-510.
    """
    for counter in range(255):
        h = base.copy()
        h.update(bytes((counter,)) + entity)
        digest = h.digest()
        for half in (digest[:32], digest[32:]):
            u = int.from_bytes(half, "little") & _TOP_BIT_CLEAR
            if u >= _P or u in _SMALL_ORDER_U:
                continue
            # (u³ + A·u² + u | p): the Jacobi symbol reduces its argument mod p itself.
            if gmpy2.jacobi(((u + _A) * u + 1) * u, _P) == 1:
                return u.to_bytes(32, "little")
    raise EncodingError("could not hash an id to the curve")  # pragma: no cover - 2^-510


def hash_to_point(session_id: bytes, entity_id: str) -> bytes:
    """Hash one id to a 32-byte Curve25519 point encoding, as both parties do before blinding.

    Args:
        session_id: The session's id; the same id hashes to unrelated points in two sessions.
        entity_id: The id (a USCC or an opaque id), compared by its UTF-8 bytes.

    Returns:
        The canonical little-endian u-coordinate of a point of large prime order.
    """
    base = hashlib.sha512(_hash_prefix(check_session_id(session_id)))
    return _hash_to_u(base, encode_id(entity_id))


def encode_id(entity_id: str) -> bytes:
    if not isinstance(entity_id, str):
        raise TypeError(f"ids must be str, not {type(entity_id).__name__}")
    try:
        return entity_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodingError("an id is not encodable as UTF-8") from exc


def _hash_and_blind_chunk(scalar: bytes, prefix: bytes, ids: Sequence[bytes]) -> bytes:
    """Worker: ``a·H(x)`` for each id, concatenated. Runs in this party's own processes."""
    exchange = X25519PrivateKey.from_private_bytes(scalar).exchange
    load = X25519PublicKey.from_public_bytes
    base = hashlib.sha512(prefix)
    out = bytearray()
    try:
        for entity in ids:
            out += exchange(load(_hash_to_u(base, entity)))
    except ValueError as exc:  # pragma: no cover - _hash_to_u excludes small-order points
        raise EncodingError("an id hashed to a point of small order") from exc
    return bytes(out)


def _blind_chunk(scalar: bytes, points: bytes) -> bytes:
    """Worker: ``a·P`` for each 32-byte point in ``points``, concatenated."""
    exchange = X25519PrivateKey.from_private_bytes(scalar).exchange
    load = X25519PublicKey.from_public_bytes
    out = bytearray()
    try:
        for start in range(0, len(points), POINT_SIZE):
            out += exchange(load(points[start : start + POINT_SIZE]))
    except ValueError as exc:
        # cryptography refuses an all-zero result, i.e. a point of small order from the peer.
        raise SerializationError("a received point is of small order") from exc
    return bytes(out)


def _run_chunks(executor: Executor | None, fn: Callable[[_T], bytes], chunks: list[_T]) -> bytes:
    if executor is None or len(chunks) <= 1:
        return b"".join(fn(chunk) for chunk in chunks)
    return b"".join(executor.map(fn, chunks))


def _hash_and_blind(
    scalar: bytes, session_id: bytes, ids: Sequence[bytes], executor: Executor | None
) -> bytes:
    fn = partial(_hash_and_blind_chunk, scalar, _hash_prefix(session_id))
    chunks = [list(ids[i : i + _CHUNK]) for i in range(0, len(ids), _CHUNK)]
    return _run_chunks(executor, fn, chunks)


def _blind(scalar: bytes, points: bytes, executor: Executor | None) -> bytes:
    step = _CHUNK * POINT_SIZE
    chunks = [points[i : i + step] for i in range(0, len(points), step)]
    return _run_chunks(executor, partial(_blind_chunk, scalar), chunks)


def random_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` from ``os.urandom``.

    Sorting by 128-bit random keys: a tie (probability below n²/2^129) would bias the order only
    negligibly.
    """
    keys = np.frombuffer(os.urandom(16 * n), dtype=np.uint64).reshape(n, 2)
    return np.lexsort((keys[:, 1], keys[:, 0]))


def _split(points: bytes) -> list[bytes]:
    return [points[i : i + POINT_SIZE] for i in range(0, len(points), POINT_SIZE)]


def distinct_ids(ids: Iterable[str]) -> tuple[list[str], list[int]]:
    """Distinct ids in first-occurrence order, with the input index of each."""
    given = ids if isinstance(ids, list) else list(ids)
    for entity in given:
        if not isinstance(entity, str):
            raise TypeError(f"ids must be str, not {type(entity).__name__}")
    distinct = list(dict.fromkeys(given))
    if len(distinct) == len(given):  # no duplicates: the common case, without a per-id lookup
        indices = list(range(len(given)))
    else:
        first: dict[str, int] = {}
        for index, entity in enumerate(given):
            first.setdefault(entity, index)
        indices = list(first.values())
    if len(distinct) > MAX_SET_SIZE:
        raise ParameterError(f"at most {MAX_SET_SIZE} distinct ids per side, got {len(distinct)}")
    return distinct, indices


def _pack(
    kind: int,
    flags: int,
    session_id: bytes,
    counts: tuple[int, int],
    binding: bytes,
    body: bytes,
) -> bytes:
    head = (
        _PREFIX.pack(_MAGIC, _VERSION, kind, flags, len(session_id))
        + session_id
        + _COUNTS.pack(*counts)
        + binding
    )
    message = head + body
    return message + hashlib.sha256(message).digest()


@dataclass(frozen=True)
class _Message:
    flags: int
    counts: tuple[int, int]
    binding: bytes
    body: bytes


def _unpack(data: bytes, kind: int, session_id: bytes) -> _Message:
    """Parse and check one message; every structural fault is a :class:`SerializationError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SerializationError(f"a PSI message must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise SerializationError("PSI message truncated")
    magic, version, got_kind, flags, sid_len = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise SerializationError("not a PSI message")
    if version != _VERSION:
        raise SerializationError(f"unsupported PSI message version {version}")
    if got_kind != kind:
        raise SerializationError(f"expected PSI message kind {kind}, got {got_kind}")
    if not _MIN_SESSION_ID <= sid_len <= _MAX_SESSION_ID:
        raise SerializationError("PSI message has an invalid session id length")
    binding_size = _DIGEST_SIZE if kind == _KIND_RESPONSE else 0
    body_start = _PREFIX.size + sid_len + _COUNTS.size + binding_size
    if len(data) < body_start + _DIGEST_SIZE:
        raise SerializationError("PSI message truncated")
    counts = _COUNTS.unpack_from(data, _PREFIX.size + sid_len)
    if max(counts) > MAX_SET_SIZE or (kind == _KIND_REQUEST and counts[1] != 0):
        raise SerializationError("PSI message announces an invalid number of points")
    expected = body_start + (counts[0] + counts[1]) * POINT_SIZE + _DIGEST_SIZE
    if len(data) != expected:
        raise SerializationError(f"PSI message is {len(data)} bytes, expected {expected}")
    if hashlib.sha256(data[:-_DIGEST_SIZE]).digest() != data[-_DIGEST_SIZE:]:
        raise SerializationError("PSI message is corrupted (digest mismatch)")
    got_session = data[_PREFIX.size : _PREFIX.size + sid_len]
    if got_session != session_id:
        raise KeyMismatchError("PSI message belongs to another session")
    if flags & ~_FLAG_ALIGNED:
        raise SerializationError("PSI message has unknown flags")
    return _Message(
        flags=flags,
        counts=(counts[0], counts[1]),
        binding=data[body_start - binding_size : body_start],
        body=data[body_start:-_DIGEST_SIZE],
    )


@dataclass(frozen=True)
class PsiResult:
    """What the receiver learns from one PSI session.

    Attributes:
        ids: The matched ids, in the receiver's input order.
        receiver_indices: For each matched id, the index of its first occurrence in the
            receiver's input.
        sender_positions: For each matched id, its position in the sender's shuffled list (the
            order of :attr:`PsiSender.aligned_ids`), or ``None`` when the sender did not agree to
            alignment.
        receiver_size: Number of distinct receiver ids (the sender learns this too).
        sender_size: Number of distinct sender ids.
    """

    ids: tuple[str, ...]
    receiver_indices: tuple[int, ...]
    sender_positions: tuple[int, ...] | None
    receiver_size: int
    sender_size: int


class PsiReceiver:
    """The party that learns the intersection (the analyst).

    Usage: ``request = r.request()``; send it; ``result = r.finish(response)``.

    Args:
        ids: The receiver's ids (duplicates are removed, first occurrence kept).
        session_id: Id agreed for this session (16..64 bytes), e.g. from :func:`new_session_id`.
        executor: Optional pool of this party's worker processes for the scalar multiplications.
    """

    def __init__(
        self, ids: Iterable[str], session_id: bytes, *, executor: Executor | None = None
    ) -> None:
        self._session_id = check_session_id(session_id)
        self._ids, self._first_index = distinct_ids(ids)
        self._encoded = [encode_id(entity) for entity in self._ids]
        self._scalar = X25519PrivateKey.generate().private_bytes_raw()
        self._executor = executor
        self._order: np.ndarray | None = None
        self._request: bytes | None = None
        self._done = False

    def __repr__(self) -> str:
        return f"PsiReceiver(size={len(self._ids)})"

    @property
    def size(self) -> int:
        """Number of distinct ids this receiver holds."""
        return len(self._ids)

    def request(self) -> bytes:
        """Return the request: this side's blinded ids, shuffled. Computed once, then cached."""
        if self._request is None:
            order = random_permutation(len(self._encoded))
            shuffled = [self._encoded[i] for i in order]
            body = _hash_and_blind(self._scalar, self._session_id, shuffled, self._executor)
            self._order = order
            self._request = _pack(_KIND_REQUEST, 0, self._session_id, (len(shuffled), 0), b"", body)
        return self._request

    def finish(self, response: bytes) -> PsiResult:
        """Blind the sender's values a second time and intersect.

        Args:
            response: The sender's answer to :meth:`request`.

        Returns:
            The intersection in this receiver's order, and the sender positions when aligned.

        Raises:
            SerializationError: The response is malformed, truncated, corrupted or has a point of
                small order.
            KeyMismatchError: The response belongs to another session or answers another request,
                or this receiver has already finished.
        """
        if self._request is None or self._order is None:
            raise KeyMismatchError("finish() called before request()")
        if self._done:
            raise KeyMismatchError("this PSI session has already finished")
        message = _unpack(response, _KIND_RESPONSE, self._session_id)
        if message.binding != hashlib.sha256(self._request).digest():
            raise KeyMismatchError("PSI response answers another request")
        n_receiver, n_sender = message.counts
        if n_receiver != len(self._ids):
            raise KeyMismatchError("PSI response answers another request")
        split_at = n_receiver * POINT_SIZE
        ours = _split(message.body[:split_at])
        theirs = _blind(self._scalar, message.body[split_at:], self._executor)
        position_of = {point: k for k, point in enumerate(ours)}
        if len(position_of) != len(ours):
            raise SerializationError("PSI response repeats a point")
        matches: list[tuple[int, int]] = []
        for j, point in enumerate(_split(theirs)):
            k = position_of.pop(point, None)  # pop: a repeated sender value cannot match twice
            if k is not None:
                matches.append((int(self._order[k]), j))
        matches.sort()
        self._done = True
        aligned = bool(message.flags & _FLAG_ALIGNED)
        return PsiResult(
            ids=tuple(self._ids[i] for i, _ in matches),
            receiver_indices=tuple(self._first_index[i] for i, _ in matches),
            sender_positions=tuple(j for _, j in matches) if aligned else None,
            receiver_size=n_receiver,
            sender_size=n_sender,
        )


class PsiSender:
    """The party that answers and learns only the receiver's set size (the provider).

    Usage: optionally ``s.prepare()`` before the request arrives; ``response = s.respond(request)``.

    Args:
        ids: The sender's ids (duplicates are removed, first occurrence kept).
        session_id: Id agreed for this session; a request from another session is refused.
        executor: Optional pool of this party's worker processes for the scalar multiplications.
        align: Keep the shuffled order and tell the receiver that positions are meaningful, so a
            later protocol can compute over all rows in :attr:`aligned_ids` order. Off by default.
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
        self._ids, _ = distinct_ids(ids)
        self._scalar = X25519PrivateKey.generate().private_bytes_raw()
        self._executor = executor
        self._align = align
        self._shuffled: list[str] | None = None
        self._blinded: bytes | None = None
        self._answered = False

    def __repr__(self) -> str:
        return f"PsiSender(size={len(self._ids)}, align={self._align})"

    @property
    def size(self) -> int:
        """Number of distinct ids this sender holds."""
        return len(self._ids)

    @property
    def aligned_ids(self) -> tuple[str, ...]:
        """This sender's ids in the shuffled order it sent; position j ↔ ``sender_positions``.

        Raises:
            ParameterError: The sender was created without ``align=True``, or has not prepared.
        """
        if not self._align:
            raise ParameterError("alignment was not agreed (create the sender with align=True)")
        if self._shuffled is None:
            raise ParameterError("aligned_ids is known only after prepare() or respond()")
        return tuple(self._shuffled)

    def prepare(self) -> None:
        """Hash, blind and shuffle this side's ids; may run before the request arrives."""
        if self._blinded is None:
            order = random_permutation(len(self._ids))
            shuffled = [self._ids[i] for i in order]
            encoded = [encode_id(entity) for entity in shuffled]
            self._blinded = _hash_and_blind(self._scalar, self._session_id, encoded, self._executor)
            self._shuffled = shuffled if self._align else None

    def respond(self, request: bytes) -> bytes:
        """Answer one request: re-blind the receiver's values in its order, append ours shuffled.

        Args:
            request: The receiver's request bytes.

        Returns:
            The response bytes for the receiver.

        Raises:
            SerializationError: The request is malformed, truncated, corrupted or has a point of
                small order.
            KeyMismatchError: The request belongs to another session, or this sender has already
                answered one (answering twice with one scalar would let a receiver probe more ids).
        """
        if self._answered:
            raise KeyMismatchError("this PSI session has already been answered")
        message = _unpack(request, _KIND_REQUEST, self._session_id)
        self.prepare()
        if self._blinded is None:  # pragma: no cover - prepare() always sets it
            raise ParameterError("sender not prepared")
        theirs = _blind(self._scalar, message.body, self._executor)
        self._answered = True
        return _pack(
            _KIND_RESPONSE,
            _FLAG_ALIGNED if self._align else 0,
            self._session_id,
            (message.counts[0], len(self._ids)),
            hashlib.sha256(bytes(request)).digest(),
            theirs + self._blinded,
        )


def psi_executor(workers: int = 2) -> ProcessPoolExecutor:
    """A process pool for one party's scalar multiplications; use it as a context manager.

    Workers come from :func:`crypto.workers.worker_pool` (spawned, so they never inherit secrets,
    locks or sockets by ``fork``; gone with their parent); each imports this module on start-up,
    so the first session does not pay for it.

    Args:
        workers: Number of worker processes (one per core to use).
    """
    if workers < 1:
        raise ParameterError("workers must be at least 1")
    return worker_pool(workers, _worker_ready)


def _worker_ready() -> None:
    """Worker initializer: naming it makes each worker import this module when it starts."""


def intersect(
    receiver_ids: Iterable[str],
    sender_ids: Iterable[str],
    *,
    session_id: bytes | None = None,
    executor: Executor | None = None,
    align: bool = False,
) -> PsiResult:
    """Run the whole protocol in one process (tests, benchmarks); both parties are simulated.

    Args:
        receiver_ids: The receiver's ids.
        sender_ids: The sender's ids.
        session_id: Session id; a fresh one when omitted.
        executor: Optional worker pool shared by both simulated parties.
        align: Whether the sender agrees to alignment.

    Returns:
        The receiver's :class:`PsiResult`.
    """
    sid = new_session_id() if session_id is None else session_id
    receiver = PsiReceiver(receiver_ids, sid, executor=executor)
    sender = PsiSender(sender_ids, sid, executor=executor, align=align)
    return receiver.finish(sender.respond(receiver.request()))
