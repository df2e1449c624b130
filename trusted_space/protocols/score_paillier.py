"""The ``paillier`` joint score: the analyst's ≥2048-bit key, fixed exponents, packed partials.

Analyst-held mode: the analyst encrypts the weights of each provider's columns under its own key
(every ciphertext with the protocol exponent ``-f``); the provider computes packed encrypted
partial logits ``E(Σ_j w_j·x_ij)`` over its plaintext features
(:meth:`crypto.paillier.PaillierEngine.packed_linear_combination`, re-randomised before they
leave) with the layout the analyst fixed for the query, so that the operator can add every
provider's blocks slot-wise. Party-held mode: the provider encrypts its own plaintext partial
logits packed (:meth:`~crypto.paillier.PaillierEngine.encrypt_packed`). The analyst decrypts only
the aggregator's sums.

What travels and what it reveals: the public key, the layout (its ``weight_bound`` is the largest
weight magnitude rounded up to a power of two: a provider learns the order of magnitude of the
largest weight and nothing else), ciphertexts. Every ciphertext loaded is checked for the
protocol exponent, the key id and membership in ``Z*_{n²}``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from crypto import paillier
from trusted_space.errors import ValidationError
from trusted_space.protocols._common import crypto_errors, header_int
from trusted_space.protocols.base import (
    AnalystSide,
    EncryptedWeights,
    FloatArray,
    ProviderJob,
    ProviderSide,
    ScoreProtocol,
)
from trusted_space.protocols.scaling import logit_bound, paillier_frac_bits
from trusted_space.queries.score import ScoreQuery

__all__ = ["PaillierAnalyst", "PaillierProvider", "PaillierScore"]

_POOL_ROWS = 8192  # blocks at least this large use the engine's process pool
_BLOCK_ROWS = 1 << 14
"""Entities per block: one ``score.block`` call computes and re-randomises ~630 packed
ciphertexts, seconds of work, so no call nears the request timeout whatever the query size, and
the analyst decrypts each block while the providers compute the next."""


def _layout_from(params: Mapping[str, Any]) -> paillier.PackingLayout:
    doc = params.get("layout")
    if not isinstance(doc, dict):
        raise ValidationError("params.layout: expected an object")
    with crypto_errors("params.layout"):
        try:
            return paillier.PackingLayout(**doc)
        except TypeError as exc:
            raise ValidationError(f"params.layout: {exc}") from exc


class PaillierAnalyst(AnalystSide):
    codec = "paillier.packed"

    def __init__(
        self,
        keypair: tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey],
        layout: paillier.PackingLayout,
        frac_bits: int,
        workers: int | None,
        encrypted: EncryptedWeights | None = None,
    ) -> None:
        self.public_key, private_key = keypair
        self._encrypted = encrypted
        self.layout = layout
        self.frac_bits = frac_bits
        self.engine = paillier.PaillierEngine(
            self.public_key,
            private_key,
            codec=paillier.IntegerCodec(frac_bits),
            workers=workers,
        )

    def params(self) -> dict[str, Any]:
        return {"layout": self.layout.to_json(), "fracBits": self.frac_bits}

    def material(self) -> bytes:
        return self.public_key.serialize()

    def weights_payload(self, provider: str, weights: FloatArray) -> bytes:
        def make() -> bytes:
            with crypto_errors("weights"):
                return self.engine.encrypt(weights).serialize()

        if self._encrypted is None:
            return make()
        key = self.frac_bits.to_bytes(4, "big") + np.asarray(weights, dtype=np.float64).tobytes()
        return self._encrypted.get(key, make)

    def decode(self, block: int, count: int, payload: bytes) -> FloatArray:
        with crypto_errors("aggregated paillier block"):
            packed = paillier.PackedCiphertexts.load(payload, self.public_key, self.layout)
            if packed.count != count:
                raise ValidationError(f"block {block}: {packed.count} values, not {count}")
            return self.engine.decrypt_packed(packed)

    def close(self) -> None:
        self.engine.close()


class PaillierProvider(ProviderSide):
    def __init__(self, mode: str, params: Mapping[str, Any], material: bytes) -> None:
        with crypto_errors("the analyst's paillier public key"):
            self.public_key = paillier.PaillierPublicKey.from_jwk(material)
        self.frac_bits = header_int(params, "fracBits", 8, 64)
        self.layout = _layout_from(params)
        if self.layout.frac_bits != self.frac_bits or self.layout.key_bits != self.public_key.bits:
            raise ValidationError("params.layout: does not match the key or fracBits")
        if (self.layout.weight_bound is None) != (mode == "party-held"):
            raise ValidationError(f"params.layout: not a layout for {mode} mode")
        self.codec = paillier.IntegerCodec(self.frac_bits)
        self._engines: dict[bool, paillier.PaillierEngine] = {}
        self._lock = threading.Lock()  # blocks may arrive on several threads

    def _engine(self, rows: int) -> paillier.PaillierEngine:
        pooled = rows >= _POOL_ROWS
        with self._lock:  # one engine (one process pool) per kind, never two
            if pooled not in self._engines:
                engine = paillier.PaillierEngine(
                    self.public_key, codec=self.codec, workers=None if pooled else 0
                )
                engine.executor  # noqa: B018 - the engine makes its pool lazily: make it here, once
                self._engines[pooled] = engine
            return self._engines[pooled]

    def load_weights(self, payload: bytes, terms: int) -> paillier.CiphertextVector:
        with crypto_errors("the analyst's encrypted weights"):
            weights = paillier.CiphertextVector.load(
                payload, self.public_key, exponent=self.codec.exponent
            )
        if len(weights) != terms or terms > self.layout.terms:
            raise ValidationError(f"expected {terms} encrypted weights, got {len(weights)}")
        return weights

    def weighted_partial(self, job: ProviderJob, block: int, x: FloatArray, weights: Any) -> bytes:
        with crypto_errors("paillier partial"):
            engine = self._engine(x.shape[0])
            return engine.packed_linear_combination(weights, x, self.layout).serialize()

    def plain_partial(self, job: ProviderJob, block: int, z: FloatArray) -> bytes:
        with crypto_errors("paillier partial"):
            return self._engine(z.shape[0]).encrypt_packed(z, self.layout).serialize()

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
        for engine in engines:
            engine.close()


class PaillierScore(ScoreProtocol):
    """The ``paillier`` protocol.

    Args:
        keypair: the analyst's key pair (a fresh 2048-bit pair per query when ``None``; tests
            pass one to avoid generating keys repeatedly).
        key_bits: size of generated keys (at least 2048).
        frac_bits: fixed-point fractional bits (32: errors below 1e-6 for |x|, |w| ≤ 64).
        workers: the analyst engine's worker processes (``None``: CPU count, ``0``: none;
            ``"auto"``: a pool only for queries of at least 8,192 entities).
    """

    name = "paillier"

    def block_rows(self, query: ScoreQuery, terms: int) -> int:
        return min(super().block_rows(query, terms), _BLOCK_ROWS)

    def __init__(
        self,
        keypair: tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey] | None = None,
        *,
        key_bits: int = paillier.MIN_KEY_BITS,
        frac_bits: int = paillier.DEFAULT_FRAC_BITS,
        workers: int | Literal["auto"] | None = "auto",
    ) -> None:
        self.keypair = keypair
        self.key_bits = key_bits
        self.frac_bits = frac_bits
        self.workers = workers
        self._encrypted = EncryptedWeights() if keypair is not None else None

    def analyst(
        self, query: ScoreQuery, contributors: list[str], terms: Mapping[str, int]
    ) -> PaillierAnalyst:
        with crypto_errors("paillier key"):
            keypair = self.keypair or paillier.generate_keypair(self.key_bits)
        bits = keypair[0].bits
        frac_bits = self.frac_bits
        if query.mode == "analyst-held":
            # Features arrive scaled into [-1, 1]; the scaled weights may be large or tiny, so
            # the fixed point gets the bits that keep (L + k)·2^-(f+1) below 1e-8.
            bound, count, _ = logit_bound(query)
            frac_bits = max(frac_bits, paillier_frac_bits(bound, count))
            largest = max(
                (float(np.max(np.abs(query.model.weights_of(p)))) for p in contributors),
                default=1.0,
            )
            weight_bound = 2.0 ** max(0, math.ceil(math.log2(max(largest, 1e-300))))
            layout = paillier.PackingLayout(
                key_bits=bits,
                frac_bits=frac_bits,
                value_bound=query.feature_bound,
                terms=max(terms.values(), default=1),
                weight_bound=weight_bound,
                addends=len(contributors),
            )
        else:
            layout = paillier.PackingLayout(
                key_bits=bits,
                frac_bits=self.frac_bits,
                value_bound=query.partial_bound,
                addends=len(contributors),
            )
        workers = self.workers
        if workers == "auto":
            workers = None if len(query.entities) >= _POOL_ROWS else 0
        return PaillierAnalyst(keypair, layout, frac_bits, workers, self._encrypted)

    def provider(
        self, mode: str, params: Mapping[str, Any], material: bytes, *, workers: int = 1
    ) -> PaillierProvider:
        return PaillierProvider(mode, params, material)
