"""Paillier encryption with a fixed exponent, vectorised batches and packed plaintexts.

Why this module exists: in the ``paillier`` joint-score protocol an analyst sends its model weights
encrypted under its own key, and each provider computes encrypted partial logits over its own
plaintext features. ``phe`` gets the mathematics right but (1) stores a *floating* exponent next to
each ciphertext that is not encrypted and is chosen from the value's magnitude, so a serialised
``phe`` ciphertext leaks roughly how large the plaintext is; (2) is an object layer that is two
orders of magnitude too slow for tens of thousands of entities.

Threats and how they are handled here:

* **Exponent leakage.** Every value is fixed point with one protocol-wide number of fractional
  bits ``f`` (:class:`IntegerCodec`). A fresh ciphertext has exponent ``-f``; a product of an
  encrypted fixed-point weight by a fixed-point feature has exponent ``-2f``. Both are protocol
  constants, never data dependent; a loader is told which exponent to expect and refuses any other
  (:class:`~crypto.errors.SerializationError`).
* **Linkability / learning the provider's inputs from randomness.** A result computed from the
  analyst's ciphertexts carries randomness the analyst could partly predict; every outbound result
  is therefore multiplied by a fresh obfuscator, an encryption of zero (:class:`ObfuscatorPool`:
  ``r**n mod n**2`` for small batches, the fixed-base ``h**s * prod Y_i`` of Damgård-Jurik-Nielsen
  with a subset product after that; each obfuscator used once).
* **Hostile bytes.** Keys and ciphertexts are JSON, never pickle. Malformed, truncated, oversized
  or wrongly typed input raises :class:`~crypto.errors.SerializationError`; a ciphertext outside
  ``[1, n**2)`` or sharing a factor with ``n`` is refused; a ciphertext whose key id is not the
  key's raises :class:`~crypto.errors.KeyMismatchError`.
* **Silent wrap-around.** Packed slots are sized from declared bounds (:class:`PackingLayout`) so
  that no slot can overflow; values outside the declared bounds are refused
  (:class:`~crypto.errors.PackingError`). Keys under 2048 bits are refused
  (:class:`~crypto.errors.ParameterError`), including ``pheutil`` keys.

Packing algebra (slot width ``s``, ``S`` slots, weights ``w_j`` and features ``x_ij`` as integers
``round(v * 2**f)``, all signed):

1. The analyst encrypts ``E(w_j mod n)``; a negative weight is the residue ``n - |w_j|``.
2. The provider forms, per term ``j``, the signed integer ``P_j = sum_i x_ij * 2**(i*s)`` and
   computes ``prod_j E(w_j)**P_j`` (a negative exponent uses the inverse ciphertext), which is
   ``E(sum_j w_j * P_j) = E(sum_i z_i * 2**(i*s))`` with ``z_i = sum_j w_j * x_ij``, exactly.
3. ``|z_i| <= k*W*X < 2**(s - 1 - guard)`` by construction, and ``S*s <= bits(n) - margin``, so
   the plaintext ``M = sum_i z_i 2**(i*s)`` satisfies ``|M| < n/2``: it is read as a signed integer.
4. Slots are read back in balanced base ``2**s``: ``z_0 = M mod± 2**s`` (the residue in
   ``[-2**(s-1), 2**(s-1))``), then ``M <- (M - z_0) / 2**s``, and so on; a negative slot simply
   borrows from the next one and is given back at decode, so no offset is needed.
5. Sums of packed ciphertexts add slot-wise in the same way, the layout's ``addends`` bounding the
   number of summands.

The raw-integer work runs in :mod:`crypto._paillier_kernels`, in a process pool owned by
:class:`PaillierEngine` (use it as a context manager, or call :meth:`PaillierEngine.close`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from types import TracebackType
from typing import Any, Final, Self

import gmpy2
import numpy as np
import numpy.typing as npt
import phe

from crypto import _paillier_kernels as _k
from crypto.errors import (
    DecryptionError,
    EncodingError,
    FixedPointOverflowError,
    KeyMismatchError,
    PackingError,
    ParameterError,
    SerializationError,
)
from crypto.workers import worker_pool

__all__ = [
    "DEFAULT_FRAC_BITS",
    "MAX_SERIALIZED_BYTES",
    "MIN_KEY_BITS",
    "CiphertextVector",
    "IntegerCodec",
    "ObfuscatorPool",
    "PackedCiphertexts",
    "PackingLayout",
    "PaillierEngine",
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "generate_keypair",
]

MIN_KEY_BITS: Final = 2048
DEFAULT_FRAC_BITS: Final = 32
MAX_SERIALIZED_BYTES: Final = 256 * 1024 * 1024
_FORMAT_VERSION: Final = 1
_B64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")


# --------------------------------------------------------------------------- helpers


def _b64url_to_int(text: object, what: str) -> int:
    if not isinstance(text, str) or not text or not _B64URL.match(text):
        raise SerializationError(f"{what} is not a base64url string")
    padded = text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError) as exc:
        raise SerializationError(f"{what} is not valid base64url") from exc
    if not raw:
        raise SerializationError(f"{what} is empty")
    return int.from_bytes(raw, "big")


def _int_to_b64url(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _parse_json(data: bytes | str | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) > MAX_SERIALIZED_BYTES:
            raise SerializationError(f"{what} is larger than {MAX_SERIALIZED_BYTES} bytes")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerializationError(f"{what} is not UTF-8") from exc
    elif isinstance(data, str):
        if len(data) > MAX_SERIALIZED_BYTES:
            raise SerializationError(f"{what} is larger than {MAX_SERIALIZED_BYTES} bytes")
        text = data
    else:
        raise SerializationError(f"{what} must be bytes, str or a mapping")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SerializationError(f"{what} is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise SerializationError(f"{what} must be a JSON object")
    return obj


def _field(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if name not in obj:
        raise SerializationError(f"{what} lacks {name!r}")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SerializationError(f"{what} field {name!r} has the wrong type")
    return value


def _ceil_scaled(bound: float, frac_bits: int) -> int:
    scaled = Fraction(bound) * (1 << frac_bits)
    return -(-scaled.numerator // scaled.denominator)


def _check_key_size(n: int) -> None:
    if n.bit_length() < MIN_KEY_BITS:
        raise ParameterError(
            f"Paillier modulus has {n.bit_length()} bits; at least {MIN_KEY_BITS} are required"
        )


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class PaillierPublicKey:
    """A Paillier public key ``n`` (generator ``n + 1``), at least 2048 bits.

    Attributes:
        n: The public modulus.
    """

    n: int
    n_square: int = field(init=False, repr=False, compare=False)
    key_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 3:
            raise ParameterError("Paillier modulus must be a positive integer")
        _check_key_size(self.n)
        if self.n % 2 == 0:
            raise ParameterError("Paillier modulus must be odd")
        object.__setattr__(self, "n_square", self.n * self.n)
        digest = hashlib.sha256(self.n.to_bytes((self.n.bit_length() + 7) // 8, "big"))
        object.__setattr__(self, "key_id", digest.hexdigest()[:32])

    @property
    def bits(self) -> int:
        """Bit length of ``n``."""
        return self.n.bit_length()

    def to_jwk(self, kid: str | None = None) -> dict[str, Any]:
        """Return the JWK-style dictionary written by ``pheutil genpkey`` / ``extract``."""
        return {
            "kty": "DAJ",
            "alg": "PAI-GN1",
            "key_ops": ["encrypt"],
            "n": _int_to_b64url(self.n),
            "kid": kid if kid is not None else f"trusted-space paillier {self.key_id}",
        }

    def serialize(self) -> bytes:
        """Serialise as JWK JSON bytes (see :meth:`to_jwk`)."""
        return json.dumps(self.to_jwk(), sort_keys=True).encode("utf-8")

    @classmethod
    def from_jwk(cls, data: bytes | str | Mapping[str, Any]) -> PaillierPublicKey:
        """Load a ``pheutil`` public JWK (``kty`` ``DAJ``, ``alg`` ``PAI-GN1``).

        Raises:
            SerializationError: The JWK is malformed.
            ParameterError: The key is shorter than :data:`MIN_KEY_BITS`.
        """
        obj = _parse_json(data, "public key")
        if obj.get("kty") != "DAJ":
            raise SerializationError("public key is not a DAJ (Paillier) JWK")
        if "alg" in obj and obj["alg"] != "PAI-GN1":
            raise SerializationError("public key algorithm is not PAI-GN1")
        ops = obj.get("key_ops", ["encrypt"])
        if not isinstance(ops, list) or "encrypt" not in ops:
            raise SerializationError("public key JWK does not allow 'encrypt'")
        return cls(_b64url_to_int(obj.get("n"), "public key 'n'"))

    load = from_jwk

    def to_phe(self) -> phe.PaillierPublicKey:
        """Return the equivalent ``phe`` key (for interoperability only)."""
        return phe.PaillierPublicKey(self.n)


@dataclass(frozen=True)
class PaillierPrivateKey:
    """A Paillier private key: the factors ``p`` and ``q`` of the public modulus.

    Attributes:
        public_key: The matching public key.
        p: First prime factor.
        q: Second prime factor.
    """

    public_key: PaillierPublicKey
    p: int = field(repr=False)
    q: int = field(repr=False)

    def __post_init__(self) -> None:
        for v in (self.p, self.q):
            if isinstance(v, bool) or not isinstance(v, int) or v < 3:
                raise ParameterError("private key factors must be integers > 2")
        if self.p * self.q != self.public_key.n or self.p == self.q:
            raise KeyMismatchError("private key factors do not match the public modulus")
        if self.p > self.q:
            p, q = self.q, self.p
            object.__setattr__(self, "p", p)
            object.__setattr__(self, "q", q)

    def to_jwk(self, kid: str | None = None) -> dict[str, Any]:
        """Return the private JWK in the form ``pheutil genpkey`` writes (``p``, ``q``, ``pub``)."""
        return {
            "kty": "DAJ",
            "key_ops": ["decrypt"],
            "p": _int_to_b64url(self.p),
            "q": _int_to_b64url(self.q),
            "pub": self.public_key.to_jwk(),
            "kid": kid if kid is not None else f"trusted-space paillier {self.public_key.key_id}",
        }

    def export_secret(self) -> bytes:
        """Serialise the *secret* key as JWK JSON bytes; never send these to another party."""
        return json.dumps(self.to_jwk(), sort_keys=True).encode("utf-8")

    @classmethod
    def from_jwk(cls, data: bytes | str | Mapping[str, Any]) -> PaillierPrivateKey:
        """Load a ``pheutil genpkey`` private JWK.

        Raises:
            SerializationError: The JWK is malformed.
            KeyMismatchError: ``p * q`` is not the embedded public modulus.
            ParameterError: The key is shorter than :data:`MIN_KEY_BITS`.
        """
        obj = _parse_json(data, "private key")
        if obj.get("kty") != "DAJ":
            raise SerializationError("private key is not a DAJ (Paillier) JWK")
        ops = obj.get("key_ops", ["decrypt"])
        if not isinstance(ops, list) or "decrypt" not in ops:
            raise SerializationError("private key JWK does not allow 'decrypt'")
        pub_obj = obj.get("pub")
        if not isinstance(pub_obj, Mapping):
            raise SerializationError("private key lacks its public part 'pub'")
        public = PaillierPublicKey.from_jwk(pub_obj)
        p = _b64url_to_int(obj.get("p"), "private key 'p'")
        q = _b64url_to_int(obj.get("q"), "private key 'q'")
        return cls(public, p, q)

    load = from_jwk

    def to_phe(self) -> phe.PaillierPrivateKey:
        """Return the equivalent ``phe`` key (for interoperability only)."""
        return phe.PaillierPrivateKey(self.public_key.to_phe(), self.p, self.q)


def generate_keypair(bits: int = MIN_KEY_BITS) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """Generate a key pair with ``phe`` (``secrets``-based primes).

    Args:
        bits: Modulus length; at least :data:`MIN_KEY_BITS`.

    Raises:
        ParameterError: ``bits`` is too small.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < MIN_KEY_BITS:
        raise ParameterError(f"Paillier keys need at least {MIN_KEY_BITS} bits, got {bits!r}")
    pub, priv = phe.generate_paillier_keypair(n_length=bits)
    public = PaillierPublicKey(int(pub.n))
    return public, PaillierPrivateKey(public, int(priv.p), int(priv.q))


# --------------------------------------------------------------------------- fixed point


@dataclass(frozen=True)
class IntegerCodec:
    """Fixed-point codec onto unbounded integers, for plaintexts in Z_n.

    Unlike :class:`crypto.fixedpoint.FixedPoint`, which works in the 64-bit ring of the sharing
    protocols, values here are Python integers limited only by the key's plaintext space, so
    ``frac_bits`` may exceed 31 (the Paillier path uses 29 to 32 for errors below 1e-6).

    A real ``v`` is the integer ``round(v * 2**frac_bits)``; the exponent written next to a
    ciphertext is ``-frac_bits`` (fresh values) or ``-2 * frac_bits`` (weight times feature). The
    exponent never depends on the data, which is the point.

    Attributes:
        frac_bits: Fractional bits ``f``; resolution ``2**-f``.
    """

    frac_bits: int = DEFAULT_FRAC_BITS

    def __post_init__(self) -> None:
        if isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int):
            raise ParameterError("frac_bits must be an integer")
        if not 8 <= self.frac_bits <= 128:
            raise ParameterError("frac_bits must lie in [8, 128]")

    @property
    def exponent(self) -> int:
        """Exponent of a freshly encoded value, ``-frac_bits``."""
        return -self.frac_bits

    @property
    def product_exponent(self) -> int:
        """Exponent of a weight-times-feature product, ``-2 * frac_bits``."""
        return -2 * self.frac_bits

    def encode(self, values: npt.ArrayLike, bound: float | None = None) -> list[int]:
        """Encode reals to integers ``round(v * 2**f)`` (flattened, C order).

        Args:
            values: Finite reals.
            bound: If given, refuse any ``|v| > bound``.

        Raises:
            FixedPointOverflowError: A value is not finite or exceeds ``bound``.
            EncodingError: The input is not numeric.
        """
        try:
            arr = np.asarray(values, dtype=np.float64).ravel()
        except (TypeError, ValueError) as exc:
            raise EncodingError("values must be real numbers") from exc
        if not np.all(np.isfinite(arr)):
            raise FixedPointOverflowError("NaN or infinite value cannot be encoded")
        if bound is not None and arr.size and float(np.max(np.abs(arr))) > bound:
            raise FixedPointOverflowError(f"value outside the declared bound {bound}")
        scaled = np.rint(np.ldexp(arr, self.frac_bits))
        if arr.size and float(np.max(np.abs(scaled))) < 2.0**62:
            return [int(v) for v in scaled.astype(np.int64).tolist()]
        return [int(v) for v in scaled.tolist()]

    def decode(self, values: Iterable[int], exponent: int) -> npt.NDArray[np.float64]:
        """Decode signed integers carrying ``exponent`` back to float64."""
        out = []
        for v in values:
            try:
                out.append(math.ldexp(float(v), exponent))
            except OverflowError as exc:
                raise FixedPointOverflowError("decoded value does not fit a float") from exc
        return np.asarray(out, dtype=np.float64)


# --------------------------------------------------------------------------- ciphertexts


def _validate_ciphertexts(values: Sequence[int], key: PaillierPublicKey) -> None:
    n, n2 = key.n, key.n_square
    for c in values:
        if not 0 < c < n2 or gmpy2.gcd(c, n) != 1:
            raise SerializationError("ciphertext is not a unit modulo n**2 for this key")


@dataclass(frozen=True)
class CiphertextVector:
    """A vector of Paillier ciphertexts under one key, all with one fixed exponent.

    Attributes:
        values: Raw ciphertexts ``c`` with ``0 < c < n**2``.
        key_id: Fingerprint of the public key (:attr:`PaillierPublicKey.key_id`).
        exponent: Fixed-point exponent of every element (a protocol constant).
    """

    values: tuple[int, ...]
    key_id: str
    exponent: int

    def __len__(self) -> int:
        return len(self.values)

    def to_json(self) -> dict[str, Any]:
        """Return the versioned JSON form (ciphertexts as fixed-width base64url)."""
        width = max((v.bit_length() for v in self.values), default=8)
        width = (width + 7) // 8
        blob = b"".join(v.to_bytes(width, "big") for v in self.values)
        return {
            "type": "paillier.ciphertexts",
            "version": _FORMAT_VERSION,
            "kid": self.key_id,
            "e": self.exponent,
            "count": len(self.values),
            "width": width,
            "data": base64.urlsafe_b64encode(blob).decode("ascii"),
        }

    def serialize(self) -> bytes:
        """Serialise to UTF-8 JSON bytes (see :meth:`to_json`)."""
        return json.dumps(self.to_json(), sort_keys=True).encode("utf-8")

    @classmethod
    def load(
        cls,
        data: bytes | str | Mapping[str, Any],
        public_key: PaillierPublicKey,
        *,
        exponent: int,
    ) -> CiphertextVector:
        """Load and validate ciphertexts received from another party.

        Args:
            data: Output of :meth:`serialize` or :meth:`to_json`.
            public_key: The key the ciphertexts must belong to.
            exponent: The exponent the protocol prescribes for this message; anything else is
                refused, so a sender cannot smuggle magnitude information in the exponent.

        Raises:
            SerializationError: Malformed input, wrong exponent, or a value that is not a
                ciphertext of this key.
            KeyMismatchError: The key id differs from ``public_key``'s.
        """
        obj = _parse_json(data, "ciphertexts")
        if obj.get("type") != "paillier.ciphertexts" or obj.get("version") != _FORMAT_VERSION:
            raise SerializationError("not a version-1 paillier ciphertext document")
        kid = _field(obj, "kid", str, "ciphertexts")
        if kid != public_key.key_id:
            raise KeyMismatchError("ciphertexts were made under another key")
        exp = _field(obj, "e", int, "ciphertexts")
        if exp != exponent:
            raise SerializationError(f"ciphertext exponent {exp} is not the protocol's {exponent}")
        count = _field(obj, "count", int, "ciphertexts")
        width = _field(obj, "width", int, "ciphertexts")
        text = _field(obj, "data", str, "ciphertexts")
        if count < 0 or not 0 < width <= (public_key.n_square.bit_length() + 7) // 8:
            raise SerializationError("ciphertext count or width out of range")
        try:
            blob = base64.urlsafe_b64decode(text.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
            raise SerializationError("ciphertext data is not base64url") from exc
        if len(blob) != count * width:
            raise SerializationError("ciphertext data is truncated or padded")
        values = tuple(
            int.from_bytes(blob[i * width : (i + 1) * width], "big") for i in range(count)
        )
        _validate_ciphertexts(values, public_key)
        return cls(values, kid, exp)


@dataclass(frozen=True)
class PackingLayout:
    """Slot layout for packed plaintexts, sized so that no slot can overflow.

    Two uses. *Weighted sums* (``weight_bound`` given): slot ``i`` holds
    ``z_i = sum_{j<terms} w_j * x_ij`` with ``|w_j| <= weight_bound``, ``|x_ij| <= value_bound``,
    scale ``2**(2f)``, summed over at most ``addends`` ciphertexts (e.g. several providers).
    *Packed sums* (``weight_bound`` is ``None``): slot ``i`` holds a sum of at most
    ``addends * terms`` fixed-point values with ``|v| <= value_bound``, scale ``2**f``.

    Attributes:
        key_bits: Bit length of the Paillier modulus.
        frac_bits: Fixed-point fractional bits ``f``.
        value_bound: Bound on ``|x|`` (features, or packed values).
        terms: Number of terms per slot (features per entity ``k``).
        weight_bound: Bound on ``|w|``, or ``None`` for a packed-sum layout.
        addends: How many packed ciphertexts may be added together.
        guard_bits: Extra bits above the worst-case slot magnitude.
        margin_bits: Bits of ``n`` left unused above the top slot.
    """

    key_bits: int
    frac_bits: int
    value_bound: float
    terms: int = 1
    weight_bound: float | None = None
    addends: int = 1
    guard_bits: int = 2
    margin_bits: int = 8

    def __post_init__(self) -> None:
        ints = (self.key_bits, self.frac_bits, self.terms, self.addends, self.guard_bits)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in ints):
            raise ParameterError("layout sizes must be integers")
        if self.key_bits < MIN_KEY_BITS:
            raise ParameterError(f"key_bits must be at least {MIN_KEY_BITS}")
        IntegerCodec(self.frac_bits)
        if self.terms < 1 or self.addends < 1 or self.guard_bits < 1 or self.margin_bits < 2:
            raise ParameterError("terms, addends, guard_bits must be >= 1, margin_bits >= 2")
        for bound in (self.value_bound, self.weight_bound):
            if bound is not None and not (math.isfinite(bound) and bound > 0):
                raise ParameterError("bounds must be finite and positive")
        if self.slots < 1:
            raise PackingError(
                f"one slot needs {self.slot_bits} bits but only "
                f"{self.key_bits - self.margin_bits} are available"
            )

    @property
    def value_limit(self) -> int:
        """Largest admissible ``|x|`` as a fixed-point integer."""
        return _ceil_scaled(self.value_bound, self.frac_bits)

    @property
    def weight_limit(self) -> int:
        """Largest admissible ``|w|`` as a fixed-point integer (1 for packed sums)."""
        if self.weight_bound is None:
            return 1
        return _ceil_scaled(self.weight_bound, self.frac_bits)

    @property
    def slot_limit(self) -> int:
        """Largest possible ``|slot value|`` given the declared bounds."""
        return self.addends * self.terms * self.weight_limit * self.value_limit

    @property
    def slot_bits(self) -> int:
        """Slot width ``s``: magnitude bits + sign bit + guard bits."""
        return self.slot_limit.bit_length() + 1 + self.guard_bits

    @property
    def slots(self) -> int:
        """Number of slots per plaintext."""
        return (self.key_bits - self.margin_bits) // self.slot_bits

    @property
    def exponent(self) -> int:
        """Fixed-point exponent of the slot values."""
        return -2 * self.frac_bits if self.weight_bound is not None else -self.frac_bits

    def blocks(self, count: int) -> int:
        """Number of packed plaintexts needed for ``count`` values."""
        return -(-count // self.slots)

    def pack(self, slot_values: Sequence[int]) -> int:
        """Pack signed slot integers into one signed integer ``sum_i v_i * 2**(i*s)``.

        Raises:
            PackingError: Too many values or a value beyond :attr:`slot_limit`.
        """
        if len(slot_values) > self.slots:
            raise PackingError(f"{len(slot_values)} values exceed the {self.slots} slots")
        limit = self.slot_limit
        acc = 0
        for v in reversed(slot_values):
            if abs(v) > limit:
                raise PackingError("slot value outside the declared bounds")
            acc = (acc << self.slot_bits) + v
        return acc

    def unpack(self, packed: int, count: int) -> list[int]:
        """Read ``count`` signed slots from a signed packed integer (balanced base ``2**s``).

        Raises:
            PackingError: A slot exceeds the declared bound (corruption or layout misuse).
        """
        s = self.slot_bits
        half = 1 << (s - 1)
        mask = (1 << s) - 1
        out: list[int] = []
        limit = self.slot_limit
        for _ in range(count):
            r = packed & mask
            if r >= half:
                r -= 1 << s
            if abs(r) > limit:
                raise PackingError("decoded slot exceeds the layout bound")
            out.append(r)
            packed = (packed - r) >> s
        if packed != 0:
            raise PackingError("packed plaintext has data beyond the expected slots")
        return out

    def to_json(self) -> dict[str, Any]:
        """Return the layout as JSON-ready fields."""
        return {
            "key_bits": self.key_bits,
            "frac_bits": self.frac_bits,
            "value_bound": self.value_bound,
            "terms": self.terms,
            "weight_bound": self.weight_bound,
            "addends": self.addends,
            "guard_bits": self.guard_bits,
            "margin_bits": self.margin_bits,
        }


@dataclass(frozen=True)
class PackedCiphertexts:
    """Ciphertexts of packed plaintexts plus how many slot values they hold.

    Attributes:
        ciphertexts: One ciphertext per block of :attr:`PackingLayout.slots` values.
        count: Number of meaningful slot values (the last block may be partial).
        layout: The layout used to pack.
    """

    ciphertexts: CiphertextVector
    count: int
    layout: PackingLayout

    def serialize(self) -> bytes:
        """Serialise to JSON bytes (ciphertexts, count and layout)."""
        doc = {
            "type": "paillier.packed",
            "version": _FORMAT_VERSION,
            "count": self.count,
            "layout": self.layout.to_json(),
            "ciphertexts": self.ciphertexts.to_json(),
        }
        return json.dumps(doc, sort_keys=True).encode("utf-8")

    @classmethod
    def load(
        cls,
        data: bytes | str | Mapping[str, Any],
        public_key: PaillierPublicKey,
        layout: PackingLayout,
    ) -> PackedCiphertexts:
        """Load packed ciphertexts that must follow ``layout`` (and its fixed exponent).

        Raises:
            SerializationError: Malformed input, or a layout, count or exponent other than agreed.
            KeyMismatchError: Made under another key.
        """
        obj = _parse_json(data, "packed ciphertexts")
        if obj.get("type") != "paillier.packed" or obj.get("version") != _FORMAT_VERSION:
            raise SerializationError("not a version-1 packed paillier document")
        if obj.get("layout") != layout.to_json():
            raise SerializationError("packed ciphertexts use another layout")
        count = _field(obj, "count", int, "packed ciphertexts")
        inner = _field(obj, "ciphertexts", dict, "packed ciphertexts")
        cts = CiphertextVector.load(inner, public_key, exponent=layout.exponent)
        if count < 0 or layout.blocks(count) != len(cts):
            raise SerializationError("packed count does not match the number of ciphertexts")
        return cls(cts, count, layout)


# --------------------------------------------------------------------------- obfuscators


_SUBSET_SIZE: Final = 64
_FIXED_BASE_FROM: Final = 2 * (_SUBSET_SIZE + 1)


class ObfuscatorPool:
    """A stock of obfuscators (encryptions of zero), each handed out exactly once.

    An obfuscator multiplies a ciphertext into a fresh-looking one with the same plaintext. A full
    one, ``r**n mod n**2`` for a uniform unit ``r``, is one exponentiation with a 2048-bit
    exponent modulo a 4096-bit number (~9 ms). After its first batch of at least
    ``2 * (64 + 1)`` obfuscators a pool draws them by fixed-base exponentiation instead
    (Damgård-Jurik-Nielsen, as production Paillier libraries do, ~1 ms): once, it draws full
    ``h = x**n`` and ``Y_1 .. Y_64 = y_i**n`` itself (at least one ``y_i`` with Jacobi symbol
    ``-1``), never from another party; then each obfuscator is ``h**s * prod_{i in S} Y_i``
    with ``s`` uniform in ``[0, 2**ceil(bits(n)/2))`` and ``S`` a uniform subset of the 64.

    Threats: against anyone without the private key (the aggregator, an eavesdropper) results
    stay semantically secure: ``s`` of half the modulus' length is as good as a full-length one
    while factoring ``n`` is hard (the argument DJN give), and the plaintext is hidden under DCR.
    The key owner can factor ``n`` and so look at the randomness modulo the small subgroups of
    ``Z*_n``, where ``h`` alone may not reach (``Z*_n`` is never cyclic); there the subset product
    of independent ``Y_i`` is statistically close to uniform (distance about ``2**-40``), so what
    the key owner put into its own ciphertexts' randomness does not show through a result.
    ``docs/crypto.md`` §2 gives the argument. ``h``, the ``Y_i`` and the tables never leave the
    process and its workers; obfuscators are removed from the pool when taken and never reused
    (reuse would let anyone divide two ciphertexts and cancel the randomness).
    """

    def __init__(
        self, public_key: PaillierPublicKey, private_key: PaillierPrivateKey | None = None
    ):
        """Create an empty pool.

        Args:
            public_key: Key the obfuscators are for.
            private_key: If the caller owns the key, its factors make full obfuscators ~3x
                faster.
        """
        if private_key is not None and private_key.public_key != public_key:
            raise KeyMismatchError("private key does not belong to the public key")
        self.public_key = public_key
        self._factors = (private_key.p, private_key.q) if private_key is not None else (0, 0)
        self._stock: deque[int] = deque()
        self._lock = threading.Lock()
        self._base_lock = threading.Lock()
        self._base: tuple[int, tuple[int, ...]] | None = None
        self._tables: _k.DjnTables | None = None

    def __len__(self) -> int:
        return len(self._stock)

    @property
    def fixed_base(self) -> bool:
        """Whether the pool has drawn its base and now makes fixed-base obfuscators."""
        return self._base is not None

    @property
    def exponent_bits(self) -> int:
        """Length of the short exponent ``s``: ``ceil(bits(n) / 2)``, as in DJN."""
        return -(-self.public_key.bits // 2)

    def generate(self, count: int, executor: Executor | None = None) -> list[int]:
        """Compute ``count`` fresh obfuscators (in ``executor`` if given) without storing them."""
        if count <= 0:
            return []
        if self._base is None and count < _FIXED_BASE_FROM:
            return self._full(count, executor)
        h, subset = self._fixed_base(executor)
        n, bits = self.public_key.n, self.exponent_bits
        if executor is None:
            with self._base_lock:
                if self._tables is None:
                    self._tables = _k.DjnTables(n, h, subset, bits)
                tables = self._tables
            return tables.draw(count)
        chunks = _split(count, 4 * max(1, os.cpu_count() or 1))
        futures = [executor.submit(_k.djn_obfuscators, n, h, subset, c, bits) for c in chunks if c]
        return [o for fut in futures for o in fut.result()]

    def _full(self, count: int, executor: Executor | None) -> list[int]:
        n, (p, q) = self.public_key.n, self._factors
        if executor is None:
            return _k.make_obfuscators(n, count, p, q)
        chunks = _split(count, 4 * max(1, os.cpu_count() or 1))
        futures = [executor.submit(_k.make_obfuscators, n, c, p, q) for c in chunks if c]
        return [o for fut in futures for o in fut.result()]

    def _fixed_base(self, executor: Executor | None) -> tuple[int, tuple[int, ...]]:
        n = self.public_key.n
        with self._base_lock:
            while self._base is None:
                h, *subset = self._full(_SUBSET_SIZE + 1, executor)
                if any(gmpy2.jacobi(y % n, n) == -1 for y in subset):
                    self._base = (h, tuple(subset))
            return self._base

    def fill(self, count: int, executor: Executor | None = None) -> None:
        """Top the pool up by ``count`` obfuscators."""
        fresh = self.generate(count, executor)
        with self._lock:
            self._stock.extend(fresh)

    def take(self, count: int, executor: Executor | None = None) -> list[int]:
        """Remove and return ``count`` obfuscators, computing any shortfall on the spot."""
        with self._lock:
            got = [self._stock.popleft() for _ in range(min(count, len(self._stock)))]
        if len(got) < count:
            got.extend(self.generate(count - len(got), executor))
        return got


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _chunks(seq: Sequence[Any], parts: int) -> list[Sequence[Any]]:
    sizes = _split(len(seq), max(1, min(parts, len(seq))))
    out, start = [], 0
    for size in sizes:
        out.append(seq[start : start + size])
        start += size
    return out


# --------------------------------------------------------------------------- engine


def _best_window(bits: int, terms_per_block: int) -> int:
    def cost(w: int) -> int:  # balanced digits: one more bit, 2**(w-1) buckets folded
        return terms_per_block * _windows(bits, w) + (1 << w)

    return min(range(2, 13), key=cost)


def _windows(bits: int, window: int) -> int:
    """Balanced base-``2**window`` digits of a ``bits``-bit magnitude (one bit for the carry)."""
    return -(-(bits + 1) // window)


class PaillierEngine:
    """Batch Paillier operations over numpy arrays, with a process pool and fixed exponents.

    The analyst holds an engine with the private key (encrypt weights, decrypt results); a provider
    holds one with only the public key (linear combinations over its plaintext features). Work is
    split into chunks of plain integers and run in a
    :class:`~concurrent.futures.ProcessPoolExecutor` (``workers`` processes; ``0`` runs everything
    in-process). Close the engine when done.
    """

    def __init__(
        self,
        public_key: PaillierPublicKey,
        private_key: PaillierPrivateKey | None = None,
        *,
        codec: IntegerCodec | None = None,
        workers: int | None = None,
        obfuscators: ObfuscatorPool | None = None,
    ) -> None:
        """Create an engine.

        Args:
            public_key: The key everything is encrypted under.
            private_key: Needed only for decryption.
            codec: Fixed-point codec (default :data:`DEFAULT_FRAC_BITS` fractional bits).
            workers: Worker processes; default ``os.cpu_count()``; ``0`` for none.
            obfuscators: Pool of precomputed obfuscators; a new empty one if omitted.
        """
        if private_key is not None and private_key.public_key != public_key:
            raise KeyMismatchError("private key does not belong to the public key")
        self.public_key = public_key
        self.private_key = private_key
        self.codec = codec if codec is not None else IntegerCodec()
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        if self.workers < 0:
            raise ParameterError("workers must be >= 0")
        self.obfuscators = (
            obfuscators if obfuscators is not None else ObfuscatorPool(public_key, private_key)
        )
        if self.obfuscators.public_key != public_key:
            raise KeyMismatchError("obfuscator pool belongs to another key")
        self._executor: ProcessPoolExecutor | None = None

    # -- lifecycle
    @property
    def executor(self) -> ProcessPoolExecutor | None:
        """The process pool, started on first use (``None`` when ``workers == 0``)."""
        if self.workers == 0:
            return None
        if self._executor is None:
            # Spawned, never forked: a forked worker kept the node's sockets after a kill.
            self._executor = worker_pool(self.workers)
        return self._executor

    def close(self) -> None:
        """Shut the process pool down (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def prefill(self, count: int) -> None:
        """Precompute ``count`` obfuscators (using the process pool) ahead of time."""
        self.obfuscators.fill(count, self.executor)

    # -- helpers
    def _map(
        self, fn: Callable[..., list[int]], chunks: Sequence[Sequence[Any]], *args: Any
    ) -> list[Any]:
        ex = self.executor
        if ex is None or len(chunks) <= 1:
            return [x for ch in chunks for x in fn(*args, ch)]
        futures = [ex.submit(fn, *args, ch) for ch in chunks]
        return [x for fut in futures for x in fut.result()]

    def _check(self, ct: CiphertextVector) -> None:
        if not isinstance(ct, CiphertextVector):
            raise TypeError("expected a CiphertextVector")
        if ct.key_id != self.public_key.key_id:
            raise KeyMismatchError("ciphertexts were made under another key")

    def _encrypt_residues(self, residues: list[int], exponent: int) -> CiphertextVector:
        obf = self.obfuscators.take(len(residues), self.executor)
        n = self.public_key.n
        parts = max(1, 2 * self.workers)
        if len(residues) < 64 or self.executor is None:
            values = _k.encrypt_many(n, residues, obf)
        else:
            rc, oc = _chunks(residues, parts), _chunks(obf, parts)
            ex = self.executor
            futures = [ex.submit(_k.encrypt_many, n, r, o) for r, o in zip(rc, oc, strict=True)]
            values = [v for fut in futures for v in fut.result()]
        return CiphertextVector(tuple(values), self.public_key.key_id, exponent)

    def _decrypt_residues(self, ct: CiphertextVector) -> list[int]:
        self._check(ct)
        if self.private_key is None:
            raise DecryptionError("this engine holds no private key")
        p, q = self.private_key.p, self.private_key.q
        parts = _chunks(ct.values, 2 * max(1, self.workers)) if len(ct.values) >= 8 else [ct.values]
        return self._map(_k.crt_decrypt_many, parts, p, q)

    def _signed(self, residue: int) -> int:
        n = self.public_key.n
        v = residue - n if residue > n // 2 else residue
        if abs(v) > n // 3:
            raise FixedPointOverflowError("plaintext wrapped around the modulus")
        return v

    # -- encryption / decryption
    def encrypt(self, values: npt.ArrayLike) -> CiphertextVector:
        """Encrypt reals as fixed point; every ciphertext gets exponent ``-f``."""
        ints = self.codec.encode(values)
        return self.encrypt_ints(ints, exponent=self.codec.exponent)

    def encrypt_ints(self, values: Iterable[int], *, exponent: int = 0) -> CiphertextVector:
        """Encrypt signed integers (already scaled) tagged with ``exponent``.

        Raises:
            EncodingError: A value does not fit in ``(-n/3, n/3)``.
        """
        n = self.public_key.n
        residues = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise EncodingError("expected integers")
            iv = int(v)
            if abs(iv) > n // 3:
                raise FixedPointOverflowError("integer too large for the plaintext space")
            residues.append(iv % n)
        return self._encrypt_residues(residues, exponent)

    def decrypt_ints(self, ct: CiphertextVector) -> list[int]:
        """Decrypt to signed integers (still scaled by ``2**-exponent``)."""
        return [self._signed(m) for m in self._decrypt_residues(ct)]

    def decrypt(self, ct: CiphertextVector) -> npt.NDArray[np.float64]:
        """Decrypt and decode to float64 using the ciphertexts' fixed exponent."""
        return self.codec.decode(self.decrypt_ints(ct), ct.exponent)

    # -- homomorphic operations
    def add(self, a: CiphertextVector, b: CiphertextVector) -> CiphertextVector:
        """Element-wise encrypted sum ``E(a + b)``.

        Raises:
            KeyMismatchError: Different keys.
            EncodingError: Different exponents or lengths.
        """
        self._check(a)
        self._check(b)
        if a.exponent != b.exponent or len(a) != len(b):
            raise EncodingError("operands differ in exponent or length")
        n2 = gmpy2.mpz(self.public_key.n_square)
        vals = tuple(int(gmpy2.mpz(x) * y % n2) for x, y in zip(a.values, b.values, strict=True))
        return CiphertextVector(vals, a.key_id, a.exponent)

    def obfuscate(self, ct: CiphertextVector) -> CiphertextVector:
        """Re-randomise every ciphertext with a fresh obfuscator (same plaintexts)."""
        self._check(ct)
        n2 = gmpy2.mpz(self.public_key.n_square)
        obf = self.obfuscators.take(len(ct), self.executor)
        vals = tuple(int(gmpy2.mpz(c) * o % n2) for c, o in zip(ct.values, obf, strict=True))
        return CiphertextVector(vals, ct.key_id, ct.exponent)

    def mul_scalar(self, ct: CiphertextVector, scalars: npt.ArrayLike) -> CiphertextVector:
        """Element-wise ``E(a_i * x_i)`` for fixed-point reals ``x_i``; exponent gains ``-f``.

        The result is obfuscated before it is returned.
        """
        self._check(ct)
        ints = self.codec.encode(scalars)
        if len(ints) != len(ct):
            raise EncodingError("scalars and ciphertexts differ in length")
        n2 = self.public_key.n_square
        vals = tuple(_k.multiexp_powmod(n2, [c], [x]) for c, x in zip(ct.values, ints, strict=True))
        out = CiphertextVector(vals, ct.key_id, ct.exponent - self.codec.frac_bits)
        return self.obfuscate(out)

    def linear_combination(
        self, weights: CiphertextVector, features: npt.ArrayLike
    ) -> CiphertextVector:
        """Unpacked ``E(sum_j w_j * x_ij)`` per row ``i`` of ``features`` (shape ``(m, k)``).

        One ciphertext per row; simple and interoperable, but one decryption per row. Prefer
        :meth:`packed_linear_combination` for many rows.
        """
        self._check(weights)
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(weights):
            raise EncodingError("features must have shape (rows, len(weights))")
        ints = self.codec.encode(x)
        k = x.shape[1]
        rows = [ints[i * k : (i + 1) * k] for i in range(x.shape[0])]
        n2 = self.public_key.n_square
        vals = tuple(_k.multiexp_straus(n2, weights.values, r) for r in rows)
        out = CiphertextVector(vals, weights.key_id, weights.exponent - self.codec.frac_bits)
        return self.obfuscate(out)

    # -- packing
    def weighted_sum_layout(
        self, weight_bound: float, feature_bound: float, terms: int, addends: int = 1
    ) -> PackingLayout:
        """Layout for :meth:`packed_linear_combination` with this engine's key and codec."""
        return PackingLayout(
            key_bits=self.public_key.bits,
            frac_bits=self.codec.frac_bits,
            value_bound=feature_bound,
            terms=terms,
            weight_bound=weight_bound,
            addends=addends,
        )

    def sum_layout(self, value_bound: float, addends: int) -> PackingLayout:
        """Layout for :meth:`encrypt_packed` vectors that may be summed ``addends`` times."""
        return PackingLayout(
            key_bits=self.public_key.bits,
            frac_bits=self.codec.frac_bits,
            value_bound=value_bound,
            addends=addends,
        )

    def _check_layout(self, layout: PackingLayout) -> None:
        if layout.key_bits > self.public_key.bits or layout.frac_bits != self.codec.frac_bits:
            raise PackingError("layout does not match this key or codec")

    def encrypt_packed(self, values: npt.ArrayLike, layout: PackingLayout) -> PackedCiphertexts:
        """Encrypt reals packed ``layout.slots`` per ciphertext (packed-sum layout).

        Raises:
            PackingError: The layout is a weighted-sum layout or does not fit this key.
            FixedPointOverflowError: A value exceeds ``layout.value_bound``.
        """
        self._check_layout(layout)
        if layout.weight_bound is not None:
            raise PackingError("encrypt_packed needs a packed-sum layout")
        ints = self.codec.encode(values, bound=layout.value_bound)
        if any(abs(v) > layout.value_limit for v in ints):
            raise PackingError("value outside the declared bound")
        s = layout.slots
        packed = [layout.pack(ints[i : i + s]) for i in range(0, len(ints), s)]
        return PackedCiphertexts(
            self.encrypt_ints(packed, exponent=layout.exponent), len(ints), layout
        )

    def add_packed(self, a: PackedCiphertexts, b: PackedCiphertexts) -> PackedCiphertexts:
        """Slot-wise encrypted sum of two packed vectors with the same layout and count."""
        if a.layout != b.layout or a.count != b.count:
            raise PackingError("packed operands differ in layout or count")
        return PackedCiphertexts(self.add(a.ciphertexts, b.ciphertexts), a.count, a.layout)

    def decrypt_packed(self, packed: PackedCiphertexts) -> npt.NDArray[np.float64]:
        """Decrypt packed ciphertexts and decode every slot to float64."""
        layout = packed.layout
        self._check_layout(layout)
        if layout.blocks(packed.count) != len(packed.ciphertexts):
            raise PackingError("count does not match the number of ciphertexts")
        plain = self._decrypt_residues(packed.ciphertexts)
        out: list[int] = []
        remaining = packed.count
        for m in plain:
            take = min(layout.slots, remaining)
            out.extend(layout.unpack(self._signed(m), take))
            remaining -= take
        return self.codec.decode(out, layout.exponent)

    def packed_linear_combination(
        self,
        weights: CiphertextVector,
        features: npt.ArrayLike,
        layout: PackingLayout,
        *,
        method: str = "bucket",
    ) -> PackedCiphertexts:
        """Packed encrypted logits ``E(sum_i (sum_j w_j x_ij) 2**(i*s))``, one per block of rows.

        Each block of ``layout.slots`` rows costs one multi-exponentiation and, at the analyst, one
        decryption. Results are obfuscated (fresh ones from the pool) before they leave.

        Args:
            weights: ``E(w_j)``, exponent ``-f`` (the protocol's fixed exponent).
            features: Plaintext matrix of shape ``(m, k)``, ``|x| <= layout.value_bound``.
            layout: A weighted-sum layout with ``terms >= k``.
            method: ``"bucket"`` (fixed-base tables + bucket method; fastest, measured),
                ``"straus"`` (simultaneous multi-exponentiation) or ``"powmod"`` (one ``powmod``
                per term); all give the same plaintexts.

        Raises:
            PackingError: Layout misuse or a feature outside the declared bound.
            EncodingError: Wrong shapes or exponent.
        """
        self._check(weights)
        self._check_layout(layout)
        if layout.weight_bound is None:
            raise PackingError("packed_linear_combination needs a weighted-sum layout")
        if weights.exponent != self.codec.exponent:
            raise EncodingError("weights must carry the protocol's fixed exponent")
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(weights):
            raise EncodingError("features must have shape (rows, len(weights))")
        k = x.shape[1]
        if k > layout.terms:
            raise PackingError(f"{k} terms exceed the layout's {layout.terms}")
        if x.size and not np.all(np.isfinite(x)):
            raise FixedPointOverflowError("NaN or infinite feature")
        if x.size and float(np.max(np.abs(x))) > layout.value_bound:
            raise PackingError("feature outside the declared bound")
        xq = np.rint(np.ldexp(x, self.codec.frac_bits))
        if layout.value_limit >= 2**62:
            raise PackingError("feature bound too large for the vectorised path")
        xi = xq.astype(np.int64)
        m, s = x.shape[0], layout.slots
        blocks = [xi[i : i + s] for i in range(0, m, s)]
        n2 = self.public_key.n_square
        if method == "bucket":
            raw = self._bucket(weights, blocks, layout)
        elif method in ("straus", "powmod"):
            fn = _k.multiexp_straus if method == "straus" else _k.multiexp_powmod
            exps = [[_pack_column(b[:, j], layout) for j in range(k)] for b in blocks]
            ex = self.executor
            if ex is None:
                raw = [fn(n2, weights.values, e) for e in exps]
            else:
                futs = [ex.submit(fn, n2, weights.values, e) for e in exps]
                raw = [f.result() for f in futs]
        else:
            raise ParameterError(f"unknown method {method!r}")
        obf = self.obfuscators.take(len(raw), self.executor)
        n2m = gmpy2.mpz(n2)
        vals = tuple(int(gmpy2.mpz(c) * o % n2m) for c, o in zip(raw, obf, strict=True))
        cts = CiphertextVector(vals, weights.key_id, layout.exponent)
        return PackedCiphertexts(cts, m, layout)

    def _bucket(
        self, weights: CiphertextVector, blocks: list[npt.NDArray[np.int64]], layout: PackingLayout
    ) -> list[int]:
        if not blocks:
            return []
        n2 = self.public_key.n_square
        k = len(weights)
        bits = max(1, layout.value_limit.bit_length())
        window = _best_window(bits, layout.slots * k)
        windows = _windows(bits, window)
        args = (layout.slots, layout.slot_bits, windows, window)
        ex = self.executor
        if ex is None:
            tabs = [_k.fixed_base_table(n2, c, *args) for c in weights.values]
        else:
            futs = [ex.submit(_k.fixed_base_table, n2, c, *args) for c in weights.values]
            tabs = [f.result() for f in futs]
        table = [v for t in tabs for v in t[0]] + [v for t in tabs for v in t[1]]
        parts = _chunks(blocks, 4 * max(1, self.workers))
        if ex is None:
            return _k.bucket_blocks(n2, table, blocks, windows, window, layout.slots)
        futures = [
            ex.submit(_k.bucket_blocks, n2, table, list(p), windows, window, layout.slots)
            for p in parts
        ]
        return [v for fut in futures for v in fut.result()]


def _pack_column(column: npt.NDArray[np.int64], layout: PackingLayout) -> int:
    """Signed packed exponent ``sum_i x_i * 2**(i*s)`` for one feature column of a block."""
    acc = 0
    for v in reversed(column.tolist()):
        acc = (acc << layout.slot_bits) + int(v)
    return acc
