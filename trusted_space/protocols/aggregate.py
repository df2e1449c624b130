"""Aggregates of one provider column over an analyst's cohort: sum, count, mean, histogram.

Why: regulators and banks want statistics over a group of enterprises (their applicants, their
portfolio) computed from a department's records, without the department learning *which*
enterprises form the group and without the analyst seeing any record. The cohort is aligned by PSI
first (:mod:`trusted_space.protocols.align`): the provider keeps all its ids in a shuffled order,
the analyst learns the positions of its matched ids in that order and builds a 0/1 **indicator**
over it. Every statistic is linear in the indicator ``s``::

    count = Σ s_i·p_i           (p_i = 1 where the value is present)
    sum   = Σ s_i·clip(v_i)·p_i (clipped to the column's published bounds)
    mean  = sum / count
    hist  = Σ s_i·[v_i in bin k], per bin (numpy.histogram's bins: the last one is closed)

so the provider computes them over *all* its rows against an indicator it cannot read:

- ``paillier``: the analyst sends ``E(s_i)`` under its own ≥ 2048-bit key; the provider returns
  ``Π E(s_i)^{x_ik} = E(Σ s_i·x_ik)`` per statistic (fixed exponent ``-2f``, obfuscated);
- ``ckks``: the analyst sends ``E(s)`` packed in slots and a public context with rotation keys
  (no secret key); the provider multiplies by its plaintext column, adds a fresh encryption (its
  noise, or zero: re-randomisation) and sums the slots; results are rounded at decryption;
- ``additive``: the analyst splits ``s = s_A + s_P`` over Z_2^64 and sends ``s_P`` (uniform); the
  inner products ``⟨s, X⟩`` are computed with Beaver matrix triples from the operator (dealer),
  the provider's values in fixed point (``f = 16``).

Message flow (operations on the provider, :func:`register_aggregate`)::

    analyst                                                      provider
    (align.*: PSI, the provider's first use, see align.py)
    stats.open     {query, agreement, dataset, column, statistic, bins, protocol, purpose,
                    epsilon?, operator?} + [public key | context, indicator], in parts
                   ──────────▶ alignment found for this analyst & query; budget checked; bounds
    stats.count    (paillier, ckks) ──▶ E(count + r) with a random mask r it keeps
                   ◀── ciphertext            (the analyst decrypts: count + r)
    stats.release  {count: count + r | the analyst's share of count} (+ Beaver messages, additive)
                   ──────────▶ count = (count + r) - r; authorize_use(cohort_size=count):
                               minCohort, purpose, ... refused → 403 + trace, nothing released;
                               epsilon charged (hard limit); only then the column is read
                   ◀── encrypted / shared statistics (+ Laplace noise under encryption),
                       noise scales, receipt             (large replies fetched by stats.fetch)
    stats.entities (explicit ids, in parts) ──▶ the same checks; the provider sees the ids,
                   looks them up and releases the (noisy) statistics in plaintext

What each party learns (semi-honest, non-colluding; DESIGN §10):

* the **provider** learns the number of analyst ids (PSI), the cohort *size* (needed to enforce
  ``minCohort`` itself) and the statistic asked for; never which rows form the cohort: it sees
  Paillier or CKKS ciphertexts, or a uniformly random share, of the indicator;
* the **analyst** learns the statistic (with noise when asked), nothing per row: it decrypts one
  value per statistic (Paillier: the ciphertext holds only the sum; CKKS: every slot holds the
  same noisy total; additive: the provider's share of the total only);
* the **operator** (additive only) deals triples and sees nothing else.

minCohort and the count mask. The provider evaluates ``minCohort`` with ``cohort_size = count``
from the very indicator it will aggregate (binding the decision to the computation), so it must
learn the count: it sends ``E(count + r)`` (additive: it holds ``Σ s_P`` and receives the
analyst's ``Σ s_A``), the analyst decrypts and returns ``count + r``, the provider subtracts ``r``.
The analyst knows the count anyway (it built the indicator); the mask keeps the decryption from
being a general decryption oracle for whatever the provider computed. Semi-honest: an analyst
that returns a wrong count (or a non-0/1 indicator) is outside the model; the Paillier path
checks that the value is a multiple of the fixed-point unit and at most the table size, and CKKS
takes a *lower* bound of the count (exact below ~10^5 rows; never more than the true count).

Noise and budget. With ``epsilon``, the provider adds Laplace noise of scale
``sensitivity / epsilon`` to each released value *under encryption* (``E(sum)·E(noise)``;
additive: to its share), drawn from a numpy ``Generator`` seeded by the OS: sensitivity 1 for a
count and for a histogram (one row changes one bin), ``max(|lo|, |hi|)`` for a sum; a mean spends
half of epsilon on each of sum and count. Noise is clamped at 64 scales (probability e^-64) so
fixed-point bounds hold. Epsilon is charged against the agreement's budget
(:mod:`trusted_space.budget`) after the policy allowed the release and before the column is read;
a query that does not fit is refused with a trace.

Explicit entities (``stats.entities``): the provider sees the ids (consent per entity applies),
authorises the use with ``cohort_size`` = their number, looks up the keys, applies the missing
rule — ``fail`` refuses listing the ids it does not hold, ``impute`` uses the column's published
``imputeDefault`` (and refuses if there is none) — charges epsilon, reads the values and releases
the (noisy) statistics in plaintext: there is nothing to hide from a provider that knows the
cohort. A null cell is not a value: every statistic ignores it (as in the cohort path, and as
SQL aggregates do) unless ``impute`` fills it.

Column bounds are a provider-side setting (:func:`set_column_bounds`), needed for sums and means:
they clip values, give the sensitivity and size the fixed-point/CKKS ranges.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from crypto import ckks, paillier, sharing
from crypto.fixedpoint import FixedPoint
from crypto.psi import MAX_SET_SIZE
from trusted_space.budget import charge, check_budget, from_micro, record_refusal, to_micro
from trusted_space.catalog import PublishedDataset, load_dataset
from trusted_space.compute import CallContext, ComputeNode
from trusted_space.enforcement import UseGrant, UseRequest, authorize_use
from trusted_space.errors import (
    ConflictError,
    LimitExceededError,
    NotFoundError,
    RefusedError,
    ValidationError,
)
from trusted_space.policy import PROTOCOLS, TraceStep
from trusted_space.protocols._common import (
    crypto_errors,
    decode_ids,
    encode_ids,
    header_int,
    header_str,
    ring_from_bytes,
    ring_to_bytes,
)
from trusted_space.protocols._parts import fetch_rest, receive_part, reply_part, send_in_parts
from trusted_space.protocols.align import (
    AlignedOrder,
    Alignment,
    align,
    aligned_order,
    check_receipt,
    refuse_on_budget,
    sender_roles,
)
from trusted_space.protocols.operator import fetch_triple
from trusted_space.protocols.score import OPERATOR_EXTRA
from trusted_space.queries.aggregate import (
    MAX_BINS,
    STATISTICS,
    AggregateQuery,
    AggregateResult,
    check_bins,
    check_statistic,
)
from trusted_space.queries.common import MISSING_RULES
from trusted_space.store import Transaction
from trusted_space.transport import Reply, Transport

__all__ = [
    "BOUNDS_NAMESPACE",
    "MAX_BINS",
    "NOISE_TAIL",
    "RING_FRAC_BITS",
    "STATISTICS",
    "STATS_OPERATIONS",
    "AggregateQuery",
    "AggregateResult",
    "column_bounds",
    "laplace_noise",
    "register_aggregate",
    "run_aggregate",
    "set_column_bounds",
]

FloatArray = npt.NDArray[np.float64]
Ring = npt.NDArray[np.uint64]

STATS_OPERATIONS: Final = (
    "stats.open",
    "stats.count",
    "stats.release",
    "stats.fetch",
    "stats.entities",
)
BOUNDS_NAMESPACE: Final = "aggregate.bounds"
"""Provider store namespace of published column bounds (key: dataset id)."""
NOISE_TAIL: Final = 64.0
"""Laplace noise is clamped at this many scales (P[|X| > 64 b] = e^-64)."""
RING_FRAC_BITS: Final = 16
"""Fixed-point fractional bits of the provider's values in the additive protocol."""
_MISSING_LISTED: Final = 1000
_RING_LIMIT: Final = 2.0**46
_SCAN_ROWS: Final = 100_000
_MAX_MATERIAL: Final = 1 << 36


# ----------------------------------------------------------------------------------------------
# Provider settings: published column bounds
# ----------------------------------------------------------------------------------------------


def set_column_bounds(
    tx: Transaction, dataset_id: str, bounds: Mapping[str, tuple[float, float]]
) -> None:
    """Publish, at this provider, ``[lo, hi]`` for columns of a dataset (replaces the previous).

    Values are clipped to them before a sum or mean, and ``max(|lo|, |hi|)`` is the sensitivity
    that calibrates the noise.

    Raises:
        ValidationError: a bound that is not finite or ``lo > hi``.
    """
    doc: dict[str, list[float]] = {}
    for column, pair in bounds.items():
        try:
            lo, hi = (float(v) for v in pair)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"bounds of {column!r}: expected (lo, hi)") from exc
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValidationError(f"bounds of {column!r}: need finite lo <= hi")
        doc[column] = [lo, hi]
    tx.put(BOUNDS_NAMESPACE, dataset_id, {"columns": doc})


def column_bounds(tx: Transaction, dataset_id: str) -> dict[str, tuple[float, float]]:
    """The bounds published for a dataset's columns (empty when none)."""
    stored = tx.get(BOUNDS_NAMESPACE, dataset_id)
    if stored is None:
        return {}
    return {c: (float(v[0]), float(v[1])) for c, v in stored.body["columns"].items()}


def laplace_noise(scales: Sequence[float], rng: np.random.Generator | None = None) -> FloatArray:
    """Laplace noise of the given scales, clamped at :data:`NOISE_TAIL` scales.

    The generator is seeded from the OS (``numpy.random.default_rng()``) unless one is given
    (tests only).
    """
    generator = rng if rng is not None else np.random.default_rng()
    b = np.asarray(scales, dtype=np.float64)
    draw = generator.laplace(0.0, 1.0, size=b.shape)
    return np.clip(draw, -NOISE_TAIL, NOISE_TAIL) * b


# ----------------------------------------------------------------------------------------------
# The statistic, as rows over the provider's table (shared by every protocol)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Which rows a statistic releases, their magnitudes and their noise."""

    statistic: str
    bins: tuple[float, ...]
    bounds: tuple[float, float] | None
    epsilon: float | None

    @property
    def names(self) -> list[str]:
        if self.statistic == "histogram":
            return [f"bin{k}" for k in range(len(self.bins) - 1)]
        return {"count": ["count"], "sum": ["sum"], "mean": ["sum", "count"]}[self.statistic]

    @property
    def bound(self) -> float:
        if self.bounds is None:
            return 1.0
        return max(abs(self.bounds[0]), abs(self.bounds[1]), 1e-300)

    def magnitudes(self) -> list[float]:
        """Largest |entry| of each released row."""
        return [self.bound if n == "sum" else 1.0 for n in self.names]

    def noise_scales(self) -> list[float]:
        if self.epsilon is None:
            return [0.0] * len(self.names)
        share = self.epsilon / 2 if self.statistic == "mean" else self.epsilon
        return [m / share for m in self.magnitudes()]

    def features(self, values: FloatArray) -> FloatArray:
        """The released rows over the table: shape ``(len(names), n)``."""
        present = ~np.isnan(values)
        rows: list[FloatArray] = []
        for name in self.names:
            if name == "count":
                rows.append(present.astype(np.float64))
            elif name == "sum":
                if self.bounds is None:  # pragma: no cover - checked at open
                    raise ValidationError("a sum needs published bounds")
                clipped = np.clip(np.where(present, values, 0.0), *self.bounds)
                rows.append(np.where(present, clipped, 0.0))
        if self.statistic == "histogram":
            edges = np.asarray(self.bins)
            index = np.searchsorted(edges, values, side="right") - 1
            index = np.where(values == edges[-1], len(edges) - 2, index)
            inside = present & (index >= 0) & (index < len(edges) - 1)
            for k in range(len(edges) - 1):
                rows.append((inside & (index == k)).astype(np.float64))
        return np.vstack(rows) if rows else np.zeros((0, values.shape[0]))

    def finish(self, totals: Sequence[float]) -> tuple[float | None, tuple[float, ...]]:
        """The analyst's value (or histogram counts) from the released totals."""
        t = [float(v) for v in totals]
        if self.statistic == "histogram":
            return None, tuple(t)
        if self.statistic == "mean":
            return (t[0] / t[1] if t[1] > 0 else math.nan), ()
        return t[0], ()


def _plan_for(
    tx: Transaction, dataset: PublishedDataset, column: str, statistic: str, bins: Any, eps: Any
) -> _Plan:
    """Check the column and statistic at the provider; bounds come from its own setting."""
    if column == dataset.dataset.key_column or column not in {
        f.name for f in dataset.dataset.table.fields
    }:
        raise ValidationError(f"dataset {dataset.dataset.id!r} has no value column {column!r}")
    edges = check_bins(bins if isinstance(bins, list) else [], statistic)
    bounds = column_bounds(tx, dataset.dataset.id).get(column)
    if statistic in ("sum", "mean") and bounds is None:
        raise ValidationError(
            f"column {column!r} has no published bounds at this provider; a {statistic} needs "
            "them (clipping and sensitivity)"
        )
    epsilon = None if eps is None else from_micro(to_micro(eps))
    return _Plan(statistic, edges, bounds, epsilon)


# ----------------------------------------------------------------------------------------------
# Wire helpers
# ----------------------------------------------------------------------------------------------


def _pack(blobs: Sequence[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(8, "big") + b for b in blobs)


def _unpack(data: bytes, count: int) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 8 > len(data):
            raise ValidationError("payload is truncated")
        size = int.from_bytes(data[offset : offset + 8], "big")
        offset += 8
        if offset + size > len(data):
            raise ValidationError("payload is truncated")
        out.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise ValidationError("payload has trailing bytes")
    return out


def _ckks_target(preset: ckks.CkksPreset) -> float:
    """Largest |total| we let a CKKS result reach (an eighth of what it may without wrapping)."""
    return preset.result_bound / 8


def _divisor(worst: float, target: float) -> float:
    """A power of two bringing ``worst`` under ``target`` (1 when it already is)."""
    if worst <= target:
        return 1.0
    return float(2.0 ** math.ceil(math.log2(worst / target)))


def _ckks_total(
    context: ckks.PublicContext, indicator: ckks.EncryptedVector, row: FloatArray, extra: float
) -> ckks.EncryptedVector:
    """``Σ s_i·row_i + extra`` in every slot of one ciphertext (a vector of length 1).

    ``extra`` (noise or mask) enters through a *fresh* encryption added to every chunk, which
    also re-randomises the result (the analyst knows the randomness of its own indicator
    ciphertexts). The slots are summed by rotations *after* that, so every slot holds the same
    noisy value: decrypting the other slots with the raw secret key reveals nothing more.
    """
    with crypto_errors("ckks aggregate"):
        product = ckks.mul_plain(indicator, row)
        fresh = np.zeros(indicator.length)
        fresh[0] = extra
        mixed = ckks.add(product, context.encrypt(fresh))
        return ckks.sum_slots(context, mixed)


# ----------------------------------------------------------------------------------------------
# Provider
# ----------------------------------------------------------------------------------------------


def _session_key(query: str, dataset: str) -> str:
    return f"stats/{query}/{dataset}"


def _header_epsilon(header: Mapping[str, Any]) -> float | None:
    value = header.get("epsilon")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("header.epsilon: expected a number")
    return from_micro(to_micro(float(value)))


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
        _charge(ctx, meta)
    return grant


def _charge(ctx: CallContext, meta: Mapping[str, Any]) -> None:
    node = ctx.node
    index: int | None = None
    with node.store.transaction() as tx:
        check = check_budget(
            tx,
            agreement_id=meta["agreement"],
            dataset_id=meta["dataset"],
            epsilon=meta["epsilon"],
        )
        if check.allowed and check.limit is not None:
            try:
                charge(
                    tx,
                    meta["agreement"],
                    meta["epsilon"],
                    check.limit,
                    query_id=meta["query"],
                    dataset_id=meta["dataset"],
                )
                return
            except LimitExceededError:
                check = check_budget(
                    tx,
                    agreement_id=meta["agreement"],
                    dataset_id=meta["dataset"],
                    epsilon=meta["epsilon"],
                )
        index = record_refusal(
            tx,
            check,
            analyst=ctx.sender,
            query_id=meta["query"],
            purpose=meta["purpose"],
            at=node.clock(),
        )
    raise RefusedError(
        check.message,
        [check.step().to_json()],
        participant=node.participant_id,
        decision_index=index,
    )


def _meta_from(ctx: CallContext, header: Mapping[str, Any]) -> tuple[dict[str, Any], _Plan]:
    """Parse and check an aggregate's header at the provider (nothing of the data is read)."""
    node = ctx.node
    meta: dict[str, Any] = {
        "query": header_str(header, "query"),
        "agreement": header_str(header, "agreement"),
        "dataset": header_str(header, "dataset"),
        "column": header_str(header, "column"),
        "statistic": check_statistic(header.get("statistic")),
        "protocol": header_str(header, "protocol"),
        "purpose": header_str(header, "purpose"),
        "epsilon": _header_epsilon(header),
    }
    if meta["protocol"] not in PROTOCOLS:
        raise ValidationError(f"header.protocol: {meta['protocol']!r} not in {list(PROTOCOLS)}")
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
        plan = _plan_for(
            tx,
            dataset,
            meta["column"],
            meta["statistic"],
            header.get("bins", []),
            meta["epsilon"],
        )
    return meta, plan


class _ProviderStats:
    """A provider's state for one aggregate over a PSI cohort."""

    def __init__(self, meta: dict[str, Any], plan: _Plan, order: AlignedOrder) -> None:
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
            key_bytes, indicator = _unpack(material, 2)
            with crypto_errors("paillier indicator"):
                self.public_key = paillier.PaillierPublicKey.from_jwk(key_bytes)
                exponent = -paillier.DEFAULT_FRAC_BITS
                cts = paillier.CiphertextVector.load(indicator, self.public_key, exponent=exponent)
            if len(cts) != n:
                raise ValidationError(f"indicator of {len(cts)} values for {n} rows")
            self.indicator = cts
        elif protocol == "ckks":
            context_bytes, indicator = _unpack(material, 2)
            with crypto_errors("ckks indicator"):
                self.context = ckks.PublicContext.load(context_bytes)
                vector = self.context.load_vector(indicator)
            if not self.context.has_galois_keys:
                raise ValidationError("the CKKS context needs rotation (Galois) keys")
            if vector.length != n or vector.replicated:
                raise ValidationError(f"indicator is not a vector of {n} values")
            self.indicator = vector
        else:
            (share,) = _unpack(material, 1)
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
            vector = _ckks_total(
                self.context, self.indicator, np.full(n, 1.0 / divisor), shift / divisor
            )
            self.meta["countDivisor"] = divisor
            return bytes(vector.serialize())
        raise ValidationError("the additive protocol has no count round")

    def unmask(self, header: Mapping[str, Any]) -> int:
        n = self.rows
        protocol = self.meta["protocol"]
        value = header.get("count")
        if protocol == "paillier":
            if self.mask is None or not isinstance(value, str) or not value.isdigit():
                raise ValidationError("header.count: expected the decrypted count as digits")
            unit = 1 << (2 * paillier.DEFAULT_FRAC_BITS)
            diff = int(value) - int(self.mask)
            if diff < 0 or diff % unit or diff // unit > n:
                raise ValidationError("header.count is not a count of this indicator")
            return diff // unit
        if protocol == "ckks":
            if self.mask is None or isinstance(value, bool) or not isinstance(value, int | float):
                raise ValidationError("header.count: expected the decrypted count")
            divisor = float(self.meta["countDivisor"])
            raw = float(value) * divisor - float(self.mask)
            slack = 1e-5 * divisor + 2e-6 * (2 * n + 1) + 1e-6
            count = max(0, math.ceil(raw - slack))
            if not math.isfinite(raw) or raw < -0.5 - slack or count > n:
                raise ValidationError("header.count is not a count of this indicator")
            return min(count, n)
        if self.share is None or not isinstance(value, str) or not value.isdigit():
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
                _ckks_total(
                    self.context, self.indicator, rows[k] / d, float(noise[k]) / d
                ).serialize()
                for k, d in enumerate(divisors)
            ]
            return _pack(blobs)
        return self._additive(node, transport, rows, noise, messages)

    def _additive(
        self,
        node: ComputeNode,
        transport: Transport | None,
        rows: FloatArray,
        noise: FloatArray,
        messages: bytes,
    ) -> bytes:
        operator = node.extras.get(OPERATOR_EXTRA)
        if not isinstance(operator, str) or transport is None:
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
        x = _encode_ring(rows.T)
        blocks = _blocks(self.rows, rows.shape[0])
        theirs = _unpack(messages, len(blocks))
        ledger = sharing.TripleLedger(1)
        mine: list[bytes] = []
        z = np.zeros(rows.shape[0], dtype=np.uint64)
        for (start, stop), raw in zip(blocks, theirs, strict=True):
            triple = fetch_triple(
                transport,
                operator,
                session=_dealer_session(self.meta["query"], self.meta["dataset"]),
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
        z += _encode_ring(noise)
        return _pack([_pack(mine), ring_to_bytes(z)])


def _encode_ring(values: npt.ArrayLike) -> Ring:
    with crypto_errors("fixed point"):
        return FixedPoint(RING_FRAC_BITS).encode(np.asarray(values, dtype=np.float64))


def _blocks(rows: int, terms: int) -> list[tuple[int, int]]:
    """Row blocks whose triples (and Beaver messages) stay far below the message limit."""
    size = max(1, min(1 << 16, (1 << 22) // (terms + 1)))
    return [(s, min(s + size, rows)) for s in range(0, rows, size)]


def _dealer_session(query: str, dataset: str) -> str:
    return f"stats/{query}/{dataset}"


def _stats(ctx: CallContext, header: Mapping[str, Any]) -> _ProviderStats:
    query = header_str(header, "query")
    dataset = header_str(header, "dataset")
    state = ctx.node.sessions.get(ctx.sender, _session_key(query, dataset))
    stats = state.get("stats")
    if not isinstance(stats, _ProviderStats):
        raise NotFoundError(f"no open aggregate for query {query!r}")
    return stats


def _stats_open(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    node = ctx.node
    query = header_str(header, "query")
    dataset = header_str(header, "dataset")
    state = node.sessions.open(ctx.sender, _session_key(query, dataset))
    if header.get("part") == 0:
        marker = object()
        if state.setdefault("owner", marker) is not marker:
            raise ConflictError(f"an aggregate of query {query!r} was already opened")
        order = aligned_order(node, ctx.sender, query, dataset)
        meta, plan = _meta_from(ctx, header)
        if meta["agreement"] != order.agreement_id or meta["purpose"] != order.purpose:
            raise ValidationError("the aggregate names another agreement or purpose than its PSI")
        state["stats"] = _ProviderStats(meta, plan, order)
    stats = state.get("stats")
    if not isinstance(stats, _ProviderStats):
        raise ConflictError("aggregate parts before its first part")
    material = receive_part(state, "material", header, payload, max_total=_MAX_MATERIAL)
    if material is None:
        return Reply({"received": header["part"] + 1})
    stats.load(material)
    return Reply({"rows": stats.rows})


def _stats_count(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    stats = _stats(ctx, header)
    if stats.indicator is None or stats.mask is not None:
        raise ConflictError("the count round runs once, after the indicator arrived")
    return Reply({}, stats.masked_count())


def _stats_release(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    node = ctx.node
    query = header_str(header, "query")
    dataset = header_str(header, "dataset")
    state = node.sessions.get(ctx.sender, _session_key(query, dataset))
    stats = _stats(ctx, header)
    if stats.released:
        raise ConflictError("this aggregate was already released")
    messages = b""
    if stats.meta["protocol"] == "additive":
        whole = receive_part(state, "beaver", header, payload, max_total=_MAX_MATERIAL)
        if whole is None:
            return Reply({"received": header["part"] + 1})
        messages = whole
    elif payload:
        raise ValidationError("stats.release takes no payload for this protocol")
    stats.released = True  # one attempt: a refused count cannot be retried with another value
    count = stats.unmask(header)
    grant = _authorize_release(ctx, stats.meta, count=count)
    stats.reply = stats.release(node, node.transport, messages)
    extras = {
        "names": stats.plan.names,
        "noiseScales": stats.plan.noise_scales(),
        "count": count,
        "receipt": grant.receipt,
    }
    if "divisors" in stats.meta:
        extras["divisors"] = stats.meta["divisors"]
    return _serve(stats, 0, extras)


def _serve(stats: _ProviderStats, offset: int, extras: Mapping[str, Any] | None = None) -> Reply:
    if stats.reply is None:
        raise ConflictError("nothing to fetch")
    reply = reply_part(stats.reply, offset, extras)
    if offset + len(reply.payload) >= len(stats.reply):
        stats.reply = None
    return reply


def _stats_fetch(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    return _serve(_stats(ctx, header), header_int(header, "offset", 0, _MAX_MATERIAL))


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
    query = header_str(header, "query")
    dataset = header_str(header, "dataset")
    state = node.sessions.open(ctx.sender, _session_key(query, dataset))
    if header.get("part") == 0:
        marker = object()
        if state.setdefault("owner", marker) is not marker:
            raise ConflictError(f"an aggregate of query {query!r} was already run")
    count = header_int(header, "count", 1, MAX_SET_SIZE)
    raw = receive_part(state, "entities", header, payload, max_total=count * 130)
    if raw is None:
        return Reply({"received": header["part"] + 1})
    missing_rule = header_str(header, "missing")
    if missing_rule not in MISSING_RULES:
        raise ValidationError(f"header.missing: {missing_rule!r} not in {list(MISSING_RULES)}")
    entities = decode_ids(raw, count, "opaque")
    if len(set(entities)) != len(entities):
        raise ValidationError("payload: entities must be distinct")
    meta, plan = _meta_from(ctx, header)
    if node.data is None:
        raise NotFoundError(f"{node.participant_id} holds no data")
    # Authorised (consent per entity, minCohort on the list) before anything is read; the keys
    # are looked up for the missing rule, then epsilon is charged, and only then values are read.
    grant = _authorize_release(ctx, meta, count=len(entities), entities=entities, budget=False)
    found, _ = node.data.lookup(meta["dataset"], entities, [])
    if not found.all() and missing_rule == "fail":
        absent = [entities[i] for i in np.flatnonzero(~found)]
        raise _missing_refusal(node, absent, len(entities), "are not held")
    if meta["epsilon"] is not None:
        _charge(ctx, meta)
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
    return Reply(
        {
            "names": plan.names,
            "totals": [float(v) for v in totals],
            "noiseScales": plan.noise_scales(),
            "count": len(entities),
            "missing": missing[:_MISSING_LISTED],
            "receipt": grant.receipt,
        }
    )


def register_aggregate(node: ComputeNode) -> None:
    """Register the provider's aggregate operations (:data:`STATS_OPERATIONS`) on ``node``.

    The alignment operations (:func:`~trusted_space.protocols.align.register_align`) are needed
    too for PSI cohorts; the additive protocol needs ``node.extras["operator"]`` (the dealer this
    provider trusts) and ``node.transport``.
    """
    node.register("stats.open", _stats_open)
    node.register("stats.count", _stats_count)
    node.register("stats.release", _stats_release)
    node.register("stats.fetch", _stats_fetch)
    node.register("stats.entities", _stats_entities)


# ----------------------------------------------------------------------------------------------
# Analyst
# ----------------------------------------------------------------------------------------------


def _query_header(query: AggregateQuery) -> dict[str, Any]:
    header: dict[str, Any] = {
        "query": query.id,
        "agreement": query.agreement_id,
        "dataset": query.dataset_id,
        "column": query.column,
        "statistic": query.statistic,
        "protocol": query.protocol,
        "purpose": query.purpose,
        "bins": list(query.bins),
    }
    if query.epsilon is not None:
        header["epsilon"] = query.epsilon
    return header


def _result(
    query: AggregateQuery,
    totals: Sequence[float],
    reply: Mapping[str, Any],
    cohort_size: int,
    receipts: Sequence[dict[str, Any]],
    missing: Sequence[str] = (),
) -> AggregateResult:
    plan = _Plan(query.statistic, query.bins, None, query.epsilon)
    names = reply.get("names")
    if names != plan.names or len(totals) != len(plan.names):
        raise ValidationError(f"{query.provider} released other values than asked for")
    scales = reply.get("noiseScales")
    if not isinstance(scales, list) or len(scales) != len(names):
        raise ValidationError(f"{query.provider}: no noise scales")
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


def _release_receipt(query: AggregateQuery, reply: Mapping[str, Any]) -> dict[str, Any]:
    receipt = reply.get("receipt")
    if not isinstance(receipt, dict):
        raise ValidationError(f"{query.provider}: no receipt for the release")
    body = check_receipt(
        receipt, provider=query.provider, query_id=query.id, dataset_id=query.dataset_id
    )
    if body.get("kind") != "aggregate" or body.get("columns") != [query.column]:
        raise ValidationError(f"{query.provider}: the receipt records another use")
    return receipt


def _run_explicit(transport: Transport, query: AggregateQuery) -> AggregateResult:
    header = {
        **_query_header(query),
        "count": len(query.entities),
        "missing": query.missing,
    }
    reply = send_in_parts(
        transport, query.provider, "stats.entities", header, encode_ids(query.entities)
    )
    totals = reply.header.get("totals")
    if not isinstance(totals, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in totals
    ):
        raise ValidationError(f"{query.provider}: no totals")
    missing = reply.header.get("missing", [])
    if not isinstance(missing, list):
        raise ValidationError(f"{query.provider}: malformed missing list")
    receipt = _release_receipt(query, reply.header)
    return _result(
        query, totals, reply.header, len(query.entities), [receipt], [str(m) for m in missing]
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
            return _pack([public.serialize(), self.engine.encrypt(indicator).serialize()])
        if self.protocol == "ckks":
            if self.ckks_context is None:
                self.ckks_context = ckks.SecretContext.generate()
            public_bytes = self.ckks_context.public_context(galois_keys=True).serialize()
            return _pack([public_bytes, self.ckks_context.encrypt(indicator).serialize()])
        ring = indicator.astype(np.uint64)
        mine, theirs = sharing.share(ring, 2)
        self.share = mine
        return _pack([ring_to_bytes(theirs)])

    def unmask_request(self, payload: bytes) -> Any:
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
    for start, stop in _blocks(rows, terms):
        triple = fetch_triple(
            transport,
            query.operator,
            session=_dealer_session(query.id, query.dataset_id),
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
    reply: Mapping[str, Any],
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
        divisors = reply.get("divisors")
        if not isinstance(divisors, list) or len(divisors) != len(names):
            raise ValidationError("released CKKS values come without their divisors")
        for blob, divisor in zip(_unpack(payload, len(names)), divisors, strict=True):
            vector = side.ckks_context.load_vector(blob)
            yield float(side.ckks_context.decrypt(vector)[0]) * float(divisor)
    else:
        if additive is None:  # pragma: no cover
            raise ValidationError("no Beaver state")
        triples, mine = additive
        theirs_packed, z_provider = _unpack(payload, 2)
        theirs = _unpack(theirs_packed, len(mine))
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
    ref = {"query": query.id, "dataset": query.dataset_id}
    names = _Plan(query.statistic, query.bins, None, None).names
    try:
        send_in_parts(
            transport, query.provider, "stats.open", _query_header(query), side.material(indicator)
        )
        payload = b""
        additive = None
        if query.protocol == "additive":
            if side.share is None:  # pragma: no cover
                raise ValidationError("no share")
            count: Any = str(int(side.share.sum(dtype=np.uint64)))
            additive = _beaver_messages(side, transport, query, analyst_id, rows, len(names))
            payload = _pack([m.to_bytes() for m in additive[1]])
        else:
            masked = transport.call(query.provider, "stats.count", ref).payload
            count = side.unmask_request(masked)
        first = send_in_parts(
            transport, query.provider, "stats.release", {**ref, "count": count}, payload
        )
        released = fetch_rest(
            transport, query.provider, "stats.fetch", ref, first, max_total=_MAX_MATERIAL
        )
        receipt = _release_receipt(query, first.header)
        totals = list(_iter_totals(side, released, first.header, names, additive))
    finally:
        side.close()
    return _result(query, totals, first.header, len(aligned.ids), [aligned.receipt, receipt])
