"""A witness answer that never arrived is not a fork: the proof names the size it starts from.

Found by the crash harness (tests/crash): the witness cosigned a head, then the node or the witness
was killed before the node stored the answer. The node kept proving from its older cosigned size;
the witness checked that proof from its own newer size, called it a fork, kept "evidence" against
an honest node and refused every later checkpoint. With ``old_size`` (as in C2SP tlog-witness) the
witness says which size it holds instead, and the node proves again from there.
"""

from __future__ import annotations

import pytest

from trusted_space.errors import ConflictError, VerificationError, WitnessSizeError
from trusted_space.events import record_event
from trusted_space.keys import SigningKey
from trusted_space.ledger import Ledger, Witness
from trusted_space.notes import Checkpoint, parse_vkey, sign_note, verify_cosignature
from trusted_space.store import MemoryStore

ORIGIN = "tax.example.gov/ledger"
NODE_KEY = SigningKey.generate()
WITNESS_KEY = SigningKey.generate()


def grow(ledger: Ledger, store: MemoryStore, n: int) -> str:
    with store.transaction() as tx:
        for i in range(n):
            record_event(tx, "test.event", {"i": i})
    return ledger.checkpoint()


def test_a_lost_answer_is_named_then_proved_again_not_a_fork() -> None:
    store = MemoryStore()
    ledger = Ledger(store, NODE_KEY, ORIGIN)
    witness = Witness(MemoryStore(), WITNESS_KEY, "operator.example.gov/witness")
    witness.cosign(grow(ledger, store, 5), ledger.vkey, old_size=0, now=1)
    # cosigned at 8, but the node never receives this answer: it still believes 5
    witness.cosign(grow(ledger, store, 3), ledger.vkey, ledger.consistency_proof(5, 8), old_size=5)

    note = grow(ledger, store, 4)
    with pytest.raises(WitnessSizeError) as raised:
        witness.cosign(note, ledger.vkey, ledger.consistency_proof(5, 12), old_size=5, now=2)

    assert raised.value.witness_size == 8
    assert isinstance(raised.value, ConflictError)
    assert witness.state.forks(ORIGIN) == []
    latest = witness.state.latest(ORIGIN)
    assert latest is not None and latest.size == 8
    cosigned = witness.cosign(note, ledger.vkey, ledger.consistency_proof(8, 12), old_size=8, now=3)
    assert verify_cosignature(cosigned, parse_vkey(witness.vkey)).timestamp == 3
    latest = witness.state.latest(ORIGIN)
    assert latest is not None and latest.size == 12


def test_a_first_checkpoint_named_from_a_size_the_witness_never_saw() -> None:
    store = MemoryStore()
    ledger = Ledger(store, NODE_KEY, ORIGIN)
    witness = Witness(MemoryStore(), WITNESS_KEY, "operator.example.gov/witness")
    note = grow(ledger, store, 6)

    with pytest.raises(WitnessSizeError) as raised:
        witness.cosign(note, ledger.vkey, ledger.consistency_proof(3, 6), old_size=3)

    assert raised.value.witness_size == 0
    witness.cosign(note, ledger.vkey, old_size=0)
    latest = witness.state.latest(ORIGIN)
    assert latest is not None and latest.size == 6


def test_a_real_fork_from_the_right_size_is_still_caught() -> None:
    store = MemoryStore()
    ledger = Ledger(store, NODE_KEY, ORIGIN)
    witness = Witness(MemoryStore(), WITNESS_KEY, "operator.example.gov/witness")
    witness.cosign(grow(ledger, store, 5), ledger.vkey, old_size=0)
    forged = sign_note(Checkpoint(ORIGIN, 9, b"\x07" * 32).body(), ORIGIN, NODE_KEY)

    with pytest.raises(VerificationError):
        witness.cosign(forged, ledger.vkey, ledger.consistency_proof(5, 5), old_size=5)

    assert len(witness.state.forks(ORIGIN)) == 1


def test_an_older_head_than_the_witnessed_one_is_refused_whatever_old_size_says() -> None:
    store = MemoryStore()
    ledger = Ledger(store, NODE_KEY, ORIGIN)
    witness = Witness(MemoryStore(), WITNESS_KEY, "operator.example.gov/witness")
    small = grow(ledger, store, 4)
    witness.cosign(grow(ledger, store, 4), ledger.vkey, old_size=0)

    with pytest.raises(ConflictError) as raised:
        witness.cosign(small, ledger.vkey, old_size=0)

    assert not isinstance(raised.value, WitnessSizeError)
    assert witness.state.forks(ORIGIN) == []
