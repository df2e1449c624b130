"""Laws and refusals of the X25519 DH-PSI in ``crypto.psi``."""

from __future__ import annotations

import hashlib

import gmpy2
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from crypto import psi
from crypto.errors import (
    CryptoError,
    KeyMismatchError,
    ParameterError,
    SerializationError,
)
from crypto.psi import (
    POINT_SIZE,
    PsiReceiver,
    PsiSender,
    hash_to_point,
    intersect,
    new_session_id,
    psi_executor,
)

P = 2**255 - 19
ids_lists = st.lists(st.text(max_size=12), max_size=25)
session_ids = st.binary(min_size=16, max_size=64)


def _mul(scalar: X25519PrivateKey, point: bytes) -> bytes:
    return scalar.exchange(X25519PublicKey.from_public_bytes(point))


def _points(message: bytes, start: int, count: int) -> list[bytes]:
    return [message[start + i * POINT_SIZE : start + (i + 1) * POINT_SIZE] for i in range(count)]


def _request_body_start(session_id: bytes) -> int:
    return 4 + 4 + len(session_id) + 8


def _session() -> tuple[PsiReceiver, PsiSender, bytes]:
    sid = new_session_id()
    receiver = PsiReceiver(["a1", "b2", "c3"], sid)
    sender = PsiSender(["c3", "a1", "z9"], sid)
    return receiver, sender, sid


# --- the law: PSI equals set intersection -------------------------------------------------------


@given(ids_lists, ids_lists, st.booleans())
def test_intersection_equals_set_intersection(
    receiver_ids: list[str], sender_ids: list[str], align: bool
) -> None:
    result = intersect(receiver_ids, sender_ids, align=align)

    assert set(result.ids) == set(receiver_ids) & set(sender_ids)
    assert len(result.ids) == len(set(result.ids))  # duplicates are removed
    assert result.receiver_size == len(set(receiver_ids))
    assert result.sender_size == len(set(sender_ids))


@given(ids_lists, ids_lists)
def test_result_is_in_receiver_order_with_first_occurrence_indices(
    receiver_ids: list[str], sender_ids: list[str]
) -> None:
    result = intersect(receiver_ids, sender_ids)

    assert list(result.receiver_indices) == sorted(result.receiver_indices)
    for entity, index in zip(result.ids, result.receiver_indices, strict=True):
        assert receiver_ids.index(entity) == index


@given(ids_lists, ids_lists)
def test_aligned_positions_point_at_the_same_ids_in_sender_order(
    receiver_ids: list[str], sender_ids: list[str]
) -> None:
    sid = new_session_id()
    receiver = PsiReceiver(receiver_ids, sid)
    sender = PsiSender(sender_ids, sid, align=True)

    result = receiver.finish(sender.respond(receiver.request()))

    assert result.sender_positions is not None
    assert sorted(sender.aligned_ids) == sorted(set(sender_ids))
    assert [sender.aligned_ids[j] for j in result.sender_positions] == list(result.ids)


def test_without_alignment_positions_are_withheld() -> None:
    receiver, sender, _ = _session()

    result = receiver.finish(sender.respond(receiver.request()))

    assert result.sender_positions is None
    with pytest.raises(ParameterError):
        _ = sender.aligned_ids


def test_empty_sides() -> None:
    assert intersect([], ["a"]).ids == ()
    assert intersect(["a"], []).ids == ()
    assert intersect([], []).sender_size == 0


def test_process_pool_gives_the_same_result() -> None:
    receiver_ids = [f"91{i:016d}" for i in range(9000)]
    sender_ids = [f"91{i:016d}" for i in range(4500, 13_000)]

    with psi_executor(2) as executor:
        result = intersect(receiver_ids, sender_ids, executor=executor, align=True)

    assert result.ids == tuple(receiver_ids[4500:])


# --- the primitives: hashing and commuting blinding ---------------------------------------------


@given(st.text(max_size=30), session_ids)
def test_hash_lands_on_the_curve_in_canonical_form(entity: str, sid: bytes) -> None:
    point = hash_to_point(sid, entity)

    u = int.from_bytes(point, "little")
    assert len(point) == POINT_SIZE
    assert u < P
    assert gmpy2.jacobi((u**3 + 486662 * u * u + u) % P, P) == 1
    assert point == hash_to_point(sid, entity)


@given(st.text(max_size=30), session_ids, session_ids)
def test_hash_depends_on_the_session(entity: str, sid1: bytes, sid2: bytes) -> None:
    if sid1 != sid2:
        assert hash_to_point(sid1, entity) != hash_to_point(sid2, entity)


@given(st.text(max_size=30), session_ids)
def test_blinding_commutes(entity: str, sid: bytes) -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    point = hash_to_point(sid, entity)

    assert _mul(a, _mul(b, point)) == _mul(b, _mul(a, point))


# --- shuffling ----------------------------------------------------------------------------------


def test_receiver_shuffles_what_it_sends() -> None:
    ids = [f"id-{i}" for i in range(8)]
    sid = new_session_id()
    positions_of_first: set[int] = set()
    orders: set[tuple[int, ...]] = set()

    for _ in range(30):
        receiver = PsiReceiver(ids, sid)
        key = X25519PrivateKey.from_private_bytes(receiver._scalar)
        request = receiver.request()
        sent = _points(request, _request_body_start(sid), len(ids))
        blinded = [_mul(key, hash_to_point(sid, entity)) for entity in ids]
        assert sorted(sent) == sorted(blinded)  # a permutation of the blinded ids
        order = tuple(sent.index(value) for value in blinded)
        orders.add(order)
        positions_of_first.add(order[0])

    assert len(orders) > 20
    assert len(positions_of_first) >= 4


def test_sender_shuffles_what_it_sends_and_keeps_that_order_when_aligned() -> None:
    ids = [f"id-{i}" for i in range(8)]
    sid = new_session_id()
    orders: set[tuple[str, ...]] = set()

    for _ in range(30):
        receiver = PsiReceiver([], sid)
        sender = PsiSender(ids, sid, align=True)
        key = X25519PrivateKey.from_private_bytes(sender._scalar)
        response = sender.respond(receiver.request())
        sent = _points(response, _request_body_start(sid) + 32, len(ids))
        assert sent == [_mul(key, hash_to_point(sid, entity)) for entity in sender.aligned_ids]
        orders.add(sender.aligned_ids)

    assert len(orders) > 20


@given(st.lists(st.text(min_size=1, max_size=8), min_size=12, max_size=20, unique=True))
def test_sent_order_does_not_follow_input_order(ids: list[str]) -> None:
    sid = new_session_id()
    forward = PsiReceiver(ids, sid)
    again = PsiReceiver(ids, sid)
    again._scalar = forward._scalar

    # Same scalar, same input order: the same values, but in independent random orders
    # (equal orders would happen with probability 1/12! per example).
    start = _request_body_start(sid)
    sent_forward = _points(forward.request(), start, len(ids))
    sent_again = _points(again.request(), start, len(ids))
    assert sorted(sent_forward) == sorted(sent_again)
    assert sent_forward != sent_again


# --- what the sender sees -----------------------------------------------------------------------


@given(st.lists(st.text(min_size=6, max_size=20), min_size=1, max_size=20))
def test_request_contains_no_raw_ids_or_unblinded_hashes(ids: list[str]) -> None:
    sid = new_session_id()

    request = PsiReceiver(ids, sid).request()

    for entity in ids:
        assert entity.encode("utf-8") not in request
        assert hash_to_point(sid, entity) not in request


# --- refusals -----------------------------------------------------------------------------------


def test_wrong_session_is_refused_both_ways() -> None:
    receiver, _, _ = _session()
    stranger = PsiSender(["a1"], new_session_id())
    request = receiver.request()

    with pytest.raises(KeyMismatchError):
        stranger.respond(request)

    other_receiver = PsiReceiver(["a1"], new_session_id())
    other_sender = PsiSender(["a1"], other_receiver._session_id)
    with pytest.raises(KeyMismatchError):
        receiver.finish(other_sender.respond(other_receiver.request()))


def test_response_to_another_request_of_the_same_session_is_refused() -> None:
    receiver, sender, sid = _session()
    receiver.request()
    other = PsiReceiver(["a1", "b2", "c3"], sid)

    with pytest.raises(KeyMismatchError):
        receiver.finish(sender.respond(other.request()))


def test_each_side_acts_once() -> None:
    receiver, sender, _ = _session()
    request = receiver.request()
    response = sender.respond(request)
    receiver.finish(response)

    with pytest.raises(KeyMismatchError):
        sender.respond(request)
    with pytest.raises(KeyMismatchError):
        receiver.finish(response)


def test_finish_before_request_is_refused() -> None:
    receiver, _, _ = _session()
    with pytest.raises(KeyMismatchError):
        receiver.finish(b"")


@given(st.data())
def test_truncated_messages_are_refused(data: st.DataObject) -> None:
    receiver, sender, _ = _session()
    request = receiver.request()
    response = sender.respond(request)

    cut_request = data.draw(st.integers(0, len(request) - 1))
    cut_response = data.draw(st.integers(0, len(response) - 1))

    with pytest.raises(SerializationError):
        PsiSender(["x"], receiver._session_id).respond(request[:cut_request])
    with pytest.raises(SerializationError):
        receiver.finish(response[:cut_response])


@given(st.data())
def test_garbled_messages_are_refused(data: st.DataObject) -> None:
    receiver, sender, sid = _session()
    request = receiver.request()
    response = sender.respond(request)

    for message, act in (
        (request, PsiSender(["x"], sid).respond),
        (response, receiver.finish),
    ):
        index = data.draw(st.integers(0, len(message) - 1))
        flip = data.draw(st.integers(1, 255))
        garbled = bytearray(message)
        garbled[index] ^= flip
        with pytest.raises(SerializationError):
            act(bytes(garbled))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_refused(blob: bytes) -> None:
    receiver, _, sid = _session()
    receiver.request()

    with pytest.raises(SerializationError):
        PsiSender(["x"], sid).respond(blob)
    with pytest.raises(SerializationError):
        receiver.finish(blob)


@pytest.mark.parametrize(
    "u", [0, 1, P - 1, 325606250916557431795983626356110631294008115727848805560023387167927233504]
)
def test_small_order_point_from_the_peer_is_our_error(u: int) -> None:
    sid = new_session_id()
    forged = psi._pack(1, 0, sid, (1, 0), b"", u.to_bytes(32, "little"))

    with pytest.raises(SerializationError):
        PsiSender(["x"], sid).respond(forged)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ParameterError):
        PsiReceiver(["a"], b"short")
    with pytest.raises(TypeError):
        PsiReceiver([b"bytes-id"], new_session_id())  # type: ignore[list-item]
    with pytest.raises(ParameterError):
        psi_executor(0)


def test_every_refusal_is_a_crypto_error() -> None:
    for error in (SerializationError, KeyMismatchError, ParameterError):
        assert issubclass(error, CryptoError)


def test_secret_scalar_is_not_in_repr_or_messages() -> None:
    receiver, sender, _ = _session()
    request = receiver.request()
    response = sender.respond(request)

    assert receiver._scalar.hex() not in repr(receiver)
    assert receiver._scalar not in request
    assert sender._scalar not in response


def test_public_surface_is_declared() -> None:
    for name in psi.__all__:
        assert hasattr(psi, name)


def test_repeated_sender_values_cannot_repeat_a_match() -> None:
    sid = new_session_id()
    receiver = PsiReceiver(["a1"], sid)
    sender = PsiSender(["a1"], sid)
    request = receiver.request()
    response = sender.respond(request)
    start = _request_body_start(sid) + 32
    ours, theirs = _points(response, start, 2)
    forged = psi._pack(2, 0, sid, (1, 2), hashlib.sha256(request).digest(), ours + theirs + theirs)

    assert receiver.finish(forged).ids == ("a1",)
