"""Fixed-point codec from real numbers into the ring Z_2^64 (two's complement in ``numpy.uint64``).

Why: additive secret sharing and Beaver multiplication work over the integers modulo 2^64, but
features, weights and risk scores are real numbers. This module maps a real ``x`` to the ring
element ``round(x * 2^f) mod 2^64`` and back, so that ring addition is real addition and a ring
product carries ``2f`` fractional bits (to be truncated by ``f`` afterwards).

Threat: in the ring, an out-of-range value does not fail, it *wraps* - a risk score of 3.2 can
silently come back as -8.7e12 or, worse, as another plausible number. A wrapped value is a wrong
answer handed to a bank for a credit decision. So this codec never wraps silently:
:meth:`FixedPoint.encode` raises :class:`~crypto.errors.FixedPointOverflowError` for NaN,
infinities and values out of range, and :meth:`FixedPoint.decode` takes a declared ``bound`` and
raises if a result lies outside it (which is how a wrap after a protocol run is caught: wrapped
values are astronomically large).

Ranges, with ``f = frac_bits``:

* **Representable**: ``|round(x * 2^f)| < 2^63``, i.e. ``|x| < 2^(63-f)`` (about 1.4e14 at f=16).
* **Products**: a product of two encodings has ``2f`` fractional bits and must itself fit, so
  callers must keep ``|x * y| < 2^(63-2f)`` (2^31 ~ 2.1e9 at f=16) *for every partial sum* of a
  dot product.
  Secret-shared truncation (see :mod:`crypto.sharing`) fails with probability about
  ``|x * y| * 2^(2f) / 2^64`` per element, so in practice keep products far smaller than that.
* **Error**: encoding rounds to nearest, so ``|decode(encode(x)) - x| <= 2^-(f+1)`` (7.6e-6 at f=16)
  for every representable ``x`` (the float64 conversion adds at most one float64 ulp of ``x``,
  which is negligible below ``2^(53-f)``).

Default ``frac_bits=16``: resolution 1.5e-5 is ample for risk scores and aggregates released to
three decimals, while leaving 31 integer bits for products and keeping the 2-party truncation
failure rate for a logit of magnitude <= 16 at or below 2^-27 per entity (about 0.008 expected
failures over a million entities). ``frac_bits=20`` buys 16x finer resolution but makes that
failure rate 256x larger; choose it only for small batches of small values.

Exceptions: :class:`~crypto.errors.ParameterError` for a bad ``frac_bits``,
:class:`~crypto.errors.EncodingError` for input that is not real numbers,
:class:`~crypto.errors.FixedPointOverflowError` for out-of-range values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from crypto.errors import EncodingError, FixedPointOverflowError, ParameterError

__all__ = [
    "DEFAULT_FRAC_BITS",
    "RING_BITS",
    "FixedPoint",
    "from_signed",
    "to_signed",
]

RING_BITS: Final = 64
"""The ring is Z_2^64; elements are ``numpy.uint64``."""

DEFAULT_FRAC_BITS: Final = 16
"""Default number of fractional bits (see the module docstring for the trade-off)."""

_MAX_FRAC_BITS: Final = 31  # a product needs 2f < 63 fractional bits to have any integer part
_TWO_63: Final = float(2**63)


def to_signed(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """Reinterpret ring elements as two's-complement signed integers (a view, no copy).

    Args:
        values: Ring elements, dtype ``uint64``.

    Returns:
        The same bits viewed as ``int64``: elements ``>= 2^63`` become negative.

    Raises:
        EncodingError: If ``values`` is not a ``uint64`` array.
    """
    arr = _require_uint64(values)
    return arr.view(np.int64)


def from_signed(values: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """Reinterpret two's-complement signed integers as ring elements (a view, no copy).

    Args:
        values: Signed integers, dtype ``int64``.

    Returns:
        The same bits viewed as ``uint64`` (``-1`` becomes ``2^64 - 1``).

    Raises:
        EncodingError: If ``values`` is not an ``int64`` array.
    """
    if not isinstance(values, np.ndarray) or values.dtype != np.int64:
        raise EncodingError("expected a numpy int64 array")
    return values.view(np.uint64)


def _require_uint64(values: object) -> npt.NDArray[np.uint64]:
    if not isinstance(values, np.ndarray) or values.dtype != np.uint64:
        raise EncodingError("expected a numpy uint64 array of ring elements")
    return values


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoder with ``frac_bits`` fractional bits over Z_2^64.

    Attributes:
        frac_bits: Number of fractional bits ``f``; ``0 <= f <= 31``.

    Example:
        >>> fp = FixedPoint(frac_bits=16)
        >>> fp.decode(fp.encode(np.array([1.5, -2.25]))).tolist()
        [1.5, -2.25]
    """

    frac_bits: int = DEFAULT_FRAC_BITS

    def __post_init__(self) -> None:
        if isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int):
            raise ParameterError("frac_bits must be an int")
        if not 0 <= self.frac_bits <= _MAX_FRAC_BITS:
            raise ParameterError(f"frac_bits must lie in [0, {_MAX_FRAC_BITS}]")

    @property
    def scale(self) -> int:
        """The scaling factor ``2^f``."""
        return 1 << self.frac_bits

    @property
    def resolution(self) -> float:
        """The value of one unit in the last place, ``2^-f``."""
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def encode_error_bound(self) -> float:
        """Maximum absolute error of decode(encode(x)) for representable ``x``: ``2^-(f+1)``."""
        return math.ldexp(1.0, -self.frac_bits - 1)

    @property
    def max_abs(self) -> float:
        """Exclusive bound on representable magnitudes: ``2^(63-f)``."""
        return math.ldexp(1.0, RING_BITS - 1 - self.frac_bits)

    @property
    def max_abs_product(self) -> float:
        """Exclusive bound on ``|x*y|`` (and partial sums) before truncation: ``2^(63-2f)``."""
        return math.ldexp(1.0, RING_BITS - 1 - 2 * self.frac_bits)

    def encode(
        self, values: npt.ArrayLike, *, bound: float | None = None
    ) -> npt.NDArray[np.uint64]:
        """Encode real numbers as ring elements ``round(x * 2^f) mod 2^64``.

        Rounding is to nearest (ties to even), so the error is at most ``2^-(f+1)``.

        Args:
            values: Real numbers (any shape); booleans, integers and floats are accepted.
            bound: Optional declared bound; if given, every ``|x|`` must be ``<= bound``. Use it to
                keep the headroom products need (see :attr:`max_abs_product`).

        Returns:
            A new ``uint64`` array of the same shape.

        Raises:
            EncodingError: If ``values`` is not an array of real numbers.
            FixedPointOverflowError: If any value is NaN, infinite, outside ``bound`` or not
                representable (``|round(x * 2^f)| >= 2^63``).
        """
        arr = _as_real_array(values)
        if not np.all(np.isfinite(arr)):
            raise FixedPointOverflowError("NaN or infinity cannot be encoded")
        if bound is not None:
            _check_bound(arr, bound)
        with np.errstate(over="ignore"):  # a huge value scales to inf, refused just below
            scaled = np.asarray(np.rint(np.ldexp(arr, self.frac_bits)))
        if scaled.size and not bool(np.max(np.abs(scaled)) < _TWO_63):
            raise FixedPointOverflowError(
                f"value out of fixed-point range |x| < 2^{RING_BITS - 1 - self.frac_bits}"
            )
        return np.asarray(scaled.astype(np.int64)).view(np.uint64)

    def decode(
        self,
        values: npt.NDArray[np.uint64],
        *,
        bound: float | None = None,
        frac_bits: int | None = None,
    ) -> npt.NDArray[np.float64]:
        """Decode ring elements (two's complement) to real numbers.

        Args:
            values: Ring elements, dtype ``uint64``.
            bound: Optional declared bound on the *result*; if given and any decoded magnitude
                exceeds it, raise. This is the check that catches a wrapped protocol result.
            frac_bits: Fractional bits of ``values`` if not ``self.frac_bits`` (for example
                ``2 * f`` for an untruncated product).

        Returns:
            ``float64`` array of the same shape.

        Raises:
            EncodingError: If ``values`` is not a ``uint64`` array.
            FixedPointOverflowError: If a decoded value exceeds ``bound``.
            ParameterError: If ``frac_bits`` is not in ``[0, 62]``.
        """
        bits = self.frac_bits if frac_bits is None else frac_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= RING_BITS - 2:
            raise ParameterError("frac_bits must be an int in [0, 62]")
        signed = to_signed(values)
        out = np.asarray(np.ldexp(signed.astype(np.float64), -bits), dtype=np.float64)
        if bound is not None:
            _check_bound(out, bound)
        return out

    def check_bound(self, values: npt.NDArray[np.uint64], bound: float) -> None:
        """Raise unless every decoded value lies within ``[-bound, bound]``.

        Args:
            values: Ring elements at this codec's scale.
            bound: Declared bound on the real values.

        Raises:
            FixedPointOverflowError: If any decoded magnitude exceeds ``bound``.
        """
        self.decode(values, bound=bound)


def _as_real_array(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise EncodingError("values cannot be converted to an array") from exc
    if arr.dtype.kind not in "biuf":
        raise EncodingError(f"cannot encode values of dtype {arr.dtype}")
    return np.asarray(arr.astype(np.float64))


def _check_bound(arr: npt.NDArray[np.float64], bound: float) -> None:
    if not isinstance(bound, int | float) or not math.isfinite(bound) or bound < 0:
        raise ParameterError("bound must be a finite non-negative number")
    if arr.size and not bool(np.max(np.abs(arr)) <= bound):
        raise FixedPointOverflowError(f"value outside the declared bound |x| <= {bound}")
