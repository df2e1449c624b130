"""The fold of a model trained on standardised columns back to the raw scale.

Laws: a party's standardised logits equal its folded raw logits; the intercept shares sum to
the negated correction; the analyst-held masked fold (Paillier) gives the bank the folded
weights and its share of the correction — for means and scales anywhere from ``10^-12`` to
``10^12``, zero and constant columns, weights up to the training's bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import paillier
from trusted_space.errors import ValidationError
from trusted_space.protocols.train.fold import (
    check_standardised,
    fold,
    masked_fold,
    masked_request,
    masked_result,
    split_offset,
    standardise,
)
from trusted_space.protocols.train_mpc import FRAC_BITS, decode_ring, encode_ring


@pytest.fixture(scope="module")
def engine() -> Any:
    public, private = paillier.generate_keypair(2048)
    with paillier.PaillierEngine(public, private, workers=0) as bank:
        yield bank


@st.composite
def columns(draw: st.DrawFn) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """A raw block (n by k) of any magnitudes, and trained standardised weights."""
    n = draw(st.integers(1, 30))
    k = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    block = []
    for _ in range(k):
        kind = draw(st.sampled_from(["raw", "raw", "zero", "constant"]))
        magnitude = 10.0 ** draw(st.integers(-12, 12))
        if kind == "raw":
            block.append(rng.normal(draw(st.floats(-3, 3)) * magnitude, magnitude, n))
        elif kind == "zero":
            block.append(np.zeros(n))
        else:
            block.append(np.full(n, magnitude))
    weights = np.array([draw(st.floats(-100, 100)) for _ in range(k)])
    return np.column_stack(block), weights


@settings(max_examples=50, deadline=None)
@given(case=columns())
def test_the_fold_keeps_every_logit(case: Any) -> None:
    x, w = case
    standard = standardise(x)
    raw_w, correction = fold(w, standard.mean, standard.scale)
    logits = standard.z @ w
    folded = x @ raw_w - correction
    scale = np.abs(x) @ np.abs(raw_w) + abs(correction) + 1.0
    assert np.all(np.abs(folded - logits) <= 1e-9 * scale)
    u, v = split_offset(correction)
    assert decode_ring(np.array([u]) + np.array([v]))[0] == pytest.approx(
        -correction, abs=2.0**-FRAC_BITS
    )


@settings(max_examples=10, deadline=None)
@given(case=columns(), seed=st.integers(0, 2**32 - 1))
def test_the_masked_fold_gives_the_bank_the_folded_weights_only(
    case: Any, seed: int, engine: paillier.PaillierEngine
) -> None:
    x, w = case
    standard = standardise(x)
    shares = np.random.default_rng(seed).integers(0, 2**64, size=len(w), dtype=np.uint64)
    ring = encode_ring(w)
    share_b = (ring - shares).astype(np.uint64)
    public = paillier.PaillierEngine(engine.public_key, workers=0)

    request = masked_request(shares, engine)
    folded, offset = masked_fold(
        request.masked, share_b, request.encrypted, standard.mean, standard.scale, public
    )
    weights, mine = masked_result(folded, len(w), engine)

    expected, correction = fold(decode_ring(ring), standard.mean, standard.scale)
    assert np.allclose(weights, expected, rtol=1e-12, atol=0.0)
    total = decode_ring(np.array([offset]) + np.array([mine]))[0]
    assert total == pytest.approx(-correction, abs=2.0**-FRAC_BITS)
    # what the provider saw (masked + its share) is the weight plus the bank's mask
    seen = (request.masked + share_b).astype(np.uint64)
    assert not np.array_equal(seen, ring)


def test_a_constant_column_folds_to_nothing_and_a_barely_varying_one_is_refused() -> None:
    x = np.column_stack([np.full(4, 1e12), [2014.0, 2015.0, 2013.0, 2014.0]])
    standard = standardise(x)
    assert np.all(standard.z[:, 0] == 0.0)
    assert fold([3.0, 0.5], standard.mean, standard.scale)[0][0] == 0.0
    check_standardised(standard, ["constant", "year"], 64.0)  # 2014 is 2848 sd from zero

    barely = standardise(np.array([[1e12], [1e12 + 1.0]]))
    with pytest.raises(ValidationError, match="column 'balance' varies too little"):
        check_standardised(barely, ["balance"], 64.0)
    with pytest.raises(ValidationError, match="column 'year': its standardised values exceed"):
        check_standardised(standard, ["constant", "year"], 1.0)
