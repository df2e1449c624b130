"""The serving path: several small score requests in one protocol run, each its own use.

Why: a loan officer waits on one applicant, and a joint score's set-up (an aggregation opened at
the operator, a session at every provider, keys, the dealer's randomness) costs far more than one
entity's arithmetic. :func:`serve_batch` runs the requests that arrived together as *one* run
(one ``aggregate.open``, one ``score.open|entities|run`` and one block per provider) under keys
the analyst keeps between runs (:class:`StandingKeys`), so each request pays for its own entities.

What is shared never mixes results:

- each request is authorised by every provider on its own (``ScoreOpen.requests``: its own
  decision, budget charge, ``query.use`` entry naming its own entities' commitment, and receipt,
  all committed in one transaction per provider: group commit, nothing answered before it is
  durable), and each receipt is checked against *that* request's id and entities;
- a request refused by any provider (policy, a missing entity under ``missing: fail``, a value
  beyond its column's range, or the analyst's own data) is skipped at every provider
  (``ScoreBlock.skip``: its rows count as zero), so no partial sum of it is ever decrypted, and
  it is answered with the refusals and the receipts of the providers that recorded a use;
- each request gets only its own rows of the decrypted sums.

A failure of the run itself (a provider unreachable, a receipt that does not verify) fails every
request of the run; nothing partial is returned.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from trusted_space.compute import DataAccess
from trusted_space.enforcement import entities_digest
from trusted_space.errors import ValidationError, problem_document
from trusted_space.protocols._common import block_ranges, check_size
from trusted_space.protocols.base import FloatArray, ScoreProtocol
from trusted_space.protocols.operator import open_aggregation, take_aggregate
from trusted_space.protocols.registry import get_score_protocol
from trusted_space.protocols.scaling import check_precision, scaled_query
from trusted_space.protocols.score.analyst import (
    _concurrency,
    _missing_ids,
    _own_partial,
    check_use_receipt,
)
from trusted_space.protocols.score.wire import (
    ScoreBlock,
    ScoreOpen,
    ScoreRan,
)
from trusted_space.queries.score import ScoreQuery
from trusted_space.transport import Transport

__all__ = [
    "MAX_SERVED_ENTITIES",
    "ServedOutcome",
    "ServedRequest",
    "StandingKeys",
    "serve_batch",
]

MAX_SERVED_ENTITIES: Final = 256
"""Entities one served run carries at most (one block of every protocol)."""


@dataclass(frozen=True)
class ServedRequest:
    """One request of a served run: its own query id (its uses name it) and its entities."""

    id: str
    entities: tuple[str, ...]


@dataclass
class ServedOutcome:
    """What one request of a served run gets: its own scores and receipts, or its refusals.

    Attributes:
        refusals: provider (or the analyst's own id) → the refusal's problem document (with its
            trace); empty when the request was scored.
        receipts: provider → the receipt of the use it recorded for *this* request (a refused
            request still gets the receipts of the providers that recorded a use).
    """

    id: str
    entities: tuple[str, ...]
    logits: FloatArray | None = None
    outputs: FloatArray | None = None
    missing: dict[str, tuple[str, ...]] = field(default_factory=dict)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)
    refusals: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def scored(self) -> bool:
        return not self.refusals and self.logits is not None


class StandingKeys:
    """The analyst's keys kept between runs, rotated on a schedule and on demand.

    A Paillier key pair or a CKKS secret context is generated once and reused by every run
    until it is ``rotate_after`` seconds old or :meth:`rotate` is called (the additive protocol
    has no keys: its Beaver triples are dealt per run, each used once). The secret parts never
    leave this object's process; providers only ever see the public material of each run.

    Args:
        protocol: ``paillier``, ``ckks`` or ``additive``.
        rotate_after: seconds a key is used for before a fresh one replaces it.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        protocol: str,
        *,
        rotate_after: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rotate_after <= 0:
            raise ValidationError("rotate_after must be positive")
        get_score_protocol(protocol)  # refuses an unknown name
        self.name = protocol
        self.rotate_after = rotate_after
        self._clock = clock
        self._lock = threading.Lock()
        self._current: ScoreProtocol | None = None
        self._born = 0.0
        self.generation = 0
        """How many keys this object has made (1 after the first run)."""

    def _fresh(self) -> ScoreProtocol:
        if self.name == "paillier":
            from crypto import paillier
            from trusted_space.protocols.score_paillier import PaillierScore

            return PaillierScore(paillier.generate_keypair(paillier.MIN_KEY_BITS), workers=0)
        if self.name == "ckks":
            from crypto import ckks
            from trusted_space.protocols.score_ckks import CkksScore

            return CkksScore(ckks.SecretContext.generate(ckks.PRESET_8192_DEPTH1))
        return get_score_protocol(self.name)

    def protocol(self) -> ScoreProtocol:
        """The protocol object holding the current key (a fresh one when it is due)."""
        with self._lock:
            now = self._clock()
            if self._current is None or now - self._born >= self.rotate_after:
                self._current = self._fresh()
                self._born = now
                self.generation += 1
            return self._current

    def rotate(self) -> None:
        """Drop the current key: the next run makes a fresh one."""
        with self._lock:
            self._current = None

    @property
    def age(self) -> float | None:
        """Seconds since the current key was made (``None``: none yet)."""
        with self._lock:
            return None if self._current is None else self._clock() - self._born


def _spans(requests: Sequence[ServedRequest]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    start = 0
    for r in requests:
        out[r.id] = (start, start + len(r.entities))
        start += len(r.entities)
    return out


def serve_batch(
    transport: Transport,
    analyst_id: str,
    operator_id: str,
    query: ScoreQuery,
    requests: Sequence[ServedRequest],
    *,
    protocol: ScoreProtocol | None = None,
    analyst_data: DataAccess | None = None,
    analyst_impute: Mapping[str, float] | None = None,
    provider_vkeys: Mapping[str, str] | None = None,
) -> list[ServedOutcome]:
    """Score ``requests`` in one run as the analyst (see the module docstring).

    Args:
        transport: the analyst's transport.
        analyst_id: the analyst's participant id.
        operator_id: the space's operator (aggregator and dealer).
        query: the query every request shares (model, protocol, purpose, agreements, datasets,
            ranges); its ``entities`` are ignored, its id is not used by any provider.
        requests: the requests, their entities disjoint (at most :data:`MAX_SERVED_ENTITIES`).
        protocol: the protocol object (a :class:`StandingKeys`' :meth:`~StandingKeys.protocol`).
        analyst_data: the analyst's own data, for the model's analyst columns.
        analyst_impute: impute defaults of the analyst's own columns.
        provider_vkeys: providers' ledger vkeys (receipts are verified against them).

    Returns:
        One :class:`ServedOutcome` per request, in order.

    Raises:
        RemoteError: a provider or the operator failed the run (every request fails).
        VerificationError: a receipt does not verify or does not describe its request.
        ValidationError: the requests are empty, overlap or are too many.
    """
    if query.cohort:
        raise ValidationError("a served score names its entities (no PSI cohort)")
    entities = [e for r in requests for e in r.entities]
    if not requests or not entities:
        raise ValidationError("no requests to serve")
    if len(entities) > MAX_SERVED_ENTITIES:
        raise ValidationError(f"a served run carries at most {MAX_SERVED_ENTITIES} entities")
    if any(not r.entities for r in requests):
        raise ValidationError("a served request names no entities")
    proto = protocol or get_score_protocol(query.protocol)
    if proto.name != query.protocol:
        raise ValidationError(f"protocol object {proto.name!r} does not run {query.protocol!r}")
    run = dataclasses.replace(query, id=f"urn:uuid:{uuid.uuid4()}", entities=tuple(entities))
    run, exponents = scaled_query(run)
    check_precision(run)
    providers = list(run.providers)
    spans = _spans(requests)
    outcomes = {r.id: ServedOutcome(r.id, r.entities) for r in requests}
    analyst_held = run.mode == "analyst-held"
    terms = {p: len(run.model.columns(p)) for p in providers} if analyst_held else {}
    blocks = block_ranges(len(entities), proto.block_rows(run, max(terms.values(), default=1)))
    side = proto.analyst(run, providers, terms)
    try:
        material = side.material()
        params = side.params()

        def aggregation() -> None:
            open_aggregation(
                transport,
                operator_id,
                query=run.id,
                codec=side.codec,
                contributors=providers,
                counts=[stop - start for start, stop in blocks],
                params=params,
                material=material,
            )

        weights = {p: run.model.weights_of(p) for p in providers} if analyst_held else {}
        payloads = {p: side.weights_payload(p, w) for p, w in weights.items()}
        digests = {r.id: entities_digest(r.entities) for r in requests}

        def start(p: str) -> tuple[ScoreRan, list[str]]:
            opening = ScoreOpen(
                query=run.id,
                protocol=run.protocol,
                mode=run.mode,
                purpose=run.purpose,
                agreement=run.agreements[p],
                dataset=run.datasets[p],
                id_kind=run.id_kind,
                missing=run.missing,
                operator=operator_id,
                contributors=tuple(providers),
                entities=len(entities),
                block=blocks[0][1] - blocks[0][0],
                feature_bound=run.feature_bound,
                partial_bound=run.partial_bound,
                params=params,
                columns=tuple(run.model.columns(p)) if analyst_held else None,
                model=None if analyst_held else run.model.id,
                scales=exponents[p] if analyst_held else None,
                requests=tuple((r.id, len(r.entities)) for r in requests),
                ids=tuple(entities),
                run_bytes=len(payloads.get(p, b"")),
            )
            # One call opens and runs: the public material, then the encrypted weights.
            body = check_size(material + payloads.get(p, b""), "material and weights")
            reply = transport.call(p, "score.open", opening.to_header(), body)
            ran = ScoreRan.from_header(reply.header, p)
            if set(ran.uses) | set(ran.refused) != set(spans) or set(ran.uses) & set(ran.refused):
                raise ValidationError(f"{p}: the reply does not answer every request once")
            for rid, receipt in ran.uses.items():
                r = outcomes[rid]
                check_use_receipt(
                    receipt,
                    participant=p,
                    query=rid,
                    analyst=analyst_id,
                    agreement=run.agreements[p],
                    dataset=run.datasets[p],
                    entities=r.entities,
                    vkey=(provider_vkeys or {}).get(p),
                    entities_sha256=digests[rid],
                )
            gone = _missing_ids(p, ran, reply, entities)
            side.accept(p, reply.header, blocks)
            return ran, gone

        workers = min(len(providers), _concurrency(transport))

        def fetch() -> None:
            for p in providers if side.interactive else ():
                for b, (lo, hi) in enumerate(blocks):
                    side.prefetch(transport, analyst_id, operator_id, p, b, hi - lo, terms[p])

        def prepare() -> None:
            aggregation()
            fetch()

        if workers == 1:  # a transport that carries one call at a time: one after the other
            prepare()
            answers = {p: start(p) for p in providers}
            own = _own_all(run, requests, spans, analyst_id, analyst_data, analyst_impute)
        else:
            # What needs no other answer travels at once: every provider's session, and the
            # aggregation followed by the material the rounds will need (the dealer's triples).
            with ThreadPoolExecutor(workers + 1, thread_name_prefix="serve") as pool:
                opened = pool.submit(prepare)
                started = {p: pool.submit(start, p) for p in providers}
                own = _own_all(run, requests, spans, analyst_id, analyst_data, analyst_impute)
                opened.result()
                answers = {p: f.result() for p, f in started.items()}
        for p, (ran, gone) in answers.items():
            lost = set(gone)
            for rid, receipt in ran.uses.items():
                outcomes[rid].receipts[p] = dict(receipt)
                held = tuple(e for e in outcomes[rid].entities if e in lost)
                if held:
                    outcomes[rid].missing[p] = held
            for rid, refused in ran.refused.items():
                outcomes[rid].refusals[p] = dict(refused)
        for rid, (_, own_missing, own_refusal) in own.items():
            if own_refusal is not None:
                outcomes[rid].refusals[analyst_id] = own_refusal
            elif own_missing:
                outcomes[rid].missing[analyst_id] = own_missing
        skip = tuple(rid for rid, o in outcomes.items() if o.refusals)

        def compute(p: str) -> None:
            for b, (lo, hi) in enumerate(blocks):
                if side.interactive:
                    side.round(
                        transport, analyst_id, operator_id, p, weights.get(p), b, hi - lo, skip
                    )
                else:
                    transport.call(p, "score.block", ScoreBlock(run.id, b, skip).to_header())

        with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="serve") as pool:
            for done in [pool.submit(compute, p) for p in providers]:
                done.result()
        sums = np.concatenate(
            [
                side.decode(
                    b, hi - lo, take_aggregate(transport, operator_id, query=run.id, block=b)
                )
                for b, (lo, hi) in enumerate(blocks)
            ]
        )
    finally:
        side.close()
    for rid, outcome in outcomes.items():
        if outcome.refusals:
            continue
        lo, hi = spans[rid]
        partial = own[rid][0]
        logits = run.model.intercept + sums[lo:hi] + partial
        outcome.logits = logits
        outcome.outputs = run.model.apply_link(logits)
    return [outcomes[r.id] for r in requests]


def _own_all(
    run: ScoreQuery,
    requests: Sequence[ServedRequest],
    spans: Mapping[str, tuple[int, int]],
    analyst_id: str,
    data: DataAccess | None,
    impute: Mapping[str, float] | None,
) -> dict[str, tuple[FloatArray, tuple[str, ...], dict[str, Any] | None]]:
    """Every request's own partial: one lookup for the run, per request only if one lacks data."""
    entities = [e for r in requests for e in r.entities]
    try:
        partial, missing = _own_partial(run, analyst_id, data, entities, impute)
    except ValidationError:  # some request lacks the analyst's data: find which, alone
        return {r.id: _own(run, r, analyst_id, data, impute) for r in requests}
    gone = set(missing)
    return {
        r.id: (
            partial[spans[r.id][0] : spans[r.id][1]],
            tuple(e for e in r.entities if e in gone),
            None,
        )
        for r in requests
    }


def _own(
    run: ScoreQuery,
    request: ServedRequest,
    analyst_id: str,
    data: DataAccess | None,
    impute: Mapping[str, float] | None,
) -> tuple[FloatArray, tuple[str, ...], dict[str, Any] | None]:
    """The analyst's own partial of one request, or its refusal (missing own data)."""
    try:
        partial, missing = _own_partial(run, analyst_id, data, list(request.entities), impute)
    except ValidationError as exc:
        return np.zeros(len(request.entities)), (), problem_document(exc)
    return partial, tuple(missing), None
