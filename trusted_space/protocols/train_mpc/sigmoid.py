"""The sigmoid approximation: piecewise-linear interpolation at public knots.

The same :class:`Sigmoid` is evaluated on shares by the party program and in float64 by the
plaintext reference, so the two runs can be compared exactly.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from trusted_space.errors import ValidationError
from trusted_space.protocols.train_mpc.ring import CMP_FRAC_BITS, FloatArray
from trusted_space.queries.score import logistic

__all__ = ["MAX_KNOTS", "Sigmoid"]

MAX_KNOTS: Final = 16


@dataclass(frozen=True)
class Sigmoid:
    """The piecewise-linear interpolation of the sigmoid at ``knots`` (0 below, 1 above).

    Attributes:
        knots: strictly increasing public knots, ``|t| ≤ 64``, at most 16, multiples of ``2^-8``.
    """

    knots: tuple[float, ...] = (-6.0, -3.0, -1.0, 1.0, 3.0, 6.0)

    def __post_init__(self) -> None:
        knots = tuple(float(t) for t in self.knots)
        object.__setattr__(self, "knots", knots)
        if not 2 <= len(knots) <= MAX_KNOTS:
            raise ValidationError(f"sigmoid knots: 2 to {MAX_KNOTS} knots")
        if any(not math.isfinite(t) or abs(t) > 64 for t in knots):
            raise ValidationError("sigmoid knots must be finite and within [-64, 64]")
        if any(b <= a for a, b in itertools.pairwise(knots)):
            raise ValidationError("sigmoid knots must be strictly increasing")
        if any(t * (1 << CMP_FRAC_BITS) != round(t * (1 << CMP_FRAC_BITS)) for t in knots):
            raise ValidationError(f"sigmoid knots must be multiples of 2^-{CMP_FRAC_BITS}")

    @property
    def words(self) -> int:
        """Packed comparison words per row (two comparisons per 64-bit word)."""
        return (len(self.knots) + 1) // 2

    def hinges(self) -> tuple[FloatArray, FloatArray]:
        """``(Δα, Δβ)``: the change of intercept and slope at each knot."""
        t = np.array(self.knots)
        s = logistic(t)
        alpha = np.zeros(len(t) + 1)
        beta = np.zeros(len(t) + 1)
        slopes = np.diff(s) / np.diff(t)
        beta[1:-1] = slopes
        alpha[1:-1] = s[:-1] - slopes * t[:-1]
        alpha[-1] = 1.0
        return np.diff(alpha), np.diff(beta)

    def __call__(self, z: npt.ArrayLike) -> FloatArray:
        """The approximation in float64 (what the shares compute, up to fixed point)."""
        x = np.asarray(z, dtype=np.float64)
        d_alpha, d_beta = self.hinges()
        above = x[..., None] > np.array(self.knots)
        return np.asarray(above @ d_alpha + (above @ d_beta) * x, dtype=np.float64)

    def to_json(self) -> list[float]:
        return list(self.knots)
