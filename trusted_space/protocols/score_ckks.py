"""The ``ckks`` joint score: TenSEAL batches thousands of entities per ciphertext.

Analyst-held mode: the analyst ships the *public* context (no secret key: a context carrying one
is refused on load) and its weights, each replicated across all slots; the provider computes
``E(z) = Σ_j E(w_j) ⊙ X[:, j]`` (:func:`crypto.ckks.weighted_sum`, re-randomised with a fresh
encryption of zero before it leaves). Party-held mode: the provider encrypts its plaintext partial
logits under the public context. The operator adds blocks with the public context only; the
analyst decrypts the sums, and decryption rounds before release (Li-Micciancio mitigation,
``crypto.ckks``).

Blocks are multiples of the preset's slot count, so every provider's ciphertexts line up.

Where the provider's products run: in its own process by default. TenSEAL holds the GIL during
ct*pt products, so only processes add cores; but :func:`crypto.ckks.weighted_sum` with
``workers`` starts (spawns) a fresh pool per call, which costs seconds per block, and on a host
that runs several nodes their own processes already fill the cores. A provider on a host of its
own sets its ``ckks_workers`` setting (``TS_CKKS_WORKERS``, e.g. ``4``), which its node passes
down as ``workers``: its session then keeps one pool for the whole query, started once, each
worker loading the public context and the weights once.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Final

import numpy as np

from crypto import ckks
from crypto.workers import worker_pool
from trusted_space.errors import ValidationError
from trusted_space.protocols._common import Memo, crypto_errors, loaded_ckks_context
from trusted_space.protocols.base import (
    AnalystSide,
    EncryptedWeights,
    FloatArray,
    ProviderJob,
    ProviderSide,
    ScoreProtocol,
)
from trusted_space.queries.score import ScoreQuery

__all__ = ["CkksAnalyst", "CkksProvider", "CkksScore"]

_POOL_ROWS: Final = 1 << 15  # blocks at least this large spread over the session's pool


_POOL_STATE: dict[str, Any] = {}


def _pool_init(context: bytes, weights: bytes) -> None:
    ctx = ckks.PublicContext.load(context)
    _POOL_STATE["ctx"] = ctx
    _POOL_STATE["w"] = ctx.load_vector(weights)


def _pool_task(x: FloatArray) -> bytes:
    return ckks.weighted_sum(_POOL_STATE["ctx"], _POOL_STATE["w"], x).serialize()


_loaded_weights: Memo[tuple[bytes, bytes], ckks.EncryptedVector] = Memo(16)
"""Encrypted weights loaded at this provider, by their context and the SHA-256 of their bytes.

A standing session sends the same ciphertext with every run while its model and key stand
(:class:`~trusted_space.protocols.base.EncryptedWeights`); loading it again cost a provider
about as much as a one-applicant run's products. A loaded vector is only read (every product
is a new ciphertext), under its context's lock.
"""


class CkksAnalyst(AnalystSide):
    codec = "ckks.vector"

    def __init__(
        self,
        secret: ckks.SecretContext,
        public: bytes | None = None,
        encrypted: EncryptedWeights | None = None,
    ) -> None:
        self.secret = secret
        self._encrypted = encrypted
        if public is None:
            with crypto_errors("ckks public context"):
                public = secret.public_context().serialize()
        self._public = public

    def params(self) -> dict[str, Any]:
        return {"preset": self.secret.preset.name}

    def material(self) -> bytes:
        return self._public

    def weights_payload(self, provider: str, weights: FloatArray) -> bytes:
        def make() -> bytes:
            with crypto_errors("weights"):
                return ckks.encrypt_weights(self.secret, weights).serialize()

        if self._encrypted is None:
            return make()
        return self._encrypted.get(np.asarray(weights, dtype=np.float64).tobytes(), make)

    def decode(self, block: int, count: int, payload: bytes) -> FloatArray:
        with crypto_errors("aggregated ckks block"):
            vector = self.secret.load_vector(payload)
            if vector.length != count or vector.replicated:
                raise ValidationError(f"block {block}: not a vector of {count} values")
            return self.secret.decrypt(vector)


class CkksProvider(ProviderSide):
    """A provider's CKKS session.

    ``workers``: processes for large blocks (at most the host's cores; 1: in-process).
    """

    def __init__(
        self, mode: str, params: Mapping[str, Any], material: bytes, *, workers: int = 1
    ) -> None:
        loaded = loaded_ckks_context(material)
        self.context, self._context_lock, self._digest = loaded.context, loaded.lock, loaded.digest
        if params.get("preset") != self.context.preset.name:
            raise ValidationError("params.preset: does not match the context")
        self.mode = mode
        self.material = material
        self.workers = max(1, min(workers, os.cpu_count() or 1))
        self._pool: ProcessPoolExecutor | None = None

    def load_weights(self, payload: bytes, terms: int) -> ckks.EncryptedVector:
        def load() -> ckks.EncryptedVector:
            with crypto_errors("the analyst's encrypted weights"), self._context_lock:
                return self.context.load_vector(payload)

        weights = _loaded_weights.get((self._digest, hashlib.sha256(payload).digest()), load)
        if not weights.replicated or weights.length != terms:
            raise ValidationError(f"expected {terms} replicated encrypted weights")
        return weights

    def weighted_partial(self, job: ProviderJob, block: int, x: FloatArray, weights: Any) -> bytes:
        with crypto_errors("ckks partial"):
            if self.workers <= 1 or x.shape[0] < _POOL_ROWS:
                with self._context_lock:
                    return ckks.weighted_sum(self.context, weights, x).serialize()
            return self._pooled(weights, x).serialize()

    def _pooled(self, weights: ckks.EncryptedVector, x: FloatArray) -> ckks.EncryptedVector:
        """The weighted sum over the session's pool, in slices of whole ciphertexts."""
        with self._context_lock:
            if self._pool is None:
                self._pool = worker_pool(
                    self.workers, _pool_init, (self.material, weights.serialize())
                )
            pool = self._pool
        slots = self.context.preset.slots
        per = slots * max(1, -(-x.shape[0] // (slots * 2 * self.workers)))
        parts = [pool.submit(_pool_task, x[s : s + per]) for s in range(0, x.shape[0], per)]
        results = [f.result() for f in parts]
        with self._context_lock:
            loaded = [self.context.load_vector(raw) for raw in results]
        return ckks.EncryptedVector(
            chunks=tuple(c for v in loaded for c in v.chunks),
            length=x.shape[0],
            scale_bits=loaded[0].scale_bits,
            fingerprint=loaded[0].fingerprint,
            replicated=False,
        )

    def plain_partial(self, job: ProviderJob, block: int, z: FloatArray) -> bytes:
        with crypto_errors("ckks partial"), self._context_lock:
            return self.context.encrypt(z).serialize()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class CkksScore(ScoreProtocol):
    """The ``ckks`` protocol.

    Args:
        context: the analyst's secret context (a fresh one per query when ``None``).
        preset: the parameter set of generated contexts.
    """

    name = "ckks"

    def __init__(
        self,
        context: ckks.SecretContext | None = None,
        *,
        preset: ckks.CkksPreset = ckks.PRESET_8192_DEPTH1,
    ) -> None:
        self.context = context
        self.preset = preset
        self._public: bytes | None = None
        self._public_lock = threading.Lock()
        self._encrypted = EncryptedWeights() if context is not None else None

    def _public_material(self) -> bytes | None:
        """A held context's public part, serialised once (``None`` without a held context)."""
        if self.context is None:
            return None
        with self._public_lock:
            if self._public is None:
                with crypto_errors("ckks public context"):
                    self._public = self.context.public_context().serialize()
            return self._public

    def block_rows(self, query: ScoreQuery, terms: int) -> int:
        slots = (self.context.preset if self.context else self.preset).slots
        rows = super().block_rows(query, terms)
        return max(slots, rows - rows % slots)

    def analyst(
        self, query: ScoreQuery, contributors: list[str], terms: Mapping[str, int]
    ) -> CkksAnalyst:
        with crypto_errors("ckks context"):
            secret = self.context or ckks.SecretContext.generate(self.preset)
        return CkksAnalyst(secret, self._public_material(), self._encrypted)

    def provider(
        self, mode: str, params: Mapping[str, Any], material: bytes, *, workers: int = 1
    ) -> CkksProvider:
        return CkksProvider(mode, params, material, workers=workers)
