"""Laws of the fixed-point codec: round trip within 2^-(f+1), overflow refused, never wrapped."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crypto.errors import EncodingError, FixedPointOverflowError, ParameterError
from crypto.fixedpoint import DEFAULT_FRAC_BITS, FixedPoint, from_signed, to_signed

frac_bits = st.integers(min_value=0, max_value=31)


@st.composite
def codec_and_values(draw: st.DrawFn) -> tuple[FixedPoint, np.ndarray]:
    fp = FixedPoint(frac_bits=draw(frac_bits))
    limit = fp.max_abs * (1 - 2.0**-40)
    values = draw(
        hnp.arrays(
            np.float64,
            hnp.array_shapes(min_dims=0, max_dims=3, max_side=6),
            elements=st.floats(-limit, limit, allow_nan=False),
        )
    )
    return fp, values


@given(codec_and_values())
def test_decode_encode_within_error_bound(case: tuple[FixedPoint, np.ndarray]) -> None:
    fp, values = case

    decoded = fp.decode(fp.encode(values))

    slack = np.abs(values) * 2.0**-52  # int64 -> float64 rounding above 2^53
    assert decoded.shape == values.shape
    assert np.all(np.abs(decoded - values) <= fp.encode_error_bound + slack)


@given(codec_and_values(), codec_and_values())
def test_ring_addition_is_real_addition(
    left: tuple[FixedPoint, np.ndarray], right: tuple[FixedPoint, np.ndarray]
) -> None:
    fp = FixedPoint()
    x = np.clip(left[1], -1e6, 1e6)
    y = np.clip(right[1].reshape(-1)[:1], -1e6, 1e6) if right[1].size else np.zeros(1)

    total = fp.decode(fp.encode(x) + fp.encode(y))

    assert np.all(np.abs(total - (x + y)) <= 2 * fp.encode_error_bound + 1e-9)


@given(frac_bits, st.floats(min_value=1.0, max_value=1e300), st.booleans())
def test_encode_out_of_range_raises(bits: int, factor: float, negative: bool) -> None:
    fp = FixedPoint(frac_bits=bits)
    value = fp.max_abs * factor * (-1 if negative else 1)

    with pytest.raises(FixedPointOverflowError):
        fp.encode(np.array([0.0, value]))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_encode_nan_and_inf_raise(bad: float) -> None:
    fp = FixedPoint()

    with pytest.raises(FixedPointOverflowError):
        fp.encode(np.array([1.0, bad]))


def test_largest_representable_value_round_trips() -> None:
    fp = FixedPoint(frac_bits=16)
    value = np.nextafter(fp.max_abs, 0.0)

    decoded = fp.decode(fp.encode(np.array([value, -value])))

    assert decoded.tolist() == [value, -value]


@given(st.floats(0, 100), st.floats(0, 100))
def test_declared_bound_is_enforced_on_encode(bound: float, extra: float) -> None:
    fp = FixedPoint()
    inside = np.array([bound, -bound])
    outside = np.array([bound + extra + 1.0])

    fp.encode(inside, bound=bound)
    with pytest.raises(FixedPointOverflowError):
        fp.encode(outside, bound=bound)


def test_decode_bound_catches_a_wrapped_result() -> None:
    fp = FixedPoint()
    wrapped = fp.encode(np.array([3.25])) + np.uint64(
        1 << 60
    )  # what a failed truncation looks like

    with pytest.raises(FixedPointOverflowError):
        fp.decode(wrapped, bound=1e3)
    with pytest.raises(FixedPointOverflowError):
        fp.check_bound(wrapped, 1e3)
    fp.check_bound(fp.encode(np.array([3.25])), 1e3)


@given(st.floats(-1000, 1000), st.floats(-1000, 1000))
def test_product_decodes_with_double_fraction_bits(x: float, y: float) -> None:
    fp = FixedPoint()

    product = fp.encode(np.array([x])) * fp.encode(np.array([y]))

    err = abs(x) * fp.encode_error_bound + abs(y) * fp.encode_error_bound + 2.0**-30
    assert abs(fp.decode(product, frac_bits=2 * fp.frac_bits)[0] - x * y) <= err
    assert abs(x * y) < fp.max_abs_product


@given(hnp.arrays(np.int64, st.integers(0, 20)))
def test_signed_views_round_trip(values: np.ndarray) -> None:
    ring = from_signed(values)

    assert ring.dtype == np.uint64
    assert np.array_equal(to_signed(ring), values)


@pytest.mark.parametrize("bits", [-1, 32, 1.5, True, "16"])
def test_bad_frac_bits_raise(bits: object) -> None:
    with pytest.raises(ParameterError):
        FixedPoint(frac_bits=bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.array(["a"]), np.array([1 + 2j]), [object()], "text"])
def test_non_real_input_raises_encoding_error(bad: object) -> None:
    with pytest.raises(EncodingError):
        FixedPoint().encode(bad)  # type: ignore[arg-type]


def test_decode_rejects_non_ring_arrays() -> None:
    fp = FixedPoint()

    with pytest.raises(EncodingError):
        fp.decode(np.array([1.0]))  # type: ignore[arg-type]
    with pytest.raises(EncodingError):
        from_signed(np.array([1], dtype=np.uint64))  # type: ignore[arg-type]
    with pytest.raises(ParameterError):
        fp.decode(np.zeros(1, dtype=np.uint64), frac_bits=63)


def test_codec_is_a_frozen_value_with_documented_default() -> None:
    fp = FixedPoint()

    assert fp.frac_bits == DEFAULT_FRAC_BITS == 16
    assert fp == FixedPoint(16)
    assert fp.scale == 2**16
    assert fp.resolution == 2.0**-16
    assert fp.max_abs == 2.0**47
    assert fp.max_abs_product == 2.0**31
    with pytest.raises(AttributeError):
        fp.frac_bits = 20  # type: ignore[misc]
