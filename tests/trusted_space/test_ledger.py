"""Signed notes, checkpoints, cosignatures, the Ledger, the Witness and receipt checks.

Known answers: golang.org/x/mod ``sumdb/note/note_test.go`` (the PeterNeumann key, its signed
note and the malformed-note table) and the cosigned checkpoint example of c2sp.org
``tlog-cosignature.md`` (its witness signature encodes ``time 1679315147`` of the example message).
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trusted_space.errors import ConflictError, ValidationError, VerificationError
from trusted_space.events import EVENT_LOG, canonical_json, decode_event, record_event
from trusted_space.keys import SigningKey
from trusted_space.ledger import (
    Ledger,
    Receipt,
    Witness,
    detect_fork,
    open_checkpoint,
    verify_log,
    verify_receipt,
)
from trusted_space.merkle import EMPTY_ROOT, leaf_hash, verify_consistency
from trusted_space.notes import (
    SIG_COSIGNATURE_V1,
    Checkpoint,
    NoteVerifier,
    add_cosignature,
    cosignature_message,
    make_vkey,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    sign_note,
    verify_cosignature,
    verify_note,
)
from trusted_space.store import MemoryStore, SQLiteStore, Store

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSN"
    "XgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33W"
    "Wd1RvMc+QQ=\n"
)
C2SP_COSIGNED = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q"
    "1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2"
    "oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)

ORIGIN = "tax.example.gov/ledger"
NODE_KEY = SigningKey.generate()
WITNESS_KEY = SigningKey.generate()


def peter_key() -> SigningKey:
    material = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert material[0] == 0x01
    return SigningKey(Ed25519PrivateKey.from_private_bytes(material[1:]))


def append(store: Store, n: int, tag: str = "use") -> None:
    with store.transaction() as tx:
        for i in range(n):
            record_event(tx, "query.use", {"tag": tag, "i": i})


# -- signed notes ------------------------------------------------------------------------------


def test_go_known_answer_sign_and_verify() -> None:
    key = peter_key()
    assert make_vkey("PeterNeumann", key.verify_key) == PETER_VKEY
    assert sign_note(TEXT, "PeterNeumann", key) == TEXT + "\n" + PETER_SIG
    note = verify_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, parse_vkey(PETER_VKEY))
    assert note.text == TEXT and len(note.signatures) == 2
    verify_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, parse_vkey(ENOCH_VKEY))


def test_go_vkey_manglings_rejected() -> None:
    assert parse_vkey(PETER_VKEY).key_id.hex() == "c74f20a3"
    for i in range(len(PETER_VKEY)):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(ValidationError):
                    parse_vkey(PETER_VKEY[i:j])
        mangled = PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :]
        with pytest.raises(ValidationError):
            parse_vkey(mangled)
    with pytest.raises(ValidationError):
        parse_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


@pytest.mark.parametrize(
    "message",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"),
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_go_malformed_notes_rejected(message: str) -> None:
    with pytest.raises(ValidationError):
        parse_note(message)
    with pytest.raises(VerificationError):
        verify_note(message, parse_vkey(PETER_VKEY))


def test_note_tampering_fails() -> None:
    verifier = parse_vkey(PETER_VKEY)
    good = TEXT + "\n" + PETER_SIG
    broken = [
        good.replace("cryptography", "cryptographY"),  # modified body
        TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:],  # garbled signature
        TEXT + "\n" + PETER_SIG[:-20] + "\n",  # truncated signature line
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "CarmenSandiego"),  # wrong name
        TEXT + "\n" + ENOCH_SIG,  # only another key's signature
    ]
    for message in broken:
        with pytest.raises(VerificationError) as info:
            verify_note(message, verifier)
        assert str(info.value) == "verification failed"
    other = NoteVerifier("PeterNeumann", 0x01, SigningKey.generate().verify_key)
    with pytest.raises(VerificationError):
        verify_note(good, other)  # wrong key under the right name


def test_c2sp_cosignature_example_layout() -> None:
    note = parse_note(C2SP_COSIGNED)
    checkpoint = parse_checkpoint(note.text)
    assert (checkpoint.origin, checkpoint.size) == ("example.com/behind-the-sofa", 20852163)
    witness = note.signatures[1]
    assert witness.key_id.hex() == "8d66cf3f" and len(witness.signature) == 8 + 64
    assert struct.unpack(">Q", witness.signature[:8])[0] == 1679315147
    assert cosignature_message(note.text, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
        b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )


def test_cosignature_round_trip_and_failures() -> None:
    body = Checkpoint(ORIGIN, 3, b"\x07" * 32).body()
    note = sign_note(body, ORIGIN, NODE_KEY)
    cosigned = add_cosignature(note, "w.example/1", WITNESS_KEY, 1700000000)
    cosigner = parse_vkey(make_vkey("w.example/1", WITNESS_KEY.verify_key, SIG_COSIGNATURE_V1))
    assert verify_cosignature(cosigned, cosigner).timestamp == 1700000000
    open_checkpoint(cosigned, make_vkey(ORIGIN, NODE_KEY.verify_key))  # log sig still verifies
    with pytest.raises(VerificationError):
        verify_cosignature(note, cosigner)
    with pytest.raises(VerificationError):
        verify_cosignature(cosigned.replace("\n3\n", "\n4\n"), cosigner)
    line = cosigned.splitlines()[-1]
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    raw[11] ^= 1  # change the timestamp: the signature no longer matches
    forged = note + "— w.example/1 " + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(VerificationError):
        verify_cosignature(forged, cosigner)
    # A type-0x01 key is not a cosigner, and a cosigner key does not open notes.
    with pytest.raises(VerificationError):
        verify_cosignature(cosigned, parse_vkey(PETER_VKEY))
    with pytest.raises(VerificationError):
        verify_note(cosigned, cosigner)


def test_checkpoint_parsing_is_strict() -> None:
    root = base64.b64encode(b"\x01" * 32).decode()
    assert parse_checkpoint(f"o\n0\n{root}\n").size == 0
    for bad in [
        f"o\n01\n{root}\n",
        f"o\n-1\n{root}\n",
        f"o\n1\n{root}",
        "o\n1\nAAAA\n",
        f"\n1\n{root}\n",
    ]:
        with pytest.raises(ValidationError):
            parse_checkpoint(bad)
    ext = parse_checkpoint(f"o\n5\n{root}\nextra\n")
    assert ext.extensions == ("extra",) and ext.body() == f"o\n5\n{root}\nextra\n"


# -- ledger ------------------------------------------------------------------------------------


def test_ledger_checkpoint_receipt_and_whole_log() -> None:
    store = MemoryStore()
    ledger = Ledger(store, NODE_KEY, ORIGIN)
    empty = open_checkpoint(ledger.checkpoint(), ledger.vkey)
    assert (empty.size, empty.root) == (0, EMPTY_ROOT)
    append(store, 10)
    first = ledger.checkpoint()
    append(store, 7)
    second = ledger.checkpoint()
    assert ledger.checkpoints()[-2:] == [first, second]

    receipt = Receipt.from_json(ledger.receipt(3, second).to_json())
    head = receipt.verify(ledger.vkey)
    assert head.size == 17 and decode_event(3, receipt.entry).body == {"tag": "use", "i": 3}
    with pytest.raises(VerificationError):
        verify_receipt(second, ledger.vkey, receipt.entry + b" ", 3, receipt.proof)
    with pytest.raises(VerificationError):
        verify_receipt(second, ledger.vkey, receipt.entry, 4, receipt.proof)

    a, b = open_checkpoint(first, ledger.vkey), open_checkpoint(second, ledger.vkey)
    verify_consistency(a.size, b.size, ledger.consistency_proof(10, 17), a.root, b.root)
    assert verify_log(ledger.entries(0, 17), second, ledger.vkey, [first]) == b
    with pytest.raises(VerificationError):
        verify_log(ledger.entries(0, 16), second, ledger.vkey)
    tampered = ledger.entries(0, 17)
    tampered[2] = canonical_json({"v": 1, "kind": "query.use", "time": "x", "body": {}})
    with pytest.raises(VerificationError):
        verify_log(tampered, second, ledger.vkey, [first])


@pytest.mark.parametrize("warm", [False, True])
def test_receipts_of_a_group_equal_one_receipt_each(warm: bool) -> None:
    store = MemoryStore()
    ledger = Ledger(store, NODE_KEY, ORIGIN)
    append(store, 700)  # several tiles of 2**TILE_LEVEL leaves and a partial one
    note = ledger.checkpoint()
    if warm:
        ledger.receipt(0, note)  # the subtree cache filled by an earlier proof
    fresh = Ledger(store, NODE_KEY, ORIGIN) if not warm else ledger
    indices = [699, 3, 256, 511, 640]

    group = fresh.receipts(indices, note)

    assert [r.to_json() for r in group] == [ledger.receipt(i, note).to_json() for i in indices]
    for i, receipt in zip(indices, group, strict=True):
        assert receipt.index == i and receipt.verify(ledger.vkey).size == 700
    assert fresh.receipts([], note) == []
    with pytest.raises(ValidationError):
        fresh.receipts([700], note)


def test_ledger_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = SQLiteStore(path)
    ledger = Ledger(store, NODE_KEY, ORIGIN)
    append(store, 300)
    note = ledger.checkpoint()
    store.close()

    reopened = SQLiteStore(path)
    again = Ledger(reopened, NODE_KEY, ORIGIN)
    assert again.size() == 300 and again.latest_checkpoint() == note
    head = open_checkpoint(note, again.vkey)
    assert again.root(300) == head.root
    append(reopened, 5)
    later = again.checkpoint()
    assert verify_log(again.entries(0, 305), later, again.vkey, [note]).size == 305
    reopened.close()


def test_ledger_refuses_to_sign_over_a_rewritten_store() -> None:
    store = MemoryStore()
    ledger = Ledger(store, NODE_KEY, ORIGIN)
    append(store, 4)
    ledger.checkpoint()
    store._logs[EVENT_LOG][1] = (b"forged", leaf_hash(b"forged"))  # an insider edits the db
    fresh = Ledger(store, NODE_KEY, ORIGIN)
    with pytest.raises(ConflictError):
        fresh.checkpoint()


def test_a_store_from_before_the_head_is_still_checked_against_its_newest_checkpoint() -> None:
    store = MemoryStore()
    ledger = Ledger(store, NODE_KEY, ORIGIN)
    append(store, 4)
    first = ledger.checkpoint()
    append(store, 3)
    second = ledger.checkpoint()
    assert ledger.latest_checkpoint() == second == ledger.checkpoints()[-1]
    with store.transaction() as tx:  # as a store written before the head was kept
        assert tx.delete("ledger_checkpoint_head", ledger._log)
    assert Ledger(store, NODE_KEY, ORIGIN).latest_checkpoint() == second
    store._logs[EVENT_LOG][5] = (b"forged", leaf_hash(b"forged"))  # after `first`, before `second`
    with pytest.raises(ConflictError):
        Ledger(store, NODE_KEY, ORIGIN).checkpoint()
    assert first in ledger.checkpoints()


def test_a_rotated_key_keeps_signing_and_still_refuses_a_rewritten_store() -> None:
    store = MemoryStore()
    Ledger(store, NODE_KEY, ORIGIN).checkpoint()
    append(store, 3)
    Ledger(store, NODE_KEY, ORIGIN).checkpoint()
    rotated = Ledger(store, SigningKey.generate(), ORIGIN)  # re-admitted with a new key
    append(store, 2)
    note = rotated.checkpoint()
    assert open_checkpoint(note, rotated.vkey).size == 5
    store._logs[EVENT_LOG][0] = (b"forged", leaf_hash(b"forged"))
    with pytest.raises(ConflictError):
        Ledger(store, SigningKey.generate(), ORIGIN).checkpoint()


# -- witness -----------------------------------------------------------------------------------


def test_witness_cosigns_consistent_and_catches_a_fork() -> None:
    node_store, witness_store = MemoryStore(), MemoryStore()
    ledger = Ledger(node_store, NODE_KEY, ORIGIN)
    witness = Witness(witness_store, WITNESS_KEY, "operator.example.gov/witness")
    append(node_store, 5)
    c1 = ledger.checkpoint()
    cosigned = witness.cosign(c1, ledger.vkey, now=1_700_000_000)
    assert verify_cosignature(cosigned, parse_vkey(witness.vkey)).timestamp == 1_700_000_000
    append(node_store, 3)
    c2 = ledger.checkpoint()
    witness.cosign(c2, ledger.vkey, ledger.consistency_proof(5, 8), now=1_700_000_100)
    assert witness.state.latest(ORIGIN) == open_checkpoint(c2, ledger.vkey)

    # The same node key signs a second history that rewrote entry 2.
    fork_store = MemoryStore()
    with fork_store.transaction() as tx:
        for i, entry in enumerate(ledger.entries(0, 8)):
            forged = b"rewritten" if i == 2 else entry
            tx.log_append(EVENT_LOG, forged, leaf_hash(forged))
    forked = Ledger(fork_store, NODE_KEY, ORIGIN)
    append(fork_store, 2)
    f1 = forked.checkpoint()
    assert detect_fork(
        open_checkpoint(c2, ledger.vkey),
        open_checkpoint(f1, ledger.vkey),
        forked.consistency_proof(8, 10),
    )
    with pytest.raises(VerificationError):
        witness.cosign(f1, ledger.vkey, forked.consistency_proof(8, 10), now=1_700_000_200)
    evidence = witness.state.forks(ORIGIN)
    assert len(evidence) == 1 and evidence[0]["conflicting"] == f1
    assert evidence[0]["cosigned"] == c2

    # Older checkpoints are refused, a wrong origin key too; the witness logged its cosignatures
    # and each refusal it decided on (the fork, the rollback) with its reason.
    with pytest.raises(ConflictError):
        witness.cosign(c1, ledger.vkey)
    with pytest.raises(VerificationError):
        witness.cosign(c2, make_vkey(ORIGIN, SigningKey.generate().verify_key))
    with pytest.raises(VerificationError):
        witness.cosign(c2, make_vkey("other.example/log", NODE_KEY.verify_key))
    with witness_store.transaction() as tx:
        kinds = [decode_event(i, e).kind for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, 10))]
    assert kinds == [
        "checkpoint.cosigned",
        "checkpoint.cosigned",
        "checkpoint.refused",
        "checkpoint.refused",
    ]
    with witness_store.transaction() as tx:
        refused = [decode_event(i, e).body for i, e in enumerate(tx.log_entries(EVENT_LOG, 2, 4))]
    assert refused[0]["reason"].startswith("rewritten") and refused[0]["size"] == 10
    assert refused[1]["reason"].startswith("rolled back") and refused[1]["size"] == 5
    watch = witness.state.watch(ORIGIN)
    assert watch["refusals"] == 2 and watch["last_refused"] is True
    assert witness.latest_cosigned(ORIGIN) is not None
    latest = witness.latest_cosigned(ORIGIN)
    assert latest is not None and parse_note(latest).text == parse_note(c2).text
    verify_cosignature(latest, parse_vkey(witness.vkey))

    # A receipt can demand the witness's cosignature.
    receipt = ledger.receipt(1, cosigned)
    receipt.verify(ledger.vkey, witnesses=[witness.vkey])
    with pytest.raises(VerificationError):
        ledger.receipt(1, c1).verify(ledger.vkey, witnesses=[witness.vkey])


def test_same_size_different_root_is_a_fork() -> None:
    a = Checkpoint(ORIGIN, 4, b"\x01" * 32)
    b = Checkpoint(ORIGIN, 4, b"\x02" * 32)
    assert detect_fork(a, b, []) and not detect_fork(a, a, [])


# -- stateful ----------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """Append, checkpoint, prove; a rewritten history is caught by proofs and by the witness."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.ledger = Ledger(self.store, NODE_KEY, ORIGIN)
        self.witness = Witness(MemoryStore(), WITNESS_KEY, "w.example/1")
        self.notes: list[str] = []
        self.heads: list[Checkpoint] = []
        self.cosigned_size = -1

    @rule(n=st.integers(1, 40))
    def append_entries(self, n: int) -> None:
        append(self.store, n, tag=f"batch{len(self.heads)}")

    @rule()
    def take_checkpoint(self) -> None:
        note = self.ledger.checkpoint()
        self.notes.append(note)
        self.heads.append(open_checkpoint(note, self.ledger.vkey))

    @precondition(lambda self: bool(self.heads))
    @rule()
    def witness_latest(self) -> None:
        head = self.heads[-1]
        proof = self.ledger.consistency_proof(max(self.cosigned_size, 0), head.size)
        if self.cosigned_size < 0:
            proof = []
        self.witness.cosign(self.notes[-1], self.ledger.vkey, proof, now=1)
        self.cosigned_size = head.size

    @precondition(lambda self: bool(self.heads))
    @rule(data=st.data())
    def prove_between_checkpoints(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.heads) - 1))
        j = data.draw(st.integers(i, len(self.heads) - 1))
        a, b = self.heads[i], self.heads[j]
        verify_consistency(
            a.size, b.size, self.ledger.consistency_proof(a.size, b.size), a.root, b.root
        )
        if b.size:
            index = data.draw(st.integers(0, b.size - 1))
            receipt = self.ledger.receipt(index, self.notes[j])
            assert receipt.verify(self.ledger.vkey) == b

    @precondition(lambda self: any(h.size for h in self.heads))
    @rule(data=st.data())
    def rewritten_history_is_detected(self, data: st.DataObject) -> None:
        old = data.draw(st.sampled_from([h for h in self.heads if h.size]))
        victim = data.draw(st.integers(0, old.size - 1))
        fork_store = MemoryStore()
        with fork_store.transaction() as tx:
            for k, entry in enumerate(self.ledger.entries(0, self.ledger.size())):
                forged = entry + b" " if k == victim else entry
                tx.log_append(EVENT_LOG, forged, leaf_hash(forged))
        append(fork_store, 1, tag="fork")
        forked = Ledger(fork_store, NODE_KEY, ORIGIN)
        note = forked.checkpoint()
        new = open_checkpoint(note, forked.vkey)
        assert detect_fork(old, new, forked.consistency_proof(old.size, new.size))
        with pytest.raises(VerificationError):
            verify_log(
                forked.entries(0, new.size), note, forked.vkey, [self.notes[self.heads.index(old)]]
            )
        if self.cosigned_size > victim:
            proof = forked.consistency_proof(self.cosigned_size, new.size)
            with pytest.raises(VerificationError):
                self.witness.cosign(note, forked.vkey, proof, now=2)

    @invariant()
    def sizes_are_monotonic(self) -> None:
        sizes = [h.size for h in self.heads]
        assert sizes == sorted(sizes) and (not sizes or sizes[-1] <= self.ledger.size())


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
