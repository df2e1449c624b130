"""The ``additive`` joint score: 2-party sharing over Z_2^64, Beaver triples from the operator.

Fixed point (analyst-held): every feature arrives scaled into ``[-1, 1]`` by its column's
declared range (:mod:`trusted_space.protocols.scaling`) and is encoded with ``fx = 30``
fractional bits; the analyst encodes its scaled weights with ``fw`` bits, the most that keep
``Σ_j |X_j·w_j|`` below ``2^62`` for ``L = Σ|w'_j|`` (so no sum can wrap: wrap-around is ruled out
before the query starts, not hoped against). Products carry ``fx + fw`` bits, known only to the
analyst; no truncation is needed: it reconstructs the total in the ring and divides. The worst
error is ``L·2^-31 + k·2^-(fw+1)``, and the analyst refuses a query where that exceeds 1e-4
(:func:`~trusted_space.protocols.scaling.check_precision`). A decoded logit beyond ``L`` (which
only a corrupted share can give) is refused, never released. Party-held partials are encoded with
``2^32`` (:data:`~trusted_space.protocols._common.RING_FRAC_BITS`) below the query's
``partialBound``.

Analyst-held mode, per provider ``P`` and block ``b`` of ``n`` entities (``k`` columns): the
analyst's input is its weights ``w`` (its share of ``X`` is zero), ``P``'s input is ``X`` (its
share of ``w`` is zero). Both fetch their own share of one matrix triple ``(A, B, C = A·B)`` from
the operator's dealer (batch ``"<P>.<b>"`` of session ``<query>``, each share dealt once); the
analyst sends ``(-A₀, w - B₀)`` in ``score.beaver``, ``P`` answers ``(X - A₁, -B₁)``; both open
``D = X - A``, ``E = w - B`` (uniform: ``A``, ``B`` are known to neither) and finish their share
of ``X·w``. ``P`` sends its share to the aggregator *masked* with a stream only the analyst can
remove (below); the analyst keeps its own share and adds the aggregator's sum. The analyst learns
``D`` (features under a one-time pad it does not hold) and the total; ``P`` learns ``E``.

Why the mask: the operator is both the dealer and the aggregator. It knows ``A``, ``B`` and ``P``'s
triple share, so ``P``'s bare output share ``C₁ + D·B₁ + A₁·E`` would give it
``X·B₁ + A₁·w`` per entity — with one column, a search over the (small, fixed-point) weight
recovers both ``w`` and every feature (tests/trusted_space/test_leakage.py runs that attack).
Masked with ``r`` it learns nothing.

Party-held mode: ``P`` computes its partial ``z`` in plaintext and sends ``z - r`` to the
aggregator.

In both modes ``r`` is a stream from AES-256-CTR under a fresh 32-byte seed of ``P``'s, one
stream per block; ``P`` gives the analyst only the seed (in its ``score.run`` reply, never a
per-entity value) and the analyst adds ``r`` back to the aggregator's sum.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from crypto import sharing
from trusted_space.errors import ValidationError
from trusted_space.protocols._common import (
    MAX_MESSAGE_BYTES,
    RING_FRAC_BITS,
    crypto_errors,
    decode_ring,
    encode_ring,
    header_int,
    mask_stream,
    ring_from_bytes,
    ring_to_bytes,
)
from trusted_space.protocols.base import (
    AnalystSide,
    FloatArray,
    ProviderJob,
    ProviderSide,
    ScoreProtocol,
)
from trusted_space.protocols.compare import edge_shares
from trusted_space.protocols.operator import add_to_aggregate, fetch_triple
from trusted_space.protocols.operator_wire import MAX_COMPARISONS
from trusted_space.protocols.scaling import (
    ADDITIVE_FEATURE_BITS,
    additive_weight_bits,
    logit_bound,
)
from trusted_space.queries.score import ScoreQuery
from trusted_space.transport import Transport

__all__ = ["FRAC_BITS", "AdditiveAnalyst", "AdditiveProvider", "AdditiveScore"]

FRAC_BITS = ADDITIVE_FEATURE_BITS
"""Fractional bits of the (scaled, ``|x| ≤ 1``) features; the weights' bits are the analyst's."""


def _batch(provider: str, block: int) -> str:
    return f"{provider}.{block}"


class AdditiveAnalyst(AnalystSide):
    codec = "ring64"

    def __init__(self, query: ScoreQuery) -> None:
        self.query = query
        self.interactive = query.mode == "analyst-held"
        bound, terms, _ = logit_bound(query)
        self.weight_bits = additive_weight_bits(bound, terms)
        if self.interactive:
            self.frac_bits = FRAC_BITS + self.weight_bits
            # Every |logit| is at most L plus the rounding of k weights and features.
            self.limit = bound + terms + 1.0
        else:
            self.frac_bits = RING_FRAC_BITS
            self.limit = query.partial_bound * len(query.providers)
        self._local: dict[int, np.ndarray[Any, np.dtype[np.uint64]]] = {}
        self._ledger = sharing.TripleLedger(0)
        self._lock = threading.Lock()  # providers are served from several threads
        self._fetched: dict[tuple[str, int], Any] = {}

    def params(self) -> dict[str, Any]:
        return {"fracBits": FRAC_BITS}

    def material(self) -> bytes:
        return b""

    def _accumulate(self, block: int, share: np.ndarray[Any, np.dtype[np.uint64]]) -> None:
        with self._lock:
            current = self._local.get(block)
            self._local[block] = share.copy() if current is None else np.add(current, share)

    def accept(
        self, provider: str, reply: Mapping[str, Any], blocks: list[tuple[int, int]]
    ) -> None:
        seed_hex = reply.get("maskSeed")
        if not isinstance(seed_hex, str) or len(seed_hex) != 64:
            raise ValidationError(f"{provider}: reply lacks its 32-byte mask seed")
        try:
            seed = bytes.fromhex(seed_hex)
        except ValueError as exc:
            raise ValidationError(f"{provider}: mask seed is not hex") from exc
        for b, (start, stop) in enumerate(blocks):
            self._accumulate(b, mask_stream(seed, b, stop - start))

    def round(
        self,
        transport: Transport,
        analyst: str,
        operator: str,
        provider: str,
        weights: FloatArray | None,
        block: int,
        count: int,
        skip: tuple[str, ...] = (),
    ) -> None:
        if weights is None:  # pragma: no cover - analyst-held always has weights
            raise ValidationError("analyst-held additive needs weights")
        k = weights.shape[0]
        w = encode_ring(weights, self.weight_bits)
        with self._lock:
            triple = self._fetched.pop((provider, block), None)
        if triple is None:
            self.prefetch(transport, analyst, operator, provider, block, count, k)
            with self._lock:
                triple = self._fetched.pop((provider, block))
        with crypto_errors("beaver round"), self._lock:
            mine = sharing.beaver_mask(
                np.zeros((count, k), dtype=np.uint64), w, triple, self._ledger
            )
        # local: the score package imports the protocol registry, which imports this module
        from trusted_space.protocols.score.wire import ScoreBlock

        answer = transport.call(
            provider,
            "score.beaver",
            ScoreBlock(self.query.id, block, skip).to_header(),
            mine.to_bytes(),
        )
        with crypto_errors(f"{provider}'s beaver message"):
            theirs = sharing.BeaverMessage.from_bytes(answer.payload)
            if theirs.party != 1 or theirs.n_parties != 2:
                raise ValidationError(f"{provider}: beaver message of the wrong party")
            opening = sharing.beaver_open([mine, theirs])
            self._accumulate(block, sharing.beaver_finish(triple, opening))

    def band_share(
        self, block: int, count: int, edges: tuple[float, ...], shift: FloatArray
    ) -> np.ndarray[Any, np.dtype[np.uint64]]:
        # Every |z| at this fixed point must stay below 2^62 so that no t - z wraps.
        if not self.limit * 2.0**self.frac_bits < 2.0**62:
            raise ValidationError(
                f"a band release needs partialBound times providers below 2^30; got {self.limit:g}"
            )
        with self._lock:
            local = self._local.pop(block, None)
        if local is None:
            local = np.zeros(count, dtype=np.uint64)
        if local.shape != (count,):
            raise ValidationError(f"block {block}: local share of the wrong size")
        return edge_shares(edges, shift, self.frac_bits, local)

    def prefetch(
        self,
        transport: Transport,
        analyst: str,
        operator: str,
        provider: str,
        block: int,
        count: int,
        terms: int,
    ) -> None:
        triple = fetch_triple(
            transport,
            operator,
            session=self.query.id,
            batch=_batch(provider, block),
            parties=[analyst, provider],
            left=(count, terms),
            right=(terms,),
        )
        with self._lock:
            self._fetched[(provider, block)] = triple

    def decode(self, block: int, count: int, payload: bytes) -> FloatArray:
        total = ring_from_bytes(payload, count)
        with self._lock:
            local = self._local.pop(block, None)
        if local is not None:
            if local.shape != (count,):
                raise ValidationError(f"block {block}: local share of the wrong size")
            total = np.add(total, local)
        values = decode_ring(total, self.frac_bits)
        if values.size and not float(np.max(np.abs(values))) <= self.limit:
            # Only a corrupted or mismatched share can land here: never release it.
            raise ValidationError(
                f"block {block}: a reconstructed logit is beyond the query's bound {self.limit:g}"
            )
        return values


class AdditiveProvider(ProviderSide):
    def __init__(self, mode: str, params: Mapping[str, Any], material: bytes) -> None:
        if material:
            raise ValidationError("additive protocol takes no key material")
        header_int(params, "fracBits", FRAC_BITS, FRAC_BITS)
        self.mode = mode
        self.interactive = mode == "analyst-held"
        self.seed = secrets.token_bytes(32)
        self.ledger = sharing.TripleLedger(1)
        self._ledger_lock = threading.Lock()  # blocks may arrive on several threads

    def plain_partial(self, job: ProviderJob, block: int, z: FloatArray) -> bytes:
        ring = encode_ring(z, RING_FRAC_BITS)
        masked = np.subtract(ring, mask_stream(self.seed, block, ring.shape[0]), dtype=np.uint64)
        return ring_to_bytes(masked)

    def reply_extras(self) -> dict[str, Any]:
        return {"maskSeed": self.seed.hex()}

    def interact(self, job: ProviderJob, block: int, x: FloatArray, payload: bytes) -> bytes:
        n, k = x.shape
        node = job.node
        if node.transport is None:
            raise ValidationError(f"{node.participant_id} has no transport to the operator")
        with crypto_errors("the analyst's beaver message"):
            theirs = sharing.BeaverMessage.from_bytes(payload)
            if theirs.party != 0 or theirs.n_parties != 2:
                raise ValidationError("beaver message of the wrong party")
            if theirs.d.shape != (n, k) or theirs.e.shape != (k,):
                raise ValidationError("beaver message of the wrong shape")
        triple = fetch_triple(
            node.transport,
            job.operator,
            session=job.query,
            batch=_batch(node.participant_id, block),
            parties=[job.analyst, node.participant_id],
            left=(n, k),
            right=(k,),
        )
        with crypto_errors("beaver round"):
            with self._ledger_lock:
                mine = sharing.beaver_mask(
                    encode_ring(x, FRAC_BITS), np.zeros(k, dtype=np.uint64), triple, self.ledger
                )
            opening = sharing.beaver_open([theirs, mine])
            share = sharing.beaver_finish(triple, opening)
        # The dealer-aggregator knows the triple: hide the share from it (see module docs).
        share = np.subtract(share, mask_stream(self.seed, block, n), dtype=np.uint64)
        add_to_aggregate(
            node.transport,
            job.operator,
            query=job.query,
            analyst=job.analyst,
            contributors=job.contributors,
            block=block,
            count=n,
            payload=ring_to_bytes(share),
            recipient=job.recipient,
        )
        return mine.to_bytes()


class AdditiveScore(ScoreProtocol):
    """The ``additive`` protocol (no keys: the operator deals the correlated randomness)."""

    name = "additive"

    def block_rows(self, query: ScoreQuery, terms: int) -> int:
        rows = super().block_rows(query, terms)
        # One Beaver message carries n·k + k ring elements; keep it under half the limit.
        fit = (MAX_MESSAGE_BYTES // 2) // (8 * max(terms, 1))
        if query.band_edges:  # one dealer batch of comparisons per block
            fit = min(fit, MAX_COMPARISONS // len(query.band_edges))
        return max(1, min(rows, fit))

    def analyst(
        self, query: ScoreQuery, contributors: list[str], terms: Mapping[str, int]
    ) -> AdditiveAnalyst:
        return AdditiveAnalyst(query)

    def provider(
        self, mode: str, params: Mapping[str, Any], material: bytes, *, workers: int = 1
    ) -> AdditiveProvider:
        return AdditiveProvider(mode, params, material)
