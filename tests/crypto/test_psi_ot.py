"""Laws and refusals of the KKRT OT-extension PSI in ``crypto.psi_ot``."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import psi_ot
from crypto.errors import CryptoError, KeyMismatchError, ParameterError, SerializationError
from crypto.psi import new_session_id
from crypto.psi_ot import CODE_BITS, OtPsiReceiver, OtPsiSender, intersect, transpose_columns

ids_lists = st.lists(st.text(max_size=12), max_size=25)


def _expected(receiver: list[str], sender: list[str]) -> list[str]:
    held = set(sender)
    return [e for e in dict.fromkeys(receiver) if e in held]


def _redigest(message: bytes) -> bytes:
    """``message`` with its trailing SHA-256 recomputed (a well-framed but altered message)."""
    return message[:-32] + hashlib.sha256(message[:-32]).digest()


@settings(max_examples=25)
@given(receiver=ids_lists, sender=ids_lists)
def test_intersection_is_exact_and_in_receiver_order(
    receiver: list[str], sender: list[str]
) -> None:
    result = intersect(receiver, sender, align=True)
    expected = _expected(receiver, sender)
    assert list(result.ids) == expected
    assert result.receiver_size == len(set(receiver))
    assert result.sender_size == len(set(sender))
    first = {e: receiver.index(e) for e in expected}
    assert list(result.receiver_indices) == [first[e] for e in expected]


@settings(max_examples=10)
@given(ids=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=20, unique=True))
def test_identical_sets_match_whole_and_disjoint_sets_match_nothing(ids: list[str]) -> None:
    assert set(intersect(ids, list(reversed(ids))).ids) == set(ids)
    assert intersect(ids, [f"other:{e}" for e in ids]).ids == ()


@pytest.mark.parametrize(
    ("receiver", "sender"), [([], []), ([], ["a"]), (["a"], []), (["a"], ["a"]), (["a"], ["b"])]
)
def test_empty_and_singleton_sets(receiver: list[str], sender: list[str]) -> None:
    assert list(intersect(receiver, sender).ids) == _expected(receiver, sender)


def test_positions_point_at_the_senders_shuffled_ids(rng: np.random.Generator) -> None:
    pool = [f"91{i:016d}" for i in range(3000)]
    receiver = [pool[i] for i in rng.choice(3000, 1200, replace=False)]
    sender_ids = [pool[i] for i in rng.choice(3000, 1500, replace=False)]
    sid = new_session_id()
    sender = OtPsiSender(sender_ids, sid, align=True)
    recv = OtPsiReceiver(receiver, sid)
    result = recv.finish(sender.respond(recv.request(sender.setup())))
    assert list(result.ids) == _expected(receiver, sender_ids)
    order = sender.aligned_ids
    assert sorted(order) == sorted(sender_ids)
    assert result.sender_positions is not None
    assert [order[j] for j in result.sender_positions] == list(result.ids)


def test_without_align_there_are_no_positions() -> None:
    assert intersect(["a", "b"], ["b"]).sender_positions is None
    with pytest.raises(ParameterError):
        _ = OtPsiSender(["a"], new_session_id()).aligned_ids


def test_bit_transpose_matches_the_definition(rng: np.random.Generator) -> None:
    columns = rng.integers(0, 256, (CODE_BITS, 8200), dtype=np.uint8)  # crosses a slice border
    bits = np.unpackbits(columns, axis=1, bitorder="little")
    reference = np.packbits(bits.T, axis=1, bitorder="little")
    assert np.array_equal(transpose_columns(columns), reference)


def test_messages_carry_no_id_nor_its_digest() -> None:
    sid = new_session_id()
    secret = [f"applicant-{i:04d}" for i in range(40)]
    sender = OtPsiSender([f"enterprise-{i:04d}" for i in range(40)], sid)
    recv = OtPsiReceiver(secret, sid)
    setup = sender.setup()
    request = recv.request(setup)
    response = sender.respond(request)
    digests = psi_ot._id_digests(sid, secret, None)[:, : psi_ot._ID_DIGEST]
    for entity, digest in zip(secret, digests, strict=True):
        for blob in (setup, request, response):
            assert entity.encode() not in blob
            assert digest.tobytes() not in blob


class _Run:
    def __init__(self) -> None:
        self.sid = new_session_id()
        self.sender = OtPsiSender(["a", "b", "c"], self.sid, align=True)
        self.receiver = OtPsiReceiver(["b", "c", "d"], self.sid)
        self.setup = self.sender.setup()
        self.request = self.receiver.request(self.setup)


def test_malformed_setups_are_refused() -> None:
    run = _Run()
    for bad in (
        b"",
        run.setup[:-1],
        run.setup[:-40] + bytes(40),
        b"XXXX" + run.setup[4:],
        _redigest(run.setup[:-64] + run.setup[-32:]),
    ):
        with pytest.raises(SerializationError):
            OtPsiReceiver(["a"], run.sid).request(bad)
    with pytest.raises(KeyMismatchError):
        OtPsiReceiver(["a"], new_session_id()).request(run.setup)
    with pytest.raises(KeyMismatchError):  # a second setup for one receiver
        run.receiver.request(run.setup)
    with pytest.raises(SerializationError):  # the request is not a setup
        OtPsiReceiver(["a"], run.sid).request(run.request)


def test_small_order_points_in_a_setup_are_refused() -> None:
    run = _Run()
    body_start = len(run.setup) - 32 - 2 * CODE_BITS * 32
    bad = run.setup[:body_start] + bytes(32) + run.setup[body_start + 32 :]
    with pytest.raises(SerializationError, match="small order"):
        OtPsiReceiver(["a"], run.sid).request(_redigest(bad))


def test_malformed_requests_are_refused() -> None:
    for bad in (
        lambda r: r[:-1],
        lambda r: r[:-100] + bytes(100),
        lambda r: _redigest(r[:-96] + r[-32:]),  # one row short
        lambda r: b"",
    ):
        run = _Run()
        with pytest.raises(SerializationError):
            run.sender.respond(bad(run.request))
    run = _Run()
    other = _Run()
    with pytest.raises(KeyMismatchError):  # another session
        run.sender.respond(other.request)
    run.sender.respond(run.request)
    with pytest.raises(KeyMismatchError):  # answered once only
        run.sender.respond(run.request)


def test_a_request_to_another_setup_is_refused() -> None:
    run = _Run()
    stranger = OtPsiSender(["a"], run.sid)
    with pytest.raises(KeyMismatchError, match="another setup"):
        stranger.respond(run.request)


def test_malformed_responses_are_refused() -> None:
    run = _Run()
    response = run.sender.respond(run.request)
    for bad in (response[:-1], response[:-50] + bytes(50), _redigest(response[:-33] + b"\0")):
        with pytest.raises(SerializationError):
            run.receiver.finish(bad)
    other = _Run()
    with pytest.raises(KeyMismatchError):
        run.receiver.finish(other.sender.respond(other.request))
    assert run.receiver.finish(response).ids == ("b", "c")
    with pytest.raises(KeyMismatchError):
        run.receiver.finish(response)


def test_messages_are_read_in_place_as_the_parts_layer_delivers_them() -> None:
    # The node reassembles a large message into a bytearray; it is read through a view, not
    # copied, and a changed byte anywhere is still caught by the digest.
    run = _Run()
    response = run.sender.respond(bytearray(run.request))
    assert run.receiver.finish(memoryview(bytearray(response))).ids == ("b", "c")
    run = _Run()
    flipped = bytearray(run.request)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(SerializationError, match="corrupted"):
        run.sender.respond(flipped)
    response = run.sender.respond(run.request)
    flipped = bytearray(response)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(SerializationError, match="corrupted"):
        run.receiver.finish(flipped)


def test_finish_before_request_and_bad_inputs() -> None:
    sid = new_session_id()
    with pytest.raises(KeyMismatchError):
        OtPsiReceiver(["a"], sid).finish(b"")
    with pytest.raises(TypeError):
        OtPsiSender([1], sid)  # type: ignore[list-item]
    with pytest.raises(ParameterError):
        OtPsiReceiver(["a"], b"short")
    assert issubclass(SerializationError, CryptoError)


def test_sliced_work_gives_the_same_intersection(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    monkeypatch.setattr(psi_ot, "_CHUNK", 64)  # hashes in slices of 64, sender rows of 256
    pool = [f"id-{i}" for i in range(2000)]
    receiver = [pool[i] for i in rng.choice(2000, 900, replace=False)]
    sender = [pool[i] for i in rng.choice(2000, 1100, replace=False)]
    assert list(intersect(receiver, sender).ids) == _expected(receiver, sender)
