"""The provider's side of an aggregate: the ``stats.*`` operations it serves.

It checks the alignment, learns only the cohort size (to enforce ``minCohort`` itself), charges
epsilon after the policy allowed the release and before the column is read, and releases
encrypted or shared (noisy) statistics.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from crypto import ckks, paillier, sharing
from trusted_space.budget import (
    BudgetCheck,
    charge,
    check_budget,
    record_refusal,
)
from trusted_space.catalog import load_dataset
from trusted_space.compute import CallContext, ComputeNode
from trusted_space.enforcement import UseGrant, UseRequest, authorize_use
from trusted_space.errors import (
    ConflictError,
    LimitExceededError,
    NotFoundError,
    RefusedError,
    ValidationError,
)
from trusted_space.policy import TraceStep
from trusted_space.protocols._common import (
    crypto_errors,
    decode_ids,
    ring_from_bytes,
    ring_to_bytes,
)
from trusted_space.protocols._parts import receive_part, reply_part
from trusted_space.protocols.aggregate.bounds import NOISE_TAIL, laplace_noise
from trusted_space.protocols.aggregate.statistic import StatisticPlan, plan_for
from trusted_space.protocols.aggregate.wire import (
    MAX_MATERIAL,
    FloatArray,
    Ring,
    StatsEntities,
    StatsFetch,
    StatsOpened,
    StatsQuery,
    StatsReceived,
    StatsRef,
    StatsRelease,
    StatsReleased,
    StatsTotals,
    ckks_total,
    dealer_session,
    encode_ring,
    material_blocks,
    pack,
    unpack,
)
from trusted_space.protocols.align import (
    AlignedOrder,
    aligned_order,
    refuse_on_budget,
    sender_roles,
)
from trusted_space.protocols.operator import fetch_triple
from trusted_space.store import Transaction
from trusted_space.transport import Reply, Transport

__all__ = ["STATS_OPERATIONS", "register_aggregate"]

STATS_OPERATIONS: Final = (
    "stats.open",
    "stats.count",
    "stats.release",
    "stats.fetch",
    "stats.entities",
)
_MISSING_LISTED: Final = 1000
_RING_LIMIT: Final = 2.0**46
_SCAN_ROWS: Final = 100_000


def _ckks_target(preset: ckks.CkksPreset) -> float:
    """Largest |total| we let a CKKS result reach (an eighth of what it may without wrapping)."""
    return preset.result_bound / 8


def _divisor(worst: float, target: float) -> float:
    """A power of two bringing ``worst`` under ``target`` (1 when it already is)."""
    if worst <= target:
        return 1.0
    return float(2.0 ** math.ceil(math.log2(worst / target)))


# ----------------------------------------------------------------------------------------------
# Provider
# ----------------------------------------------------------------------------------------------


def _session_key(query: str, dataset: str) -> str:
    return f"stats/{query}/{dataset}"


def _values_in_order(node: ComputeNode, order: AlignedOrder, column: str) -> FloatArray:
    """The column's values in the provider's PSI-shuffled order (read by scanning)."""
    if node.data is None:
        raise NotFoundError(f"{node.participant_id} holds no data")
    position = {entity: j for j, entity in enumerate(order.ids)}
    values = np.full(len(order.ids), np.nan)
    for keys, chunk in node.data.scan(order.dataset_id, [column], chunk_rows=_SCAN_ROWS):
        for key, value in zip(keys, chunk[:, 0], strict=True):
            j = position.get(key)
            if j is not None:
                values[j] = value
    return values


def _authorize_release(
    ctx: CallContext,
    meta: Mapping[str, Any],
    *,
    count: int,
    entities: Sequence[str] = (),
    budget: bool = True,
) -> UseGrant:
    """The provider's policy for the release (``minCohort`` on the true count), then epsilon."""
    node = ctx.node
    grant = authorize_use(
        node,
        UseRequest(
            query_id=meta["query"],
            analyst=ctx.sender,
            agreement_id=meta["agreement"],
            dataset_id=meta["dataset"],
            columns=(meta["column"],),
            kind="aggregate",
            purpose=meta["purpose"],
            protocol=meta["protocol"],
            entities=tuple(entities),
            cohort_size=count,
            epsilon=meta["epsilon"],
        ),
        roles=sender_roles(node, ctx.sender),
    )
    if budget and meta["epsilon"] is not None:
        _charge(ctx, meta, grant)
    return grant


def _charge(ctx: CallContext, meta: Mapping[str, Any], grant: UseGrant) -> None:
    """Charge the release's epsilon to the member's account on the dataset, or refuse."""
    node = ctx.node
    index: int | None = None

    def check_now(tx: Transaction) -> BudgetCheck:
        return check_budget(
            tx,
            member=ctx.sender,
            dataset_id=meta["dataset"],
            epsilon=meta["epsilon"],
            policy_total=grant.epsilon_total,
            agreement_id=meta["agreement"],
        )

    with node.store.transaction() as tx:
        check = check_now(tx)
        if check.allowed and check.limit is not None:
            try:
                charge(
                    tx,
                    member=ctx.sender,
                    dataset_id=meta["dataset"],
                    epsilon=meta["epsilon"],
                    limit=check.limit,
                    query_id=meta["query"],
                    agreement_id=meta["agreement"],
                )
                return
            except LimitExceededError:
                check = check_now(tx)
        index = record_refusal(
            tx, check, query_id=meta["query"], purpose=meta["purpose"], at=node.clock()
        )
    raise RefusedError(
        check.message,
        [check.step().to_json()],
        participant=node.participant_id,
        decision_index=index,
    )


def _meta_from(ctx: CallContext, message: StatsQuery) -> tuple[dict[str, Any], StatisticPlan]:
    """Check an aggregate's parsed header at the provider (nothing of the data is read)."""
    node = ctx.node
    meta: dict[str, Any] = {
        "query": message.query,
        "agreement": message.agreement,
        "dataset": message.dataset,
        "column": message.column,
        "statistic": message.statistic,
        "protocol": message.protocol,
        "purpose": message.purpose,
        "epsilon": message.epsilon,
    }
    if meta["epsilon"] is not None:
        refuse_on_budget(
            node,
            analyst=ctx.sender,
            query_id=meta["query"],
            agreement_id=meta["agreement"],
            dataset_id=meta["dataset"],
            purpose=meta["purpose"],
            epsilon=meta["epsilon"],
        )
    with node.store.transaction(readonly=True) as tx:
        try:
            dataset = load_dataset(tx, meta["dataset"])
        except NotFoundError as exc:
            raise ValidationError(f"no dataset {meta['dataset']!r} here") from exc
        plan = plan_for(
            tx,
            dataset,
            meta["column"],
            meta["statistic"],
            list(message.bins),
            meta["epsilon"],
        )
    return meta, plan


class _ProviderStats:
    """A provider's state for one aggregate over a PSI cohort."""

    def __init__(self, meta: dict[str, Any], plan: StatisticPlan, order: AlignedOrder) -> None:
        self.meta = meta
        self.plan = plan
        self.order = order
        self.rows = len(order.ids)
        self.public_key: paillier.PaillierPublicKey | None = None
        self.indicator: Any = None
        self.context: ckks.PublicContext | None = None
        self.share: Ring | None = None
        self.mask: int | float | None = None
        self.released = False
        self.reply: bytes | None = None

    def load(self, material: bytes) -> None:
        protocol = self.meta["protocol"]
        n = self.rows
        if protocol == "paillier":
            key_bytes, indicator = unpack(material, 2)
            with crypto_errors("paillier indicator"):
                self.public_key = paillier.PaillierPublicKey.from_jwk(key_bytes)
                exponent = -paillier.DEFAULT_FRAC_BITS
                cts = paillier.CiphertextVector.load(indicator, self.public_key, exponent=exponent)
            if len(cts) != n:
                raise ValidationError(f"indicator of {len(cts)} values for {n} rows")
            self.indicator = cts
        elif protocol == "ckks":
            context_bytes, indicator = unpack(material, 2)
            with crypto_errors("ckks indicator"):
                self.context = ckks.PublicContext.load(context_bytes)
                vector = self.context.load_vector(indicator)
            if not self.context.has_galois_keys:
                raise ValidationError("the CKKS context needs rotation (Galois) keys")
            if vector.length != n or vector.replicated:
                raise ValidationError(f"indicator is not a vector of {n} values")
            self.indicator = vector
        else:
            (share,) = unpack(material, 1)
            self.share = ring_from_bytes(share, n)

    def masked_count(self) -> bytes:
        n = self.rows
        if self.meta["protocol"] == "paillier":
            if self.public_key is None:
                raise ConflictError("no indicator yet")
            with paillier.PaillierEngine(self.public_key, workers=0) as engine:
                bits = 2 * engine.codec.frac_bits
                mask = secrets.randbits(bits + n.bit_length() + 64)
                self.mask = mask
                total = engine.linear_combination(self.indicator, np.ones((1, n)))
                masked = engine.add(total, engine.encrypt_ints([mask], exponent=-bits))
            return bytes(masked.serialize())
        if self.meta["protocol"] == "ckks":
            if self.context is None:
                raise ConflictError("no indicator yet")
            divisor = _divisor(2.0 * n + 1, _ckks_target(self.context.preset))
            shift = secrets.randbelow(1 << 30) / (1 << 30) * n
            self.mask = shift
            vector = ckks_total(
                self.context, self.indicator, np.full(n, 1.0 / divisor), shift / divisor
            )
            self.meta["countDivisor"] = divisor
            return bytes(vector.serialize())
        raise ValidationError("the additive protocol has no count round")

    def unmask(self, value: str | float) -> int:
        """The count behind the analyst's ``value`` (parsed by :class:`StatsRelease`)."""
        n = self.rows
        protocol = self.meta["protocol"]
        if protocol == "paillier":
            if self.mask is None:
                raise ValidationError("header.count: expected the decrypted count as digits")
            unit = 1 << (2 * paillier.DEFAULT_FRAC_BITS)
            diff = int(value) - int(self.mask)
            if diff < 0 or diff % unit or diff // unit > n:
                raise ValidationError("header.count is not a count of this indicator")
            return diff // unit
        if protocol == "ckks":
            if self.mask is None:
                raise ValidationError("header.count: expected the decrypted count")
            divisor = float(self.meta["countDivisor"])
            raw = float(value) * divisor - float(self.mask)
            slack = 1e-5 * divisor + 2e-6 * (2 * n + 1) + 1e-6
            count = max(0, math.ceil(raw - slack))
            if not math.isfinite(raw) or raw < -0.5 - slack or count > n:
                raise ValidationError("header.count is not a count of this indicator")
            return min(count, n)
        if self.share is None:
            raise ValidationError("header.count: expected the analyst's share as digits")
        theirs = int(value)
        if theirs >= 1 << 64:
            raise ValidationError("header.count: not a ring element")
        total = (int(self.share.sum(dtype=np.uint64)) + theirs) % (1 << 64)
        if total > n:
            raise ValidationError("header.count is not a count of this indicator")
        return total

    def release(self, node: ComputeNode, transport: Transport | None, messages: bytes) -> bytes:
        """The encrypted or shared statistics (after authorisation and the budget)."""
        values = _values_in_order(node, self.order, self.meta["column"])
        rows = self.plan.features(values)
        noise = laplace_noise(self.plan.noise_scales())
        protocol = self.meta["protocol"]
        if protocol == "paillier":
            if self.public_key is None:  # pragma: no cover - loaded at open
                raise ConflictError("no indicator")
            with paillier.PaillierEngine(self.public_key, workers=0) as engine:
                bits = 2 * engine.codec.frac_bits
                totals = engine.linear_combination(self.indicator, rows)
                extra = [round(v * 2.0**bits) for v in noise]
                out = engine.add(totals, engine.encrypt_ints(extra, exponent=-bits))
            return bytes(out.serialize())
        if protocol == "ckks":
            if self.context is None:  # pragma: no cover - loaded at open
                raise ConflictError("no indicator")
            target = _ckks_target(self.context.preset)
            scales = self.plan.noise_scales()
            divisors = [
                _divisor(self.rows * m + NOISE_TAIL * b + 1.0, target)
                for m, b in zip(self.plan.magnitudes(), scales, strict=True)
            ]
            self.meta["divisors"] = divisors
            blobs = [
                ckks_total(
                    self.context, self.indicator, rows[k] / d, float(noise[k]) / d
                ).serialize()
                for k, d in enumerate(divisors)
            ]
            return pack(blobs)
        return self._additive(node, transport, rows, noise, messages)

    def _additive(
        self,
        node: ComputeNode,
        transport: Transport | None,
        rows: FloatArray,
        noise: FloatArray,
        messages: bytes,
    ) -> bytes:
        operator = node.operator
        if operator is None or transport is None:
            raise ValidationError(
                f"{node.participant_id} knows no operator to fetch Beaver triples from"
            )
        if self.share is None:  # pragma: no cover - loaded at open
            raise ConflictError("no indicator share")
        worst = self.rows * max(self.plan.magnitudes()) + NOISE_TAIL * max(
            [*self.plan.noise_scales(), 0.0]
        )
        if worst >= _RING_LIMIT:
            raise ValidationError("column bounds too large for the additive protocol's ring")
        x = encode_ring(rows.T)
        blocks = material_blocks(self.rows, rows.shape[0])
        theirs = unpack(messages, len(blocks))
        ledger = sharing.TripleLedger(1)
        mine: list[bytes] = []
        z = np.zeros(rows.shape[0], dtype=np.uint64)
        for (start, stop), raw in zip(blocks, theirs, strict=True):
            triple = fetch_triple(
                transport,
                operator,
                session=dealer_session(self.meta["query"], self.meta["dataset"]),
                batch=f"rows-{start}",
                parties=[self.order.analyst, node.participant_id],
                left=(1, stop - start),
                right=(stop - start, rows.shape[0]),
            )
            with crypto_errors("Beaver step"):
                message = sharing.beaver_mask(
                    self.share[start:stop].reshape(1, -1), x[start:stop], triple, ledger
                )
                other = sharing.BeaverMessage.from_bytes(raw)
                opening = sharing.beaver_open([other, message])
                z += sharing.beaver_finish(triple, opening).reshape(-1)
            mine.append(message.to_bytes())
        z += encode_ring(noise)
        return pack([pack(mine), ring_to_bytes(z)])


def _stats(ctx: CallContext, query: str, dataset: str) -> _ProviderStats:
    state = ctx.node.sessions.get(ctx.sender, _session_key(query, dataset))
    stats = state.get("stats")
    if not isinstance(stats, _ProviderStats):
        raise NotFoundError(f"no open aggregate for query {query!r}")
    return stats


def _stats_open(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    node = ctx.node
    ref = StatsRef.from_header(header)
    query, dataset = ref.query, ref.dataset
    state = node.sessions.open(ctx.sender, _session_key(query, dataset))
    if header.get("part") == 0:
        marker = object()
        if state.setdefault("owner", marker) is not marker:
            raise ConflictError(f"an aggregate of query {query!r} was already opened")
        order = aligned_order(node, ctx.sender, query, dataset)
        meta, plan = _meta_from(ctx, StatsQuery.from_header(header))
        if meta["agreement"] != order.agreement_id or meta["purpose"] != order.purpose:
            raise ValidationError("the aggregate names another agreement or purpose than its PSI")
        state["stats"] = _ProviderStats(meta, plan, order)
    stats = state.get("stats")
    if not isinstance(stats, _ProviderStats):
        raise ConflictError("aggregate parts before its first part")
    material = receive_part(state, "material", header, payload, max_total=MAX_MATERIAL)
    if material is None:
        return Reply(StatsReceived(header["part"] + 1).to_header())
    stats.load(material)
    return Reply(StatsOpened(stats.rows).to_header())


def _stats_count(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    ref = StatsRef.from_header(header)
    stats = _stats(ctx, ref.query, ref.dataset)
    if stats.indicator is None or stats.mask is not None:
        raise ConflictError("the count round runs once, after the indicator arrived")
    return Reply({}, stats.masked_count())


def _stats_release(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    node = ctx.node
    ref = StatsRef.from_header(header)
    state = node.sessions.get(ctx.sender, _session_key(ref.query, ref.dataset))
    stats = _stats(ctx, ref.query, ref.dataset)
    if stats.released:
        raise ConflictError("this aggregate was already released")
    messages = b""
    if stats.meta["protocol"] == "additive":
        whole = receive_part(state, "beaver", header, payload, max_total=MAX_MATERIAL)
        if whole is None:
            return Reply(StatsReceived(header["part"] + 1).to_header())
        messages = whole
    elif payload:
        raise ValidationError("stats.release takes no payload for this protocol")
    stats.released = True  # one attempt: a refused count cannot be retried with another value
    count = stats.unmask(StatsRelease.from_header(header, stats.meta["protocol"]).count)
    grant = _authorize_release(ctx, stats.meta, count=count)
    stats.reply = stats.release(node, node.transport, messages)
    divisors = stats.meta.get("divisors")
    released = StatsReleased(
        names=tuple(stats.plan.names),
        noise_scales=tuple(stats.plan.noise_scales()),
        count=count,
        receipt=grant.receipt,
        divisors=None if divisors is None else tuple(divisors),
    )
    return _serve(stats, 0, released.to_header())


def _serve(stats: _ProviderStats, offset: int, extras: Mapping[str, Any] | None = None) -> Reply:
    if stats.reply is None:
        raise ConflictError("nothing to fetch")
    reply = reply_part(stats.reply, offset, extras)
    if offset + len(reply.payload) >= len(stats.reply):
        stats.reply = None
    return reply


def _stats_fetch(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    message = StatsFetch.from_header(header)
    return _serve(_stats(ctx, message.query, message.dataset), message.offset)


def _missing_refusal(node: ComputeNode, missing: list[str], total: int, why: str) -> RefusedError:
    listed = missing[:_MISSING_LISTED]
    message = f"{len(missing)} of {total} entities {why} at {node.participant_id}"
    step = TraceStep(
        rule="missing",
        index=None,
        rule_id=None,
        left_operand="entity",
        operator="isAllOf",
        right_operand="held",
        seen=len(missing),
        outcome="violated",
        blocking=True,
        message=message,
        refused_entities=tuple(listed),
    )
    return RefusedError(message, [step.to_json()], participant=node.participant_id)


def _stats_entities(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    node = ctx.node
    ref = StatsRef.from_header(header)
    query, dataset = ref.query, ref.dataset
    state = node.sessions.open(ctx.sender, _session_key(query, dataset))
    if header.get("part") == 0:
        marker = object()
        if state.setdefault("owner", marker) is not marker:
            raise ConflictError(f"an aggregate of query {query!r} was already run")
    count = StatsEntities.declared_count(header)
    raw = receive_part(state, "entities", header, payload, max_total=count * 130)
    if raw is None:
        return Reply(StatsReceived(header["part"] + 1).to_header())
    message = StatsEntities.from_header(header)
    missing_rule = message.missing
    entities = decode_ids(raw, count, "opaque")
    if len(set(entities)) != len(entities):
        raise ValidationError("payload: entities must be distinct")
    meta, plan = _meta_from(ctx, message.aggregate)
    if node.data is None:
        raise NotFoundError(f"{node.participant_id} holds no data")
    # The cohort is the entities this provider holds, never the ids it was sent: nine made-up
    # valid USCCs imputed beside one real one are a cohort of one. So the keys are looked up
    # first (no column is read), then the use is authorised (consent per named entity,
    # minCohort on the held count), then epsilon is charged, and only then values are read.
    found, _ = node.data.lookup(meta["dataset"], entities, [])
    grant = _authorize_release(ctx, meta, count=int(found.sum()), entities=entities, budget=False)
    if not found.all() and missing_rule == "fail":
        absent = [entities[i] for i in np.flatnonzero(~found)]
        raise _missing_refusal(node, absent, len(entities), "are not held")
    if meta["epsilon"] is not None:
        _charge(ctx, meta, grant)
    _, values = node.data.lookup(meta["dataset"], entities, [meta["column"]])
    column = values[:, 0]
    missing = [entities[i] for i in np.flatnonzero(~found)]
    if missing_rule == "impute":
        default = grant.dataset.dataset.table.field(meta["column"]).impute_default
        holes = np.isnan(column)
        if holes.any() and default is None:
            raise _missing_refusal(
                node,
                [entities[i] for i in np.flatnonzero(holes)],
                len(entities),
                f"are missing and {meta['column']!r} publishes no imputeDefault",
            )
        column = np.where(holes, default if default is not None else 0.0, column)
    rows = plan.features(column)
    totals = rows.sum(axis=1) + laplace_noise(plan.noise_scales())
    reply = StatsTotals(
        names=tuple(plan.names),
        totals=tuple(float(v) for v in totals),
        noise_scales=tuple(plan.noise_scales()),
        count=len(entities),
        missing=tuple(missing[:_MISSING_LISTED]),
        receipt=grant.receipt,
    )
    return Reply(reply.to_header())


def register_aggregate(node: ComputeNode) -> None:
    """Register the provider's aggregate operations (:data:`STATS_OPERATIONS`) on ``node``.

    The alignment operations (:func:`~trusted_space.protocols.align.register_align`) are needed
    too for PSI cohorts; the additive protocol needs ``node.operator`` (the dealer this
    provider trusts) and ``node.transport``.
    """
    node.register("stats.open", _stats_open)
    node.register("stats.count", _stats_count)
    node.register("stats.release", _stats_release)
    node.register("stats.fetch", _stats_fetch)
    node.register("stats.entities", _stats_entities)


# ----------------------------------------------------------------------------------------------
