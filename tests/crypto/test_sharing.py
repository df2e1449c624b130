"""Laws of additive sharing over Z_2^64: reconstruction, local linear ops, Beaver products,
truncation (with its failure rate measured), single-use triples and the wire format."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crypto.errors import (
    CryptoError,
    EncodingError,
    KeyMismatchError,
    ParameterError,
    SerializationError,
    TripleReuseError,
)
from crypto.fixedpoint import FixedPoint
from crypto.sharing import (
    BeaverMessage,
    ShareFrame,
    TripleDealer,
    TripleLedger,
    TripleShare,
    TruncationPairShare,
    add,
    add_public,
    beaver_finish,
    beaver_mask,
    beaver_multiply,
    beaver_open,
    matmul_public,
    mul_public,
    neg,
    public_matmul,
    random_ring,
    reconstruct,
    row_blocks,
    share,
    sub,
    truncate,
    truncate_2pc,
    truncation_failure_bound,
    truncation_failure_probability,
    truncation_finish,
    truncation_mask,
    truncation_open,
)

U64 = st.integers(0, 2**64 - 1)
parties = st.integers(2, 5)
seeds = st.integers(0, 2**32 - 1)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)


def ring_arrays(shape: st.SearchStrategy[tuple[int, ...]] = shapes) -> st.SearchStrategy:
    return hnp.arrays(np.uint64, shape, elements=U64)


def rng_of(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ sharing and linear ops


@given(ring_arrays(), parties, seeds)
def test_shares_reconstruct(values: np.ndarray, n: int, seed: int) -> None:
    shares = share(values, n, rng_of(seed))

    assert len(shares) == n
    assert all(s.shape == values.shape and s.dtype == np.uint64 for s in shares)
    assert np.array_equal(reconstruct(shares), values)


def test_shares_from_the_csprng_reconstruct_and_look_random() -> None:
    values = np.zeros(4096, dtype=np.uint64)

    shares = share(values, 3)

    assert np.array_equal(reconstruct(shares), values)
    assert len(np.unique(shares[1])) == 4096  # 2^-40-ish chance of a collision
    assert 0.45 < float(np.mean(shares[1] >> np.uint64(63))) < 0.55


@given(st.data(), parties, seeds)
def test_add_sub_neg_commute_with_reconstruct(data: st.DataObject, n: int, seed: int) -> None:
    shape = data.draw(shapes)
    x, y = data.draw(ring_arrays(st.just(shape))), data.draw(ring_arrays(st.just(shape)))
    xs, ys = share(x, n, rng_of(seed)), share(y, n, rng_of(seed + 1))

    sums = [add(a, b) for a, b in zip(xs, ys, strict=True)]
    diffs = [sub(a, b) for a, b in zip(xs, ys, strict=True)]
    negs = [neg(a) for a in xs]

    assert np.array_equal(reconstruct(sums), x + y)
    assert np.array_equal(reconstruct(diffs), x - y)
    assert np.array_equal(reconstruct(negs), np.uint64(0) - x)


@given(st.data(), parties, seeds, st.integers(-(2**63), 2**64 - 1))
def test_public_scalar_and_vector_ops_commute_with_reconstruct(
    data: st.DataObject, n: int, seed: int, scalar: int
) -> None:
    shape = data.draw(shapes)
    x = data.draw(ring_arrays(st.just(shape)))
    vector = data.draw(hnp.arrays(np.int64, shape[-1:]))
    xs = share(x, n, rng_of(seed))
    ring_scalar = np.uint64(scalar % 2**64)

    scaled = [mul_public(s, scalar) for s in xs]
    by_vector = [mul_public(s, vector) for s in xs]
    shifted = [add_public(s, vector, party) for party, s in enumerate(xs)]

    assert np.array_equal(reconstruct(scaled), x * ring_scalar)
    assert np.array_equal(reconstruct(by_vector), x * vector.view(np.uint64))
    assert np.array_equal(reconstruct(shifted), x + vector.view(np.uint64))


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3), parties, seeds, st.data())
def test_public_matrix_products_commute_with_reconstruct(
    rows: int, inner: int, cols: int, n: int, seed: int, data: st.DataObject
) -> None:
    x = data.draw(ring_arrays(st.just((rows, inner))))
    public_right = data.draw(hnp.arrays(np.int64, (inner, cols), elements=st.integers(-99, 99)))
    public_left = data.draw(hnp.arrays(np.int64, (cols, rows), elements=st.integers(-99, 99)))
    xs = share(x, n, rng_of(seed))

    right = [matmul_public(s, public_right) for s in xs]
    left = [public_matmul(public_left, s) for s in xs]

    assert np.array_equal(reconstruct(right), x @ public_right.view(np.uint64))
    assert np.array_equal(reconstruct(left), public_left.view(np.uint64) @ x)


def test_linear_ops_refuse_bad_inputs() -> None:
    x = np.zeros(3, dtype=np.uint64)

    with pytest.raises(EncodingError):
        add(x, np.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ParameterError):
        sub(x, np.zeros(4, dtype=np.uint64))
    with pytest.raises(EncodingError):
        mul_public(x, 1.5)
    with pytest.raises(EncodingError):
        mul_public(x, 2**64)
    with pytest.raises(ParameterError):
        mul_public(x, np.ones(4, dtype=np.int64))
    with pytest.raises(ParameterError):
        matmul_public(np.zeros((2, 3), dtype=np.uint64), np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ParameterError):
        share(x, 1)
    with pytest.raises(ParameterError):
        reconstruct([x])
    with pytest.raises(ParameterError):
        random_ring(3, rng=np.random.RandomState(0))  # type: ignore[arg-type]


# ------------------------------------------------------------------ Beaver multiplication


@given(st.data(), parties, seeds)
def test_beaver_elementwise_product_is_exact_in_the_ring(
    data: st.DataObject, n: int, seed: int
) -> None:
    shape = data.draw(shapes)
    x, y = data.draw(ring_arrays(st.just(shape))), data.draw(ring_arrays(st.just(shape)))
    dealer = TripleDealer(n, rng_of(seed))
    batch = dealer.elementwise_triple(shape)

    product = beaver_multiply(share(x, n, rng_of(seed + 1)), share(y, n, rng_of(seed + 2)), batch)

    assert np.array_equal(reconstruct(product), x * y)


@given(
    st.integers(1, 8), st.integers(1, 6), st.sampled_from([None, 1, 3]), parties, seeds, st.data()
)
def test_beaver_matrix_product_is_exact_in_the_ring(
    rows: int, inner: int, cols: int | None, n: int, seed: int, data: st.DataObject
) -> None:
    right_shape = (inner,) if cols is None else (inner, cols)
    x = data.draw(ring_arrays(st.just((rows, inner))))
    y = data.draw(ring_arrays(st.just(right_shape)))
    batch = TripleDealer(n, rng_of(seed)).matmul_triple((rows, inner), right_shape)

    product = beaver_multiply(share(x, n, rng_of(seed + 1)), share(y, n, rng_of(seed + 2)), batch)

    assert np.array_equal(reconstruct(product), x @ y)


@given(
    hnp.arrays(np.float64, (7, 4), elements=st.floats(-8, 8)),
    hnp.arrays(np.float64, (4,), elements=st.floats(-8, 8)),
    st.integers(2, 4),
)
def test_shared_fixed_point_dot_product_run_party_by_party(
    features: np.ndarray, weights: np.ndarray, n: int
) -> None:
    fp = FixedPoint()
    dealer = TripleDealer(n)  # CSPRNG path
    batches = dealer.matmul_triple_blocks((7, 4), (4,), block_rows=3)
    pairs = dealer.truncation_pairs(7, fp.frac_bits) if n > 2 else None
    xs, ws = share(fp.encode(features), n), share(fp.encode(weights), n)
    ledgers = [TripleLedger(i) for i in range(n)]
    out = [np.empty(7, dtype=np.uint64) for _ in range(n)]

    for (lo, hi), batch in zip(row_blocks(7, 3), batches, strict=True):
        triples = [batch.take(i) for i in range(n)]
        wire = [
            beaver_mask(xs[i][lo:hi], ws[i], triples[i], ledgers[i]).to_bytes() for i in range(n)
        ]
        opening = beaver_open([BeaverMessage.from_bytes(b) for b in wire])
        for i in range(n):
            out[i][lo:hi] = beaver_finish(triples[i], opening)
    logits = truncate(out, fp.frac_bits, pairs)

    result = fp.decode(reconstruct(logits), bound=1e3)
    bound = 4 * (16 * fp.encode_error_bound) + fp.resolution + 1e-9
    assert np.all(np.abs(result - features @ weights) <= bound)


# ------------------------------------------------------------------ single use of triples


def test_dealer_refuses_to_issue_an_id_twice() -> None:
    dealer = TripleDealer(2)
    dealer.elementwise_triple(3, triple_id="q1.step1")

    with pytest.raises(TripleReuseError):
        dealer.elementwise_triple(3, triple_id="q1.step1")
    with pytest.raises(TripleReuseError):
        dealer.truncation_pairs(3, 16, pair_id="q1.step1")


def test_batch_hands_each_party_share_out_once() -> None:
    batch = TripleDealer(2).elementwise_triple(3)
    x = share(np.arange(3, dtype=np.uint64), 2)
    beaver_multiply(x, x, batch)

    with pytest.raises(TripleReuseError):
        batch.take(0)
    with pytest.raises(TripleReuseError):
        beaver_multiply(x, x, batch)


def test_party_ledger_refuses_a_replayed_triple() -> None:
    batch = TripleDealer(2).elementwise_triple(2)
    triple = batch.take(0)
    replayed = TripleShare.from_bytes(triple.to_bytes())  # e.g. a dealer or network replay
    ledger = TripleLedger(0)
    x = np.array([5, 6], dtype=np.uint64)
    beaver_mask(x, x, triple, ledger)

    with pytest.raises(TripleReuseError):
        beaver_mask(x + np.uint64(1), x, replayed, ledger)
    assert ledger.is_consumed(triple.triple_id)
    assert len(ledger) == 1


def test_ledger_refuses_another_partys_triple() -> None:
    batch = TripleDealer(3).elementwise_triple(2)

    with pytest.raises(KeyMismatchError):
        TripleLedger(0).consume(batch.take(1))


def test_opening_refuses_mixed_or_incomplete_messages() -> None:
    dealer = TripleDealer(2)
    first, second = dealer.elementwise_triple(2), dealer.elementwise_triple(2)
    x = np.zeros(2, dtype=np.uint64)
    m0 = beaver_mask(x, x, first.take(0), TripleLedger(0))
    m1 = beaver_mask(x, x, second.take(1), TripleLedger(1))

    with pytest.raises(KeyMismatchError):
        beaver_open([m0, m1])
    with pytest.raises(KeyMismatchError):
        beaver_open([m0])


# ------------------------------------------------------------------ truncation


def _signed_overflow(shares: list[np.ndarray]) -> np.ndarray:
    signed = [s.view(np.int64).astype(object) for s in shares]
    exact = signed[0] + signed[1]
    return np.asarray((exact < -(2**63)) | (exact >= 2**63), dtype=bool)


@given(
    hnp.arrays(np.int64, st.integers(1, 30), elements=st.integers(-(2**50), 2**50)),
    st.integers(0, 30),
    seeds,
)
def test_2pc_truncation_is_within_one_unit_unless_shares_overflow(
    values: np.ndarray, frac_bits: int, seed: int
) -> None:
    shares = share(values.view(np.uint64), 2, rng_of(seed))

    truncated = reconstruct([truncate_2pc(s, i, frac_bits) for i, s in enumerate(shares)])

    error = np.abs(truncated.view(np.int64) - (values >> frac_bits))
    ok = ~_signed_overflow(shares)
    assert np.all(error[ok] <= 1)


@given(
    hnp.arrays(np.int64, st.integers(1, 30), elements=st.integers(-(2**40), 2**40)),
    st.integers(0, 30),
    st.integers(2, 5),
)
def test_dealer_pair_truncation_is_within_one_unit(
    values: np.ndarray, frac_bits: int, n: int
) -> None:
    dealer = TripleDealer(n)
    pairs = dealer.truncation_pairs(values.shape, frac_bits)
    shares = share(values.view(np.uint64), n)

    truncated = reconstruct(truncate(shares, frac_bits, pairs))

    # fails only with probability |x|/2^64 <= 2^-24 per element
    assert np.all(np.abs(truncated.view(np.int64) - (values >> frac_bits)) <= 1)


def test_dealer_pair_truncation_run_party_by_party_over_the_wire() -> None:
    dealer = TripleDealer(3)
    batch = dealer.truncation_pairs(4, 8)
    values = np.array([1000, -1000, 256, -257], dtype=np.int64)
    shares = share(values.view(np.uint64), 3)
    pairs = [TruncationPairShare.from_bytes(batch.take(i).to_bytes()) for i in range(3)]
    ledgers = [TripleLedger(i) for i in range(3)]

    frames = [truncation_mask(shares[i], pairs[i], ledgers[i]).to_bytes() for i in range(3)]
    opened = truncation_open([ShareFrame.from_bytes(f) for f in frames])
    result = reconstruct([truncation_finish(pairs[i], opened) for i in range(3)])

    assert np.all(np.abs(result.view(np.int64) - (values >> 8)) <= 1)
    with pytest.raises(TripleReuseError):
        truncation_mask(shares[0], pairs[0], ledgers[0])


def test_truncation_failure_rate_matches_the_stated_probability() -> None:
    samples, magnitude_bits, frac_bits = 200_000, 54, 16
    rng = rng_of(7)
    magnitudes = rng.integers(2**53, 2**54, size=samples, dtype=np.int64)
    values = magnitudes * np.where(rng.integers(0, 2, samples) == 0, -1, 1)
    shares = share(values.view(np.uint64), 2, rng)

    truncated = reconstruct(truncate(shares, frac_bits)).view(np.int64)

    failures = int(np.count_nonzero(np.abs(truncated - (values >> frac_bits)) > 1))
    expected = samples * truncation_failure_probability(float(np.mean(magnitudes)))
    assert 0.5 * expected <= failures <= 1.5 * expected  # expected ~146, sd ~12
    assert failures <= samples * truncation_failure_bound(magnitude_bits)


def test_truncation_needs_pairs_for_more_than_two_parties() -> None:
    shares = share(np.zeros(2, dtype=np.uint64), 3)

    with pytest.raises(ParameterError):
        truncate(shares, 16)
    with pytest.raises(ParameterError):
        truncate_2pc(shares[2], 2, 16)


def test_failure_probability_helpers() -> None:
    assert truncation_failure_bound(32) == 2.0**-31
    assert truncation_failure_probability(2.0**40) == 2.0**-24
    with pytest.raises(ParameterError):
        truncation_failure_bound(64)
    with pytest.raises(ParameterError):
        truncation_failure_probability(-1.0)


# ------------------------------------------------------------------ wire format


@given(ring_arrays(hnp.array_shapes(min_dims=0, max_dims=4, max_side=4)), parties, st.data())
def test_share_frame_round_trips(values: np.ndarray, n: int, data: st.DataObject) -> None:
    party = data.draw(st.integers(0, n - 1))
    tag = data.draw(st.from_regex(r"[A-Za-z0-9._:/-]{0,40}", fullmatch=True))
    frame = ShareFrame(values, party, n, tag)

    back = ShareFrame.from_bytes(frame.to_bytes())

    assert np.array_equal(back.values, values) and back.values.shape == values.shape
    assert (back.party, back.n_parties, back.tag) == (party, n, tag)


@given(parties, seeds, st.booleans())
def test_triple_shares_round_trip(n: int, seed: int, matrix: bool) -> None:
    dealer = TripleDealer(n, rng_of(seed))
    batch = dealer.matmul_triple((3, 2), (2,)) if matrix else dealer.elementwise_triple((2, 2))
    original = batch.take(n - 1)

    back = TripleShare.from_bytes(original.to_bytes())

    assert (back.triple_id, back.kind, back.party, back.n_parties) == (
        original.triple_id,
        original.kind,
        original.party,
        original.n_parties,
    )
    for a, b in ((back.a, original.a), (back.b, original.b), (back.c, original.c)):
        assert np.array_equal(a, b)


def _valid_messages() -> list[bytes]:
    dealer = TripleDealer(2, rng_of(1))
    triple = dealer.elementwise_triple(2, triple_id="t-1").take(0)
    pair = dealer.truncation_pairs(2, 16, pair_id="p-1").take(1)
    x = np.array([1, 2], dtype=np.uint64)
    message = beaver_mask(x, x, dealer.elementwise_triple(2).take(0), TripleLedger(0))
    return [
        ShareFrame(x, 0, 2, "s-1").to_bytes(),
        triple.to_bytes(),
        pair.to_bytes(),
        message.to_bytes(),
    ]


PARSERS = [
    ShareFrame.from_bytes,
    TripleShare.from_bytes,
    TruncationPairShare.from_bytes,
    BeaverMessage.from_bytes,
]


def _parse_only_raises_serialization_error(data: bytes) -> None:
    for parse in PARSERS:
        try:
            parse(data)
        except SerializationError:
            pass
        except CryptoError as exc:  # pragma: no cover - the failure we are looking for
            raise AssertionError(f"{parse.__qualname__} raised {exc!r}") from exc


def test_every_truncation_of_a_valid_message_raises_serialization_error() -> None:
    for data in _valid_messages():
        for cut in range(len(data)):
            for parse in PARSERS:
                with pytest.raises(SerializationError):
                    parse(data[:cut])


@given(st.sampled_from(range(4)), st.data())
def test_corrupted_messages_parse_or_raise_serialization_error(
    which: int, data: st.DataObject
) -> None:
    valid = bytearray(_valid_messages()[which])
    position = data.draw(st.integers(0, len(valid) - 1))
    valid[position] = data.draw(st.integers(0, 255))
    extra = data.draw(st.binary(max_size=8))

    _parse_only_raises_serialization_error(bytes(valid) + extra)


@given(st.binary(max_size=200))
def test_random_bytes_raise_serialization_error(garbage: bytes) -> None:
    for prefix in (b"", b"TSAS\x01"):
        for parse in PARSERS:
            with pytest.raises(SerializationError):
                parse(prefix + garbage)


def test_oversized_and_lying_headers_raise_serialization_error() -> None:
    frame = ShareFrame(np.zeros(100, dtype=np.uint64), 0, 2).to_bytes()
    huge_dims = struct.pack("<4sBBHHHHB", b"TSAS", 1, 1, 0, 2, 0, 0, 1) + struct.pack(
        "<BQQ", 2, 2**62, 2**62
    )
    too_many_dims = struct.pack("<4sBBHHHHB", b"TSAS", 1, 1, 0, 2, 0, 0, 1) + bytes([9])

    with pytest.raises(SerializationError):
        ShareFrame.from_bytes(frame, max_bytes=100)
    with pytest.raises(SerializationError):
        ShareFrame.from_bytes(huge_dims)
    with pytest.raises(SerializationError):
        ShareFrame.from_bytes(too_many_dims)
    with pytest.raises(SerializationError):
        ShareFrame.from_bytes("not bytes")  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        TripleShare.from_bytes(frame)  # right format, wrong kind


def test_inconsistent_payloads_raise_serialization_error() -> None:
    bad_party = struct.pack("<4sBBHHHHB", b"TSAS", 1, 1, 5, 2, 0, 0, 1) + struct.pack("<BQ", 1, 0)
    bad_tag = struct.pack("<4sBBHHHHB", b"TSAS", 1, 1, 0, 2, 0, 2, 1) + b"\xff\xfe"
    bad_tag += struct.pack("<BQ", 1, 0)

    with pytest.raises(SerializationError):
        ShareFrame.from_bytes(bad_party)
    with pytest.raises(SerializationError):
        ShareFrame.from_bytes(bad_tag)


def test_row_blocks_cover_the_rows_once() -> None:
    assert row_blocks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert row_blocks(0, 4) == []
    with pytest.raises(ParameterError):
        row_blocks(10, 0)
