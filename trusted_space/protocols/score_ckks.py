"""The ``ckks`` joint score: TenSEAL batches thousands of entities per ciphertext.

Analyst-held mode: the analyst ships the *public* context (no secret key: a context carrying one
is refused on load) and its weights, each replicated across all slots; the provider computes
``E(z) = Σ_j E(w_j) ⊙ X[:, j]`` (:func:`crypto.ckks.weighted_sum`, re-randomised with a fresh
encryption of zero before it leaves). Party-held mode: the provider encrypts its plaintext partial
logits under the public context. The operator adds blocks with the public context only; the
analyst decrypts the sums, and decryption rounds before release (Li-Micciancio mitigation,
``crypto.ckks``).

Blocks are multiples of the preset's slot count, so every provider's ciphertexts line up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from crypto import ckks
from trusted_space.errors import ValidationError
from trusted_space.protocols._common import crypto_errors
from trusted_space.protocols.base import (
    AnalystSide,
    FloatArray,
    ProviderJob,
    ProviderSide,
    ScoreProtocol,
)
from trusted_space.query import ScoreQuery

__all__ = ["CkksAnalyst", "CkksProvider", "CkksScore"]

_POOL_ROWS = 1 << 15  # blocks at least this large spread chunks over processes


class CkksAnalyst(AnalystSide):
    codec = "ckks.vector"

    def __init__(self, secret: ckks.SecretContext) -> None:
        self.secret = secret
        with crypto_errors("ckks public context"):
            self._public = secret.public_context().serialize()

    def params(self) -> dict[str, Any]:
        return {"preset": self.secret.preset.name}

    def material(self) -> bytes:
        return self._public

    def weights_payload(self, provider: str, weights: FloatArray) -> bytes:
        with crypto_errors("weights"):
            return ckks.encrypt_weights(self.secret, weights).serialize()

    def decode(self, block: int, count: int, payload: bytes) -> FloatArray:
        with crypto_errors("aggregated ckks block"):
            vector = self.secret.load_vector(payload)
            if vector.length != count or vector.replicated:
                raise ValidationError(f"block {block}: not a vector of {count} values")
            return self.secret.decrypt(vector)


class CkksProvider(ProviderSide):
    def __init__(self, mode: str, params: Mapping[str, Any], material: bytes) -> None:
        with crypto_errors("the analyst's ckks context"):
            self.context = ckks.PublicContext.load(material)
        if params.get("preset") != self.context.preset.name:
            raise ValidationError("params.preset: does not match the context")
        self.mode = mode

    def load_weights(self, payload: bytes, terms: int) -> ckks.EncryptedVector:
        with crypto_errors("the analyst's encrypted weights"):
            weights = self.context.load_vector(payload)
        if not weights.replicated or weights.length != terms:
            raise ValidationError(f"expected {terms} replicated encrypted weights")
        return weights

    def weighted_partial(self, job: ProviderJob, block: int, x: FloatArray, weights: Any) -> bytes:
        workers = min(8, os.cpu_count() or 1) if x.shape[0] >= _POOL_ROWS else 1
        with crypto_errors("ckks partial"):
            return ckks.weighted_sum(self.context, weights, x, workers=workers).serialize()

    def plain_partial(self, job: ProviderJob, block: int, z: FloatArray) -> bytes:
        with crypto_errors("ckks partial"):
            return self.context.encrypt(z).serialize()


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

    def block_rows(self, query: ScoreQuery, terms: int) -> int:
        slots = (self.context.preset if self.context else self.preset).slots
        rows = super().block_rows(query, terms)
        return max(slots, rows - rows % slots)

    def analyst(
        self, query: ScoreQuery, contributors: list[str], terms: Mapping[str, int]
    ) -> CkksAnalyst:
        with crypto_errors("ckks context"):
            secret = self.context or ckks.SecretContext.generate(self.preset)
        return CkksAnalyst(secret)

    def provider(self, mode: str, params: Mapping[str, Any], material: bytes) -> CkksProvider:
        return CkksProvider(mode, params, material)
