"""CKKS approximate homomorphic encryption (TenSEAL) for batched joint scores and aggregates.

Why: a bank (the *analyst*) wants the logit ``z = Σ_j w_j·x_j`` for up to a million entities whose
features ``x`` are held by a government department or another bank (a *provider*), without showing
its weights ``w`` and without the provider showing ``x``. CKKS packs ``N/2`` real numbers in one
ciphertext, so one ciphertext*plaintext multiply works on thousands of entities at once.

Roles and what each holds:

* :class:`SecretContext` — the analyst's key pair. It never leaves the analyst's process unless the
  caller passes the loud keyword ``dangerously_include_secret_key=True`` (for its own key store).
* :class:`PublicContext` — parameters, public key and *only* the evaluation keys the evaluator needs
  (Galois keys only when slot sums are needed; relinearisation keys only for ciphertext*ciphertext).
  Its bytes never contain the secret key; decrypting with it raises :class:`DecryptionError`.
* :class:`EncryptedVector` — a numpy vector of any length chunked into ``N/2``-slot ciphertexts,
  serialised as versioned bytes (header + list of TenSEAL ciphertext bytes; never pickle) carrying
  the fingerprint of the public context it belongs to.

Threats and mitigations:

* **Key recovery from decryptions** (Li & Micciancio, EUROCRYPT 2021): a CKKS decryption is the
  message *plus the noise*, and the noise is a linear function of the secret key. Whoever sees raw
  decryptions of ciphertexts it can relate (for instance outputs of a computation it asked for) can
  solve for the key. We therefore round every decryption to ``decimals`` (default chosen from the
  preset's measured precision) inside :meth:`SecretContext.decrypt`, before the number leaves the
  key holder's API. Rounding removes the low noise bits in the common case; it is not a proof
  (values near a rounding boundary still leak a bit), which is why the protocol layer also limits
  queries by policy.
* **Circuit privacy for the provider**: the analyst created the weight ciphertexts, so it knows
  their randomness; a product ``E(w)·x`` handed back unchanged would let it solve for ``x``.
  The provider therefore *re-randomises* every result by adding a fresh public-key encryption of
  zero (``rerandomize=True``, the default), which masks the ciphertext's random component. The
  decryption noise still carries a small term depending on ``x``; statistical circuit privacy
  would need *noise flooding* (adding noise ~2^λ times larger than that term), which would
  destroy the precision budget at these parameters. Flooding is therefore documented, not
  implemented; the semi-honest threat model (DESIGN §10) and output rounding are what we rely on.
* **Insecure parameters**: only parameter sets within the HomomorphicEncryption.org standard table
  for 128-bit classical security are accepted (total coefficient modulus ≤ 218 bits for N = 8192,
  ≤ 438 bits for N = 16384); anything else raises :class:`ParameterError`.
* **Bytes from outside** are validated (magic, version, lengths, chunk counts, size limits,
  fingerprint) before TenSEAL's C++ deserialiser sees them; failures raise
  :class:`SerializationError` or :class:`KeyMismatchError`.

Value ranges: the last level of a ciphertext has ``first_prime_bits`` of modulus; a *result* must
satisfy ``|v| < 2^(first_prime_bits - scale_bits - 1)`` (2^19 for the 8192 presets, 2^9 for the
16384 preset) or decryption wraps around silently. Callers scale their inputs accordingly.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import tenseal as ts

from crypto._wire import read_header
from crypto.errors import (
    DecryptionError,
    EncodingError,
    KeyMismatchError,
    ParameterError,
    SerializationError,
)
from crypto.workers import worker_pool

__all__ = [
    "MAX_COEFF_MODULUS_BITS",
    "RESCALE_RELATIVE_ERROR",
    "PRESETS",
    "PRESET_8192_DEPTH1",
    "PRESET_8192_DEPTH2",
    "PRESET_16384_DEPTH6",
    "CkksPreset",
    "EncryptedVector",
    "PublicContext",
    "SecretContext",
    "add",
    "dot",
    "encrypt_weights",
    "mul_plain",
    "mul_scalar",
    "sum_slots",
    "weighted_sum",
]

FloatArray = npt.NDArray[np.float64]

#: HomomorphicEncryption.org security standard (2018), Table 1, classical 128-bit, ternary secret.
MAX_COEFF_MODULUS_BITS: Final[dict[int, int]] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

#: Relative bias of one rescaled product (measured ~2.5e-7 for 40-bit primes; stated with margin).
RESCALE_RELATIVE_ERROR: Final = 1e-6

_CTX_MAGIC: Final = b"TSCC"
_VEC_MAGIC: Final = b"TSCV"
_VERSION: Final = 1
_KIND_PUBLIC: Final = 1
_KIND_SECRET: Final = 2
_LAYOUT_VECTOR: Final = 1
_LAYOUT_REPLICATED: Final = 2
# magic, version, kind/layout, fingerprint(32), length u64, scale_bits u16, n_chunks u32
_VEC_HEADER: Final = struct.Struct(">4sBB32sQHI")
_CHUNK_LEN: Final = struct.Struct(">I")
# magic, version, kind, N u32, scale_bits u8, n_primes u8
_CTX_HEADER: Final = struct.Struct(">4sBBIBB")
_CTX_LEN: Final = struct.Struct(">Q")
#: Upper bound on accepted context bytes (16384 with Galois keys is ~100 MB serialised).
MAX_CONTEXT_BYTES: Final = 512 * 1024 * 1024


@dataclass(frozen=True)
class CkksPreset:
    """A named, validated CKKS parameter set with its measured precision.

    Attributes:
        name: Stable identifier (goes on the wire).
        poly_modulus_degree: Ring dimension ``N``; a ciphertext holds ``N/2`` slots.
        coeff_mod_bit_sizes: Prime sizes: first (decryption headroom), ``depth`` rescaling primes
            equal to ``scale_bits``, last (the special key-switching prime).
        scale_bits: ``log2`` of the encoding scale Δ.
        encrypt_tolerance: Stated bound on ``|decrypt(encrypt(v)) - v|`` for ``|v| ≤ input_bound``
            (measured maximum * 10, see ``benchmarks/cases_ckks.py`` and the tests).
        linear_tolerance: Stated bound on the error of ``Σ_j E(w_j)·x_j`` for ``k ≤ 64`` terms with
            ``|w|, |x| ≤ input_bound`` (measured maximum * 10).
        input_bound: The value range the tolerances are stated for.

    Rescaled products (:func:`mul_plain`, :func:`mul_scalar`, :func:`dot`) carry an extra
    *relative* error of up to :data:`RESCALE_RELATIVE_ERROR`: TenSEAL divides by a prime
    ``q ≈ 2^scale_bits`` but labels the result with scale exactly ``2^scale_bits``. The lazy
    :func:`weighted_sum` never rescales and so has no such bias.
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    encrypt_tolerance: float = 1e-4
    linear_tolerance: float = 1e-3
    input_bound: float = 16.0

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in MAX_COEFF_MODULUS_BITS or n < 8192:
            raise ParameterError(f"poly_modulus_degree must be 8192, 16384 or 32768, got {n}")
        bits = self.coeff_mod_bit_sizes
        if len(bits) < 3:
            raise ParameterError("need at least three primes (headroom, one level, special)")
        if any(not 20 <= b <= 60 for b in bits):
            raise ParameterError("every coefficient prime must be 20..60 bits")
        total = sum(bits)
        if total > MAX_COEFF_MODULUS_BITS[n]:
            raise ParameterError(
                f"{total} coefficient modulus bits exceed the 128-bit security bound "
                f"{MAX_COEFF_MODULUS_BITS[n]} for N={n} (HomomorphicEncryption.org standard)"
            )
        if any(b != self.scale_bits for b in bits[1:-1]):
            raise ParameterError("middle primes must equal scale_bits so rescaling keeps the scale")
        if not 20 <= self.scale_bits < bits[0]:
            raise ParameterError("scale_bits must be at least 20 and below the first prime's size")
        if not (self.encrypt_tolerance > 0 and self.linear_tolerance > 0 and self.input_bound > 0):
            raise ParameterError("tolerances and input_bound must be positive")

    @property
    def slots(self) -> int:
        """Number of real values one ciphertext holds (``N/2``)."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplicative depth: rescalings available (ct*pt multiply costs one)."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        """Total coefficient modulus bits (the quantity bounded by the security table)."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def result_bound(self) -> float:
        """Results at the last level must stay below this magnitude or they wrap around."""
        return float(2 ** (self.coeff_mod_bit_sizes[0] - self.scale_bits - 1))

    @property
    def default_decimals(self) -> int:
        """Release precision: the coarsest decimal digit still finer than the linear tolerance."""
        return max(0, math.floor(-math.log10(self.linear_tolerance)))


# Tolerances: measured maxima * 10, rounded up to a power of ten. Measured (raw, before rounding;
# 3 trials, values uniform in [-16, 16], k = 64 terms):
#   ckks-8192-d1   encrypt/decrypt 9.0e-9   linear combination 6.6e-7   -> decimals 5
#   ckks-8192-d2   encrypt/decrypt 8.2e-9   linear combination 5.8e-7   -> decimals 5
#   ckks-16384-d6  encrypt/decrypt 1.7e-11  linear combination 1.5e-9   -> decimals 7
# Released values are rounded, adding at most 0.5 * 10^-decimals, still within linear_tolerance.
PRESET_8192_DEPTH1: Final = CkksPreset(
    name="ckks-8192-d1",
    poly_modulus_degree=8192,
    coeff_mod_bit_sizes=(60, 40, 60),
    scale_bits=40,
    encrypt_tolerance=1e-7,
    linear_tolerance=1e-5,
)
PRESET_8192_DEPTH2: Final = CkksPreset(
    name="ckks-8192-d2",
    poly_modulus_degree=8192,
    coeff_mod_bit_sizes=(60, 40, 40, 60),
    scale_bits=40,
    encrypt_tolerance=1e-7,
    linear_tolerance=1e-5,
)
PRESET_16384_DEPTH6: Final = CkksPreset(
    name="ckks-16384-d6",
    poly_modulus_degree=16384,
    coeff_mod_bit_sizes=(60, 50, 50, 50, 50, 50, 50, 60),
    scale_bits=50,
    encrypt_tolerance=1e-9,
    linear_tolerance=1e-7,
)
PRESETS: Final[dict[str, CkksPreset]] = {
    p.name: p for p in (PRESET_8192_DEPTH1, PRESET_8192_DEPTH2, PRESET_16384_DEPTH6)
}


def _fingerprint(ctx: ts.Context) -> bytes:
    """SHA-256 over parameters and public key only (stable whatever evaluation keys are shipped)."""
    try:
        raw = ctx.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise SerializationError("cannot serialise the CKKS context") from exc
    return hashlib.sha256(raw).digest()


def _max_chunk_bytes(preset: CkksPreset) -> int:
    # Two polynomials * N coefficients * 8 bytes * data primes, plus protobuf/SEAL headers.
    return 2 * preset.poly_modulus_degree * 8 * (len(preset.coeff_mod_bit_sizes) - 1) + 4096


def _check_loaded_params(ctx: ts.Context, preset: CkksPreset) -> None:
    try:
        key_data = ctx.seal_context().data.key_context_data()
        n = int(key_data.parms().poly_modulus_degree())
        total = int(key_data.total_coeff_modulus_bit_count())
    except (AttributeError, RuntimeError, ValueError, TypeError) as exc:
        raise SerializationError("cannot read the loaded context's parameters") from exc
    if n != preset.poly_modulus_degree or total != preset.total_bits:
        raise SerializationError("context bytes do not match their declared parameters")
    if not ctx.is_private() and not ctx.is_public():
        raise SerializationError("context bytes hold no keys")


class _ContextBase:
    """Shared state and public-key operations of both context kinds."""

    def __init__(self, preset: CkksPreset, tsctx: ts.Context, fingerprint: bytes) -> None:
        self._preset = preset
        self._ts = tsctx
        self._fingerprint = fingerprint

    @property
    def preset(self) -> CkksPreset:
        """The parameter set in use."""
        return self._preset

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the public context's parameters and public key; binds ciphertexts to keys."""
        return self._fingerprint

    @property
    def has_galois_keys(self) -> bool:
        """Whether slot rotations (and hence :func:`sum_slots` / :func:`dot`) are possible."""
        return bool(self._ts.has_galois_keys())

    @property
    def tenseal_context(self) -> ts.Context:
        """The wrapped TenSEAL context (for the protocol layer's advanced use; keep it private)."""
        return self._ts

    def encrypt(self, values: npt.ArrayLike) -> EncryptedVector:
        """Encrypt a real vector of any length under the public key (party-held mode).

        Args:
            values: One-dimensional finite reals; precision is stated for ``|v| ≤ input_bound``.

        Returns:
            The vector packed into ``ceil(len/slots)`` ciphertexts.

        Raises:
            EncodingError: The values are not a finite 1-D real vector or exceed ``result_bound``.
        """
        vec = _as_vector(values, self._preset)
        slots = self._preset.slots
        chunks: list[Any] = []
        for start in range(0, vec.size, slots):
            chunks.append(self._encrypt_slots(_padded(vec[start : start + slots], slots)))
        return EncryptedVector(
            chunks=tuple(chunks),
            length=int(vec.size),
            scale_bits=self._preset.scale_bits,
            fingerprint=self._fingerprint,
            replicated=False,
        )

    def _encrypt_slots(self, full: FloatArray, scale_bits: int | None = None) -> Any:
        try:
            if scale_bits is None:
                return ts.ckks_vector(self._ts, full.tolist())
            return ts.ckks_vector(self._ts, full.tolist(), scale=float(2**scale_bits))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise EncodingError("TenSEAL refused to encrypt the vector") from exc

    def load_vector(self, data: bytes, *, max_bytes: int = 1 << 31) -> EncryptedVector:
        """Load :meth:`EncryptedVector.serialize` bytes against this context (see that method)."""
        return EncryptedVector.load(self, data, max_bytes=max_bytes)


class PublicContext(_ContextBase):
    """The evaluator's context: public key and needed evaluation keys, never the secret key."""

    def serialize(self) -> bytes:
        """Versioned bytes for another party: header + TenSEAL context without the secret key."""
        return _pack_context(self._ts, self._preset, kind=_KIND_PUBLIC, secret=False)

    @classmethod
    def load(cls, data: bytes, *, max_bytes: int = MAX_CONTEXT_BYTES) -> PublicContext:
        """Load a public context sent by a key holder.

        Raises:
            SerializationError: Malformed, truncated, oversized or inconsistent bytes, or bytes
                that carry a secret key (a public context must never hold one).
            ParameterError: The declared parameters are below the security bound.
        """
        preset, tsctx = _unpack_context(data, expected_kind=_KIND_PUBLIC, max_bytes=max_bytes)
        if tsctx.is_private():
            raise SerializationError("public context bytes unexpectedly contain a secret key")
        return cls(preset, tsctx, _fingerprint(tsctx))

    def decrypt(self, vector: EncryptedVector, *, decimals: int | None = None) -> FloatArray:
        """Always fails: a public context holds no secret key.

        Raises:
            DecryptionError: Always.
        """
        _ = (vector, decimals)
        raise DecryptionError("a public context holds no secret key and cannot decrypt")


class SecretContext(_ContextBase):
    """The key holder's context (the analyst). Decrypts, rounding before release."""

    @classmethod
    def generate(
        cls,
        preset: CkksPreset = PRESET_8192_DEPTH1,
        *,
        n_threads: int | None = None,
    ) -> SecretContext:
        """Generate a fresh key pair for ``preset``.

        Args:
            preset: A validated parameter set (constructing a :class:`CkksPreset` enforces the
                128-bit security bound, so an insecure one cannot reach this point).
            n_threads: TenSEAL worker threads (default: TenSEAL's choice, the CPU count).

        Raises:
            ParameterError: TenSEAL/SEAL rejected the parameters.
        """
        if not isinstance(preset, CkksPreset):
            raise ParameterError("preset must be a CkksPreset")
        try:
            tsctx = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=preset.poly_modulus_degree,
                coeff_mod_bit_sizes=list(preset.coeff_mod_bit_sizes),
                n_threads=n_threads,
            )
            tsctx.global_scale = float(2**preset.scale_bits)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ParameterError("TenSEAL rejected the CKKS parameters") from exc
        return cls(preset, tsctx, _fingerprint(tsctx))

    def public_context(
        self, *, galois_keys: bool = False, relin_keys: bool = False
    ) -> PublicContext:
        """Derive the evaluator's context, holding only the keys it needs.

        Args:
            galois_keys: Include rotation keys (needed for :func:`sum_slots` / :func:`dot`; large:
                ~18 MB at N = 8192, several hundred MB at N = 16384).
            relin_keys: Include relinearisation keys (only for ciphertext*ciphertext products).

        Returns:
            A :class:`PublicContext` that cannot decrypt.
        """
        try:
            if galois_keys and not self._ts.has_galois_keys():
                self._ts.generate_galois_keys()
            raw = self._ts.serialize(
                save_public_key=True,
                save_secret_key=False,
                save_galois_keys=galois_keys,
                save_relin_keys=relin_keys,
            )
            pub = ts.context_from(raw)
            pub.global_scale = float(2**self._preset.scale_bits)
        except (ValueError, RuntimeError) as exc:
            raise ParameterError("could not derive a public context") from exc
        return PublicContext(self._preset, pub, self._fingerprint)

    def serialize(self, *, dangerously_include_secret_key: bool = False) -> bytes:
        """Serialise; without the loud keyword this gives the *public* bytes (no secret key).

        Args:
            dangerously_include_secret_key: Only for the key holder's own encrypted key store.
                Bytes produced with it decrypt everything ever encrypted under this key.
        """
        if dangerously_include_secret_key:
            return _pack_context(self._ts, self._preset, kind=_KIND_SECRET, secret=True)
        return _pack_context(self._ts, self._preset, kind=_KIND_PUBLIC, secret=False)

    @classmethod
    def load(cls, data: bytes, *, max_bytes: int = MAX_CONTEXT_BYTES) -> SecretContext:
        """Load bytes produced with ``dangerously_include_secret_key=True``.

        Raises:
            SerializationError: Malformed bytes, or bytes without a secret key.
        """
        preset, tsctx = _unpack_context(data, expected_kind=_KIND_SECRET, max_bytes=max_bytes)
        if not tsctx.is_private():
            raise SerializationError("secret context bytes hold no secret key")
        return cls(preset, tsctx, _fingerprint(tsctx))

    def decrypt(self, vector: EncryptedVector, *, decimals: int | None = None) -> FloatArray:
        """Decrypt and round before release.

        Rounding is a mitigation of the Li-Micciancio (2021) key-recovery attack: a raw CKKS
        decryption equals the message plus noise that is linear in the secret key, so whoever sees
        raw decryptions can recover the key. This method never returns unrounded values.

        Args:
            vector: A vector encrypted under this key (its fingerprint is checked).
            decimals: Release precision; default ``preset.default_decimals`` (coarser than the
                measured noise). Values larger than that default are refused.

        Returns:
            The rounded float64 vector of the original length.

        Raises:
            KeyMismatchError: The vector belongs to another key.
            DecryptionError: TenSEAL failed to decrypt (corrupted ciphertext).
            ParameterError: ``decimals`` is finer than the preset's precision allows.
        """
        limit = self._preset.default_decimals
        places = limit if decimals is None else decimals
        if not isinstance(places, int) or places < 0 or places > limit:
            raise ParameterError(f"decimals must be an int in 0..{limit} for {self._preset.name}")
        _check_same_key(self._fingerprint, vector.fingerprint)
        parts: list[FloatArray] = []
        try:
            secret_key = self._ts.secret_key()
            for chunk in vector.chunks:
                parts.append(np.asarray(chunk.decrypt(secret_key), dtype=np.float64))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise DecryptionError("TenSEAL could not decrypt the ciphertext") from exc
        if vector.replicated:
            out = np.array([p[0] for p in parts], dtype=np.float64)
        else:
            out = np.concatenate(parts)[: vector.length] if parts else np.zeros(0)
        return np.round(out, places)


@dataclass(frozen=True)
class EncryptedVector:
    """A real vector packed into CKKS ciphertexts of ``slots`` values each.

    ``replicated=True`` is the weight layout: ``length`` ciphertexts, the ``j``-th holding ``w_j``
    in every slot. ``scale_bits`` tracks the encoding scale (``2·Δ`` bits after a lazy, not yet
    rescaled, ct*pt product) so incompatible sums are refused in our code, not deep in SEAL.
    """

    chunks: tuple[Any, ...] = field(repr=False)
    length: int
    scale_bits: int
    fingerprint: bytes = field(repr=False)
    replicated: bool = False

    @property
    def n_chunks(self) -> int:
        """How many ciphertexts hold the vector."""
        return len(self.chunks)

    def copy(self) -> EncryptedVector:
        """A deep, independent copy (in-place operations on one never affect the other)."""
        return EncryptedVector(
            chunks=tuple(c.copy() for c in self.chunks),
            length=self.length,
            scale_bits=self.scale_bits,
            fingerprint=self.fingerprint,
            replicated=self.replicated,
        )

    def serialize(self) -> bytes:
        """Versioned bytes: header (fingerprint, length, scale, count) + length-prefixed chunks."""
        layout = _LAYOUT_REPLICATED if self.replicated else _LAYOUT_VECTOR
        out = [
            _VEC_HEADER.pack(
                _VEC_MAGIC,
                _VERSION,
                layout,
                self.fingerprint,
                self.length,
                self.scale_bits,
                len(self.chunks),
            )
        ]
        for chunk in self.chunks:
            try:
                raw = chunk.serialize()
            except (ValueError, RuntimeError) as exc:
                raise SerializationError("TenSEAL could not serialise a ciphertext") from exc
            out.append(_CHUNK_LEN.pack(len(raw)))
            out.append(raw)
        return b"".join(out)

    @classmethod
    def load(
        cls, context: _ContextBase, data: bytes, *, max_bytes: int = 1 << 31
    ) -> EncryptedVector:
        """Load bytes from another party, validating everything before TenSEAL parses a chunk.

        Raises:
            SerializationError: Malformed, truncated, oversized, trailing or inconsistent bytes.
            KeyMismatchError: The vector was encrypted under another context's key.
        """
        buf, fields = read_header(
            data, _VEC_HEADER, _VEC_MAGIC, max_bytes=max_bytes, what="encrypted vector"
        )
        _, version, layout, fp, length, scale_bits, n_chunks = fields
        if version != _VERSION:
            raise SerializationError(f"unsupported encrypted-vector version {version}")
        if layout not in (_LAYOUT_VECTOR, _LAYOUT_REPLICATED):
            raise SerializationError("unknown layout")
        preset = context.preset
        replicated = layout == _LAYOUT_REPLICATED
        expected = length if replicated else -(-length // preset.slots)
        if n_chunks != expected:
            raise SerializationError("chunk count does not match the declared length")
        if scale_bits not in (preset.scale_bits, 2 * preset.scale_bits):
            raise SerializationError("declared scale is not one this preset produces")
        _check_same_key(context.fingerprint, fp)
        limit = _max_chunk_bytes(preset)
        offset = _VEC_HEADER.size
        raws: list[bytes] = []
        for _ in range(n_chunks):
            if offset + _CHUNK_LEN.size > len(buf):
                raise SerializationError("truncated chunk length")
            (size,) = _CHUNK_LEN.unpack_from(buf, offset)
            offset += _CHUNK_LEN.size
            if size == 0 or size > limit:
                raise SerializationError("chunk size out of range")
            if offset + size > len(buf):
                raise SerializationError("truncated chunk")
            raws.append(buf[offset : offset + size])
            offset += size
        if offset != len(buf):
            raise SerializationError("trailing bytes after the last chunk")
        chunks = []
        for i, raw in enumerate(raws):
            try:
                chunk = ts.ckks_vector_from(context.tenseal_context, raw)
                size_ok = chunk.size() == preset.slots or (
                    n_chunks == 1 and not replicated and chunk.size() == length
                )
            except (ValueError, RuntimeError, TypeError) as exc:
                raise SerializationError(f"chunk {i} is not a valid ciphertext") from exc
            if not size_ok:
                raise SerializationError(f"chunk {i} has the wrong number of slots")
            chunks.append(chunk)
        return cls(
            chunks=tuple(chunks),
            length=int(length),
            scale_bits=int(scale_bits),
            fingerprint=fp,
            replicated=replicated,
        )


# --------------------------------------------------------------------------- operations


def encrypt_weights(context: _ContextBase, weights: npt.ArrayLike) -> EncryptedVector:
    """Encrypt each weight replicated across all slots (layout (a): ``k`` ciphertexts).

    Args:
        context: The analyst's context (a public one works too: encryption needs no secret).
        weights: ``k`` finite reals.

    Returns:
        A replicated :class:`EncryptedVector` for :func:`weighted_sum`.
    """
    vec = _as_vector(weights, context.preset)
    slots = context.preset.slots
    chunks = tuple(context._encrypt_slots(np.full(slots, w)) for w in vec)
    return EncryptedVector(
        chunks=chunks,
        length=int(vec.size),
        scale_bits=context.preset.scale_bits,
        fingerprint=context.fingerprint,
        replicated=True,
    )


def weighted_sum(
    context: PublicContext | SecretContext,
    weights: EncryptedVector,
    features: npt.ArrayLike,
    *,
    rerandomize: bool = True,
    workers: int = 1,
) -> EncryptedVector:
    """Provider side of the joint score: ``E(z) = Σ_j E(w_j) ⊙ X[:, j]`` chunk by chunk.

    Uses only ct*pt multiplies and additions (no rotations, no relinearisation keys) with *lazy
    rescaling*: products stay at scale Δ² and are summed without rescaling (≈30 % faster); the
    result therefore has ``scale_bits = 2·Δ`` and can be added to other :func:`weighted_sum`
    results (partials of other providers) but not to fresh encryptions.

    Args:
        context: The evaluator's context holding the analyst's public key.
        weights: From :func:`encrypt_weights`, ``k`` replicated ciphertexts.
        features: Plaintext ``n * k`` matrix of the provider's entities.
        rerandomize: Add a fresh encryption of zero to each output chunk so the analyst, who
            knows the weights' encryption randomness, cannot solve for ``X`` (see module docs).
        workers: Processes to spread chunks over (``1`` = in this process). TenSEAL holds the
            GIL during ct*pt products, so threads do not help; processes do.

    Returns:
        Encrypted partial logits, length ``n``.

    Raises:
        KeyMismatchError: ``weights`` belong to another key.
        EncodingError: ``features`` is not a finite ``n * k`` real matrix.
    """
    _check_same_key(context.fingerprint, weights.fingerprint)
    if not weights.replicated or weights.scale_bits != context.preset.scale_bits:
        raise EncodingError("weights must come from encrypt_weights (replicated, fresh scale)")
    x = _as_matrix(features, weights.length, context.preset)
    n = x.shape[0]
    slots = context.preset.slots
    n_chunks = -(-n // slots)
    if workers <= 1 or n_chunks < 2:
        chunks = _weighted_chunks(context, weights.chunks, x, rerandomize)
    else:
        chunks = _weighted_chunks_parallel(context, weights, x, rerandomize, workers)
    return EncryptedVector(
        chunks=tuple(chunks),
        length=n,
        scale_bits=2 * context.preset.scale_bits,
        fingerprint=context.fingerprint,
        replicated=False,
    )


@contextmanager
def _lazy_rescale(contexts: Sequence[ts.Context]) -> Iterator[None]:
    """Switch off auto-rescaling on every TenSEAL context involved, restoring it afterwards."""
    previous = [c.auto_rescale for c in contexts]
    for c in contexts:
        c.auto_rescale = False
    try:
        yield
    finally:
        for c, flag in zip(contexts, previous, strict=True):
            c.auto_rescale = flag


def _weighted_chunks(
    context: _ContextBase, w_chunks: Sequence[Any], x: FloatArray, rerandomize: bool
) -> list[Any]:
    slots = context.preset.slots
    zeros = np.zeros(slots)
    out: list[Any] = []
    xt = np.ascontiguousarray(x.T)
    try:
        # Products are computed in the weights' own TenSEAL context(s), so switch all of them.
        involved = [context.tenseal_context, *(w.context() for w in w_chunks)]
        with _lazy_rescale(involved):
            for start in range(0, x.shape[0], slots):
                acc: Any = None
                for j, w in enumerate(w_chunks):
                    column = xt[j, start : start + slots]
                    if not column.any():
                        # An all-zero plaintext contributes nothing, and SEAL cannot multiply by
                        # one (TenSEAL encodes it at another scale, or the product is
                        # transparent): a column of zeros in this chunk is skipped.
                        continue
                    term = w.mul(_padded(column, slots).tolist())
                    acc = term if acc is None else acc.add_(term)
                if acc is None:  # k == 0, or every column zero here: the empty sum
                    acc = context._encrypt_slots(zeros, 2 * context.preset.scale_bits)
                elif rerandomize:
                    acc.add_(context._encrypt_slots(zeros, 2 * context.preset.scale_bits))
                out.append(acc)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise EncodingError("TenSEAL failed during the weighted sum") from exc
    return out


_WORKER: dict[str, Any] = {}


def _worker_init(ctx_bytes: bytes, weight_bytes: bytes) -> None:
    ctx = PublicContext.load(ctx_bytes)
    _WORKER["ctx"] = ctx
    _WORKER["w"] = EncryptedVector.load(ctx, weight_bytes)


def _worker_task(x: FloatArray, rerandomize: bool) -> list[bytes]:
    ctx: PublicContext = _WORKER["ctx"]
    weights: EncryptedVector = _WORKER["w"]
    return [c.serialize() for c in _weighted_chunks(ctx, weights.chunks, x, rerandomize)]


def _weighted_chunks_parallel(
    context: PublicContext | SecretContext,
    weights: EncryptedVector,
    x: FloatArray,
    rerandomize: bool,
    workers: int,
) -> list[Any]:
    # Bytes cross the process boundary in our own versioned format; only numpy slices of the
    # provider's own features travel by pickle, and only between processes of the same node.
    ctx_bytes = context.serialize()
    slots = context.preset.slots
    n_chunks = -(-x.shape[0] // slots)
    per_task = max(1, min(16, -(-n_chunks // (4 * workers))))
    starts = range(0, x.shape[0], per_task * slots)
    pool = worker_pool(workers, _worker_init, (ctx_bytes, weights.serialize()))
    out: list[Any] = []
    try:
        futures = [
            pool.submit(_worker_task, x[s : s + per_task * slots], rerandomize) for s in starts
        ]
        for fut in futures:
            for raw in fut.result():
                try:
                    out.append(ts.ckks_vector_from(context.tenseal_context, raw))
                except (ValueError, RuntimeError) as exc:
                    raise SerializationError("a worker returned an invalid ciphertext") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def add(a: EncryptedVector, b: EncryptedVector) -> EncryptedVector:
    """Ciphertext + ciphertext (combining providers' partials), element-wise.

    Raises:
        KeyMismatchError: Different keys.
        EncodingError: Different lengths, layouts or scales.
    """
    _check_same_key(a.fingerprint, b.fingerprint)
    if (a.length, a.replicated, a.scale_bits) != (b.length, b.replicated, b.scale_bits):
        raise EncodingError("can only add vectors of equal length, layout and scale")
    try:
        chunks = tuple(x.add(y) for x, y in zip(a.chunks, b.chunks, strict=True))
    except (ValueError, RuntimeError) as exc:
        raise EncodingError("TenSEAL refused the addition") from exc
    return EncryptedVector(chunks, a.length, a.scale_bits, a.fingerprint, a.replicated)


def mul_scalar(a: EncryptedVector, scalar: float) -> EncryptedVector:
    """Ciphertext * plaintext scalar (rescaled; consumes one level).

    Raises:
        EncodingError: Non-finite scalar, a not-yet-rescaled input, or no level left.
    """
    if not math.isfinite(scalar) or _is_lazy(a):
        raise EncodingError("need a finite scalar and a vector at the fresh scale")
    try:
        chunks = tuple(c.mul(float(scalar)) for c in a.chunks)
    except (ValueError, RuntimeError) as exc:
        raise EncodingError("TenSEAL refused the scalar product (no level left?)") from exc
    return EncryptedVector(chunks, a.length, a.scale_bits, a.fingerprint, a.replicated)


def mul_plain(a: EncryptedVector, plain: npt.ArrayLike) -> EncryptedVector:
    """Element-wise ciphertext * plaintext vector of the same length (rescaled; one level).

    Raises:
        EncodingError: Length mismatch, non-finite values, replicated input or no level left.
    """
    if a.replicated or _is_lazy(a):
        raise EncodingError("mul_plain needs a non-replicated vector at the fresh scale")
    vec = np.asarray(plain, dtype=np.float64)
    if vec.shape != (a.length,) or not np.all(np.isfinite(vec)):
        raise EncodingError("plaintext must be a finite vector of the same length")
    chunks = []
    try:
        for i, c in enumerate(a.chunks):
            size = c.size()
            part = vec[i * size : (i + 1) * size]
            chunks.append(c.mul(_padded(part, size).tolist()))
    except (ValueError, RuntimeError) as exc:
        raise EncodingError("TenSEAL refused the plaintext product (no level left?)") from exc
    return EncryptedVector(tuple(chunks), a.length, a.scale_bits, a.fingerprint, False)


def sum_slots(context: _ContextBase, a: EncryptedVector) -> EncryptedVector:
    """Encrypted sum of all entries (chunks added, then slots summed by rotations).

    Needs Galois keys in ``context`` (``public_context(galois_keys=True)``).

    Raises:
        ParameterError: The context has no Galois keys.
        KeyMismatchError: The vector belongs to another key.
    """
    _check_same_key(context.fingerprint, a.fingerprint)
    if not context.has_galois_keys:
        raise ParameterError("sum_slots needs Galois keys: public_context(galois_keys=True)")
    if a.replicated:
        raise EncodingError("sum_slots takes a packed (non-replicated) vector")
    if not a.chunks:
        zero = context._encrypt_slots(np.zeros(1), a.scale_bits)
        return EncryptedVector((zero,), 1, a.scale_bits, a.fingerprint, False)
    try:
        acc = a.chunks[0].copy() if len(a.chunks) > 1 else a.chunks[0]
        for c in a.chunks[1:]:
            acc.add_(c)
        total = acc.sum()
    except (ValueError, RuntimeError) as exc:
        raise EncodingError("TenSEAL failed to sum the slots") from exc
    return EncryptedVector((total,), 1, a.scale_bits, a.fingerprint, False)


def dot(context: _ContextBase, a: EncryptedVector, plain: npt.ArrayLike) -> EncryptedVector:
    """Encrypted ``⟨a, plain⟩``: e.g. an encrypted cohort indicator · a provider's column.

    The aggregate use case: the analyst encrypts a 0/1 indicator over the PSI-aligned order, the
    provider returns ``Σ_i ind_i·v_i`` encrypted and learns nothing about the cohort.

    Raises:
        ParameterError: The context has no Galois keys.
        EncodingError: Length mismatch or non-finite plaintext.
    """
    return sum_slots(context, mul_plain(a, plain))


# --------------------------------------------------------------------------- helpers


def _is_lazy(a: EncryptedVector) -> bool:
    # A fresh or rescaled vector has the preset scale (≤ 60 bits); a lazy weighted sum has twice it.
    return a.scale_bits > 60


def _check_same_key(expected: bytes, got: bytes) -> None:
    if expected != got:
        raise KeyMismatchError("ciphertext was encrypted under another context's key")


def _padded(part: FloatArray, size: int) -> FloatArray:
    if part.size == size:
        return part
    out = np.zeros(size)
    out[: part.size] = part
    return out


def _as_vector(values: npt.ArrayLike, preset: CkksPreset) -> FloatArray:
    try:
        vec = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EncodingError("values must be real numbers") from exc
    if vec.ndim != 1:
        raise EncodingError("values must be a one-dimensional vector")
    if not np.all(np.isfinite(vec)):
        raise EncodingError("values must be finite")
    if vec.size and float(np.max(np.abs(vec))) >= preset.result_bound:
        raise EncodingError(f"|value| must stay below {preset.result_bound} for {preset.name}")
    return vec


def _as_matrix(features: npt.ArrayLike, k: int, preset: CkksPreset) -> FloatArray:
    try:
        x = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EncodingError("features must be real numbers") from exc
    if x.ndim != 2 or x.shape[1] != k:
        raise EncodingError(f"features must be an n * {k} matrix")
    if not np.all(np.isfinite(x)):
        raise EncodingError("features must be finite")
    if x.size and float(np.max(np.abs(x))) >= preset.result_bound:
        raise EncodingError(f"|feature| must stay below {preset.result_bound}")
    return x


def _pack_context(tsctx: ts.Context, preset: CkksPreset, *, kind: int, secret: bool) -> bytes:
    try:
        raw = tsctx.serialize(
            save_public_key=True,
            save_secret_key=secret,
            save_galois_keys=tsctx.has_galois_keys(),
            save_relin_keys=tsctx.has_relin_keys(),
        )
    except (ValueError, RuntimeError) as exc:
        raise SerializationError("TenSEAL could not serialise the context") from exc
    name = preset.name.encode("ascii")
    bits = bytes(preset.coeff_mod_bit_sizes)
    head = _CTX_HEADER.pack(
        _CTX_MAGIC, _VERSION, kind, preset.poly_modulus_degree, preset.scale_bits, len(bits)
    )
    return b"".join([head, bits, bytes([len(name)]), name, _CTX_LEN.pack(len(raw)), raw])


def _unpack_context(
    data: bytes, *, expected_kind: int, max_bytes: int
) -> tuple[CkksPreset, ts.Context]:
    buf, fields = read_header(
        data, _CTX_HEADER, _CTX_MAGIC, max_bytes=max_bytes, what="CKKS context"
    )
    _, version, kind, n, scale_bits, n_primes = fields
    if version != _VERSION:
        raise SerializationError(f"unsupported context version {version}")
    if kind != expected_kind:
        raise SerializationError("context kind is not the one expected")
    offset = _CTX_HEADER.size
    if offset + n_primes + 1 > len(buf):
        raise SerializationError("truncated context header")
    bits = tuple(buf[offset : offset + n_primes])
    offset += n_primes
    name_len = buf[offset]
    offset += 1
    if offset + name_len + _CTX_LEN.size > len(buf):
        raise SerializationError("truncated context header")
    try:
        name = buf[offset : offset + name_len].decode("ascii")
    except UnicodeDecodeError as exc:
        raise SerializationError("preset name is not ASCII") from exc
    offset += name_len
    (raw_len,) = _CTX_LEN.unpack_from(buf, offset)
    offset += _CTX_LEN.size
    if raw_len == 0 or offset + raw_len != len(buf):
        raise SerializationError("context body length does not match")
    preset = PRESETS.get(name)
    declared = CkksPreset(name, n, bits, scale_bits)  # validates security; ParameterError if weak
    if (
        preset is None
        or (preset.poly_modulus_degree, preset.coeff_mod_bit_sizes)
        != (
            declared.poly_modulus_degree,
            declared.coeff_mod_bit_sizes,
        )
        or preset.scale_bits != declared.scale_bits
    ):
        preset = declared
    try:
        tsctx = ts.context_from(buf[offset:])
    except (ValueError, RuntimeError, TypeError) as exc:
        raise SerializationError("TenSEAL could not parse the context") from exc
    _check_loaded_params(tsctx, preset)
    try:
        tsctx.global_scale = float(2**preset.scale_bits)
    except (ValueError, RuntimeError) as exc:
        raise SerializationError("loaded context refused its scale") from exc
    return preset, tsctx
