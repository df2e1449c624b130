"""Helpers shared by the protocol modules: headers, blocks, ids on the wire, ring codecs, memos.

The memos keep a standing session's repeated work (loading the same context) from being redone.

Every header value read here comes from another node, so each is checked (type, range) and a bad
one is a :class:`~trusted_space.errors.ValidationError` naming the field; errors raised by the
``crypto`` primitives are converted to ``ValidationError`` where they enter protocol code.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto import ckks
from crypto.errors import CryptoError
from trusted_space.catalog import check_participant_id
from trusted_space.errors import ValidationError
from trusted_space.uscc import ALPHABET as USCC_ALPHABET
from trusted_space.uscc import ORG_WEIGHTS as USCC_ORG_WEIGHTS
from trusted_space.uscc import WEIGHTS as USCC_WEIGHTS
from trusted_space.uscc import validate_uscc

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "MAX_BLOCK_ROWS",
    "MAX_MESSAGE_BYTES",
    "RING_FRAC_BITS",
    "LoadedContext",
    "Memo",
    "block_ranges",
    "check_size",
    "crypto_errors",
    "decode_ids",
    "decode_ring",
    "encode_ids",
    "encode_ring",
    "header_float",
    "header_int",
    "header_participants",
    "header_str",
    "loaded_ckks_context",
    "mask_stream",
    "ring_from_bytes",
    "ring_to_bytes",
]

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""No single call carries more than this: large vectors travel in blocks."""
DEFAULT_BLOCK_ROWS: Final = 1 << 16
"""Entities per block (a multiple of every CKKS preset's slot count)."""
MAX_BLOCK_ROWS: Final = 1 << 20
RING_FRAC_BITS: Final = 32
"""Fractional bits of every Z_2^64 value summed at the aggregator (a product of two f=16 values)."""

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class Memo(Generic[_K, _V]):
    """A locked map keeping the last ``size`` values made, by key (least recently used leaves).

    :meth:`get` makes a missing value outside the lock (two threads may both make it); the first
    value stored is the one every caller gets, so a value that carries state of its own (a lock)
    stays unique per key.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a memo keeps at least one value")
        self._size = size
        self._kept: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K, make: Callable[[], _V]) -> _V:
        """The value kept for ``key``, or ``make()``'s (then kept)."""
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
                return found
        made = make()
        with self._lock:
            kept = self._kept.setdefault(key, made)
            self._kept.move_to_end(key)
            while len(self._kept) > self._size:
                self._kept.popitem(last=False)
        return kept

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)


@dataclass(frozen=True)
class LoadedContext:
    """A loaded CKKS public context, the lock its users share, the SHA-256 of its bytes."""

    context: ckks.PublicContext
    digest: bytes
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)


_ckks_contexts: Memo[bytes, LoadedContext] = Memo(4)


def loaded_ckks_context(material: bytes) -> LoadedContext:
    """The CKKS public context serialised in ``material``, loaded once per process, and its lock.

    Why: an analyst's standing session sends the same public context with every run, and loading
    it (≈ 10 ms) costs more than a small run's arithmetic at a provider or the aggregator. Kept
    by the SHA-256 of the bytes, the last few; loading is the check (bytes that do not load are a
    ``ValidationError``, never kept). One TenSEAL operation on a context at a time (the lock): a
    provider's weighted sum switches the context's auto-rescaling off and back on, so two blocks
    computed at once would rescale each other's products.
    """
    digest = hashlib.sha256(material).digest()

    def load() -> LoadedContext:
        with crypto_errors("the analyst's ckks context"):
            return LoadedContext(ckks.PublicContext.load(material), digest)

    return _ckks_contexts.get(digest, load)


@contextmanager
def crypto_errors(what: str) -> Iterator[None]:
    """Convert a ``crypto`` error into a :class:`ValidationError` about ``what``."""
    try:
        yield
    except CryptoError as exc:
        raise ValidationError(f"{what}: {exc}") from exc


def check_size(payload: bytes, what: str) -> bytes:
    """Refuse to send (or accept) one message above :data:`MAX_MESSAGE_BYTES`."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ValidationError(f"{what} of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return payload


def header_str(header: Mapping[str, Any], name: str) -> str:
    value = header.get(name)
    if not isinstance(value, str) or not value or len(value) > 512:
        raise ValidationError(f"header.{name}: expected a non-empty string")
    return value


def header_int(header: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"header.{name}: expected an integer in [{low}, {high}]")
    return value


def header_float(header: Mapping[str, Any], name: str) -> float:
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"header.{name}: expected a number")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValidationError(f"header.{name}: expected a positive finite number")
    return number


def header_participants(header: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A non-empty, sorted, duplicate-free list of participant ids."""
    value = header.get(name)
    if not isinstance(value, list) or not value or len(value) > 256:
        raise ValidationError(f"header.{name}: expected a non-empty list of participant ids")
    ids = tuple(check_participant_id(v, f"header.{name}") for v in value)
    if list(ids) != sorted(set(ids)):
        raise ValidationError(f"header.{name}: must be sorted and without duplicates")
    return ids


def block_ranges(count: int, rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of ``rows`` entities covering ``count``."""
    if rows < 1:
        raise ValidationError("block rows must be positive")
    return [(s, min(s + rows, count)) for s in range(0, count, rows)]


def encode_ids(ids: Sequence[str]) -> bytes:
    """Entity ids as UTF-8 lines (ids never contain a newline: the query checks it)."""
    return "\n".join(ids).encode("utf-8")


def decode_ids(payload: bytes, count: int, id_kind: str) -> list[str]:
    """Parse :func:`encode_ids` output, checking the count and the id kind.

    The checks run over the whole payload at once (a million ids take a fraction of a second):
    opaque ids by string methods on the joined text, canonical USCCs by array arithmetic over
    the bytes (:func:`_canonical_usccs`). Only when that fast check fails is each id examined
    alone, which names the first bad one and accepts exactly what :func:`validate_uscc` accepts.
    """
    if count == 0:
        if payload:
            raise ValidationError("payload: expected no ids")
        return []
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError("payload: entity ids are not UTF-8") from exc
    ids = text.split("\n")
    if len(ids) != count:
        raise ValidationError(f"payload: {len(ids)} ids, header says {count}")
    if id_kind == "uscc":
        if not _canonical_usccs(payload, count):
            for i, e in enumerate(ids):
                try:
                    validate_uscc(e)
                except ValidationError as exc:
                    raise ValidationError(f"payload id {i}: {exc}") from exc
    elif "" in ids or max(map(len, ids)) > 128 or not text.replace("\n", "").isprintable():
        for i, e in enumerate(ids):
            if not e or len(e) > 128 or not e.isprintable():
                raise ValidationError(f"payload id {i}: not an opaque id")
    return ids


def _lookup_table(values: Mapping[int, int]) -> npt.NDArray[np.int8]:
    table = np.full(256, -1, dtype=np.int8)
    for byte, value in values.items():
        table[byte] = value
    return table


_USCC_VALUE: Final = _lookup_table({ord(c): i for i, c in enumerate(USCC_ALPHABET)})
_ORG_VALUE: Final = _lookup_table(
    {**{ord(str(d)): d for d in range(10)}, **{ord("A") + i: 10 + i for i in range(26)}}
)
_ORG_CHECK: Final = np.frombuffer(b"?123456789X0", dtype=np.uint8)  # index: 11 - (sum mod 11)
_USCC_WEIGHTS: Final = tuple(USCC_WEIGHTS)
_ORG_WEIGHTS: Final = tuple(USCC_ORG_WEIGHTS)


def _canonical_usccs(payload: bytes, count: int) -> bool:
    """Whether ``payload`` is ``count`` canonical, valid USCCs joined by newlines.

    Canonical: 18 upper-case ASCII characters of the code alphabet, digits at positions 3-8,
    both check characters right — the form :func:`validate_uscc` returns. ``False`` means only
    "not all of them are canonical": the caller then checks id by id.
    """
    width = 18 + 1
    if len(payload) != width * count - 1:
        return False
    raw = np.frombuffer(payload + b"\n", dtype=np.uint8).reshape(count, width)
    if not bool((raw[:, 18] == ord("\n")).all()):
        return False
    # Column by column on int32 vectors: a few passes over n values each, no n-by-18 temporaries.
    values = [_USCC_VALUE[raw[:, j]].astype(np.int32) for j in range(18)]
    if any(bool((v < 0).any()) for v in values):
        return False
    for j in range(2, 8):
        if not bool((values[j] < 10).all()):
            return False
    total = np.zeros(count, dtype=np.int32)
    for j, w in enumerate(_USCC_WEIGHTS):
        total += values[j] * w
    if not bool((values[17] == (31 - total % 31) % 31).all()):
        return False
    org_total = np.zeros(count, dtype=np.int32)
    for j, w in enumerate(_ORG_WEIGHTS):
        org_total += _ORG_VALUE[raw[:, 8 + j]].astype(np.int32) * w
    return bool((raw[:, 16] == _ORG_CHECK[11 - org_total % 11]).all())


def ring_to_bytes(values: npt.NDArray[np.uint64]) -> bytes:
    """A ring vector as little-endian u64 bytes."""
    return np.ascontiguousarray(values, dtype="<u8").tobytes()


def ring_from_bytes(payload: bytes, count: int) -> npt.NDArray[np.uint64]:
    """Parse :func:`ring_to_bytes` output of exactly ``count`` elements."""
    if len(payload) != 8 * count:
        raise ValidationError(f"payload: {len(payload)} bytes for {count} ring elements")
    return np.frombuffer(payload, dtype="<u8").astype(np.uint64)


def encode_ring(values: npt.ArrayLike, frac_bits: int = RING_FRAC_BITS) -> npt.NDArray[np.uint64]:
    """Reals as two's-complement fixed point in Z_2^64 (``round(x·2^f)``), refusing overflow."""
    x = np.asarray(values, dtype=np.float64)
    if x.size and not np.all(np.isfinite(x)):
        raise ValidationError("a value to encode is not finite")
    scaled = np.rint(np.ldexp(x, frac_bits))
    if scaled.size and float(np.max(np.abs(scaled))) >= 2.0**62:
        raise ValidationError("a value is too large for the fixed-point ring")
    return scaled.astype(np.int64).view(np.uint64)


def decode_ring(
    values: npt.NDArray[np.uint64], frac_bits: int = RING_FRAC_BITS
) -> npt.NDArray[np.float64]:
    """Inverse of :func:`encode_ring`."""
    return np.ldexp(values.view(np.int64).astype(np.float64), -frac_bits)


def mask_stream(seed: bytes, block: int, count: int) -> npt.NDArray[np.uint64]:
    """``count`` uniform ring elements from AES-256-CTR keyed by ``seed``, one stream per block.

    A provider in party-held additive mode masks its partial with this stream and gives the
    analyst only the 32-byte seed: the analyst's share costs 32 bytes instead of 8 per entity.
    """
    if len(seed) != 32:
        raise ValidationError("mask seed must be 32 bytes")
    if not 0 <= block < 1 << 64:
        raise ValidationError("mask block number out of range")
    # The block number fills the high half of the counter block and AES-CTR counts in the low
    # half, so the streams of two blocks never overlap (a shared counter would make block b+1's
    # stream block b's shifted by one AES block, letting whoever sees two masked blocks subtract
    # the masks away).
    nonce = block.to_bytes(8, "big") + bytes(8)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    raw = encryptor.update(bytes(8 * count)) + encryptor.finalize()
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)
