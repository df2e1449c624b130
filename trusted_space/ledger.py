"""The tamper-evident ledger of a node, its witness, and the checks anyone can run on them.

Why: every use of data is written to the deciding node's append-only log (``events.py`` appends
the entry in the same store transaction as the state change). The log alone proves nothing to an
outsider: the node could rewrite it. So the node publishes signed checkpoints (C2SP
``tlog-checkpoint`` notes, see :mod:`trusted_space.notes`), an analyst receives with each result a
:class:`Receipt` (checkpoint + entry + inclusion proof), and the operator acts as a *witness*
that cosigns a checkpoint only if it is consistent with the last one it cosigned for that log.

Threats and what catches them:

- a node drops or edits an entry after publishing a checkpoint: the next checkpoint is not
  consistent with the old one; the witness refuses to cosign and keeps the evidence
  (:class:`Witness`, :func:`detect_fork`), and anyone holding the old checkpoint detects it
  (:func:`verify_log`, :func:`~trusted_space.merkle.verify_consistency`);
- a node shows the analyst one history and the witness another (split view): the analyst's
  receipt checkpoint carries the witness cosignature only if the witness saw that same history
  (:func:`verify_receipt` with ``witnesses=``);
- a forged receipt: the checkpoint signature and the inclusion proof are both checked.

Not caught: a node that never logs a use at all (the receipt is missing, which the analyst sees),
or a node and the witness colluding (use several witnesses). The witness is semi-trusted (DESIGN
§10): it sees only tree heads, never entries.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trusted_space.errors import (
    ConflictError,
    ValidationError,
    VerificationError,
    WitnessSizeError,
)
from trusted_space.events import EVENT_LOG, record_event
from trusted_space.keys import SigningKey
from trusted_space.merkle import (
    TILE_LEVEL,
    MerkleTree,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from trusted_space.notes import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    Checkpoint,
    NoteVerifier,
    add_cosignature,
    make_vkey,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    sign_note,
    verify_cosignature,
    verify_note,
)
from trusted_space.store import Store, Transaction

__all__ = [
    "CHECKPOINT_NAMESPACE",
    "FORK_NAMESPACE",
    "WATCH_NAMESPACE",
    "WITNESS_NAMESPACE",
    "Ledger",
    "Receipt",
    "Witness",
    "WitnessState",
    "detect_fork",
    "open_checkpoint",
    "record_witness_refusal",
    "verify_log",
    "verify_receipt",
]

CHECKPOINT_NAMESPACE = "ledger_checkpoint"
_HEAD_NAMESPACE = "ledger_checkpoint_head"
"""Per log: the newest checkpoint published (what every new one is checked against), so a
checkpoint costs one read however many were published before it."""
WITNESS_NAMESPACE = "witness_state"
FORK_NAMESPACE = "witness_fork"
WATCH_NAMESPACE = "witness_watch"
"""Per origin: the last submission's time, refusals, and whether the log was flagged silent."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValidationError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError as exc:
        raise ValidationError(f"{what} is not base64") from exc


def _verifier(vkey: str | NoteVerifier, sig_type: int) -> NoteVerifier:
    verifier = parse_vkey(vkey) if isinstance(vkey, str) else vkey
    if verifier.sig_type != sig_type:
        raise ValidationError(f"key {verifier.name} has signature type {verifier.sig_type:#04x}")
    return verifier


def open_checkpoint(note: str, vkey: str | NoteVerifier) -> Checkpoint:
    """Verify a checkpoint note's log signature and return the parsed checkpoint.

    The checkpoint's origin must equal the key name, so a key trusted for one log cannot vouch
    for another log's tree head.

    Raises:
        VerificationError: bad signature, malformed body, or origin/key-name mismatch.
    """
    verifier = _verifier(vkey, SIG_ED25519)
    opened = verify_note(note, verifier)
    try:
        checkpoint = parse_checkpoint(opened.text)
    except ValidationError as exc:
        raise VerificationError(f"malformed checkpoint: {exc}") from exc
    if checkpoint.origin != verifier.name:
        raise VerificationError("checkpoint origin does not match the log key name")
    return checkpoint


# ----------------------------------------------------------------------------------------------
# The node's ledger
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """Proof that a node logged an entry: a signed checkpoint, the entry and its inclusion path.

    Serialised as versioned JSON (base64 for bytes) with :meth:`to_json` / :meth:`from_json`.
    """

    checkpoint: str
    index: int
    entry: bytes
    proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "checkpoint": self.checkpoint,
            "index": self.index,
            "entry": _b64(self.entry),
            "proof": [_b64(p) for p in self.proof],
        }

    @classmethod
    def from_json(cls, doc: Any) -> Receipt:
        """Parse :meth:`to_json` output; :class:`ValidationError` if it is not one."""
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValidationError("not a version-1 receipt")
        index, proof, checkpoint = doc.get("index"), doc.get("proof"), doc.get("checkpoint")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValidationError("receipt index must be an integer >= 0")
        if not isinstance(proof, list) or not isinstance(checkpoint, str):
            raise ValidationError("receipt needs a checkpoint string and a proof list")
        return cls(
            checkpoint=checkpoint,
            index=index,
            entry=_unb64(doc.get("entry"), "receipt entry"),
            proof=tuple(_unb64(p, "receipt proof element") for p in proof),
        )

    def verify(
        self, vkey: str | NoteVerifier, *, witnesses: Sequence[str | NoteVerifier] = ()
    ) -> Checkpoint:
        """Same as :func:`verify_receipt` on this receipt's fields."""
        return verify_receipt(
            self.checkpoint, vkey, self.entry, self.index, self.proof, witnesses=witnesses
        )


class Ledger:
    """A node's append-only log with Merkle roots, proofs and signed checkpoints.

    Entries are appended elsewhere (``events.record_event`` inside the state change's
    transaction); this class reads them. Roots and proofs come from a :class:`MerkleTree` whose
    complete-subtree cache lives as long as this object (see :mod:`trusted_space.merkle` for the
    cost: O(n) once, then O(log n) per request).

    Args:
        store: the node's store.
        signing_key: the node's Ed25519 key; it signs checkpoints.
        origin: the log's origin line and note key name, e.g. ``"tax.example.gov/ledger"``
            (no spaces, no ``+``).
        log: which store log to expose (``"events"`` by default).
    """

    def __init__(
        self, store: Store, signing_key: SigningKey, origin: str, *, log: str = EVENT_LOG
    ) -> None:
        self._store = store
        self._key = signing_key
        self._log = log
        self.verifier = NoteVerifier(origin, SIG_ED25519, signing_key.verify_key)
        self.origin = origin
        self._tree = MerkleTree(self._read_leaf_hashes)

    def _read_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        tx: Transaction
        with self._store.transaction(readonly=True) as tx:
            return tx.log_leaf_hashes(self._log, start, end)

    @property
    def vkey(self) -> str:
        """The verifier key others configure to check this node's checkpoints."""
        return self.verifier.vkey

    def size(self) -> int:
        tx: Transaction
        with self._store.transaction(readonly=True) as tx:
            return tx.log_size(self._log)

    def _check_size(self, size: int) -> int:
        current = self.size()
        if not 0 <= size <= current:
            raise ValidationError(f"tree size {size} is not in [0, {current}]")
        return size

    def root(self, size: int | None = None) -> bytes:
        """Root hash at ``size`` (the current size by default)."""
        return self._tree.root(self.size() if size is None else self._check_size(size))

    def entries(self, start: int, end: int) -> list[bytes]:
        """Entry bytes with ``start <= index < end`` (clipped to the size)."""
        tx: Transaction
        with self._store.transaction(readonly=True) as tx:
            return tx.log_entries(self._log, start, end)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Inclusion path of leaf ``index`` in the tree of ``size`` leaves (default: current)."""
        n = self.size() if size is None else self._check_size(size)
        return self._tree.inclusion_proof(index, n)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """Proof that the tree of ``second`` leaves (default: current) extends that of ``first``."""
        n = self.size() if second is None else self._check_size(second)
        return self._tree.consistency_proof(first, n)

    def checkpoints(self) -> list[str]:
        """Every checkpoint note this node published, oldest first."""
        with self._store.transaction(readonly=True) as tx:
            docs = tx.scan(CHECKPOINT_NAMESPACE, f"{self._log}/")
        return [str(d.body["note"]) for d in docs]

    def _newest_published(self) -> str | None:
        """The newest checkpoint this node published (``None``: none yet)."""
        with self._store.transaction(readonly=True) as tx:
            head = tx.get(_HEAD_NAMESPACE, self._log)
            if head is not None:
                return str(head.body["note"])
            docs = tx.scan(CHECKPOINT_NAMESPACE, f"{self._log}/")  # a store from before the head
        return str(docs[-1].body["note"]) if docs else None

    def latest_checkpoint(self) -> str:
        """The newest published checkpoint, signing a fresh one if none was published yet."""
        newest = self._newest_published()
        return newest if newest is not None else self.checkpoint()

    def checkpoint(self) -> str:
        """Sign, store and return a checkpoint note for the current size.

        Before signing, the tree is checked against the newest checkpoint already published: a
        log must never sign a tree head inconsistent with one it signed before, so if the store
        was edited underneath us this refuses instead of publishing the fork.

        Raises:
            ConflictError: the log no longer matches a checkpoint this node published.
        """
        newest = self._newest_published()
        # Our own store's record of what we published: read it without checking the signature,
        # so a node whose key was rotated (re-admission with a new key) still refuses to sign a
        # fork of a head it signed with the old key.
        last = parse_checkpoint(parse_note(newest).text) if newest is not None else None
        with self._store.transaction(readonly=True) as tx:
            size = tx.log_size(self._log)
            # Both roots need only the leaves past the last complete tile below the older head:
            # read them once, in the same snapshot as the size.
            low = min(size, last.size) if last is not None else size
            start = (low >> TILE_LEVEL) << TILE_LEVEL
            tree = self._tree.with_tail(start, tx.log_leaf_hashes(self._log, start, size))
        if last is not None and (last.size > size or tree.root(last.size) != last.root):
            raise ConflictError("the log no longer matches a checkpoint already published")
        note = sign_note(
            Checkpoint(self.origin, size, tree.root(size)).body(), self.origin, self._key
        )
        with self._store.transaction() as tx:
            tx.put(CHECKPOINT_NAMESPACE, f"{self._log}/{size:020d}", {"note": note})
            head = tx.get(_HEAD_NAMESPACE, self._log)
            if (
                head is None or int(head.body["size"]) <= size
            ):  # a larger one signed meanwhile stays
                tx.put(_HEAD_NAMESPACE, self._log, {"note": note, "size": size})
        return note

    def receipts(self, indices: Sequence[int], checkpoint: str | None = None) -> list[Receipt]:
        """:meth:`receipt` for each of ``indices``, against one checkpoint (default: a fresh one).

        The entries and the leaf hashes their proofs read are read once for all of them.
        """
        note = self.checkpoint() if checkpoint is None else checkpoint
        head = open_checkpoint(note, self.verifier)
        if not indices:
            return []
        if not all(0 <= i < head.size for i in indices):
            raise ValidationError(f"an entry is not covered by a checkpoint of size {head.size}")
        low, high = min(indices), max(indices) + 1
        start = (low >> TILE_LEVEL) << TILE_LEVEL
        with self._store.transaction(readonly=True) as tx:
            entries = tx.log_entries(self._log, low, high)
            hashes = tx.log_leaf_hashes(self._log, start, head.size)
        tree = self._tree.with_tail(start, hashes)
        return [
            Receipt(note, i, entries[i - low], tuple(tree.inclusion_proof(i, head.size)))
            for i in indices
        ]

    def receipt(self, index: int, checkpoint: str | None = None) -> Receipt:
        """A :class:`Receipt` for entry ``index`` against ``checkpoint`` (default: a fresh one)."""
        note = self.checkpoint() if checkpoint is None else checkpoint
        head = open_checkpoint(note, self.verifier)
        if not 0 <= index < head.size:
            raise ValidationError(
                f"entry {index} is not covered by a checkpoint of size {head.size}"
            )
        entry = self.entries(index, index + 1)[0]
        return Receipt(note, index, entry, tuple(self._tree.inclusion_proof(index, head.size)))


# ----------------------------------------------------------------------------------------------
# Pure verification
# ----------------------------------------------------------------------------------------------


def verify_receipt(
    checkpoint: str,
    vkey: str | NoteVerifier,
    entry: bytes,
    index: int,
    proof: Sequence[bytes],
    *,
    witnesses: Sequence[str | NoteVerifier] = (),
) -> Checkpoint:
    """Check that ``entry`` is leaf ``index`` of the log whose signed checkpoint is given.

    Args:
        checkpoint: the checkpoint note text (possibly with cosignature lines).
        vkey: the node's verifier key (how the analyst learnt it is out of scope: the membership
            credential carries the node's public key).
        entry: the entry bytes (canonical JSON event).
        index: the leaf index.
        proof: the inclusion path.
        witnesses: cosigner vkeys (type ``0x04``) that must *all* have cosigned the checkpoint.

    Returns:
        The verified checkpoint.

    Raises:
        VerificationError: any signature, cosignature or proof check fails.
    """
    head = open_checkpoint(checkpoint, vkey)
    for witness in witnesses:
        verify_cosignature(checkpoint, _verifier(witness, SIG_COSIGNATURE_V1))
    verify_inclusion(leaf_hash(entry), index, head.size, proof, head.root)
    return head


def verify_log(
    entries: Sequence[bytes],
    checkpoint: str,
    vkey: str | NoteVerifier,
    previous: Sequence[str] = (),
) -> Checkpoint:
    """Re-verify a whole downloaded log against its checkpoint and earlier checkpoints.

    Every leaf is recomputed from the entries, so nothing the node says about hashes is trusted.
    ``entries`` may be longer than the checkpoint (the log grew since); only the first
    ``size`` count. Each earlier checkpoint (signed by the same key) must match the root of the
    corresponding prefix, which is stronger than a consistency proof.

    Raises:
        VerificationError: a signature fails, the log is shorter than a checkpoint, or a root
            does not match (the node rewrote history or served a different log).
    """
    head = open_checkpoint(checkpoint, vkey)
    if len(entries) < head.size:
        raise VerificationError("the log is shorter than its checkpoint")
    leaves = [leaf_hash(e) for e in entries[: head.size]]
    if root_hash(leaves) != head.root:
        raise VerificationError("the entries do not hash to the checkpoint root")
    tree = MerkleTree.from_leaf_hashes(leaves)
    for note in previous:
        old = open_checkpoint(note, vkey)
        if old.size > head.size:
            raise VerificationError("an earlier checkpoint is larger than the latest")
        if tree.root(old.size) != old.root:
            raise VerificationError(f"history rewritten: root at size {old.size} differs")
    return head


def detect_fork(a: Checkpoint, b: Checkpoint, proof: Sequence[bytes]) -> bool:
    """Whether two checkpoints of one log are *not* proven consistent.

    ``proof`` is the consistency proof from the smaller to the larger size. Two heads of the same
    size need no proof: different roots are a fork. ``True`` means the pair cannot both be
    honest views of one append-only log (or the proof offered is wrong); the witness refuses
    the newer one. Two *signed* heads of equal size with different roots are conclusive evidence
    of a fork by themselves.
    """
    if a.origin != b.origin:
        raise ValidationError("checkpoints of different logs cannot fork each other")
    older, newer = (a, b) if a.size <= b.size else (b, a)
    try:
        verify_consistency(older.size, newer.size, proof, older.root, newer.root)
    except VerificationError:
        return True
    return False


# ----------------------------------------------------------------------------------------------
# Witness
# ----------------------------------------------------------------------------------------------


class WitnessState:
    """The latest cosigned checkpoint per origin, and the fork evidence collected, in a store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def latest(self, origin: str) -> Checkpoint | None:
        """The newest checkpoint cosigned for ``origin``, or ``None`` if never seen."""
        with self._store.transaction(readonly=True) as tx:
            doc = tx.get(WITNESS_NAMESPACE, origin)
        if doc is None:
            return None
        return parse_checkpoint(str(doc.body["checkpoint"]))

    def latest_record(self, origin: str) -> dict[str, Any] | None:
        """The stored record of ``origin``'s newest cosigned head, ``None`` if never cosigned.

        Keys: ``checkpoint`` (body), ``note`` (the log's signed note as cosigned),
        ``cosigned_at`` (POSIX seconds).
        """
        with self._store.transaction(readonly=True) as tx:
            doc = tx.get(WITNESS_NAMESPACE, origin)
        return None if doc is None else dict(doc.body)

    def watch(self, origin: str) -> dict[str, Any]:
        """What the witness saw of ``origin``'s submissions (``{}`` if none).

        Keys: ``last_submission_at``, ``refusals``, ``last_refusal`` (reason), ``last_refused``
        (whether the last submission was refused), ``silent_since`` (set while flagged silent).
        """
        with self._store.transaction(readonly=True) as tx:
            doc = tx.get(WATCH_NAMESPACE, origin)
        return {} if doc is None else dict(doc.body)

    def forks(self, origin: str) -> list[dict[str, Any]]:
        """Evidence of refused checkpoints: the cosigned note and the conflicting one, signed."""
        with self._store.transaction(readonly=True) as tx:
            return [d.body for d in tx.scan(FORK_NAMESPACE, f"{origin}/")]


class Witness:
    """Cosigns other nodes' checkpoints, only when consistent with what it cosigned before.

    The state is kept in ``store`` (namespace ``witness_state``), updated in the same
    transaction as the ``checkpoint.cosigned`` event on the witness's own ledger, so a restart
    never forgets the newest head it vouched for.

    Args:
        store: the witness node's store.
        signing_key: the witness's Ed25519 key (use a key dedicated to cosigning: the
            cosignature/v1 message does not commit to the witness name).
        name: the cosigner key name, e.g. ``"operator.example.gov/witness"``.
    """

    def __init__(self, store: Store, signing_key: SigningKey, name: str) -> None:
        self._store = store
        self._key = signing_key
        self.name = name
        self.verifier = NoteVerifier(name, SIG_COSIGNATURE_V1, signing_key.verify_key)
        self.state = WitnessState(store)

    @property
    def vkey(self) -> str:
        """The cosigner verifier key (type ``0x04``) clients configure."""
        return make_vkey(self.name, self._key.verify_key, SIG_COSIGNATURE_V1)

    def latest_cosigned(self, origin: str) -> str | None:
        """The newest checkpoint note of ``origin`` this witness cosigned, with its cosignature.

        This is what the witness publishes so that anyone can anchor a check of the log on it
        (``trusted-space ledger verify``): the node cannot withhold or replace it. The
        cosignature is rebuilt from the stored note and time (Ed25519 is deterministic: the same
        bytes as the answer the node received). ``None`` if this witness never cosigned
        ``origin``.
        """
        record = self.state.latest_record(origin)
        if record is None:
            return None
        return add_cosignature(
            str(record["note"]), self.name, self._key, int(record["cosigned_at"])
        )

    def cosign(
        self,
        note: str,
        origin_vkey: str | NoteVerifier,
        proof: Sequence[bytes] = (),
        *,
        now: int | None = None,
        old_size: int | None = None,
    ) -> str:
        """Verify a node's checkpoint and return it with this witness's cosignature appended.

        Args:
            note: the node's signed checkpoint note.
            origin_vkey: the node's verifier key; its name must be the checkpoint origin.
            proof: consistency proof from the last size this witness cosigned for the origin
                (empty the first time, or when the size did not change).
            now: the cosignature time in POSIX seconds (default: the clock).
            old_size: the size ``proof`` starts from, as the node believes the witness last
                cosigned (as in C2SP ``tlog-witness``). When given and not the witness's size,
                :class:`WitnessSizeError` is raised and nothing is recorded: the node lost an
                earlier answer (a crash, a timeout) and retries from the witness's size. Without
                it, the proof is taken to start from the witness's size, so a node that lost an
                answer is reported as a fork.

        Raises:
            VerificationError: bad signature, or not consistent with the last cosigned
                checkpoint (the evidence is stored, see :meth:`WitnessState.forks`).
            WitnessSizeError: ``old_size`` is not the size this witness last cosigned.
            ConflictError: the checkpoint is older than one already cosigned (send a newer one).
        """
        head = open_checkpoint(note, origin_vkey)
        timestamp = int(time.time()) if now is None else now
        refusal = ""
        with self._store.transaction() as tx:
            doc = tx.get(WITNESS_NAMESPACE, head.origin)
            cosigned_note = ""
            last = None if doc is None else parse_checkpoint(str(doc.body["checkpoint"]))
            witness_size = 0 if last is None else last.size
            if old_size is not None and old_size != witness_size and head.size >= witness_size:
                raise WitnessSizeError(
                    f"the proof starts at size {old_size}, but this witness last cosigned "
                    f"{head.origin} at size {witness_size}",
                    witness_size=witness_size,
                )
            if head.size < witness_size:
                refusal = f"rolled back: size {head.size} is below the cosigned {witness_size}"
            elif doc is not None and last is not None and detect_fork(last, head, proof):
                cosigned_note = str(doc.body["note"])
                refusal = f"rewritten: size {head.size} does not extend the cosigned {witness_size}"
            if not refusal:
                tx.put(
                    WITNESS_NAMESPACE,
                    head.origin,
                    {"checkpoint": head.body(), "note": note, "cosigned_at": timestamp},
                    expect_version=0 if doc is None else doc.version,
                )
                _watch_submission(tx, head.origin, timestamp)
                record_event(
                    tx,
                    "checkpoint.cosigned",
                    {
                        "origin": head.origin,
                        "size": head.size,
                        "root": _b64(head.root),
                        "cosigner": self.name,
                        "timestamp": timestamp,
                    },
                )
                return add_cosignature(note, self.name, self._key, timestamp)
        with self._store.transaction() as tx:
            record_witness_refusal(tx, head.origin, head.size, refusal, timestamp)
            if cosigned_note:
                tx.put(
                    FORK_NAMESPACE,
                    f"{head.origin}/{timestamp:020d}/{head.size:020d}",
                    {
                        "origin": head.origin,
                        "cosigned": cosigned_note,
                        "conflicting": note,
                        "proof": [_b64(p) for p in proof],
                        "detected_at": timestamp,
                    },
                )
        if not cosigned_note:
            raise ConflictError(f"witness already cosigned {head.origin} at size {witness_size}")
        raise VerificationError(
            f"checkpoint of {head.origin} is not consistent with the last cosigned"
        )

    def flag_silent(self, origins: Sequence[str], now: int, quiet: int) -> list[str]:
        """Flag each of ``origins`` whose last submission is older than ``quiet`` seconds.

        A log that stops being witnessed can be rewritten unnoticed from its last cosigned head
        on; the operator's staff and auditors must see that. Each silence is recorded once, as a
        ``witness.silent`` event on the witness's own ledger (a later submission clears the
        flag). A log never witnessed is not flagged here (its alarm is ``never-witnessed``).

        Returns:
            The origins newly flagged.
        """
        flagged = []
        with self._store.transaction() as tx:
            for origin in origins:
                doc = tx.get(WATCH_NAMESPACE, origin)
                body = {} if doc is None else dict(doc.body)
                last = body.get("last_submission_at")
                if not isinstance(last, int) or body.get("silent_since") is not None:
                    continue
                if now - last <= quiet:
                    continue
                body["silent_since"] = now
                tx.put(WATCH_NAMESPACE, origin, body)
                record_event(
                    tx,
                    "witness.silent",
                    {"origin": origin, "last_submission_at": last, "quiet_seconds": now - last},
                )
                flagged.append(origin)
        return flagged


def _watch_submission(tx: Transaction, origin: str, timestamp: int) -> None:
    doc = tx.get(WATCH_NAMESPACE, origin)
    body = {} if doc is None else dict(doc.body)
    body["last_submission_at"] = timestamp
    body["last_refused"] = False
    body.pop("silent_since", None)
    tx.put(WATCH_NAMESPACE, origin, body)


def record_witness_refusal(
    tx: Transaction, origin: str, size: int | None, reason: str, timestamp: int
) -> None:
    """Record a refused submission of ``origin``'s checkpoint, in ``tx``.

    Writes the watch record and a ``checkpoint.refused`` event on the witness's ledger (its one
    writer).

    A refusal means the log was rolled back, rewritten, or signed with a key the operator did
    not register; an auditor reads it on the operator's ledger and its ``/operator/witness/logs``.
    """
    doc = tx.get(WATCH_NAMESPACE, origin)
    body = {} if doc is None else dict(doc.body)
    body["last_submission_at"] = timestamp
    body["refusals"] = int(body.get("refusals", 0)) + 1
    body["last_refusal"] = reason
    body["last_refused"] = True
    body.pop("silent_since", None)
    tx.put(WATCH_NAMESPACE, origin, body)
    record_event(
        tx,
        "checkpoint.refused",
        {"origin": origin, "size": size, "reason": reason, "timestamp": timestamp},
    )
