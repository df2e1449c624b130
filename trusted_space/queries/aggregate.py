"""The aggregate query model: one statistic of one provider column over a cohort.

An :class:`AggregateQuery` names the provider, its agreement and dataset, the column, the
statistic (``count``, ``sum``, ``mean`` or ``histogram`` with its bin edges), the protocol
(``paillier`` | ``ckks`` | ``additive``), the purpose, and either a PSI cohort (the provider never
learns which ids are used) or explicit entities (it sees them), with optional differential
privacy (``epsilon``). It is checked when built: what was validated is what runs. The analyst
gets an :class:`AggregateResult`. The flow is in :mod:`trusted_space.protocols.aggregate`.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from trusted_space.budget import from_micro, to_micro
from trusted_space.errors import ValidationError
from trusted_space.policy import PROTOCOLS
from trusted_space.queries.common import MISSING_RULES

__all__ = [
    "MAX_BINS",
    "STATISTICS",
    "AggregateQuery",
    "AggregateResult",
    "check_bins",
    "check_statistic",
]

STATISTICS: Final = ("count", "sum", "mean", "histogram")
MAX_BINS: Final = 64


def check_bins(bins: Sequence[float], statistic: str) -> tuple[float, ...]:
    try:
        edges = tuple(float(b) for b in bins)
    except (TypeError, ValueError) as exc:
        raise ValidationError("bin edges must be numbers") from exc
    if statistic != "histogram":
        if edges:
            raise ValidationError("bins are given for histograms only")
        return ()
    if not 2 <= len(edges) <= MAX_BINS + 1:
        raise ValidationError(f"a histogram needs 2 to {MAX_BINS + 1} bin edges")
    if not all(math.isfinite(e) for e in edges) or any(
        b <= a for a, b in itertools.pairwise(edges)
    ):
        raise ValidationError("bin edges must be finite and strictly increasing")
    return edges


def check_statistic(value: object) -> str:
    if value not in STATISTICS:
        raise ValidationError(f"statistic {value!r} not in {list(STATISTICS)}")
    return str(value)


@dataclass(frozen=True)
class AggregateQuery:
    """One aggregate over one provider column.

    Attributes:
        provider: the provider's participant id.
        agreement_id: the agreement with it.
        dataset_id: its dataset.
        column: the column aggregated.
        statistic: ``count``, ``sum``, ``mean`` or ``histogram``.
        protocol: ``paillier``, ``ckks`` or ``additive``.
        purpose: the declared purpose.
        cohort: the analyst's ids for a PSI cohort (the provider never learns which are used).
        entities: explicit ids instead (the provider sees them: consent per entity applies).
        bins: histogram bin edges (``numpy.histogram`` semantics).
        epsilon: differential privacy: Laplace noise calibrated to it, charged to the budget.
        missing: explicit ids only: ``fail`` (refuse listing them) or ``impute``.
        operator: the dealer of Beaver triples (``additive``).
        id: the query id.
    """

    provider: str
    agreement_id: str
    dataset_id: str
    column: str
    statistic: str
    protocol: str
    purpose: str
    cohort: tuple[str, ...] = ()
    entities: tuple[str, ...] = ()
    bins: tuple[float, ...] = ()
    epsilon: float | None = None
    missing: str = "fail"
    operator: str | None = None
    id: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")

    def __post_init__(self) -> None:
        for name in ("provider", "agreement_id", "dataset_id", "column", "purpose", "id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValidationError(f"AggregateQuery.{name} must be a non-empty string")
        check_statistic(self.statistic)
        if self.protocol not in PROTOCOLS:
            raise ValidationError(f"protocol {self.protocol!r} not in {list(PROTOCOLS)}")
        object.__setattr__(self, "cohort", tuple(self.cohort))
        object.__setattr__(self, "entities", tuple(self.entities))
        object.__setattr__(self, "bins", check_bins(self.bins, self.statistic))
        if bool(self.cohort) == bool(self.entities):
            raise ValidationError("give either a cohort (PSI) or explicit entities, not both")
        for e in (*self.cohort, *self.entities):
            if not isinstance(e, str) or not e or "\n" in e:
                raise ValidationError("entity ids must be non-empty strings without newlines")
        if len(set(self.entities)) != len(self.entities):
            raise ValidationError("explicit entities must be distinct")
        if self.epsilon is not None:
            object.__setattr__(self, "epsilon", from_micro(to_micro(self.epsilon)))
        if self.missing not in MISSING_RULES:
            raise ValidationError(f"missing must be one of {list(MISSING_RULES)}")
        if self.protocol == "additive" and self.cohort and not self.operator:
            raise ValidationError("the additive protocol needs the operator (Beaver dealer)")


@dataclass(frozen=True)
class AggregateResult:
    """What the analyst gets.

    Attributes:
        query_id: the query.
        statistic: what was computed.
        protocol: how.
        value: the count, sum or mean (``None`` for a histogram; ``nan`` for the mean of none).
        counts: the histogram's counts, one per bin (empty otherwise).
        bins: the histogram's edges.
        cohort_size: entities in the cohort (matched ids, or explicit ids used).
        epsilon: the privacy budget spent (``None``: exact, no noise).
        noise_scales: Laplace scale of each released value (``value`` parts or bins).
        missing: explicit ids the provider did not hold (imputed), else empty.
        receipts: the provider's ``query.use`` receipts (alignment, release).
    """

    query_id: str
    statistic: str
    protocol: str
    value: float | None
    counts: tuple[float, ...]
    bins: tuple[float, ...]
    cohort_size: int
    epsilon: float | None
    noise_scales: tuple[float, ...]
    missing: tuple[str, ...]
    receipts: tuple[dict[str, Any], ...]
