"""Laws and refusals of crypto.ckks: CKKS within its stated tolerance, safe serialisation."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import ckks
from crypto.ckks import (
    PRESET_8192_DEPTH1,
    PRESET_16384_DEPTH6,
    PRESETS,
    CkksPreset,
    EncryptedVector,
    PublicContext,
    SecretContext,
    add,
    dot,
    encrypt_weights,
    mul_plain,
    mul_scalar,
    sum_slots,
    weighted_sum,
)
from crypto.errors import (
    DecryptionError,
    EncodingError,
    KeyMismatchError,
    ParameterError,
    SerializationError,
)

P = PRESET_8192_DEPTH1
SLOTS = P.slots
BOUND = P.input_bound
TOL = P.linear_tolerance

reals = st.floats(min_value=-BOUND, max_value=BOUND, allow_nan=False, allow_infinity=False)


@pytest.fixture(scope="module")
def sk() -> SecretContext:
    return SecretContext.generate(P)


@pytest.fixture(scope="module")
def pub(sk: SecretContext) -> PublicContext:
    # The evaluator receives bytes, as across institutions.
    return PublicContext.load(sk.public_context().serialize())


@pytest.fixture(scope="module")
def pub_galois(sk: SecretContext) -> PublicContext:
    return PublicContext.load(sk.public_context(galois_keys=True).serialize())


@pytest.fixture(scope="module")
def other_sk() -> SecretContext:
    return SecretContext.generate(P)


@pytest.fixture(scope="module")
def sk16() -> SecretContext:
    return SecretContext.generate(PRESET_16384_DEPTH6)


# --------------------------------------------------------------------------- presets


def test_exported_names_exist() -> None:
    assert all(hasattr(ckks, name) for name in ckks.__all__)


@pytest.mark.parametrize("preset", list(PRESETS.values()), ids=list(PRESETS))
def test_presets_meet_128_bit_security_table(preset: CkksPreset) -> None:
    bound = {8192: 218, 16384: 438}[preset.poly_modulus_degree]
    assert preset.total_bits <= bound
    assert preset.depth >= 1
    assert preset.slots == preset.poly_modulus_degree // 2
    assert 0.5 * 10.0**-preset.default_decimals < preset.linear_tolerance


@pytest.mark.parametrize(
    ("n", "bits", "scale"),
    [
        (8192, (60, 40, 40, 40, 60), 40),  # 240 > 218 bits
        (16384, (60, 60, 60, 60, 60, 60, 60, 60), 60),  # 480 > 438 bits
        (4096, (40, 20, 40), 20),  # ring too small for our use
        (8192, (60, 40, 30, 60), 40),  # middle primes must equal the scale
        (8192, (40, 40, 40), 40),  # no headroom above the scale
    ],
)
def test_insecure_or_inconsistent_parameters_refused(
    n: int, bits: tuple[int, ...], scale: int
) -> None:
    with pytest.raises(ParameterError):
        CkksPreset("custom", n, bits, scale)


# --------------------------------------------------------------------------- encrypt / decrypt


@given(st.lists(reals, max_size=64))
def test_decrypt_encrypt_within_tolerance(
    sk: SecretContext, pub: PublicContext, values: list[float]
) -> None:
    v = np.array(values, dtype=np.float64)
    out = sk.decrypt(pub.encrypt(v))
    assert out.shape == v.shape
    assert np.all(np.abs(out - v) <= P.encrypt_tolerance + 0.5 * 10.0**-P.default_decimals)


@given(st.lists(reals, min_size=1, max_size=16), st.integers(min_value=0, max_value=5))
@settings(max_examples=15)
def test_decryption_is_rounded_before_release(
    sk: SecretContext, values: list[float], decimals: int
) -> None:
    out = sk.decrypt(sk.encrypt(values), decimals=decimals)
    assert np.array_equal(out, np.round(out, decimals))
    assert np.all(np.abs(out - np.array(values)) <= 0.5 * 10.0**-decimals + P.encrypt_tolerance)


def test_decimals_finer_than_precision_refused(sk: SecretContext) -> None:
    with pytest.raises(ParameterError):
        sk.decrypt(sk.encrypt([1.0]), decimals=P.default_decimals + 1)


@pytest.mark.parametrize("n", [0, 1, SLOTS - 1, SLOTS, SLOTS + 1, 3 * SLOTS])
def test_long_vectors_split_and_reassemble(
    sk: SecretContext, pub: PublicContext, n: int, rng: np.random.Generator
) -> None:
    v = rng.uniform(-BOUND, BOUND, n)
    enc = pub.encrypt(v)
    assert enc.n_chunks == -(-n // SLOTS)
    back = sk.decrypt(pub.load_vector(enc.serialize()))
    assert back.shape == (n,)
    assert np.all(np.abs(back - v) <= TOL)


def test_out_of_range_or_non_finite_values_refused(pub: PublicContext) -> None:
    for bad in ([float("nan")], [float("inf")], [P.result_bound], [[1.0, 2.0]]):
        with pytest.raises(EncodingError):
            pub.encrypt(bad)


# --------------------------------------------------------------------------- homomorphic laws


@given(st.lists(st.tuples(reals, reals), max_size=40))
@settings(max_examples=20)
def test_homomorphic_add(
    sk: SecretContext, pub: PublicContext, pairs: list[tuple[float, float]]
) -> None:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    out = sk.decrypt(add(pub.encrypt(a), pub.encrypt(b)))
    assert np.all(np.abs(out - (a + b)) <= TOL)


@given(st.lists(st.tuples(reals, reals), min_size=1, max_size=40), reals)
@settings(max_examples=20)
def test_ct_times_plain_vector_and_scalar(
    sk: SecretContext, pub: PublicContext, pairs: list[tuple[float, float]], c: float
) -> None:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    enc = pub.encrypt(a)
    rel = ckks.RESCALE_RELATIVE_ERROR
    assert np.all(np.abs(sk.decrypt(mul_plain(enc, b)) - a * b) <= TOL + rel * np.abs(a * b))
    assert np.all(np.abs(sk.decrypt(mul_scalar(enc, c)) - a * c) <= TOL + rel * np.abs(a * c))


@given(
    st.integers(min_value=1, max_value=8).flatmap(
        lambda k: st.tuples(
            st.lists(reals, min_size=k, max_size=k),
            st.integers(min_value=0, max_value=200),
            st.integers(min_value=0, max_value=2**32 - 1),
        )
    )
)
@settings(max_examples=15)
def test_weighted_sum_matches_numpy(
    sk: SecretContext, pub: PublicContext, case: tuple[list[float], int, int]
) -> None:
    weights, n, seed = case
    w = np.array(weights)
    x = np.random.default_rng(seed).uniform(-BOUND, BOUND, (n, w.size))
    enc_w = pub.load_vector(encrypt_weights(sk, w).serialize())
    out = sk.decrypt(pub.load_vector(weighted_sum(pub, enc_w, x).serialize()))
    assert np.all(np.abs(out - x @ w) <= TOL)


@given(
    n=st.integers(min_value=1, max_value=12),
    zero_columns=st.lists(st.booleans(), min_size=1, max_size=4),
    constant=st.sampled_from([0.0, 1.0, -3.5]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
@settings(max_examples=12)
def test_weighted_sum_with_zero_or_constant_columns_and_few_entities(
    sk: SecretContext,
    pub: PublicContext,
    n: int,
    zero_columns: list[bool],
    constant: float,
    seed: int,
) -> None:
    # One applicant, or a block whose column is all zero (a provider's flag nobody has): SEAL
    # cannot multiply by an all-zero plaintext, so such columns must still give the exact sum.
    rng = np.random.default_rng(seed)
    k = len(zero_columns)
    x = rng.uniform(-BOUND, BOUND, (n, k))
    for j, zero in enumerate(zero_columns):
        if zero:
            x[:, j] = 0.0
    x[:, 0] = constant if not zero_columns[0] else 0.0
    w = rng.uniform(-4.0, 4.0, k)
    enc_w = pub.load_vector(encrypt_weights(sk, w).serialize())
    out = sk.decrypt(weighted_sum(pub, enc_w, x))
    assert out.shape == (n,)
    assert np.all(np.abs(out - x @ w) <= TOL)


def test_weighted_sum_across_chunk_boundary_and_providers(
    sk: SecretContext,
    pub: PublicContext,
    rng: np.random.Generator,
) -> None:
    w1, w2 = rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 5)
    x1, x2 = rng.normal(size=(SLOTS + 7, 20)), rng.normal(size=(SLOTS + 7, 5))
    partial1 = weighted_sum(pub, encrypt_weights(sk, w1), x1)
    partial2 = weighted_sum(pub, encrypt_weights(sk, w2), x2, rerandomize=False)
    total = sk.decrypt(add(partial1, partial2))
    assert np.all(np.abs(total - (x1 @ w1 + x2 @ w2)) <= TOL)


def test_party_held_partials_sum(
    sk: SecretContext, pub: PublicContext, rng: np.random.Generator
) -> None:
    z1, z2 = rng.normal(size=SLOTS + 3), rng.normal(size=SLOTS + 3)
    total = sk.decrypt(add(pub.encrypt(z1), pub.load_vector(pub.encrypt(z2).serialize())))
    assert np.all(np.abs(total - (z1 + z2)) <= TOL)


def test_lazy_and_fresh_scales_do_not_mix(sk: SecretContext, pub: PublicContext) -> None:
    lazy = weighted_sum(pub, encrypt_weights(sk, [1.0]), np.ones((3, 1)))
    with pytest.raises(EncodingError):
        add(lazy, pub.encrypt([1.0, 2.0, 3.0]))
    with pytest.raises(EncodingError):
        mul_scalar(lazy, 2.0)


def test_weighted_sum_rejects_bad_inputs(sk: SecretContext, pub: PublicContext) -> None:
    w = encrypt_weights(sk, [1.0, 2.0])
    with pytest.raises(EncodingError):
        weighted_sum(pub, w, np.ones((4, 3)))
    with pytest.raises(EncodingError):
        weighted_sum(pub, sk.encrypt([1.0, 2.0]), np.ones((4, 2)))


def test_weighted_sum_in_two_processes_equals_serial(
    sk: SecretContext, pub: PublicContext, rng: np.random.Generator
) -> None:
    w = encrypt_weights(sk, rng.uniform(-1, 1, 4))
    x = rng.normal(size=(2 * SLOTS + 11, 4))
    serial = sk.decrypt(weighted_sum(pub, w, x))
    parallel = sk.decrypt(weighted_sum(pub, w, x, workers=2))
    assert np.all(np.abs(serial - parallel) <= TOL)


def test_sum_and_dot_with_galois_keys(
    sk: SecretContext, pub_galois: PublicContext, rng: np.random.Generator
) -> None:
    n = 2 * SLOTS + 5
    indicator = (rng.random(n) < 0.3).astype(np.float64)
    column = rng.uniform(0, 10, n)
    enc_ind = pub_galois.load_vector(sk.encrypt(indicator).serialize())
    total = sk.decrypt(dot(pub_galois, enc_ind, column))
    expected = indicator @ column
    assert abs(total[0] - expected) <= 1e-3 + ckks.RESCALE_RELATIVE_ERROR * abs(expected)
    count = sk.decrypt(sum_slots(pub_galois, enc_ind))
    assert abs(count[0] - indicator.sum()) <= 1e-3


def test_sums_without_galois_keys_refused(sk: SecretContext, pub: PublicContext) -> None:
    assert not pub.has_galois_keys
    with pytest.raises(ParameterError):
        sum_slots(pub, pub.encrypt([1.0, 2.0]))


def test_16384_preset_round_trip_and_linear_combination(
    sk16: SecretContext, rng: np.random.Generator
) -> None:
    p16 = sk16.public_context()
    w, x = rng.uniform(-4, 4, 6), rng.uniform(-4, 4, (PRESET_16384_DEPTH6.slots + 2, 6))
    out = sk16.decrypt(weighted_sum(p16, encrypt_weights(sk16, w), x))
    assert np.all(np.abs(out - x @ w) <= PRESET_16384_DEPTH6.linear_tolerance)


# --------------------------------------------------------------------------- key separation


def test_public_context_cannot_decrypt(sk: SecretContext) -> None:
    loaded = PublicContext.load(sk.serialize())  # the default serialisation is the public one
    enc = loaded.encrypt([1.0, 2.0])
    assert not loaded.tenseal_context.has_secret_key()
    with pytest.raises(DecryptionError):
        loaded.decrypt(enc)
    with pytest.raises(ValueError, match="secret"):  # and TenSEAL itself has nothing to use
        enc.chunks[0].decrypt()


def test_public_bytes_contain_no_secret_key(sk: SecretContext) -> None:
    body = _context_body(sk.public_context(galois_keys=True).serialize())
    assert not ts.context_from(body).has_secret_key()
    secret_body = _context_body(sk.serialize(dangerously_include_secret_key=True))
    assert ts.context_from(secret_body).has_secret_key()
    with pytest.raises(SerializationError):
        SecretContext.load(sk.serialize())  # public bytes never pass as a secret context


def test_only_needed_evaluation_keys_shipped(sk: SecretContext) -> None:
    plain = PublicContext.load(sk.public_context().serialize()).tenseal_context
    assert not plain.has_galois_keys() and not plain.has_relin_keys()
    relin = PublicContext.load(sk.public_context(relin_keys=True).serialize()).tenseal_context
    assert relin.has_relin_keys() and not relin.has_galois_keys()


def test_secret_export_round_trip(sk: SecretContext) -> None:
    again = SecretContext.load(sk.serialize(dangerously_include_secret_key=True))
    assert again.fingerprint == sk.fingerprint
    assert np.all(np.abs(again.decrypt(sk.encrypt([3.5])) - 3.5) <= TOL)


def test_wrong_key_refused(sk: SecretContext, pub: PublicContext, other_sk: SecretContext) -> None:
    enc = other_sk.encrypt([1.0])
    with pytest.raises(KeyMismatchError):
        sk.decrypt(enc)
    with pytest.raises(KeyMismatchError):
        pub.load_vector(enc.serialize())
    with pytest.raises(KeyMismatchError):
        weighted_sum(pub, encrypt_weights(other_sk, [1.0]), np.ones((2, 1)))


# --------------------------------------------------------------------------- serialisation


def test_copy_is_independent(sk: SecretContext, pub: PublicContext) -> None:
    enc = pub.encrypt([1.0, 2.0])
    twin = enc.copy()
    twin.chunks[0].add_(pub.encrypt([10.0, 10.0]).chunks[0])
    assert np.allclose(sk.decrypt(enc), [1.0, 2.0], atol=TOL)
    assert np.allclose(sk.decrypt(twin), [11.0, 12.0], atol=TOL)


@given(st.lists(reals, max_size=32))
@settings(max_examples=15)
def test_bytes_round_trip(sk: SecretContext, pub: PublicContext, values: list[float]) -> None:
    enc = pub.encrypt(values)
    data = enc.serialize()
    again = pub.load_vector(data)
    assert again.serialize() == data
    assert np.all(np.abs(sk.decrypt(again) - np.array(values)) <= TOL)


@pytest.fixture(scope="module")
def valid_bytes(pub: PublicContext) -> bytes:
    return pub.encrypt(np.arange(SLOTS + 3, dtype=np.float64)).serialize()


@given(cut=st.integers(min_value=0, max_value=10**9))
@settings(max_examples=30)
def test_truncated_bytes_raise_serialization_error(
    pub: PublicContext, valid_bytes: bytes, cut: int
) -> None:
    prefix = valid_bytes[: cut % len(valid_bytes)]
    with pytest.raises(SerializationError):
        pub.load_vector(prefix)


@given(st.binary(max_size=200))
@settings(max_examples=30)
def test_garbage_bytes_raise_serialization_error(pub: PublicContext, junk: bytes) -> None:
    with pytest.raises(SerializationError):
        pub.load_vector(junk)


def _with_header(valid: bytes, **changes: object) -> bytes:
    fields = dict(
        zip(
            ("magic", "version", "layout", "fp", "length", "scale", "count"),
            struct.unpack_from(">4sBB32sQHI", valid),
            strict=True,
        )
    )
    fields.update(changes)
    return struct.pack(">4sBB32sQHI", *fields.values()) + valid[struct.calcsize(">4sBB32sQHI") :]


@pytest.mark.parametrize(
    "change",
    [
        {"magic": b"XXXX"},
        {"version": 9},
        {"layout": 7},
        {"length": 10 * SLOTS},
        {"count": 1},
        {"scale": 13},
    ],
)
def test_inconsistent_headers_refused(
    pub: PublicContext, valid_bytes: bytes, change: dict[str, object]
) -> None:
    with pytest.raises(SerializationError):
        pub.load_vector(_with_header(valid_bytes, **change))


def test_wrong_fingerprint_in_header_is_key_mismatch(
    pub: PublicContext, valid_bytes: bytes
) -> None:
    with pytest.raises(KeyMismatchError):
        pub.load_vector(_with_header(valid_bytes, fp=b"\x00" * 32))


def test_oversized_trailing_and_corrupt_chunks_refused(
    pub: PublicContext, valid_bytes: bytes
) -> None:
    with pytest.raises(SerializationError):
        pub.load_vector(valid_bytes, max_bytes=len(valid_bytes) - 1)
    with pytest.raises(SerializationError):
        pub.load_vector(valid_bytes + b"\x00")
    header = struct.calcsize(">4sBB32sQHI")
    body_start = header + 4
    corrupt = bytearray(valid_bytes)
    corrupt[body_start : body_start + 64] = b"\xff" * 64
    with pytest.raises(SerializationError):
        pub.load_vector(bytes(corrupt))
    empty_chunk = _with_header(valid_bytes, count=1, length=1)[:header] + struct.pack(">I", 0)
    with pytest.raises(SerializationError):
        pub.load_vector(empty_chunk)


def test_ciphertext_of_wrong_slot_count_refused(pub: PublicContext) -> None:
    # Valid ciphertexts of 5 values cannot pose as the full chunks of a longer vector.
    short = ts.ckks_vector(pub.tenseal_context, [1.0] * 5)
    forged = EncryptedVector((short, short), SLOTS + 5, P.scale_bits, pub.fingerprint)
    with pytest.raises(SerializationError):
        pub.load_vector(forged.serialize())


def test_malformed_context_bytes_refused(sk: SecretContext) -> None:
    good = sk.public_context().serialize()
    for bad in (b"", good[:10], b"XXXX" + good[4:], good[:-1], good + b"\x00"):
        with pytest.raises(SerializationError):
            PublicContext.load(bad)
    with pytest.raises(SerializationError):
        PublicContext.load(good, max_bytes=len(good) - 1)


def test_context_header_declaring_weak_parameters_refused(sk: SecretContext) -> None:
    good = bytearray(sk.public_context().serialize())
    offset = struct.calcsize(">4sBBIBB")
    good[offset] = 60
    good[offset + 1] = 60  # declares 60+60+60 = 180 bits but scale 40 -> inconsistent middle prime
    with pytest.raises((ParameterError, SerializationError)):
        PublicContext.load(bytes(good))


def _context_body(data: bytes) -> bytes:
    n_primes = data[struct.calcsize(">4sBBI") + 1]
    offset = struct.calcsize(">4sBBIBB") + n_primes
    offset += 1 + data[offset] + 8
    return data[offset:]


def test_encrypted_vector_is_frozen(pub: PublicContext) -> None:
    enc = pub.encrypt([1.0])
    with pytest.raises(AttributeError):
        enc.length = 5  # type: ignore[misc]
    assert isinstance(enc, EncryptedVector)
