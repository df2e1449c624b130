"""The joint score flow: provider operations and the analyst's driver, for every protocol.

Message flow (details per protocol in docs/protocols.md)::

    analyst ──aggregate.open──────────────▶ operator     codec, contributors, block sizes, key
    analyst ──score.open───────────────────▶ provider P   query spec for P, public material
    analyst ──score.entities (blocks)──────▶ P            entity ids, ≤ 65,536 per call
    analyst ──score.run────────────────────▶ P            (analyst-held) encrypted weights
        P: authorize_use → lookup → partial per block ──aggregate.add──▶ operator
    analyst ◀──────────────────────────────── P            receipt, missing ids (never a partial)
    analyst ⇄ score.beaver per block ⇄ P                   (additive analyst-held only)
    analyst ──aggregate.take per block─────▶ operator     ◀── the sum over all providers, once

The provider enforces before it reads: :func:`trusted_space.enforcement.authorize_use` runs in
``score.run`` with the authenticated sender as analyst and the *whole* entity list (consent per
entity, the ``query.use`` digest), and only then is :class:`~trusted_space.compute.DataAccess`
touched. Its partial goes to the operator, never to the analyst; its reply carries its receipt,
the count of entities it does not hold and a bitmap of them (one bit per entity, query order),
and (additive) a 32-byte mask seed.

Missing entities (not held, or a null in a used column): ``fail`` refuses the query listing them
(a :class:`RefusedError` with a ``missing`` trace step, after the use was recorded — looking them
up *is* a use); ``impute`` fills each such cell with the column's published ``imputeDefault`` and
refuses if a needed column has none (never a silent zero).

Party-held weights live in the provider's store (namespace ``model``), put there with
:func:`store_party_weights` after joint training.

Large vectors travel in blocks (:data:`~trusted_space.protocols._common.DEFAULT_BLOCK_ROWS`
entities; no message above 64 MiB), so a million entities never need one giant message.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from trusted_space.compute import CallContext, ComputeNode, DataAccess
from trusted_space.enforcement import UseRequest, authorize_use, entities_digest
from trusted_space.errors import (
    ConflictError,
    NotFoundError,
    RefusedError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import canonical_json, decode_event, record_event
from trusted_space.ledger import Receipt
from trusted_space.protocols._common import (
    MAX_BLOCK_ROWS,
    block_ranges,
    check_size,
    decode_ids,
    encode_ids,
    header_float,
    header_int,
    header_participants,
    header_str,
)
from trusted_space.protocols.base import FloatArray, ProviderJob, ProviderSide, ScoreProtocol
from trusted_space.protocols.operator import add_to_aggregate, open_aggregation, take_aggregate
from trusted_space.protocols.registry import get_score_protocol
from trusted_space.queries.common import ID_KINDS, MISSING_RULES, MODES
from trusted_space.queries.score import ScoreQuery, ScoreResult
from trusted_space.store import Store
from trusted_space.transport import Reply, Transport

__all__ = [
    "BLOCKS_IN_FLIGHT",
    "ENTITY_CHUNK",
    "MAX_ENTITIES",
    "PSI_POOL_MIN_IDS",
    "PSI_WORKERS_MAX",
    "MODEL_NAMESPACE",
    "OPERATOR_EXTRA",
    "ROLES_EXTRA",
    "Aligner",
    "check_use_receipt",
    "psi_aligner",
    "load_party_weights",
    "register_provider",
    "run_score",
    "store_party_weights",
]

MODEL_NAMESPACE: Final = "model"
"""Provider store namespace of party-held weights (key: the model id)."""
OPERATOR_EXTRA: Final = "operator"
"""``ComputeNode.extras`` key of the space operator's id: a provider sends partials and fetches
triples only there, whatever the analyst names (an analyst naming itself would get the partials)."""
ROLES_EXTRA: Final = "roles"
"""``ComputeNode.extras`` key of a callable ``participant id -> roles`` (from credentials)."""
ENTITY_CHUNK: Final = 1 << 18
"""Entity ids per ``score.entities`` call (at most 129 bytes each: 34 MB, under the limit)."""
MAX_ENTITIES: Final = 10_000_000
BLOCKS_IN_FLIGHT: Final = 2
"""Blocks the analyst keeps in flight per provider when its transport allows concurrent calls."""
PSI_POOL_MIN_IDS: Final = 20_000
"""Cohorts at least this large align on a pool of the analyst's cores (smaller: in-process)."""
PSI_WORKERS_MAX: Final = 8
_MISSING_LISTED: Final = 1000
_SESSION_PREFIX: Final = "score/"

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
# Party-held weights
# ----------------------------------------------------------------------------------------------


def store_party_weights(store: Store, model_id: str, weights: Mapping[str, float]) -> None:
    """Store this provider's weights of a jointly trained model.

    Namespace ``model`` (key: the model id); ledger ``model.stored`` with the columns and the
    weights' SHA-256, never the weights.
    """
    if not isinstance(model_id, str) or not model_id:
        raise ValidationError("model id must be a non-empty string")
    if not weights:
        raise ValidationError("no weights")
    clean: dict[str, float] = {}
    for column, w in weights.items():
        if not isinstance(column, str) or not column:
            raise ValidationError(f"weights: bad column name {column!r}")
        if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w):
            raise ValidationError(f"weights.{column}: expected a finite number")
        clean[column] = float(w)
    with store.transaction() as tx:
        tx.put(MODEL_NAMESPACE, model_id, {"weights": clean})
        record_event(
            tx,
            "model.stored",
            {
                "model": model_id,
                "columns": list(clean),
                "sha256": hashlib.sha256(canonical_json(clean)).hexdigest(),
            },
        )


def load_party_weights(store: Store, model_id: str) -> dict[str, float]:
    """The weights stored under ``model_id`` (:class:`NotFoundError` if none)."""
    with store.transaction(readonly=True) as tx:
        doc = tx.get(MODEL_NAMESPACE, model_id)
    if doc is None:
        raise NotFoundError(f"no model {model_id!r} here")
    return {str(c): float(w) for c, w in doc.body["weights"].items()}


# ----------------------------------------------------------------------------------------------
# Provider operations
# ----------------------------------------------------------------------------------------------


def _choice(header: Mapping[str, Any], name: str, choices: Sequence[str]) -> str:
    value = header.get(name)
    if value not in choices:
        raise ValidationError(f"header.{name}: expected one of {list(choices)}")
    return str(value)


def _columns(header: Mapping[str, Any]) -> list[str]:
    value = header.get("columns")
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 4096
        or not all(isinstance(c, str) and c for c in value)
        or len(set(value)) != len(value)
    ):
        raise ValidationError("header.columns: expected a list of distinct column names")
    return value


def _score_open(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    node = ctx.node
    query = header_str(header, "query")
    protocol = get_score_protocol(_choice(header, "protocol", ("paillier", "ckks", "additive")))
    mode = _choice(header, "mode", MODES)
    operator = header_str(header, "operator")
    expected_operator = node.extras.get(OPERATOR_EXTRA)
    if expected_operator is not None and operator != expected_operator:
        raise ValidationError(f"header.operator: {operator!r} is not this space's operator")
    contributors = list(header_participants(header, "contributors"))
    if node.participant_id not in contributors:
        raise ValidationError("header.contributors: does not include this provider")
    spec = {
        "query": query,
        "protocol": protocol.name,
        "mode": mode,
        "purpose": header_str(header, "purpose"),
        "agreement": header_str(header, "agreement"),
        "dataset": header_str(header, "dataset"),
        "idKind": _choice(header, "idKind", ID_KINDS),
        "missing": _choice(header, "missing", MISSING_RULES),
        "operator": operator,
        "contributors": contributors,
        "entities": header_int(header, "entities", 1, MAX_ENTITIES),
        "block": header_int(header, "block", 1, MAX_BLOCK_ROWS),
        "featureBound": header_float(header, "featureBound"),
        "partialBound": header_float(header, "partialBound"),
    }
    weights: dict[str, float] | None = None
    if mode == "analyst-held":
        columns = _columns(header)
    else:
        weights = load_party_weights(node.store, header_str(header, "model"))
        columns = list(weights)
    params = header.get("params")
    if not isinstance(params, dict):
        raise ValidationError("header.params: expected an object")
    side = protocol.provider(mode, params, payload)
    state = node.sessions.open(ctx.sender, _SESSION_PREFIX + query)
    if state:
        side.close()
        raise ConflictError(f"query {query!r} is already open here")
    state.update(
        {"spec": spec, "side": side, "columns": columns, "weights": weights, "entities": []}
    )
    return Reply({"query": query, "columns": len(columns)})


def _session(ctx: CallContext, header: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    query = header_str(header, "query")
    return query, ctx.node.sessions.get(ctx.sender, _SESSION_PREFIX + query)


def _score_entities(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    _, state = _session(ctx, header)
    spec = state["spec"]
    entities: list[str] = state["entities"]
    if "job" in state:
        raise ConflictError("the query already ran")
    offset = header_int(header, "offset", 0, MAX_ENTITIES)
    count = header_int(header, "count", 1, ENTITY_CHUNK)
    if offset != len(entities):
        raise ConflictError(f"expected entities from offset {len(entities)}, got {offset}")
    if offset + count > spec["entities"]:
        raise ValidationError("more entities than the query declared")
    entities.extend(decode_ids(payload, count, spec["idKind"]))
    return Reply({"received": len(entities)})


def _missing_refusal(
    node: ComputeNode, missing: list[str], total: int, decision: int, what: str
) -> RefusedError:
    listed = missing[:_MISSING_LISTED]
    message = f"{len(missing)} of {total} entities {what} at {node.participant_id}" + (
        f" (first {_MISSING_LISTED} listed)" if len(missing) > len(listed) else ""
    )
    step = {
        "rule": "missing",
        "index": None,
        "rule_id": None,
        "left_operand": "entity",
        "operator": "isAllOf",
        "right_operand": "held",
        "seen": len(missing),
        "outcome": "violated",
        "blocking": True,
        "message": message,
        "refused_entities": listed,
    }
    return RefusedError(message, [step], participant=node.participant_id, decision_index=decision)


def _read(
    node: ComputeNode,
    state: dict[str, Any],
    entities: list[str],
    grant_dataset: Any,
    decision: int,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """One lookup of every entity; apply the missing rule. Returns (values, missing mask).

    A single lookup for the whole list (then cut into blocks by the caller): a source that is
    not cached is scanned once per query, never once per block.
    """
    spec = state["spec"]
    columns: list[str] = state["columns"]
    data: DataAccess | None = node.data
    if data is None:
        raise NotFoundError(f"{node.participant_id} holds no data")
    found, x = data.lookup(spec["dataset"], entities, columns)
    holes = np.isnan(x)
    mask = ~found | holes.any(axis=1)
    if not mask.any():
        return x, mask
    missing = [entities[i] for i in np.flatnonzero(mask)]
    if spec["missing"] == "fail":
        raise _missing_refusal(node, missing, len(entities), decision, "are not held")
    gaps = [bool(g) for g in np.asarray(holes.any(axis=0), dtype=bool)]
    table = grant_dataset.dataset.table
    defaults = [table.field(c).impute_default for c in columns]
    lacking = [c for c, d, g in zip(columns, defaults, gaps, strict=True) if g and d is None]
    if lacking:
        raise _missing_refusal(
            node,
            missing,
            len(entities),
            decision,
            f"are missing and column(s) {lacking} publish no imputeDefault",
        )
    fill = np.array([0.0 if d is None else d for d in defaults])
    x[holes] = np.broadcast_to(fill, x.shape)[holes]
    return x, mask


def _check_bound(values: FloatArray, bound: float, what: str, columns: Sequence[str]) -> None:
    """Refuse values beyond the query's declared bound (checked once over all rows)."""
    if not values.size:
        return
    largest = np.max(np.abs(values), axis=0)
    if float(np.max(largest)) > bound:
        if values.ndim == 2:
            worst = columns[int(np.argmax(largest))]
            raise ValidationError(f"column {worst!r} has values beyond the query's {what} {bound}")
        raise ValidationError(f"a partial logit exceeds the query's {what} {bound}")


def _score_run(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """Enforce, read every entity once, and reply with the receipt and the missing bitmap.

    The partials themselves are computed one block per call afterwards (``score.block``, or
    ``score.beaver`` for an interactive protocol), so no single call's time grows with the query
    (a million Paillier entities would outlast any request timeout in one call).
    """
    node = ctx.node
    query, state = _session(ctx, header)
    spec = state["spec"]
    entities: list[str] = state["entities"]
    side: ProviderSide = state["side"]
    if "job" in state:
        raise ConflictError(f"query {query!r} already ran")
    if len(entities) != spec["entities"]:
        raise ValidationError(f"{len(entities)} of {spec['entities']} entities received")
    state["job"] = None  # from here on the session cannot run again
    close = True
    try:
        roles_of = node.extras.get(ROLES_EXTRA)
        grant = authorize_use(
            node,
            UseRequest(
                query_id=query,
                analyst=ctx.sender,
                agreement_id=spec["agreement"],
                dataset_id=spec["dataset"],
                columns=tuple(state["columns"]),
                kind="score",
                purpose=spec["purpose"],
                protocol=spec["protocol"],
                entities=tuple(entities),
            ),
            roles=frozenset(roles_of(ctx.sender)) if roles_of is not None else frozenset(),
        )
        x, missing = _read(node, state, entities, grant.dataset, grant.decision_index)
        blocks = block_ranges(len(entities), spec["block"])
        job = ProviderJob(
            node, query, ctx.sender, spec["operator"], spec["contributors"], spec["mode"], blocks
        )
        if spec["mode"] == "analyst-held":
            _check_bound(x, spec["featureBound"], "featureBound", state["columns"])
            if not side.interactive:
                job.weights = side.load_weights(payload, len(state["columns"]))
            job.values = {b: x[start:stop] for b, (start, stop) in enumerate(blocks)}
        else:
            z = x @ np.array(list(state["weights"].values()), dtype=np.float64)
            _check_bound(z, spec["partialBound"], "partialBound", state["columns"])
            job.values = {b: z[start:stop] for b, (start, stop) in enumerate(blocks)}
        state["job"] = job
        close = False
        reply = {
            "query": query,
            "receipt": grant.receipt,
            "rows": len(entities),
            "missing": int(missing.sum()),
            **side.reply_extras(),
        }
        # Missing entities as one bit per entity in query order: 250 kB for two million.
        return Reply(reply, np.packbits(missing).tobytes())
    finally:
        if close:
            _close(ctx, query, side)


def _close(ctx: CallContext, query: str, side: ProviderSide) -> None:
    side.close()
    ctx.node.sessions.close(ctx.sender, _SESSION_PREFIX + query)


def _send(job: ProviderJob, block: int, count: int, payload: bytes) -> None:
    transport = job.node.transport
    if transport is None:
        raise ValidationError(f"{job.node.participant_id} has no transport to the operator")
    add_to_aggregate(
        transport,
        job.operator,
        query=job.query,
        analyst=job.analyst,
        contributors=job.contributors,
        block=block,
        count=count,
        payload=check_size(payload, "partial block"),
    )


def _job(
    ctx: CallContext, header: Mapping[str, Any], interactive: bool
) -> tuple[str, ProviderJob, ProviderSide, int, FloatArray]:
    """The query's job and block ``header.block``, claimed (each block is computed once)."""
    query, state = _session(ctx, header)
    job: ProviderJob | None = state.get("job")
    side: ProviderSide = state["side"]
    if job is None or side.interactive != interactive:
        what = "interactive rounds" if interactive else "blocks"
        raise ConflictError(f"query {query!r} is not waiting for {what}")
    block = header_int(header, "block", 0, len(job.blocks) - 1)
    try:
        values = job.claim(block)
    except KeyError:
        raise ConflictError(f"block {block} was already computed") from None
    return query, job, side, block, values


def _score_block(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """One block's partial, encrypted or masked, sent to the aggregator (non-interactive)."""
    query, job, side, block, values = _job(ctx, header, interactive=False)
    try:
        if job.mode == "analyst-held":
            partial = side.weighted_partial(job, block, values, job.weights)
        else:
            partial = side.plain_partial(job, block, values)
        _send(job, block, values.shape[0], partial)
    except BaseException:
        _close(ctx, query, side)  # a claimed block cannot run again: the query is over
        raise
    if job.complete(block):
        _close(ctx, query, side)
    return Reply({"query": query, "block": block})


def _score_beaver(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    query, job, side, block, values = _job(ctx, header, interactive=True)
    try:
        out = side.interact(job, block, values, payload)
    except BaseException:
        _close(ctx, query, side)  # a claimed block cannot run again: the query is over
        raise
    if job.complete(block):
        _close(ctx, query, side)
    return Reply({"query": query, "block": block}, out)


def register_provider(node: ComputeNode) -> None:
    """Register ``score.open|entities|run|block|beaver`` on a provider's node (every protocol)."""
    node.register("score.open", _score_open)
    node.register("score.entities", _score_entities)
    node.register("score.run", _score_run)
    node.register("score.block", _score_block)
    node.register("score.beaver", _score_beaver)


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
        entities: the entity list whose count and digest the entry must carry.
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
        "entities_sha256": entities_sha256 or entities_digest(entities),
    }
    if receipt.get("participant") != participant or event.kind != "query.use":
        raise VerificationError(f"receipt from {participant} is not a query.use of {participant}")
    wrong = [k for k, v in expected.items() if body.get(k) != v]
    if wrong:
        raise VerificationError(f"receipt from {participant} does not match the query: {wrong}")
    return body


def _missing_ids(provider: str, reply: Reply, entities: list[str]) -> list[str]:
    """The entities a provider reported missing (a bit per entity, in query order)."""
    count = reply.header.get("missing")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValidationError(f"{provider}: reply.missing is not a count")
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
    return x @ query.model.weights_of(analyst_id), missing


def _concurrency(transport: Transport) -> int:
    """How many calls ``transport`` may carry at once (``max_concurrency``; default 1).

    A transport that can be called from several threads (the connector's HTTP transport) says
    so; the in-memory twin does not, so tests see one deterministic sequence of messages.
    """
    value = getattr(transport, "max_concurrency", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


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
            header: dict[str, Any] = {
                "query": query.id,
                "protocol": query.protocol,
                "mode": query.mode,
                "purpose": query.purpose,
                "agreement": query.agreements[p],
                "dataset": query.datasets[p],
                "idKind": query.id_kind,
                "missing": query.missing,
                "operator": operator_id,
                "contributors": providers,
                "entities": len(entities),
                "block": blocks[0][1] - blocks[0][0],
                "featureBound": query.feature_bound,
                "partialBound": query.partial_bound,
                "params": params,
            }
            if analyst_held:
                header["columns"] = list(query.model.columns(p))
            else:
                header["model"] = query.model.id
            transport.call(p, "score.open", header, check_size(material, "material"))
            for start, stop, ids in uploads:
                transport.call(
                    p,
                    "score.entities",
                    {"query": query.id, "offset": start, "count": stop - start},
                    ids,
                )
            reply = transport.call(p, "score.run", {"query": query.id}, payloads.get(p, b""))
            receipt = reply.header.get("receipt")
            if not isinstance(receipt, dict):
                raise VerificationError(f"{p} returned no receipt")
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
            gone = _missing_ids(p, reply, entities)
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
                    transport.call(p, "score.block", {"query": query.id, "block": b})
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
            for b, (start, stop) in enumerate(blocks):
                sums[b] = side.decode(
                    b, stop - start, take_aggregate(transport, operator_id, query=query.id, block=b)
                )
            decode_s = time.perf_counter() - mark
        else:
            with ThreadPoolExecutor(workers + 1, thread_name_prefix="score") as pool:
                futures = {pool.submit(serve, p): p for p in providers}
                # The analyst's own partial needs nobody: it is read while the providers work.
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
                        start, stop = blocks[ready]
                        taken = time.perf_counter()
                        sums[ready] = side.decode(
                            ready,
                            stop - start,
                            take_aggregate(transport, operator_id, query=query.id, block=ready),
                        )
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
    if own_future is None:
        own, own_missing = _own_partial(query, analyst_id, analyst_data, entities, analyst_impute)
    else:
        own, own_missing = own_future.result()
    if own_missing:
        missing[analyst_id] = own_missing
    logits = query.model.intercept + np.concatenate([sums[b] for b in range(len(blocks))]) + own
    timings["total"] = time.perf_counter() - started
    return ScoreResult(
        query_id=query.id,
        entities=tuple(entities),
        logits=logits,
        outputs=query.model.apply_link(logits),
        missing={p: tuple(m) for p, m in missing.items() if m},
        receipts=receipts,
        timings=timings,
    )
