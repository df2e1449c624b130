"""The provider's side of a joint score: the ``score.*`` operations it serves.

The provider enforces before it reads (:func:`~trusted_space.enforcement.authorize_use` in
``score.run``), sends its partial to the operator, never to the analyst, and answers with its
receipt and the entities it does not hold. The wire limits it enforces (:data:`ENTITY_CHUNK`,
:data:`MAX_ENTITIES`) are the ones the analyst's driver sends by.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from trusted_space.compute import CallContext, ComputeNode, DataAccess
from trusted_space.enforcement import UseRequest, authorize_use, authorize_uses
from trusted_space.errors import (
    ConflictError,
    NotFoundError,
    RefusedError,
    ValidationError,
    problem_document,
)
from trusted_space.protocols._common import (
    block_ranges,
    check_size,
    decode_ids,
    header_str,
    ring_from_bytes,
)
from trusted_space.protocols.base import FloatArray, ProviderJob, ProviderSide
from trusted_space.protocols.operator import add_to_aggregate, fetch_and_triples, take_aggregate
from trusted_space.protocols.registry import get_score_protocol
from trusted_space.protocols.scaling import check_party_partials, unscaled_features
from trusted_space.protocols.score.band import COMPARE_OPERATION, Comparer, band_batch
from trusted_space.protocols.score.weights import PartyModel, load_party_weights
from trusted_space.protocols.score.wire import (
    ENTITY_CHUNK,
    MAX_ENTITIES,
    BlockDone,
    EntitiesReceived,
    ScoreBlock,
    ScoreEntities,
    ScoreOpen,
    ScoreOpened,
    ScoreRan,
    ScoreRun,
)
from trusted_space.queries.score import BAND_PROTOCOLS
from trusted_space.transport import Reply

__all__ = ["ENTITY_CHUNK", "MAX_ENTITIES", "register_provider"]

_MISSING_LISTED: Final = 1000
_SESSION_PREFIX: Final = "score/"
_BAND_PREFIX: Final = "band/"
# ----------------------------------------------------------------------------------------------
# Provider operations
# ----------------------------------------------------------------------------------------------


def _score_open(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    node = ctx.node
    spec = ScoreOpen.from_header(header)
    run_payload = b""
    if spec.run_bytes is not None:  # a served run: open and run in one call
        if spec.run_bytes > len(payload):
            raise ValidationError("header.runBytes: longer than the payload")
        cut = len(payload) - spec.run_bytes
        payload, run_payload = payload[:cut], payload[cut:]
    protocol = get_score_protocol(spec.protocol)
    if node.operator is not None and spec.operator != node.operator:
        raise ValidationError(f"header.operator: {spec.operator!r} is not this space's operator")
    if node.participant_id not in spec.contributors:
        raise ValidationError("header.contributors: does not include this provider")
    if spec.band_edges is not None:
        if spec.protocol not in BAND_PROTOCOLS:
            raise ValidationError(
                f"header.release: protocol {spec.protocol!r} opens the logit at the analyst; "
                f"a band is computed by {list(BAND_PROTOCOLS)} only"
            )
        if spec.comparer == ctx.sender:
            raise ValidationError("header.release.comparer: the analyst cannot compare")
    weights: dict[str, float] | None = None
    model: PartyModel | None = None
    if spec.columns is not None:
        columns = list(spec.columns)
    else:
        # Only the sender's own model: another member's weights of the same id are not found.
        model = load_party_weights(node.store, ctx.sender, spec.model or "")
        weights = model.weights
        columns = list(weights)
    side = protocol.provider(spec.mode, spec.params, payload, workers=node.score_workers)
    state = node.sessions.open(ctx.sender, _SESSION_PREFIX + spec.query)
    if state:
        side.close()
        raise ConflictError(f"query {spec.query!r} is already open here")
    state.update(
        {
            "spec": spec,
            "side": side,
            "columns": columns,
            "weights": weights,
            "model": model,
            "entities": list(spec.ids or ()),
        }
    )
    if spec.run_bytes is not None:
        return _score_run(ctx, ScoreRun(spec.query).to_header(), run_payload)
    return Reply(ScoreOpened(spec.query, len(columns)).to_header())


def _session(ctx: CallContext, query: str) -> dict[str, Any]:
    return ctx.node.sessions.get(ctx.sender, _SESSION_PREFIX + query)


def _score_entities(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    message = ScoreEntities.from_header(header)
    state = _session(ctx, message.query)
    spec: ScoreOpen = state["spec"]
    entities: list[str] = state["entities"]
    if "job" in state:
        raise ConflictError("the query already ran")
    if message.offset != len(entities):
        raise ConflictError(f"expected entities from offset {len(entities)}, got {message.offset}")
    if message.offset + message.count > spec.entities:
        raise ValidationError("more entities than the query declared")
    entities.extend(decode_ids(payload, message.count, spec.id_kind))
    return Reply(EntitiesReceived(len(entities)).to_header())


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


def _lookup(
    node: ComputeNode, state: dict[str, Any], entities: list[str]
) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    """One lookup of every entity: (found mask, values with NaN where a cell is empty)."""
    spec: ScoreOpen = state["spec"]
    data: DataAccess | None = node.data
    if data is None:
        raise NotFoundError(f"{node.participant_id} holds no data")
    return data.lookup(spec.dataset, entities, state["columns"])


def _fill(
    node: ComputeNode,
    state: dict[str, Any],
    entities: list[str],
    looked_up: tuple[npt.NDArray[np.bool_], FloatArray],
    grant_dataset: Any,
    decision: int,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Apply the missing rule to one use's rows (imputing in place). Returns (values, mask).

    Raises:
        RefusedError: an entity is missing and the rule is ``fail``, or a column with gaps
            publishes no ``imputeDefault``.
    """
    spec: ScoreOpen = state["spec"]
    columns: list[str] = state["columns"]
    found, x = looked_up
    holes = np.isnan(x)
    mask = ~found | holes.any(axis=1)
    if not mask.any():
        return x, mask
    missing = [entities[i] for i in np.flatnonzero(mask)]
    if spec.missing == "fail":
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
    looked_up = _lookup(node, state, entities)
    return _fill(node, state, entities, looked_up, grant_dataset, decision)


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


def _model_fields(spec: ScoreOpen, model: PartyModel | None) -> dict[str, Any]:
    """What the enforcement point checks and records of the weights this score applies."""
    if model is None:
        return {"model": "analyst-held"}
    return {
        "model": model.source,
        "model_id": model.model_id,
        "model_sha256": model.sha256,
        "model_stats": model.stats,
    }


def _prepare(spec: ScoreOpen, state: dict[str, Any], published: Any, x: FloatArray) -> FloatArray:
    """What the blocks compute on: scaled features (analyst-held) or partial logits (party-held).

    Raises:
        ValidationError: a value beyond its column's declared range (naming the column).
    """
    columns: list[str] = state["columns"]
    table = published.dataset.table
    declared = {c: table.field(c).bound for c in columns}
    if spec.mode == "analyst-held":
        if spec.scales is None:  # scales come from the catalog; an analyst must send them
            raise ValidationError(
                "an analyst-held score carries each column's scale (header.scales)"
            )
        return unscaled_features(x, columns, spec.scales, declared)
    check_party_partials(x, state["weights"], declared, spec.partial_bound)
    z = x @ np.array(list(state["weights"].values()), dtype=np.float64)
    _check_bound(z, spec.partial_bound, "partialBound", columns)
    return z


def _served_values(
    ctx: CallContext,
    state: dict[str, Any],
    requests: Sequence[tuple[str, int]],
) -> tuple[FloatArray, npt.NDArray[np.bool_], dict[str, Any], dict[str, Any]]:
    """A served run's values: every request authorised and read on its own, in one commit.

    Returns the values (a refused request's rows are zero), the missing mask, the receipts of
    the allowed requests and the problem documents of the refused ones. A request refused by
    the policy, lacking an entity (``missing: fail``) or holding a value beyond its column's
    range is refused alone; the others go on.
    """
    node = ctx.node
    spec: ScoreOpen = state["spec"]
    entities: list[str] = state["entities"]
    spans: dict[str, tuple[int, int]] = {}
    start = 0
    for rid, count in requests:
        spans[rid] = (start, start + count)
        start += count
    state["spans"] = spans
    outcomes = authorize_uses(
        node,
        [
            UseRequest(
                query_id=rid,
                analyst=ctx.sender,
                agreement_id=spec.agreement,
                dataset_id=spec.dataset,
                columns=tuple(state["columns"]),
                kind="score",
                purpose=spec.purpose,
                protocol=spec.protocol,
                entities=tuple(entities[a:b]),
                **_model_fields(spec, state["model"]),
            )
            for rid, (a, b) in spans.items()
        ],
        roles=node.sender_roles(ctx.sender),
    )
    width = () if spec.mode == "party-held" else (len(state["columns"]),)
    values: FloatArray = np.zeros((len(entities), *width))
    missing = np.zeros(len(entities), dtype=bool)
    uses: dict[str, Any] = {}
    refused: dict[str, Any] = {}
    # One lookup for the rows of every allowed use (a refused use's rows are never read).
    allowed = [
        (a, b)
        for (a, b), o in zip(spans.values(), outcomes, strict=True)
        if not isinstance(o, RefusedError)
    ]
    rows = [entities[i] for a, b in allowed for i in range(a, b)]
    found = np.zeros(0, dtype=bool)
    looked: FloatArray = np.zeros((0, len(state["columns"])))
    unreadable: ValidationError | None = None
    try:
        if rows:
            found, looked = _lookup(node, state, rows)
    except ValidationError as exc:  # refuses every use that needed the rows, as one by one
        unreadable = exc
    first = 0  # the current use's first row in the lookup
    for (rid, (a, b)), outcome in zip(spans.items(), outcomes, strict=True):
        try:
            if isinstance(outcome, RefusedError):
                raise outcome
            if unreadable is not None:
                raise unreadable
            lo, first = first, first + (b - a)
            x, gone = _fill(
                node,
                state,
                entities[a:b],
                (found[lo:first], looked[lo:first]),
                outcome.dataset,
                outcome.decision_index,
            )
            values[a:b] = _prepare(spec, state, outcome.dataset, x)
        except (RefusedError, ValidationError) as exc:
            refused[rid] = problem_document(exc)
            continue
        missing[a:b] = gone
        uses[rid] = outcome.receipt
    return values, missing, uses, refused


def _score_run(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """Enforce, read every entity once, and reply with the receipt and the missing bitmap.

    The partials themselves are computed one block per call afterwards (``score.block``, or
    ``score.beaver`` for an interactive protocol), so no single call's time grows with the query
    (a million Paillier entities would outlast any request timeout in one call).
    """
    node = ctx.node
    query = ScoreRun.from_header(header).query
    state = _session(ctx, query)
    spec: ScoreOpen = state["spec"]
    entities: list[str] = state["entities"]
    side: ProviderSide = state["side"]
    if "job" in state:
        raise ConflictError(f"query {query!r} already ran")
    if len(entities) != spec.entities:
        raise ValidationError(f"{len(entities)} of {spec.entities} entities received")
    state["job"] = None  # from here on the session cannot run again
    close = True
    try:
        if spec.requests is not None:
            served = _served_run(ctx, state, payload)
            close = False
            return served
        grant = authorize_use(
            node,
            UseRequest(
                query_id=query,
                analyst=ctx.sender,
                agreement_id=spec.agreement,
                dataset_id=spec.dataset,
                columns=tuple(state["columns"]),
                kind="score",
                purpose=spec.purpose,
                protocol=spec.protocol,
                entities=tuple(entities),
                **_model_fields(spec, state["model"]),
                release=spec.release,
                bands=None if spec.band_edges is None else len(spec.band_edges) + 1,
            ),
            roles=node.sender_roles(ctx.sender),
        )
        x, missing = _read(node, state, entities, grant.dataset, grant.decision_index)
        blocks = block_ranges(len(entities), spec.block)
        job = ProviderJob(
            node,
            query,
            ctx.sender,
            spec.operator,
            list(spec.contributors),
            spec.mode,
            blocks,
            recipient=spec.comparer,
        )
        if spec.comparer == node.participant_id:
            _open_band(ctx, spec, blocks)
        values = _prepare(spec, state, grant.dataset, x)
        if spec.mode == "analyst-held" and not side.interactive:
            job.weights = side.load_weights(payload, len(state["columns"]))
        job.values = {b: values[start:stop] for b, (start, stop) in enumerate(blocks)}
        state["job"] = job
        close = False
        reply = ScoreRan(
            query=query,
            receipt=grant.receipt,
            rows=len(entities),
            missing=int(missing.sum()),
            extras=side.reply_extras(),
        )
        # Missing entities as one bit per entity in query order: 250 kB for two million.
        return Reply(reply.to_header(), np.packbits(missing).tobytes())
    finally:
        if close:
            _close(ctx, query, side)


def _served_run(ctx: CallContext, state: dict[str, Any], payload: bytes) -> Reply:
    """``score.run`` of a served run (``ScoreOpen.requests``): a use per request."""
    spec: ScoreOpen = state["spec"]
    side: ProviderSide = state["side"]
    values, missing, uses, refused = _served_values(ctx, state, spec.requests or ())
    blocks = block_ranges(len(values), spec.block)
    job = ProviderJob(
        ctx.node,
        spec.query,
        ctx.sender,
        spec.operator,
        list(spec.contributors),
        spec.mode,
        blocks,
    )
    if spec.mode == "analyst-held" and not side.interactive:
        job.weights = side.load_weights(payload, len(state["columns"]))
    job.values = {b: values[start:stop] for b, (start, stop) in enumerate(blocks)}
    state["job"] = job
    reply = ScoreRan(
        query=spec.query,
        receipt={},
        rows=len(values),
        missing=int(missing.sum()),
        extras=side.reply_extras(),
        uses=uses,
        refused=refused,
    )
    return Reply(reply.to_header(), np.packbits(missing).tobytes())


def _skip(state: dict[str, Any], message: ScoreBlock, start: int, values: FloatArray) -> None:
    """Zero the rows of the requests the analyst skips (refused at another provider)."""
    spans: dict[str, tuple[int, int]] = state.get("spans", {})
    for rid in message.skip:
        if rid not in spans:
            raise ValidationError(f"header.skip: no request {rid!r} in this run")
        a, b = spans[rid]
        lo, hi = max(a - start, 0), min(b - start, values.shape[0])
        if lo < hi:
            values[lo:hi] = 0.0


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
        recipient=job.recipient,
    )


def _job(
    ctx: CallContext, header: Mapping[str, Any], interactive: bool
) -> tuple[str, ProviderJob, ProviderSide, int, FloatArray]:
    """The query's job and block ``header.block``, claimed (each block is computed once)."""
    query = header_str(header, "query")
    state = _session(ctx, query)
    job: ProviderJob | None = state.get("job")
    side: ProviderSide = state["side"]
    if job is None or side.interactive != interactive:
        what = "interactive rounds" if interactive else "blocks"
        raise ConflictError(f"query {query!r} is not waiting for {what}")
    message = ScoreBlock.from_header(header, len(job.blocks))
    block = message.block
    try:
        values = job.claim(block)
    except KeyError:
        raise ConflictError(f"block {block} was already computed") from None
    _skip(state, message, job.blocks[block][0], values)
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
    return Reply(BlockDone(query, block).to_header())


def _score_beaver(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    query, job, side, block, values = _job(ctx, header, interactive=True)
    try:
        out = side.interact(job, block, values, payload)
    except BaseException:
        _close(ctx, query, side)  # a claimed block cannot run again: the query is over
        raise
    if job.complete(block):
        _close(ctx, query, side)
    return Reply(BlockDone(query, block).to_header(), out)


def _open_band(ctx: CallContext, spec: ScoreOpen, blocks: list[tuple[int, int]]) -> None:
    """As the comparer of a band release: wait for the analyst's comparisons, block by block."""
    state = ctx.node.sessions.open(ctx.sender, _BAND_PREFIX + spec.query)
    if state:
        raise ConflictError(f"query {spec.query!r} is already comparing here")
    edges = len(spec.band_edges or ())
    state.update({"spec": spec, "blocks": blocks, "edges": edges, "running": {}, "finished": set()})
    state["lock"] = threading.Lock()


def _score_compare(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """``score.compare``: one exchange of a block's comparison (the comparer of a band release).

    The first exchange of a block takes the block's sum from the aggregator — the comparer's
    share of the logit, handed to it and to nobody else — and its triples from the dealer.
    """
    node = ctx.node
    query = header_str(header, "query")
    state = ctx.node.sessions.get(ctx.sender, _BAND_PREFIX + query)
    spec: ScoreOpen = state["spec"]
    blocks: list[tuple[int, int]] = state["blocks"]
    block = ScoreBlock.from_header(header, len(blocks)).block
    try:
        with state["lock"]:
            if block in state["finished"]:
                raise ConflictError(f"block {block} was already compared")
            comparer: Comparer | None = state["running"].get(block)
            if comparer is None:
                if node.transport is None:
                    raise ValidationError(f"{node.participant_id} has no transport")
                start, stop = blocks[block]
                rows = stop - start
                total = ring_from_bytes(
                    take_aggregate(
                        node.transport, spec.operator, query=query, block=block, analyst=ctx.sender
                    ),
                    rows,
                )
                triples = fetch_and_triples(
                    node.transport,
                    spec.operator,
                    session=query,
                    batch=band_batch(block),
                    parties=(ctx.sender, node.participant_id),
                    values=rows * state["edges"],
                )
                mine = np.subtract(np.uint64(0), total, dtype=np.uint64)  # a share of -z
                share = np.repeat(mine[:, None], state["edges"], axis=1)
                comparer = Comparer(share, triples)
                state["running"][block] = comparer
        out, finished = comparer.answer(payload)
    except BaseException:
        ctx.node.sessions.close(ctx.sender, _BAND_PREFIX + query)  # fail closed
        raise
    if finished:
        with state["lock"]:
            state["running"].pop(block, None)
            state["finished"].add(block)
            if len(state["finished"]) == len(blocks):
                ctx.node.sessions.close(ctx.sender, _BAND_PREFIX + query)
    return Reply(BlockDone(query, block).to_header(), out)


def register_provider(node: ComputeNode) -> None:
    """Register ``score.open|entities|run|block|beaver|compare`` on a provider's node."""
    node.register("score.open", _score_open)
    node.register("score.entities", _score_entities)
    node.register("score.run", _score_run)
    node.register("score.block", _score_block)
    node.register("score.beaver", _score_beaver)
    node.register(COMPARE_OPERATION, _score_compare)
