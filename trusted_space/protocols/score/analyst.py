"""The analyst's driver of a joint score: :func:`run_score`, for every registered protocol.

It aligns a cohort by PSI when asked (:func:`psi_aligner`), opens the aggregation at the
operator, sends each provider its part in blocks (several in flight when the transport allows),
checks every provider's ``query.use`` receipt (:func:`check_use_receipt`) and takes the sum
from the operator once — or, for a band release, never: the first provider takes it and compares
with the analyst's share, block by block (:mod:`trusted_space.protocols.score.band`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from trusted_space.commitments import verify_opening
from trusted_space.compute import DataAccess
from trusted_space.enforcement import entities_digest
from trusted_space.errors import ValidationError, VerificationError
from trusted_space.events import decode_event
from trusted_space.ledger import Receipt
from trusted_space.protocols._common import block_ranges, check_size, encode_ids
from trusted_space.protocols.base import FloatArray, ScoreProtocol
from trusted_space.protocols.operator import open_aggregation, take_aggregate
from trusted_space.protocols.registry import get_score_protocol
from trusted_space.protocols.scaling import check_precision, scaled_query
from trusted_space.protocols.score.band import comparer_of, run_compare
from trusted_space.protocols.score.wire import (
    ENTITY_CHUNK,
    ScoreBlock,
    ScoreEntities,
    ScoreOpen,
    ScoreRan,
    ScoreRun,
)
from trusted_space.queries.score import ScoreQuery, ScoreResult
from trusted_space.transport import Reply, Transport

__all__ = [
    "BLOCKS_IN_FLIGHT",
    "PSI_POOL_MIN_IDS",
    "PSI_WORKERS_MAX",
    "Aligner",
    "check_use_receipt",
    "psi_aligner",
    "run_score",
]

BLOCKS_IN_FLIGHT: Final = 2
"""Blocks the analyst keeps in flight per provider when its transport allows concurrent calls."""
PSI_POOL_MIN_IDS: Final = 20_000
"""Cohorts at least this large align on a pool of the analyst's cores (smaller: in-process)."""
PSI_WORKERS_MAX: Final = 8

Aligner = Callable[[str, str, str, Sequence[str]], Sequence[str]]
"""``align(provider, agreement id, dataset id, candidates) -> ids the provider holds`` (PSI)."""


def psi_aligner(
    transport: Transport, query: ScoreQuery, *, executor: Executor | None = None
) -> Aligner:
    """An :data:`Aligner` running :func:`trusted_space.protocols.align.align` (ECDH-PSI).

    The provider authorises the alignment as a use of the query (its own ``query.use``), so a
    cohort score is two uses of each agreement: alignment and score. Analyst-held mode only: the
    provider's policy check at alignment names the columns, which the analyst knows only when it
    holds the weights. ``executor``: a process pool for the analyst's scalar multiplications
    (:func:`crypto.psi.psi_executor`), shared by the alignments with every provider.
    """
    from trusted_space.protocols.align import align  # local: alignment is optional for scores

    if query.mode != "analyst-held":
        raise ValidationError("a party-held cohort score needs an align function")

    def aligner(provider: str, agreement: str, dataset: str, ids: Sequence[str]) -> Sequence[str]:
        return align(
            transport,
            provider,
            query.id,
            agreement,
            dataset,
            ids,
            purpose=query.purpose,
            kind="score",
            protocol=query.protocol,
            columns=query.model.columns(provider),
            executor=executor,
        ).ids

    return aligner


def _psi_pool(candidates: int) -> Executor | None:
    """The analyst's PSI worker pool for a cohort this large (``None``: in-process)."""
    workers = min(os.cpu_count() or 1, PSI_WORKERS_MAX)
    if candidates < PSI_POOL_MIN_IDS or workers < 2:
        return None
    from crypto.psi import psi_executor  # local: alignment is optional for scores

    return psi_executor(workers)


def _align_all(
    transport: Transport,
    query: ScoreQuery,
    providers: list[str],
    entities: list[str],
    align: Aligner | None,
) -> dict[str, set[str]]:
    """The ids each provider holds, aligning with every provider at once when the transport can.

    The analyst's own share of the work (hashing and blinding its ids once per provider, then
    the providers' points) is the larger one: it runs on a pool of this node's cores.
    """
    pool = None if align is not None else _psi_pool(len(entities))
    try:
        aligner = align or psi_aligner(transport, query, executor=pool)

        def one(p: str) -> set[str]:
            return set(aligner(p, query.agreements[p], query.datasets[p], entities))

        workers = min(len(providers), _concurrency(transport))
        if workers == 1:
            return {p: one(p) for p in providers}
        with ThreadPoolExecutor(workers, thread_name_prefix="align") as threads:
            futures = {p: threads.submit(one, p) for p in providers}
            return {p: f.result() for p, f in futures.items()}
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# Analyst driver
# ----------------------------------------------------------------------------------------------


def check_use_receipt(
    receipt: Mapping[str, Any],
    *,
    participant: str,
    query: str,
    analyst: str,
    agreement: str,
    dataset: str,
    entities: Sequence[str],
    vkey: str | None = None,
    entities_sha256: str | None = None,
) -> dict[str, Any]:
    """Verify a provider's receipt and that its ``query.use`` entry is *this* use.

    Args:
        receipt: ``Receipt.to_json()`` plus ``vkey`` and ``participant``.
        participant: the provider that must have signed it.
        query: the query id the entry must name.
        analyst: the analyst the entry must name.
        agreement: the agreement the entry must name.
        dataset: the dataset the entry must name.
        entities: the entity list whose count the entry must carry and to whose digest its
            ``entities_commitment`` must open with the salt in ``receipt["openings"]``.
        vkey: the provider's ledger vkey as the analyst knows it (from the operator's registry);
            when ``None`` the receipt's own ``vkey`` is used (self-consistency only).
        entities_sha256: :func:`~trusted_space.enforcement.entities_digest` of ``entities``,
            when the caller already computed it (a query checks one receipt per provider).

    Returns:
        The ``query.use`` event body.

    Raises:
        VerificationError: the signature, inclusion proof or entry does not match.
    """
    try:
        parsed = Receipt.from_json(
            {k: v for k, v in receipt.items() if k not in ("vkey", "participant")}
        )
        key = vkey if vkey is not None else str(receipt["vkey"])
        parsed.verify(key)
        event = decode_event(parsed.index, parsed.entry)
    except (KeyError, ValueError, ValidationError) as exc:
        raise VerificationError(f"malformed receipt from {participant}: {exc}") from exc
    body = event.body
    expected = {
        "query": query,
        "analyst": analyst,
        "agreement": agreement,
        "dataset": dataset,
        "entities": len(entities),
    }
    if receipt.get("participant") != participant or event.kind != "query.use":
        raise VerificationError(f"receipt from {participant} is not a query.use of {participant}")
    wrong = [k for k, v in expected.items() if body.get(k) != v]
    openings = receipt.get("openings")
    salt = openings.get("entities_commitment") if isinstance(openings, Mapping) else None
    if not entities:
        if body.get("entities_commitment") is not None:
            wrong.append("entities_commitment")
    elif not isinstance(salt, str) or not verify_opening(
        str(body.get("entities_commitment")), salt, entities_sha256 or entities_digest(entities)
    ):
        wrong.append("entities_commitment")
    if wrong:
        raise VerificationError(f"receipt from {participant} does not match the query: {wrong}")
    return body


def _missing_ids(provider: str, ran: ScoreRan, reply: Reply, entities: list[str]) -> list[str]:
    """The entities a provider reported missing (a bit per entity, in query order)."""
    count = ran.missing
    if len(reply.payload) != -(-len(entities) // 8):
        raise ValidationError(f"{provider}: the missing-entity bitmap has the wrong size")
    bits = np.unpackbits(np.frombuffer(reply.payload, dtype=np.uint8), count=len(entities))
    rows = np.flatnonzero(bits)
    if len(rows) != count:
        raise ValidationError(f"{provider}: the missing-entity bitmap does not match its count")
    return [entities[i] for i in rows]


def _own_partial(
    query: ScoreQuery,
    analyst_id: str,
    data: DataAccess | None,
    entities: list[str],
    impute: Mapping[str, float] | None,
) -> tuple[FloatArray, list[str]]:
    columns = list(query.model.columns(analyst_id))
    if not columns:
        return np.zeros(len(entities)), []
    if data is None or analyst_id not in query.datasets:
        raise ValidationError("the model has analyst columns: pass analyst_data and its dataset")
    found, x = data.lookup(query.datasets[analyst_id], entities, columns)
    holes = np.isnan(x)
    rows = ~found | holes.any(axis=1)
    missing = [entities[i] for i in np.flatnonzero(rows)]
    if missing:
        if query.missing == "fail":
            raise ValidationError(
                f"{len(missing)} entities missing from the analyst's own data: {missing[:20]}"
            )
        defaults = dict(impute or {})
        lacking = [c for j, c in enumerate(columns) if holes[:, j].any() and c not in defaults]
        if lacking:
            raise ValidationError(f"no impute default for the analyst's column(s) {lacking}")
        fill = np.array([defaults.get(c, 0.0) for c in columns])
        x[holes] = np.broadcast_to(fill, x.shape)[holes]
    return _row_dot(x, query.model.weights_of(analyst_id)), missing


def _row_dot(x: FloatArray, w: FloatArray) -> FloatArray:
    """``x @ w`` computed the same way for a row whatever else is in ``x``.

    A matrix product's rounding depends on the shape (the library picks its kernel and blocking
    by size), so one applicant scored alone and the same applicant in a run of eight could
    differ in the last bit; column by column, each row's sum is the same sequence of roundings.
    """
    weights = np.asarray(w, dtype=np.float64)
    out = np.zeros(x.shape[0])
    for j in range(weights.shape[0]):
        out += x[:, j] * weights[j]
    return out


def _concurrency(transport: Transport) -> int:
    """How many calls ``transport`` may carry at once (its ``max_concurrency``, at least 1).

    A transport that can be called from several threads (the connector's HTTP transport) says
    so; the in-memory twin does not, so tests see one deterministic sequence of messages.
    """
    return max(1, transport.max_concurrency)


class _Blocks:
    """Which blocks every provider has finished, so the analyst takes each sum as soon as it can."""

    def __init__(self, blocks: int, providers: int) -> None:
        self._left = [providers] * blocks
        self._ready: queue.Queue[int | None] = queue.Queue()

    def done(self, block: int) -> None:
        self._left[block] -= 1  # one provider thread per provider; the GIL keeps this exact
        if self._left[block] == 0:
            self._ready.put(block)

    def abort(self) -> None:
        self._ready.put(None)

    def next(self) -> int | None:
        return self._ready.get()


def run_score(
    transport: Transport,
    analyst_id: str,
    operator_id: str,
    query: ScoreQuery,
    *,
    analyst_data: DataAccess | None = None,
    protocol: ScoreProtocol | None = None,
    align: Aligner | None = None,
    analyst_impute: Mapping[str, float] | None = None,
    provider_vkeys: Mapping[str, str] | None = None,
) -> ScoreResult:
    """Run a joint score as the analyst (see the module docstring for the flow).

    Providers are served concurrently when the transport allows it (``max_concurrency``), one
    thread per provider; each block's sum is taken and decoded as soon as every provider has
    sent its part of it, while the providers go on with later blocks.

    Args:
        transport: the analyst's transport.
        analyst_id: the analyst's participant id (the identity its transport authenticates as).
        operator_id: the space operator (aggregator and dealer).
        query: the query.
        analyst_data: the analyst's own data, for the model's analyst columns (computed here in
            plaintext and added after decryption).
        protocol: a protocol object (default: the registry's for ``query.protocol``); tests pass
            one holding an existing key.
        align: for a ``cohort`` query, the alignment with one provider (default:
            :func:`psi_aligner`).
        analyst_impute: impute defaults of the analyst's own columns.
        provider_vkeys: providers' ledger vkeys, to verify receipts against known keys.

    Returns:
        The :class:`ScoreResult`.

    Raises:
        RemoteError: a provider or the operator refused (a policy refusal carries its trace in
            ``problem["trace"]``).
        VerificationError: a receipt does not verify or does not describe this use.
    """
    started = time.perf_counter()
    proto = protocol or get_score_protocol(query.protocol)
    if proto.name != query.protocol:
        raise ValidationError(f"protocol object {proto.name!r} does not run {query.protocol!r}")
    # Each provider column scaled by its declared range: the protocols see |x| ≤ 1.
    query, exponents = scaled_query(query)
    check_precision(query)
    providers = list(query.providers)
    missing: dict[str, list[str]] = {p: [] for p in providers}
    entities = list(query.entities)
    if query.cohort:
        held = _align_all(transport, query, providers, entities, align)
        for p in providers:
            missing[p] = [e for e in entities if e not in held[p]]
        entities = [e for e in entities if all(e in held[p] for p in providers)]
        if not entities:
            raise ValidationError("the aligned cohort is empty")
    timings: dict[str, float] = {"align": time.perf_counter() - started}
    analyst_held = query.mode == "analyst-held"
    terms = {p: len(query.model.columns(p)) for p in providers} if analyst_held else {}
    blocks = block_ranges(len(entities), proto.block_rows(query, max(terms.values(), default=1)))
    side = proto.analyst(query, providers, terms)
    receipts: dict[str, dict[str, Any]] = {}
    band = bool(query.band_edges)
    comparer = comparer_of(providers) if band else None
    bands: dict[int, npt.NDArray[np.int64]] = {}
    own_first: tuple[FloatArray, list[str]] | None = None
    if band:  # the edges are shifted by the analyst's own part before any comparison
        own_first = _own_partial(query, analyst_id, analyst_data, entities, analyst_impute)
        shift = query.model.intercept + own_first[0]

    def finish(b: int) -> FloatArray:
        """Block ``b``: its summed partials, or (band release) its bands, the sum never seen."""
        start, stop = blocks[b]
        if not band:
            return side.decode(
                b, stop - start, take_aggregate(transport, operator_id, query=query.id, block=b)
            )
        share = side.band_share(b, stop - start, query.band_edges, shift[start:stop])
        bands[b] = run_compare(
            transport, analyst_id, operator_id, str(comparer), query.id, b, share
        )
        return np.zeros(0)

    try:
        timings["setup"] = time.perf_counter() - started - timings["align"]
        material = side.material()
        params = side.params()
        open_aggregation(
            transport,
            operator_id,
            query=query.id,
            codec=side.codec,
            contributors=providers,
            counts=[stop - start for start, stop in blocks],
            params=params,
            material=material,
            recipient=comparer,
        )
        mark = time.perf_counter()
        # Work every provider shares, done once: the id uploads and the digest receipts carry.
        uploads = [
            (start, stop, check_size(encode_ids(entities[start:stop]), "entity ids"))
            for start, stop in block_ranges(len(entities), ENTITY_CHUNK)
        ]
        digest = entities_digest(entities)
        weights = {p: query.model.weights_of(p) for p in providers} if analyst_held else {}
        payloads = {p: side.weights_payload(p, w) for p, w in weights.items()}
        progress = _Blocks(len(blocks), len(providers))
        stop_event = threading.Event()

        def serve(p: str) -> tuple[dict[str, Any], list[str]]:
            opening = ScoreOpen(
                query=query.id,
                protocol=query.protocol,
                mode=query.mode,
                purpose=query.purpose,
                agreement=query.agreements[p],
                dataset=query.datasets[p],
                id_kind=query.id_kind,
                missing=query.missing,
                operator=operator_id,
                contributors=tuple(providers),
                entities=len(entities),
                block=blocks[0][1] - blocks[0][0],
                feature_bound=query.feature_bound,
                partial_bound=query.partial_bound,
                params=params,
                columns=tuple(query.model.columns(p)) if analyst_held else None,
                model=None if analyst_held else query.model.id,
                scales=exponents[p] if analyst_held else None,
                band_edges=query.band_edges or None,
                comparer=comparer,
            )
            transport.call(p, "score.open", opening.to_header(), check_size(material, "material"))
            for start, stop, ids in uploads:
                entities_header = ScoreEntities(query.id, start, stop - start).to_header()
                transport.call(p, "score.entities", entities_header, ids)
            reply = transport.call(
                p, "score.run", ScoreRun(query.id).to_header(), payloads.get(p, b"")
            )
            ran = ScoreRan.from_header(reply.header, p)
            receipt = dict(ran.receipt)
            check_use_receipt(
                receipt,
                participant=p,
                query=query.id,
                analyst=analyst_id,
                agreement=query.agreements[p],
                dataset=query.datasets[p],
                entities=entities,
                vkey=(provider_vkeys or {}).get(p),
                entities_sha256=digest,
            )
            gone = _missing_ids(p, ran, reply, entities)
            side.accept(p, reply.header, blocks)

            def block(b: int) -> None:
                if stop_event.is_set():
                    return
                start, stop = blocks[b]
                if side.interactive:
                    side.round(
                        transport, analyst_id, operator_id, p, weights.get(p), b, stop - start
                    )
                else:
                    transport.call(p, "score.block", ScoreBlock(query.id, b).to_header())
                progress.done(b)

            if streams == 1 or len(blocks) == 1:
                for b in range(len(blocks)):
                    block(b)
            else:  # a block in flight while the next one's messages travel
                with ThreadPoolExecutor(streams, thread_name_prefix=f"score-{p}") as lanes:
                    for done in [lanes.submit(block, b) for b in range(len(blocks))]:
                        done.result()
            return receipt, gone

        workers = min(len(providers), _concurrency(transport))
        streams = BLOCKS_IN_FLIGHT if workers > 1 else 1
        sums: dict[int, FloatArray] = {}
        decode_s = 0.0
        own_future: Future[tuple[FloatArray, list[str]]] | None = None
        if workers == 1:
            for p in providers:
                receipts[p], gone = serve(p)
                missing[p].extend(gone)
            timings["providers"] = time.perf_counter() - mark
            mark = time.perf_counter()
            for b in range(len(blocks)):
                sums[b] = finish(b)
            decode_s = time.perf_counter() - mark
        else:
            with ThreadPoolExecutor(workers + 1, thread_name_prefix="score") as pool:
                futures = {pool.submit(serve, p): p for p in providers}
                # The analyst's own partial needs nobody: it is read while the providers work.
                if own_first is None:
                    own_future = pool.submit(
                        _own_partial, query, analyst_id, analyst_data, entities, analyst_impute
                    )

                def failed(done: Future[Any]) -> None:
                    if done.exception() is not None:
                        stop_event.set()
                        progress.abort()

                for future in futures:
                    future.add_done_callback(failed)
                try:
                    while len(sums) < len(blocks) and not stop_event.is_set():
                        ready = progress.next()
                        if ready is None:
                            break
                        taken = time.perf_counter()
                        sums[ready] = finish(ready)
                        decode_s += time.perf_counter() - taken
                finally:
                    stop_event.set()
                for future, p in futures.items():
                    receipts[p], gone = future.result()  # re-raises a provider's failure
                    missing[p].extend(gone)
            if len(sums) < len(blocks):  # pragma: no cover - a failure re-raised above
                raise ValidationError("the query ended before every block was summed")
            timings["providers"] = time.perf_counter() - mark - decode_s
        timings["aggregate"] = decode_s
    finally:
        side.close()
    if own_first is not None:
        own, own_missing = own_first
    elif own_future is None:
        own, own_missing = _own_partial(query, analyst_id, analyst_data, entities, analyst_impute)
    else:
        own, own_missing = own_future.result()
    if own_missing:
        missing[analyst_id] = own_missing
    timings["total"] = time.perf_counter() - started
    if band:
        return ScoreResult(
            query_id=query.id,
            entities=tuple(entities),
            logits=np.zeros(0),
            outputs=np.zeros(0),
            missing={p: tuple(m) for p, m in missing.items() if m},
            receipts=receipts,
            timings=timings,
            bands=np.concatenate([bands[b] for b in range(len(blocks))]),
            band_edges=query.band_edges,
        )
    logits = query.model.intercept + np.concatenate([sums[b] for b in range(len(blocks))]) + own
    return ScoreResult(
        query_id=query.id,
        entities=tuple(entities),
        logits=logits,
        outputs=query.model.apply_link(logits),
        missing={p: tuple(m) for p, m in missing.items() if m},
        receipts=receipts,
        timings=timings,
    )
