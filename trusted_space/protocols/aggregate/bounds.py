"""Provider settings: published column bounds, and the clamped Laplace noise they calibrate.

Bounds clip values before a sum or mean and give its sensitivity (``max(|lo|, |hi|)``); they
are a provider-side setting (:func:`set_column_bounds`), never taken from the analyst.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from trusted_space.errors import ValidationError
from trusted_space.protocols.aggregate.wire import FloatArray
from trusted_space.store import Transaction

__all__ = ["BOUNDS_NAMESPACE", "NOISE_TAIL", "column_bounds", "laplace_noise", "set_column_bounds"]

BOUNDS_NAMESPACE: Final = "aggregate.bounds"
"""Provider store namespace of published column bounds (key: dataset id)."""
NOISE_TAIL: Final = 64.0
"""Laplace noise is clamped at this many scales (P[|X| > 64 b] = e^-64)."""


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
