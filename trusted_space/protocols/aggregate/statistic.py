"""The statistic as rows over the provider's table, shared by every protocol.

A :class:`StatisticPlan` says which rows a statistic releases (count, sum, histogram bins),
their magnitudes and noise scales; every protocol computes the same rows against an indicator
it cannot read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trusted_space.budget import from_micro, to_micro
from trusted_space.catalog import PublishedDataset
from trusted_space.errors import ValidationError
from trusted_space.protocols.aggregate.bounds import column_bounds
from trusted_space.protocols.aggregate.wire import FloatArray
from trusted_space.queries.aggregate import check_bins
from trusted_space.store import Transaction

__all__ = ["StatisticPlan", "plan_for"]


@dataclass(frozen=True)
class StatisticPlan:
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


def plan_for(
    tx: Transaction, dataset: PublishedDataset, column: str, statistic: str, bins: Any, eps: Any
) -> StatisticPlan:
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
    return StatisticPlan(statistic, edges, bounds, epsilon)
