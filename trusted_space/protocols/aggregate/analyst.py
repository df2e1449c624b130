"""The analyst's driver of an aggregate: :func:`run_aggregate` over a PSI cohort or explicit ids."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from crypto import ckks, paillier, sharing
from crypto.fixedpoint import FixedPoint
from trusted_space.errors import ValidationError
from trusted_space.protocols._common import (
    crypto_errors,
    encode_ids,
    ring_from_bytes,
    ring_to_bytes,
)
from trusted_space.protocols._parts import fetch_rest, send_in_parts
from trusted_space.protocols.aggregate.statistic import StatisticPlan
from trusted_space.protocols.aggregate.wire import (
    MAX_MATERIAL,
    RING_FRAC_BITS,
    FloatArray,
    Ring,
    StatsEntities,
    StatsQuery,
    StatsRef,
    StatsRelease,
    StatsReleased,
    StatsTotals,
    dealer_session,
    material_blocks,
    pack,
    unpack,
)
from trusted_space.protocols.align import Alignment, align, check_receipt
from trusted_space.protocols.operator import fetch_triple
from trusted_space.queries.aggregate import AggregateQuery, AggregateResult
from trusted_space.transport import Transport

__all__ = ["run_aggregate"]

# Analyst
# ----------------------------------------------------------------------------------------------


def _stats_query(query: AggregateQuery) -> StatsQuery:
    return StatsQuery(
        query=query.id,
        agreement=query.agreement_id,
        dataset=query.dataset_id,
        column=query.column,
        statistic=query.statistic,
        protocol=query.protocol,
        purpose=query.purpose,
        bins=tuple(query.bins),
        epsilon=query.epsilon,
    )


def _result(
    query: AggregateQuery,
    totals: Sequence[float],
    names: Sequence[str],
    scales: Sequence[float],
    cohort_size: int,
    receipts: Sequence[dict[str, Any]],
    missing: Sequence[str] = (),
) -> AggregateResult:
    plan = StatisticPlan(query.statistic, query.bins, None, query.epsilon)
    if list(names) != plan.names or len(totals) != len(plan.names):
        raise ValidationError(f"{query.provider} released other values than asked for")
    value, counts = plan.finish(totals)
    return AggregateResult(
        query_id=query.id,
        statistic=query.statistic,
        protocol=query.protocol,
        value=value,
        counts=counts,
        bins=query.bins,
        cohort_size=cohort_size,
        epsilon=query.epsilon,
        noise_scales=tuple(float(s) for s in scales),
        missing=tuple(missing),
        receipts=tuple(receipts),
    )


def _release_receipt(query: AggregateQuery, receipt: Mapping[str, Any]) -> dict[str, Any]:
    body = check_receipt(
        receipt, provider=query.provider, query_id=query.id, dataset_id=query.dataset_id
    )
    if body.get("kind") != "aggregate" or body.get("columns") != [query.column]:
        raise ValidationError(f"{query.provider}: the receipt records another use")
    return dict(receipt)


def _run_explicit(transport: Transport, query: AggregateQuery) -> AggregateResult:
    header = StatsEntities(_stats_query(query), len(query.entities), query.missing).to_header()
    reply = send_in_parts(
        transport, query.provider, "stats.entities", header, encode_ids(query.entities)
    )
    got = StatsTotals.from_header(reply.header, query.provider)
    receipt = _release_receipt(query, got.receipt)
    return _result(
        query,
        got.totals,
        got.names,
        got.noise_scales,
        len(query.entities),
        [receipt],
        got.missing,
    )


@dataclass
class _AnalystSide:
    """The analyst's keys for one aggregate."""

    protocol: str
    paillier_keys: tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey] | None = None
    ckks_context: ckks.SecretContext | None = None
    workers: int = 0
    share: Ring | None = None
    engine: paillier.PaillierEngine | None = None

    def material(self, indicator: FloatArray) -> bytes:
        if self.protocol == "paillier":
            if self.paillier_keys is None:
                self.paillier_keys = paillier.generate_keypair()
            public, private = self.paillier_keys
            self.engine = paillier.PaillierEngine(public, private, workers=self.workers)
            return pack([public.serialize(), self.engine.encrypt(indicator).serialize()])
        if self.protocol == "ckks":
            if self.ckks_context is None:
                self.ckks_context = ckks.SecretContext.generate()
            public_bytes = self.ckks_context.public_context(galois_keys=True).serialize()
            return pack([public_bytes, self.ckks_context.encrypt(indicator).serialize()])
        ring = indicator.astype(np.uint64)
        mine, theirs = sharing.share(ring, 2)
        self.share = mine
        return pack([ring_to_bytes(theirs)])

    def unmask_request(self, payload: bytes) -> str | float:
        if self.protocol == "paillier":
            if self.engine is None or self.paillier_keys is None:  # pragma: no cover
                raise ValidationError("no Paillier engine")
            bits = 2 * self.engine.codec.frac_bits
            ct = paillier.CiphertextVector.load(payload, self.paillier_keys[0], exponent=-bits)
            (value,) = self.engine.decrypt_ints(ct)
            return str(value)
        if self.ckks_context is None:  # pragma: no cover
            raise ValidationError("no CKKS context")
        vector = self.ckks_context.load_vector(payload)
        return float(self.ckks_context.decrypt(vector)[0])

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def _beaver_messages(
    side: _AnalystSide,
    transport: Transport,
    query: AggregateQuery,
    analyst_id: str,
    rows: int,
    terms: int,
) -> tuple[list[sharing.TripleShare], list[sharing.BeaverMessage]]:
    if side.share is None or query.operator is None:  # pragma: no cover - checked before
        raise ValidationError("no share or operator")
    ledger = sharing.TripleLedger(0)
    triples, messages = [], []
    for start, stop in material_blocks(rows, terms):
        triple = fetch_triple(
            transport,
            query.operator,
            session=dealer_session(query.id, query.dataset_id),
            batch=f"rows-{start}",
            parties=[analyst_id, query.provider],
            left=(1, stop - start),
            right=(stop - start, terms),
        )
        zeros = np.zeros((stop - start, terms), dtype=np.uint64)
        messages.append(
            sharing.beaver_mask(side.share[start:stop].reshape(1, -1), zeros, triple, ledger)
        )
        triples.append(triple)
    return triples, messages


def _iter_totals(
    side: _AnalystSide,
    payload: bytes,
    divisors: Sequence[float] | None,
    names: list[str],
    additive: tuple[list[sharing.TripleShare], list[sharing.BeaverMessage]] | None,
) -> Iterator[float]:
    if side.protocol == "paillier":
        if side.engine is None or side.paillier_keys is None:  # pragma: no cover
            raise ValidationError("no Paillier engine")
        bits = 2 * side.engine.codec.frac_bits
        ct = paillier.CiphertextVector.load(payload, side.paillier_keys[0], exponent=-bits)
        if len(ct) != len(names):
            raise ValidationError("released ciphertexts do not match the statistic")
        yield from (float(v) for v in side.engine.decrypt(ct))
    elif side.protocol == "ckks":
        if side.ckks_context is None:  # pragma: no cover
            raise ValidationError("no CKKS context")
        if divisors is None or len(divisors) != len(names):
            raise ValidationError("released CKKS values come without their divisors")
        for blob, divisor in zip(unpack(payload, len(names)), divisors, strict=True):
            vector = side.ckks_context.load_vector(blob)
            yield float(side.ckks_context.decrypt(vector)[0]) * float(divisor)
    else:
        if additive is None:  # pragma: no cover
            raise ValidationError("no Beaver state")
        triples, mine = additive
        theirs_packed, z_provider = unpack(payload, 2)
        theirs = unpack(theirs_packed, len(mine))
        z = np.zeros(len(names), dtype=np.uint64)
        for triple, message, raw in zip(triples, mine, theirs, strict=True):
            other = sharing.BeaverMessage.from_bytes(raw)
            opening = sharing.beaver_open([message, other])
            z += sharing.beaver_finish(triple, opening).reshape(-1)
        z += ring_from_bytes(z_provider, len(names))
        yield from (float(v) for v in FixedPoint(RING_FRAC_BITS).decode(z))


def run_aggregate(
    transport: Transport,
    analyst_id: str,
    query: AggregateQuery,
    *,
    alignment: Alignment | None = None,
    paillier_keys: tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey] | None = None,
    ckks_context: ckks.SecretContext | None = None,
    workers: int = 0,
    executor: Executor | None = None,
) -> AggregateResult:
    """As the analyst: run one aggregate and return it.

    Args:
        transport: the analyst's transport (its sender is ``analyst_id``).
        analyst_id: this node's participant id (a party of the additive protocol's triples).
        query: the aggregate.
        alignment: an alignment already made for this query (else PSI runs first).
        paillier_keys: the analyst's Paillier key pair (a fresh 2048-bit one if omitted).
        ckks_context: the analyst's CKKS secret context (a fresh one if omitted).
        workers: processes for the analyst's Paillier encryptions (0: in this process).
        executor: a process pool for the analyst's PSI scalar multiplications
            (:func:`crypto.psi.psi_executor`).

    Returns:
        The :class:`AggregateResult`.

    Raises:
        RemoteError: the provider refused (403 with its trace: purpose, minCohort, budget, ...)
            or failed.
        ValidationError: a malformed answer.
    """
    if query.entities:
        return _run_explicit(transport, query)
    with crypto_errors("aggregate"):
        return _run_cohort(
            transport, analyst_id, query, alignment, paillier_keys, ckks_context, workers, executor
        )


def _run_cohort(
    transport: Transport,
    analyst_id: str,
    query: AggregateQuery,
    alignment: Alignment | None,
    paillier_keys: tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey] | None,
    ckks_context: ckks.SecretContext | None,
    workers: int,
    executor: Executor | None,
) -> AggregateResult:
    aligned = alignment or align(
        transport,
        query.provider,
        query.id,
        query.agreement_id,
        query.dataset_id,
        query.cohort,
        purpose=query.purpose,
        kind="aggregate",
        protocol=query.protocol,
        columns=[query.column],
        epsilon=query.epsilon,
        executor=executor,
    )
    if (aligned.provider, aligned.query_id, aligned.dataset_id) != (
        query.provider,
        query.id,
        query.dataset_id,
    ):
        raise ValidationError("the alignment belongs to another query or provider")
    rows = aligned.provider_size
    indicator = np.zeros(rows)
    indicator[list(aligned.positions)] = 1.0
    side = _AnalystSide(query.protocol, paillier_keys, ckks_context, workers)
    # The parts layer adds part/parts/total to stats.open and .release, and stats.fetch's offset.
    ref = StatsRef(query.id, query.dataset_id).to_header()
    names = StatisticPlan(query.statistic, query.bins, None, None).names
    try:
        send_in_parts(
            transport,
            query.provider,
            "stats.open",
            _stats_query(query).to_header(),
            side.material(indicator),
        )
        payload = b""
        additive = None
        if query.protocol == "additive":
            if side.share is None:  # pragma: no cover
                raise ValidationError("no share")
            count: str | float = str(int(side.share.sum(dtype=np.uint64)))
            additive = _beaver_messages(side, transport, query, analyst_id, rows, len(names))
            payload = pack([m.to_bytes() for m in additive[1]])
        else:
            masked = transport.call(query.provider, "stats.count", ref).payload
            count = side.unmask_request(masked)
        release = StatsRelease(query.id, query.dataset_id, count).to_header()
        first = send_in_parts(transport, query.provider, "stats.release", release, payload)
        released = fetch_rest(
            transport, query.provider, "stats.fetch", ref, first, max_total=MAX_MATERIAL
        )
        got = StatsReleased.from_header(first.header, query.provider)
        receipt = _release_receipt(query, got.receipt)
        totals = list(_iter_totals(side, released, got.divisors, names, additive))
    finally:
        side.close()
    return _result(
        query,
        totals,
        got.names,
        got.noise_scales,
        len(aligned.ids),
        [aligned.receipt, receipt],
    )
