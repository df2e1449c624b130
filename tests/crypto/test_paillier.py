"""Laws and hostile-input tests for crypto.paillier (keys generated once per module)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator

import gmpy2
import numpy as np
import phe
import phe.command_line
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import _paillier_kernels
from crypto.errors import (
    CryptoError,
    KeyMismatchError,
    PackingError,
    ParameterError,
    SerializationError,
)
from crypto.paillier import (
    CiphertextVector,
    IntegerCodec,
    ObfuscatorPool,
    PackedCiphertexts,
    PackingLayout,
    PaillierEngine,
    PaillierPrivateKey,
    PaillierPublicKey,
    generate_keypair,
)

F = 32
FIXED_BASE_FROM = 2 * (64 + 1)
reals = st.floats(min_value=-1000.0, max_value=1000.0, allow_nan=False, allow_infinity=False)


@pytest.fixture(scope="module")
def keys() -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    return generate_keypair(2048)


@pytest.fixture(scope="module")
def other_keys() -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    return generate_keypair(2048)


@pytest.fixture(scope="module")
def engine(keys: tuple[PaillierPublicKey, PaillierPrivateKey]) -> Iterator[PaillierEngine]:
    pub, priv = keys
    with PaillierEngine(pub, priv, codec=IntegerCodec(F), workers=0) as eng:
        eng.prefill(64)
        yield eng


def _pheutil_key(bits: int) -> dict[str, object]:
    out = io.StringIO()
    out.name = "<memory>"
    phe.command_line.generate_keypair.callback(bits, None, out)
    return json.loads(out.getvalue())


# --------------------------------------------------------------------------- keys


def test_key_generation_refuses_short_keys() -> None:
    with pytest.raises(ParameterError):
        generate_keypair(1024)


def test_public_key_refuses_short_modulus() -> None:
    pub, _ = phe.generate_paillier_keypair(n_length=512)
    with pytest.raises(ParameterError):
        PaillierPublicKey(pub.n)


def test_pheutil_small_key_is_refused() -> None:
    jwk = _pheutil_key(512)
    with pytest.raises(ParameterError):
        PaillierPrivateKey.from_jwk(jwk)
    with pytest.raises(ParameterError):
        PaillierPublicKey.from_jwk(json.dumps(jwk["pub"]))


def test_pheutil_2048_key_loads_and_interoperates() -> None:
    jwk = _pheutil_key(2048)
    priv = PaillierPrivateKey.from_jwk(json.dumps(jwk).encode())
    pub = PaillierPublicKey.from_jwk(jwk["pub"])
    assert priv.public_key == pub
    # a ciphertext made by phe under the pheutil key decrypts here
    phe_pub = phe.PaillierPublicKey(pub.n)
    raw = phe_pub.raw_encrypt(12345)
    ct = CiphertextVector((raw,), pub.key_id, 0)
    with PaillierEngine(pub, priv, workers=0) as eng:
        assert eng.decrypt_ints(ct) == [12345]


def test_key_jwk_round_trip(keys: tuple[PaillierPublicKey, PaillierPrivateKey]) -> None:
    pub, priv = keys
    assert PaillierPublicKey.load(pub.serialize()) == pub
    assert PaillierPrivateKey.load(priv.export_secret()) == priv
    jwk = pub.to_jwk()
    assert jwk["kty"] == "DAJ" and jwk["alg"] == "PAI-GN1" and jwk["key_ops"] == ["encrypt"]
    assert phe.util.base64_to_int(jwk["n"]) == pub.n


def test_private_key_with_wrong_factors(
    keys: tuple[PaillierPublicKey, PaillierPrivateKey],
    other_keys: tuple[PaillierPublicKey, PaillierPrivateKey],
) -> None:
    jwk = keys[1].to_jwk()
    jwk["pub"] = other_keys[0].to_jwk()
    with pytest.raises(KeyMismatchError):
        PaillierPrivateKey.from_jwk(jwk)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"{",
        b"[]",
        b"\xff\xfe",
        b'{"kty": "RSA", "n": "AQAB"}',
        b'{"kty": "DAJ", "alg": "PAI-GN1", "key_ops": ["encrypt"], "n": "***"}',
        b'{"kty": "DAJ", "alg": "PAI-GN1", "key_ops": ["encrypt"], "n": 5}',
        b'{"kty": "DAJ", "alg": "PAI-GN1", "key_ops": ["sign"], "n": "AQAB"}',
    ],
)
def test_malformed_public_key(blob: bytes) -> None:
    with pytest.raises(SerializationError):
        PaillierPublicKey.from_jwk(blob)


# --------------------------------------------------------------------------- laws


@given(st.lists(reals, min_size=1, max_size=8))
def test_decrypt_encrypt_is_identity(engine: PaillierEngine, xs: list[float]) -> None:
    out = engine.decrypt(engine.encrypt(xs))
    assert np.all(np.abs(out - np.asarray(xs)) <= 2.0**-F)


@given(st.lists(st.tuples(reals, reals), min_size=1, max_size=6))
def test_homomorphic_add(engine: PaillierEngine, pairs: list[tuple[float, float]]) -> None:
    a, b = (np.asarray(v) for v in zip(*pairs, strict=True))
    out = engine.decrypt(engine.add(engine.encrypt(a), engine.encrypt(b)))
    assert np.all(np.abs(out - (a + b)) <= 2.0 ** (1 - F))


@settings(max_examples=25)
@given(st.lists(st.tuples(reals, reals), min_size=1, max_size=4))
def test_homomorphic_scalar_mul(engine: PaillierEngine, pairs: list[tuple[float, float]]) -> None:
    a, x = (np.asarray(v) for v in zip(*pairs, strict=True))
    ct = engine.mul_scalar(engine.encrypt(a), x)
    assert ct.exponent == -2 * F
    tol = 2.0 ** (-F) * (np.abs(a) + np.abs(x) + 1)
    assert np.all(np.abs(engine.decrypt(ct) - a * x) <= tol)


bounded = st.floats(min_value=-8.0, max_value=8.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=15)
@given(st.integers(1, 4), st.integers(1, 60), st.data())
def test_packed_weighted_sum_equals_unpacked(
    engine: PaillierEngine, k: int, m: int, data: st.DataObject
) -> None:
    w = np.asarray(data.draw(st.lists(bounded, min_size=k, max_size=k)))
    x = np.asarray(data.draw(st.lists(bounded, min_size=m * k, max_size=m * k))).reshape(m, k)
    method = data.draw(st.sampled_from(["bucket", "straus", "powmod"]))
    layout = engine.weighted_sum_layout(8.0, 8.0, k)
    ew = engine.encrypt(w)
    packed = engine.packed_linear_combination(ew, x, layout, method=method)
    assert packed.ciphertexts.exponent == -2 * F
    got = engine.decrypt_packed(packed)
    # exact in the integer domain: compare with the integer products of the encoded values
    wq = np.asarray(engine.codec.encode(w), dtype=object)
    xq = np.asarray(engine.codec.encode(x), dtype=object).reshape(m, k)
    exact = [float(v) * 2.0 ** (-2 * F) for v in xq.dot(wq)]
    assert np.allclose(got, exact, rtol=0, atol=1e-12)
    assert np.all(np.abs(got - x @ w) <= 1e-6)
    if m <= 3:
        unpacked = engine.decrypt(engine.linear_combination(ew, x))
        assert np.allclose(got, unpacked, rtol=0, atol=1e-12)


@settings(max_examples=50)
@given(
    st.integers(2, 8),
    st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=6),
    st.sampled_from([2, 3, 1013 * 7 + 1]),
)
def test_bucket_block_with_balanced_digits_is_the_multi_exponentiation(
    window: int, xs: list[int], base: int
) -> None:
    n = 1009 * 1013
    n2, slot_bits = n * n, 22
    windows = -(-(21 + 1) // window)  # |x| < 2**21, one more bit for the carry
    pos, neg = _paillier_kernels.fixed_base_table(n2, base, len(xs), slot_bits, windows, window)
    column = np.asarray(xs, dtype=np.int64).reshape(-1, 1)
    got = _paillier_kernels.bucket_block(n2, pos + neg, column, windows, window, len(xs))
    packed = sum(x << (i * slot_bits) for i, x in enumerate(xs))
    assert got == _paillier_kernels.multiexp_powmod(n2, [base], [packed])


@settings(max_examples=20)
@given(st.lists(st.tuples(bounded, bounded, bounded), min_size=1, max_size=70))
def test_packed_sum_equals_unpacked(
    engine: PaillierEngine, triples: list[tuple[float, float, float]]
) -> None:
    a, b, c = (np.asarray(v) for v in zip(*triples, strict=True))
    layout = engine.sum_layout(8.0, addends=3)
    total = engine.add_packed(
        engine.add_packed(engine.encrypt_packed(a, layout), engine.encrypt_packed(b, layout)),
        engine.encrypt_packed(c, layout),
    )
    assert np.all(np.abs(engine.decrypt_packed(total) - (a + b + c)) <= 3 * 2.0**-F)


@given(st.lists(st.floats(min_value=-1e12, max_value=1e12), min_size=1, max_size=5))
def test_serialised_ciphertexts_carry_the_fixed_exponent(
    engine: PaillierEngine, xs: list[float]
) -> None:
    doc = json.loads(engine.encrypt(xs).serialize())
    assert doc["e"] == -F


@given(st.lists(reals, min_size=0, max_size=5))
def test_ciphertext_serialisation_round_trip(engine: PaillierEngine, xs: list[float]) -> None:
    ct = engine.encrypt(xs)
    pub = engine.public_key
    assert CiphertextVector.load(ct.serialize(), pub, exponent=-F) == ct
    assert CiphertextVector.load(ct.to_json(), pub, exponent=-F) == ct


def test_packed_serialisation_round_trip(engine: PaillierEngine) -> None:
    layout = engine.weighted_sum_layout(8.0, 8.0, 2)
    packed = engine.packed_linear_combination(engine.encrypt([1.0, -2.0]), np.ones((30, 2)), layout)
    blob = packed.serialize()
    assert PackedCiphertexts.load(blob, engine.public_key, layout) == packed
    with pytest.raises(SerializationError):
        PackedCiphertexts.load(blob, engine.public_key, engine.weighted_sum_layout(8.0, 4.0, 2))


# --------------------------------------------------------------------------- hostile input


def test_wrong_exponent_refused(engine: PaillierEngine) -> None:
    blob = engine.encrypt([1.0]).serialize()
    with pytest.raises(SerializationError):
        CiphertextVector.load(blob, engine.public_key, exponent=-2 * F)


def test_wrong_key_refused(
    engine: PaillierEngine, other_keys: tuple[PaillierPublicKey, PaillierPrivateKey]
) -> None:
    blob = engine.encrypt([1.0]).serialize()
    with pytest.raises(KeyMismatchError):
        CiphertextVector.load(blob, other_keys[0], exponent=-F)
    foreign = CiphertextVector((5,), other_keys[0].key_id, -F)
    with pytest.raises(KeyMismatchError):
        engine.decrypt(foreign)


def test_out_of_range_or_non_unit_ciphertext_refused(engine: PaillierEngine) -> None:
    pub = engine.public_key
    for bad in (0, pub.n_square, pub.n_square + 5, pub.n):
        doc = CiphertextVector((bad,), pub.key_id, -F).to_json()
        with pytest.raises(SerializationError):
            CiphertextVector.load(doc, pub, exponent=-F)


@given(st.data())
def test_truncated_or_mutated_bytes_raise_our_error(
    engine: PaillierEngine, data: st.DataObject
) -> None:
    blob = engine.encrypt([1.5, -2.5]).serialize()
    cut = data.draw(st.integers(0, len(blob) - 1))
    mutated = bytearray(blob)
    pos = data.draw(st.integers(0, len(blob) - 1))
    mutated[pos] = data.draw(st.integers(0, 255))
    for candidate in (blob[:cut], bytes(mutated)):
        with contextlib.suppress(CryptoError):
            CiphertextVector.load(candidate, engine.public_key, exponent=-F)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_arbitrary_json_raises_serialization_error(engine: PaillierEngine, obj: object) -> None:
    with pytest.raises(SerializationError):
        CiphertextVector.load(json.dumps(obj).encode(), engine.public_key, exponent=-F)


@pytest.mark.parametrize(
    "patch",
    [
        {"count": 3},
        {"width": 0},
        {"width": 10_000},
        {"data": "!!"},
        {"e": "x"},
        {"count": True},
        {"version": 2},
    ],
)
def test_wrong_field_types_raise(engine: PaillierEngine, patch: dict[str, object]) -> None:
    doc = engine.encrypt([1.0, 2.0]).to_json() | patch
    with pytest.raises(SerializationError):
        CiphertextVector.load(doc, engine.public_key, exponent=-F)


# --------------------------------------------------------------------------- layout


def test_layout_fits_the_key_and_refuses_out_of_bounds(engine: PaillierEngine) -> None:
    layout = engine.weighted_sum_layout(8.0, 8.0, 20)
    assert layout.slots * layout.slot_bits <= 2048 - layout.margin_bits
    assert layout.slot_limit < 2 ** (layout.slot_bits - 1 - layout.guard_bits)
    with pytest.raises(PackingError):
        engine.packed_linear_combination(engine.encrypt([1.0]), [[9.0]], layout)
    with pytest.raises(PackingError):
        layout.pack([layout.slot_limit + 1])
    with pytest.raises(PackingError):
        PackingLayout(2048, 64, 1e300, terms=1000, weight_bound=1e300)


def test_engine_with_process_pool(
    keys: tuple[PaillierPublicKey, PaillierPrivateKey], rng: np.random.Generator
) -> None:
    pub, priv = keys
    w, x = rng.normal(size=3), rng.normal(size=(80, 3))
    with PaillierEngine(pub, priv, workers=2) as eng:
        layout = eng.weighted_sum_layout(8.0, 8.0, 3)
        got = eng.decrypt_packed(eng.packed_linear_combination(eng.encrypt(w), x, layout))
    assert np.all(np.abs(got - x @ w) <= 1e-6)


# --------------------------------------------------------------------------- fixed-base obfuscators


@pytest.fixture(scope="module")
def fixed_pool(keys: tuple[PaillierPublicKey, PaillierPrivateKey]) -> ObfuscatorPool:
    """A provider's pool (public key only) past its first batch: fixed-base from then on."""
    pool = ObfuscatorPool(keys[0])
    pool.fill(FIXED_BASE_FROM)
    return pool


@pytest.fixture(scope="module")
def fixed_engine(
    keys: tuple[PaillierPublicKey, PaillierPrivateKey], fixed_pool: ObfuscatorPool
) -> Iterator[PaillierEngine]:
    pub, priv = keys
    with PaillierEngine(pub, priv, codec=IntegerCodec(F), workers=0, obfuscators=fixed_pool) as eng:
        yield eng


def test_a_small_first_batch_is_full_and_a_large_one_switches_to_fixed_base(
    keys: tuple[PaillierPublicKey, PaillierPrivateKey], fixed_pool: ObfuscatorPool
) -> None:
    pool = ObfuscatorPool(keys[0])
    pool.fill(3)
    assert not pool.fixed_base
    assert fixed_pool.fixed_base
    assert fixed_pool.exponent_bits == 1024


def test_fixed_base_obfuscators_encrypt_zero_for_us_and_for_phe(
    keys: tuple[PaillierPublicKey, PaillierPrivateKey], fixed_pool: ObfuscatorPool
) -> None:
    pub, priv = keys
    drawn = fixed_pool.generate(6)
    with PaillierEngine(pub, priv, workers=0) as eng:
        assert eng.decrypt_ints(CiphertextVector(tuple(drawn), pub.key_id, 0)) == [0] * 6
    assert [priv.to_phe().raw_decrypt(o) for o in drawn] == [0] * 6
    assert len(set(drawn)) == 6
    assert all(0 < o < pub.n_square for o in drawn)


@pytest.fixture(scope="module")
def small_tables() -> tuple[int, list[int], _paillier_kernels.DjnTables]:
    """Tables over a small odd modulus: the composition law does not depend on the size."""
    n = 1009 * 1013
    h, subset = 5**n % n**2, [pow(y, n, n**2) for y in range(2, 18)]
    return h, subset, _paillier_kernels.DjnTables(n, h, subset, exponent_bits=64)


@settings(max_examples=50)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**16 - 1))
def test_fixed_base_composition_is_h_to_the_s_times_the_chosen_subset(
    small_tables: tuple[int, list[int], _paillier_kernels.DjnTables], s: int, pick: int
) -> None:
    h, subset, tables = small_tables
    n2 = tables.n2
    expected = gmpy2.powmod(h, s, n2)
    for i, y in enumerate(subset):
        if pick >> i & 1:
            expected = expected * y % n2
    assert tables.compose(s, pick) == expected


@given(st.lists(reals, min_size=1, max_size=8))
def test_fixed_base_encryption_round_trips(fixed_engine: PaillierEngine, xs: list[float]) -> None:
    out = fixed_engine.decrypt(fixed_engine.encrypt(xs))
    assert np.all(np.abs(out - np.asarray(xs)) <= 2.0**-F)


@settings(max_examples=25)
@given(st.lists(st.tuples(reals, reals), min_size=1, max_size=4))
def test_homomorphic_add_and_scalar_mul_of_rerandomised_ciphertexts(
    fixed_engine: PaillierEngine, pairs: list[tuple[float, float]]
) -> None:
    a, x = (np.asarray(v) for v in zip(*pairs, strict=True))
    ea = fixed_engine.obfuscate(fixed_engine.encrypt(a))
    ex = fixed_engine.obfuscate(fixed_engine.encrypt(x))
    total = fixed_engine.decrypt(fixed_engine.add(ea, ex))
    product = fixed_engine.decrypt(fixed_engine.mul_scalar(ea, x))
    assert np.all(np.abs(total - (a + x)) <= 2.0 ** (1 - F))
    assert np.all(np.abs(product - a * x) <= 2.0 ** (-F) * (np.abs(a) + np.abs(x) + 1))


def test_rerandomised_ciphertexts_differ_from_the_input_and_from_each_other(
    fixed_engine: PaillierEngine,
) -> None:
    ct = fixed_engine.encrypt([1.5, -2.0, 0.0])
    first, second = fixed_engine.obfuscate(ct), fixed_engine.obfuscate(ct)
    values = ct.values + first.values + second.values
    assert len(set(values)) == len(values)
    assert fixed_engine.decrypt(first).tolist() == fixed_engine.decrypt(second).tolist()
    assert fixed_engine.decrypt(first).tolist() == [1.5, -2.0, 0.0]


def test_fixed_base_obfuscators_from_worker_processes_decrypt(
    keys: tuple[PaillierPublicKey, PaillierPrivateKey], rng: np.random.Generator
) -> None:
    pub, priv = keys
    w, x = rng.normal(size=3), rng.normal(size=(40, 3))
    with (
        PaillierEngine(pub, priv, codec=IntegerCodec(F), workers=0) as analyst,
        PaillierEngine(pub, codec=IntegerCodec(F), workers=2) as provider,
    ):
        provider.prefill(FIXED_BASE_FROM)
        layout = provider.weighted_sum_layout(8.0, 8.0, 3)
        packed = provider.packed_linear_combination(analyst.encrypt(w), x, layout)
        got = analyst.decrypt_packed(packed)
    assert provider.obfuscators.fixed_base
    assert np.all(np.abs(got - x @ w) <= 1e-6)
