"""Two-party secure SGD laws: the dealer's material reconstructs, comparisons are exact, one step
equals the plaintext step within fixed-point error, the held-out loss is the Taylor loss, and
each party's messages are uniform-looking (nothing of its inputs in them)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.sharing import reconstruct, share
from tests._seeding import rng_for
from trusted_space.errors import ValidationError
from trusted_space.protocols import train_mpc as T
from trusted_space.protocols.train import taylor_loss

# The dealer's seeds (test material, not product keys): from the session seed, so a failure
# reproduces with the same --test-seed.
_SEEDS_RNG = rng_for("tests/trusted_space/test_train_mpc.py::SEEDS")
SEEDS = (_SEEDS_RNG.bytes(32), _SEEDS_RNG.bytes(32))


def _source(party: int, seeds: tuple[bytes, bytes] = SEEDS) -> T.MaterialSource:
    def material(epoch: int, batch: int, layout: T.Layout) -> dict[str, np.ndarray]:
        correction = T.dealer_correction(seeds, epoch, batch, layout) if party == 1 else None
        return T.material_share(party, seeds[party], epoch, batch, layout, correction)

    return material


def _parties(
    x: np.ndarray, y: np.ndarray, *, lr: float = 0.1, l2: float = 0.01, knots=None
) -> tuple[T.Party, T.Party]:
    """Shares of ``x`` (with an intercept column) and the label; column 1 is party 1's own."""
    design = np.hstack([np.ones((len(x), 1)), x])
    ring = T.encode_ring(design)
    x0, x1 = share(ring, 2)
    sigmoid = T.Sigmoid(knots) if knots else T.Sigmoid()
    p0 = T.Party(0, x0, T.encode_ring(y), sigmoid, lr, l2, _source(0))
    p1 = T.Party(1, x1, None, sigmoid, lr, l2, _source(1))
    return p0, p1


def _set_weights(p0: T.Party, p1: T.Party, w: np.ndarray) -> None:
    w0, w1 = share(T.encode_ring(w), 2)
    p0.w, p1.w = w0, w1


def _weights(p0: T.Party, p1: T.Party) -> np.ndarray:
    return T.decode_ring(p0.w + p1.w)


def _plain_step(x, y, w, lr, l2, sigmoid) -> np.ndarray:
    design = np.hstack([np.ones((len(x), 1)), x])
    delta = sigmoid(design @ w) - y
    decay = np.full(len(w), l2)
    decay[0] = 0
    return w - lr * (design.T @ delta / len(x) + decay * w)


# ----------------------------------------------------------------------------------------------
# Material
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["t", "v"])
@given(m=st.integers(1, 9), d=st.integers(2, 6), knots=st.integers(2, 9))
def test_dealer_material_reconstructs(kind: str, m: int, d: int, knots: int) -> None:
    layout = T.layout_for(kind, m, d, knots)
    s0 = T.material_share(0, SEEDS[0], 3, 7, layout)
    s1 = T.material_share(1, SEEDS[1], 3, 7, layout, T.dealer_correction(SEEDS, 3, 7, layout))

    def value(name: str) -> np.ndarray:
        seg = layout.segment(name)
        if seg.owner is not None:  # held by one party's stream alone
            return (s0, s1)[seg.owner][name]
        return s0[name] ^ s1[name] if seg.boolean else reconstruct([s0[name], s1[name]])

    assert np.array_equal(value("Cz"), value("A") @ value("Bw"))
    if kind == "t":
        assert np.array_equal(value("Cg"), value("A").T @ value("Bg"))
        for seg in layout.segments:
            if seg.name.endswith(".w"):
                stem = seg.name[:-2]
                assert np.array_equal(value(seg.name), value(f"{stem}.u") & value(f"{stem}.v"))
        rb = value("rb") & T.MASK_SIGN_BITS
        r_s, r_x, r_y = (T.sign_bits(value(n), knots) for n in ("rb", "last.u", "last.v"))
        assert np.array_equal(r_s[:, 0::2], rb[:, : (knots + 1) // 2] & np.uint64(1))
        assert set(np.unique(np.concatenate([r_s, r_x, r_y]))) <= {0, 1}
        mono = value("mono")
        expected = {"s": r_s, "x": r_x, "y": r_y}
        for i, name in enumerate(T.MONOMIALS):
            assert np.array_equal(mono[:, :, i], np.prod([expected[c] for c in name], axis=0))
        assert np.array_equal(value("monob"), mono * value("sb")[:, None, None])
    else:
        assert np.array_equal(value("qa2"), value("qa") * value("qa"))
        assert value("dc")[0] == (value("da")[None, :] @ value("db"))[0]


def test_streams_differ_per_batch_and_never_overlap() -> None:
    a = T.expand(SEEDS[0], 1, 0, 64)
    b = T.expand(SEEDS[0], 1, 1, 64)
    c = T.expand(SEEDS[0], 2, 0, 64)
    assert not set(a.tolist()) & set(b.tolist())
    assert not set(a.tolist()) & set(c.tolist())
    assert np.array_equal(a, T.expand(SEEDS[0], 1, 0, 64))


def test_party_one_needs_the_dealers_part() -> None:
    layout = T.layout_for("t", 4, 3, 6)
    with pytest.raises(ValidationError):
        T.material_share(1, SEEDS[1], 1, 0, layout)
    with pytest.raises(ValidationError):
        T.material_share(1, SEEDS[1], 1, 0, layout, np.zeros(3, dtype=np.uint64))


def test_a_derived_value_is_uniform_to_each_party() -> None:
    """A party's share of a derived value is not the value (it learns nothing of A·Bw)."""
    layout = T.layout_for("t", 64, 4, 6)
    s0 = T.material_share(0, SEEDS[0], 1, 0, layout)
    s1 = T.material_share(1, SEEDS[1], 1, 0, layout, T.dealer_correction(SEEDS, 1, 0, layout))
    cz = s0["Cz"] + s1["Cz"]
    assert not np.array_equal(s0["Cz"], cz) and not np.array_equal(s1["Cz"], cz)
    ones = [int(np.unpackbits(s1["first.w"].view(np.uint8)).mean() * 100) for _ in range(1)]
    assert 40 <= ones[0] <= 60  # a derived boolean share looks like coin flips


# ----------------------------------------------------------------------------------------------
# Wire helpers
# ----------------------------------------------------------------------------------------------


@given(st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=5), max_size=4))
def test_pack_roundtrip(messages: list[list[int]]) -> None:
    arrays = [np.array(m, dtype=np.uint64) for m in messages]
    back = T.unpack_messages(T.pack_messages(arrays))
    assert [a.tolist() for a in back] == messages


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x01\x00\x00\x00", b"\x01\x00\x00\x00\x05" + bytes(7), T.pack_messages([]) + b"x"],
)
def test_unpack_refuses_malformed(payload: bytes) -> None:
    with pytest.raises(ValidationError):
        T.unpack_messages(payload)


def test_sigmoid_knots_are_checked_and_the_hinges_interpolate() -> None:
    s = T.Sigmoid((-4.0, -1.0, 1.0, 4.0))
    t = np.array([-10, -4, -2.5, 0, 0.5, 4, 10.0])
    expected = np.interp(t, s.knots, 1 / (1 + np.exp(-np.array(s.knots))))
    expected[t <= -4] = 0.0  # strictly above the first knot, or 0
    expected[t > 4] = 1.0
    assert np.allclose(s(t), expected)
    for bad in [(1.0,), (2.0, 1.0), (0.0, 1.001), (0.0, 100.0)]:
        with pytest.raises(ValidationError):
            T.Sigmoid(bad)


# ----------------------------------------------------------------------------------------------
# One step, comparisons, loss
# ----------------------------------------------------------------------------------------------


@given(
    m=st.integers(2, 24),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([0.5, 3.0, 12.0]),
)
def test_one_step_equals_the_plaintext_step(m: int, k: int, seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, k)) * scale
    y = (rng.random(m) < 0.4).astype(float)
    w = rng.normal(size=k + 1)  # logits spread over every piece of the sigmoid, tails included
    p0, p1 = _parties(x, y, lr=0.3, l2=0.05)
    _set_weights(p0, p1, w)
    order = np.arange(m)
    T.run_pair(
        p0.epoch(1, order, np.zeros(0, np.int64), m), p1.epoch(1, order, np.zeros(0, np.int64), m)
    )
    expected = _plain_step(x, y, w, 0.3, 0.05, p0.sigmoid)
    # Fixed point: z to 2^-16 (2^-8 for the comparisons near a knot), products truncated.
    assert np.allclose(_weights(p0, p1), expected, atol=2e-3 * (1 + scale))


@given(z=st.lists(st.floats(-3000, 3000, allow_nan=False), min_size=1, max_size=16))
def test_comparisons_are_exact_away_from_the_knots(z: list[float]) -> None:
    """With one unit column and w = (0, 1), z is the feature: the step's δ reveals [z > t_k]."""
    values = np.array(z)
    knots = T.Sigmoid().knots
    near = np.min(np.abs(values[:, None] - np.array(knots)), axis=1) < 2**-7
    values[near] += 2**-5  # the comparison resolves 2^-8; stay clear of ties
    y = np.zeros(len(values))
    p0, p1 = _parties(values[:, None], y, lr=1.0, l2=0.0)
    _set_weights(p0, p1, np.array([0.0, 1.0]))
    order = np.arange(len(values))
    T.run_pair(
        p0.epoch(1, order, np.zeros(0, np.int64), len(values)),
        p1.epoch(1, order, np.zeros(0, np.int64), len(values)),
    )
    # the intercept's gradient is the mean approximated sigmoid (exact piecewise values)
    new = _weights(p0, p1)
    assert new[0] == pytest.approx(-np.mean(T.Sigmoid()(values)), abs=2e-4)


def test_held_out_loss_is_the_taylor_loss_and_only_party_zero_learns_it(
    rng: np.random.Generator,
) -> None:
    x = rng.normal(size=(120, 3))
    y = (rng.random(120) < 0.3).astype(float)
    w = np.array([0.2, -0.5, 0.7, 0.1])
    p0, p1 = _parties(x, y)
    _set_weights(p0, p1, w)
    order, valid = np.arange(0, 80), np.arange(80, 120)
    total, other, _ = T.run_pair(p0.epoch(1, order, valid, 32), p1.epoch(1, order, valid, 32))
    assert other is None
    trained = _weights(p0, p1)
    design = np.hstack([np.ones((40, 1)), x[80:]])
    loss = np.log(2) + T.decode_ring(total, 32)[0] / (8 * 40)
    assert loss == pytest.approx(taylor_loss(design @ trained, y[80:]), abs=1e-4)
    assert set(p0.history) == set(p1.history) == {1}


def test_an_epoch_matches_plaintext_sgd_and_two_rounds_travel_per_exchange(
    rng: np.random.Generator,
) -> None:
    x = rng.normal(size=(300, 4)) * 2
    y = (rng.random(300) < 1 / (1 + np.exp(-(x @ [1.0, -0.5, 0.3, 0.0])))).astype(float)
    p0, p1 = _parties(x, y, lr=0.2, l2=0.01)
    order = rng.permutation(300)
    _, _, calls = T.run_pair(
        p0.epoch(1, order, np.zeros(0, np.int64), 50), p1.epoch(1, order, np.zeros(0, np.int64), 50)
    )
    w = np.zeros(5)
    for s in range(0, 300, 50):
        rows = order[s : s + 50]
        w = _plain_step(x[rows], y[rows], w, 0.2, 0.01, p0.sigmoid)
    assert np.allclose(_weights(p0, p1), w, atol=1e-3)
    assert calls == 6 * 6 // 2 + 1  # 6 rounds per batch, two per exchange, one to close


@pytest.mark.parametrize(("n", "valid", "batch"), [(300, 0, 50), (330, 40, 64), (21000, 0, 256)])
def test_round_trips_per_epoch(n: int, valid: int, batch: int, rng: np.random.Generator) -> None:
    """The exchanges an epoch takes (the bank's train.step calls): six rounds per training
    batch, two per validation batch and one for the loss, two rounds per exchange."""
    x = rng.normal(size=(n, 2))
    y = (rng.random(n) < 0.5).astype(float)
    p0, p1 = _parties(x, y)
    order, held = np.arange(n - valid), np.arange(n - valid, n)
    _, _, calls = T.run_pair(p0.epoch(1, order, held, batch), p1.epoch(1, order, held, batch))
    rounds = 6 * -(-(n - valid) // batch) + (2 * -(-valid // batch) + 1 if valid else 0)
    assert calls == rounds // 2 + 1
    if (n, valid, batch) == (21000, 0, 256):  # default_credit's training rows
        assert calls == 250  # 416 with rounds of their own for the bits' B2A and beta(z)*z


def test_with_opening_rides_on_the_first_round(rng: np.random.Generator) -> None:
    """An opening added to a program's first round: opened right, the program unchanged."""

    def words(size: int) -> np.ndarray:
        return rng.integers(0, 2**64, size, dtype=np.uint64)

    x, y, u, v = (words(6) for _ in range(4))
    x0, y0, u0, v0, w0 = (words(6) for _ in range(5))
    shares = [(x0, y0, (u0, v0, w0)), (x ^ x0, y ^ y0, (u ^ u0, v ^ v0, (u & v) ^ w0))]
    e0, e1 = words(3), words(3)

    def program(party: int) -> T.PartyProgram:
        xs, ys, triple = shares[party]
        return T.and_shares(party, xs, ys, [triple])

    _, _, plain_calls = T.run_pair(program(0), program(1))
    (r0, o0), (r1, o1), calls = T.run_pair(
        T.with_opening(program(0), e0), T.with_opening(program(1), e1)
    )
    assert np.array_equal(o0, e0 + e1) and np.array_equal(o1, e0 + e1)
    assert np.array_equal(r0 ^ r1, x & y) and calls == plain_calls
    started = T.with_opening(program(0), e0)
    next(started)
    with pytest.raises(ValidationError):
        started.send(np.zeros(2, dtype=np.uint64))  # shorter than the opening


def test_messages_look_uniform(rng: np.random.Generator) -> None:
    """Every word a party sends is masked: its features and label never appear in clear."""
    x = np.round(rng.normal(size=(64, 2)), 2)
    y = (rng.random(64) < 0.5).astype(float)
    p0, p1 = _parties(x, y)
    a, b = (
        T.Exchange(p0.epoch(1, np.arange(64), np.zeros(0, np.int64), 64)),
        T.Exchange(p1.epoch(1, np.arange(64), np.zeros(0, np.int64), 64)),
    )
    sent: list[np.ndarray] = []
    pending = a.start()
    first = True
    while not (a.done and b.done):
        sent += pending
        replies = (b.start() if first else []) + b.feed(pending)
        first = False
        sent += replies
        pending = a.feed(replies)
    words = set(np.concatenate(sent).tolist())
    secrets_ = set(T.encode_ring(x).ravel().tolist()) | set(T.encode_ring(y).tolist())
    assert not words & (secrets_ - {0, 65536})


def test_a_wrong_size_message_is_refused() -> None:
    p0, _ = _parties(np.zeros((4, 1)), np.zeros(4))
    program = p0.epoch(1, np.arange(4), np.zeros(0, np.int64), 4)
    next(program)
    with pytest.raises(ValidationError):
        program.send(np.zeros(3, dtype=np.uint64))


def test_update_scale_keeps_twelve_bits_of_precision() -> None:
    for c in [1e-5, 3.9e-4, 0.01, 0.5]:
        k = T.update_scale([c])
        assert 2**11 <= round(c * 2**k) < 2**13
