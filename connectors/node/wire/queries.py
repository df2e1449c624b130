"""Wire models of the analyst's query API (``/management/queries``, the analyst node's staff).

A score query travels as the core's own JSON
(:meth:`trusted_space.queries.score.ScoreQuery.from_json`
parses it strictly and names the JSON path of any error), so it has no duplicate schema here. An
aggregate has no core JSON form, so :class:`AggregateRequest` is its shape, converted to a
:class:`~trusted_space.protocols.aggregate.AggregateQuery` by :func:`aggregate_query` (the
operator, the Beaver dealer, is always this space's operator: it is filled in by the node).

:class:`QueryView` is what the staff see of a query: its state and progress, then its result with
the providers' receipts, or the error (a provider's refusal keeps the provider's problem document,
``trace`` included). Results hold outputs the analyst is entitled to, never a key: the analyst's
Paillier keys and CKKS secret context live only in the worker that ran the query.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trusted_space.policy import ProtocolName
from trusted_space.queries.aggregate import AggregateQuery, AggregateResult

__all__ = [
    "QUERY_STATES",
    "AggregateRequest",
    "QueryView",
    "aggregate_query",
    "aggregate_result_json",
]

QUERY_STATES = ("queued", "running", "done", "failed")

_MAX_IDS = 10_000_000


class AggregateRequest(BaseModel):
    """One aggregate of one provider column over a cohort (PSI) or explicit entities."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1, max_length=128)
    agreement: str = Field(min_length=1, max_length=512, description="Agreement id with it.")
    dataset: str = Field(min_length=1, max_length=512)
    column: str = Field(min_length=1, max_length=128)
    statistic: Literal["count", "sum", "mean", "histogram"]
    protocol: ProtocolName
    purpose: str = Field(min_length=1, max_length=256)
    cohort: list[str] | None = Field(
        default=None,
        max_length=_MAX_IDS,
        description="The analyst's ids, aligned by PSI: the provider never learns which.",
    )
    entities: list[str] | None = Field(
        default=None,
        max_length=_MAX_IDS,
        description="Explicit ids instead (the provider sees them; consent per entity applies).",
    )
    bins: list[float] = Field(default_factory=list, max_length=1024)
    epsilon: float | None = Field(default=None, gt=0)
    missing: Literal["fail", "impute"] = "fail"
    id: str | None = Field(default=None, min_length=1, max_length=512)


def aggregate_query(body: AggregateRequest, operator: str) -> AggregateQuery:
    """The core query for ``body`` (``ValidationError`` from the core when inconsistent)."""
    kw: dict[str, Any] = {}
    if body.id is not None:
        kw["id"] = body.id
    return AggregateQuery(
        provider=body.provider,
        agreement_id=body.agreement,
        dataset_id=body.dataset,
        column=body.column,
        statistic=body.statistic,
        protocol=body.protocol,
        purpose=body.purpose,
        cohort=tuple(body.cohort or ()),
        entities=tuple(body.entities or ()),
        bins=tuple(body.bins),
        epsilon=body.epsilon,
        missing=body.missing,
        operator=operator,
        **kw,
    )


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def aggregate_result_json(result: AggregateResult) -> dict[str, Any]:
    """JSON of an aggregate result (a mean over nobody is ``null``, JSON has no NaN)."""
    return {
        "v": 1,
        "query": result.query_id,
        "statistic": result.statistic,
        "protocol": result.protocol,
        "value": _finite(result.value),
        "counts": [float(c) for c in result.counts],
        "bins": [float(b) for b in result.bins],
        "cohortSize": result.cohort_size,
        "epsilon": result.epsilon,
        "noiseScales": [float(s) for s in result.noise_scales],
        "missing": list(result.missing),
        "receipts": [dict(r) for r in result.receipts],
    }


class QueryView(BaseModel):
    """A query run by this node as the analyst."""

    id: str = Field(description="The query id.")
    kind: Literal["score", "aggregate", "train"]
    protocol: str
    providers: list[str]
    entities: int = Field(description="Entities named in the query (or candidate ids).")
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    stage: str = Field(description="What it is doing now, e.g. `computing at tax-bureau`.")
    fraction: float = Field(ge=0, le=1, description="Estimated progress.")
    submittedAt: str
    startedAt: str | None = None
    finishedAt: str | None = None
    result: dict[str, Any] | None = Field(
        default=None,
        description="When done: the result (score: entities, logits, outputs, missing, "
        "receipts, timings; aggregate: value or counts, cohortSize, noise, receipts).",
    )
    error: dict[str, Any] | None = Field(
        default=None,
        description="When failed: a problem document; a provider's refusal keeps its `trace` "
        "and names the provider in `peer`.",
    )
    cancelledBy: str | None = Field(
        default=None, description="When cancelled: who asked (the staff's `by`, or `staff`)."
    )
    parties: dict[str, str] | None = Field(
        default=None,
        description="When cancelled: each party told to stop and its answer "
        "(`cancelled (ledger entry N)` or why it could not be told).",
    )
