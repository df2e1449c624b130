"""Independent verification of a node's ledger: what ``trusted-space ledger verify`` runs.

Why: a node's ledger is only worth something if someone other than the node can check it. This
module trusts nothing the node says about hashes: it downloads every entry, recomputes every leaf
(RFC 6962: ``SHA-256(0x00 || entry)``) and the root, and compares it with the node's signed
checkpoint; it checks inclusion proofs for a sample of entries; and it checks that the current log
still extends every checkpoint the operator's witness cosigned (a consistency proof from each
cosigned size, plus the root of that prefix recomputed from the entries).

What it catches: an entry edited in the node's store (the recomputed root differs from the signed
one), entries deleted or history rewritten after a witnessed checkpoint (a cosigned checkpoint is
larger than the log, or not a prefix of it), a checkpoint or cosignature that does not verify,
proofs that do not match.

Trust: the node's ledger key is taken from ``--vkey`` when given; otherwise it is fetched from the
node's own ``/identity`` and the report says so (trust on first use: a node could serve a key of
its choosing; pin the key from the membership credential or an earlier run to rule that out).
The witness key comes from ``--witness-vkey`` or the operator's ``/operator/identity``.

Every step is a :class:`Check` (name, ok, detail); a failed fetch or a garbage answer is a failed
check, never an exception out of :func:`verify_node`.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from trusted_space.errors import TrustedSpaceError, ValidationError, VerificationError
from trusted_space.events import decode_event
from trusted_space.ledger import open_checkpoint
from trusted_space.merkle import (
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
    parse_note,
    parse_vkey,
    verify_cosignature,
)

__all__ = ["PAGE", "Check", "Report", "verify_node"]

PAGE = 1000
"""Entries requested per call (the node serves at most this many)."""

_FETCH_ERRORS = (
    httpx.HTTPError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    binascii.Error,
    TrustedSpaceError,
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Report:
    """The outcome: ``ok`` only if every check passed."""

    node: str
    checks: list[Check] = field(default_factory=list)
    size: int | None = None
    root: str | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    key_source: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "ok": self.ok,
            "size": self.size,
            "root": self.root,
            "keySource": self.key_source,
            "kinds": dict(sorted(self.kinds.items())),
            "checks": [c.to_json() for c in self.checks],
        }


def _get(client: httpx.Client, url: str, **params: int) -> httpx.Response:
    response = client.get(url, params=params or None)
    response.raise_for_status()
    return response


def _why(exc: BaseException) -> str:
    if isinstance(exc, VerificationError):
        return exc.reason
    if isinstance(exc, httpx.HTTPStatusError):
        detail = ""
        try:
            doc = exc.response.json()
            detail = str(doc.get("detail", "")) if isinstance(doc, dict) else ""
        except ValueError:
            pass
        status = exc.response.status_code
        return f"{exc.request.url.path} answered {status}" + (f": {detail}" if detail else "")
    return f"{type(exc).__name__}: {exc}"


def _ledger_key(client: httpx.Client, node: str, vkey: str | None, report: Report) -> NoteVerifier:
    if vkey is not None:
        verifier = parse_vkey(vkey)
        report.key_source = "given (--vkey)"
    else:
        verifier = parse_vkey(str(_get(client, f"{node}/identity").json()["ledgerVkey"]))
        report.key_source = f"trust-on-first-use: fetched from {node}/identity"
    if verifier.sig_type != SIG_ED25519:
        raise ValidationError("the ledger key is not an Ed25519 (0x01) note key")
    return verifier


def _witness_keys(
    client: httpx.Client, witness_vkeys: Sequence[str], operator: str | None
) -> tuple[list[NoteVerifier], str]:
    if witness_vkeys:
        return [parse_vkey(v) for v in witness_vkeys], "given (--witness-vkey)"
    if operator:
        anchor = _get(client, f"{operator.rstrip('/')}/operator/identity").json()
        return [parse_vkey(str(anchor["witnessVkey"]))], f"fetched from {operator} (TOFU)"
    return [], "none given: cosignatures not checked (pass --witness-vkey or --operator)"


def _fetch_entries(client: httpx.Client, node: str, size: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < size:
        start = len(out)
        page = _get(
            client, f"{node}/ledger/entries", start=start, end=min(start + PAGE, size)
        ).json()
        if page.get("start") != start:
            raise ValueError(f"asked for entries from {start}, got a page from {page.get('start')}")
        items = page["entries"]
        if not isinstance(items, list) or not items:
            break
        wanted = min(start + PAGE, size) - start
        out.extend(base64.b64decode(str(e), validate=True) for e in items[:wanted])
    return out


def _hashes(values: Any) -> list[bytes]:
    if not isinstance(values, list):
        raise ValueError("proof is not a list")
    return [bytes.fromhex(str(v)) for v in values]


def _check_inclusions(
    client: httpx.Client,
    node: str,
    head: Checkpoint,
    entries: Sequence[bytes],
    samples: int,
    rng: random.Random,
    report: Report,
) -> None:
    n = min(head.size, len(entries))
    if n == 0:
        report.add("inclusion proofs", True, "empty log: nothing to prove")
        return
    chosen = {0, n - 1} | set(rng.sample(range(n), min(samples, n)))
    for index in sorted(chosen):
        try:
            doc = _get(client, f"{node}/ledger/proof/inclusion", index=index, size=head.size).json()
            if bytes.fromhex(str(doc["root"])) != head.root:
                raise VerificationError("the proof's root is not the checkpoint's")
            verify_inclusion(
                leaf_hash(entries[index]), index, head.size, _hashes(doc["proof"]), head.root
            )
        except _FETCH_ERRORS as exc:
            report.add("inclusion proofs", False, f"entry {index}: {_why(exc)}")
            return
    report.add("inclusion proofs", True, f"{len(chosen)} sampled entries proven in the tree")


def _check_latest_cosignature(note: str, witnesses: Sequence[NoteVerifier], report: Report) -> None:
    signers = {s.name for s in parse_note(note).signatures}
    present = [w for w in witnesses if w.name in signers]
    if not present:
        report.add("checkpoint cosignature", True, "the latest checkpoint is not witnessed yet")
        return
    for witness in present:
        try:
            verify_cosignature(note, witness)
        except VerificationError as exc:
            report.add("checkpoint cosignature", False, exc.reason)
            return
    report.add("checkpoint cosignature", True, f"cosigned by {', '.join(w.name for w in present)}")


def _check_cosigned(
    client: httpx.Client,
    node: str,
    verifier: NoteVerifier,
    head: Checkpoint,
    entries: Sequence[bytes],
    witnesses: Sequence[NoteVerifier],
    witness_source: str,
    report: Report,
) -> None:
    try:
        notes = _get(client, f"{node}/ledger/cosignatures").json()["notes"]
        if not isinstance(notes, list):
            raise ValueError("notes is not a list")
    except _FETCH_ERRORS as exc:
        report.add("witnessed checkpoints", False, f"cannot fetch: {_why(exc)}")
        return
    if not notes:
        report.add("witnessed checkpoints", True, "none published: the log was never witnessed")
        return
    leaves = [leaf_hash(e) for e in entries]
    for note in notes:
        try:
            old = open_checkpoint(str(note), verifier)
            for witness in witnesses:
                verify_cosignature(str(note), witness)
            if old.size > head.size:
                raise VerificationError(
                    f"the log ({head.size} entries) is shorter than a witnessed checkpoint "
                    f"({old.size}): entries were removed"
                )
            doc = _get(
                client, f"{node}/ledger/proof/consistency", first=old.size, second=head.size
            ).json()
            verify_consistency(old.size, head.size, _hashes(doc["proof"]), old.root, head.root)
            if old.size <= len(leaves) and root_hash(leaves[: old.size]) != old.root:
                raise VerificationError(
                    f"history rewritten: the entries do not hash to the witnessed root at "
                    f"size {old.size}"
                )
        except _FETCH_ERRORS as exc:
            report.add("witnessed checkpoints", False, _why(exc))
            return
    names = ", ".join(w.name for w in witnesses) or "signature of the log only"
    report.add(
        "witnessed checkpoints",
        True,
        f"{len(notes)} cosigned checkpoint(s) extended by the current log; witness: {names} "
        f"[{witness_source}]",
    )


def verify_node(
    client: httpx.Client,
    node: str,
    *,
    vkey: str | None = None,
    witness_vkeys: Sequence[str] = (),
    operator: str | None = None,
    samples: int = 16,
    rng: random.Random | None = None,
) -> Report:
    """Verify the ledger a node serves, trusting only the keys given (or fetched, as reported).

    Args:
        client: the HTTP client (tests pass one on an in-process transport).
        node: the node's base URL.
        vkey: the node's ledger verifier key; fetched from its ``/identity`` when ``None``.
        witness_vkeys: cosigner keys whose cosignatures must be on every witnessed checkpoint.
        operator: the operator's URL, to fetch the witness key when none is given.
        samples: how many random entries (besides the first and last) get an inclusion proof.
        rng: the sampling randomness (default: the system's).
    """
    node = node.rstrip("/")
    report = Report(node)
    chooser = rng if rng is not None else random.SystemRandom()

    try:
        verifier = _ledger_key(client, node, vkey, report)
    except _FETCH_ERRORS as exc:
        report.add("ledger key", False, _why(exc))
        return report
    report.add("ledger key", True, f"{verifier.name} [{report.key_source}]")

    try:
        note = _get(client, f"{node}/ledger/checkpoint").text
        head = open_checkpoint(note, verifier)
    except _FETCH_ERRORS as exc:
        report.add("checkpoint", False, _why(exc))
        return report
    report.size, report.root = head.size, head.root.hex()
    report.add("checkpoint", True, f"size {head.size}, root {head.root.hex()[:16]}…")

    try:
        witnesses, witness_source = _witness_keys(client, witness_vkeys, operator)
        if any(w.sig_type != SIG_COSIGNATURE_V1 for w in witnesses):
            raise ValidationError("a witness key is not a cosignature/v1 (0x04) key")
    except _FETCH_ERRORS as exc:
        report.add("witness key", False, _why(exc))
        witnesses, witness_source = [], "unavailable"
    if witnesses:
        _check_latest_cosignature(note, witnesses, report)

    try:
        entries = _fetch_entries(client, node, head.size)
    except _FETCH_ERRORS as exc:
        report.add("entries", False, f"download failed: {_why(exc)}")
        return report
    if len(entries) < head.size:
        report.add("entries", False, f"the node served {len(entries)} of {head.size} entries")
    else:
        report.add("entries", True, f"{head.size} entries downloaded")

    computed = root_hash([leaf_hash(e) for e in entries[: head.size]])
    report.add(
        "merkle root",
        computed == head.root,
        "recomputed from the entry bytes: matches the signed checkpoint"
        if computed == head.root
        else f"recomputed {computed.hex()[:16]}… differs from the signed "
        f"{head.root.hex()[:16]}…: entries were altered or removed",
    )

    _check_inclusions(client, node, head, entries, samples, chooser, report)
    _check_cosigned(client, node, verifier, head, entries, witnesses, witness_source, report)

    kinds: Counter[str] = Counter()
    bad: list[int] = []
    for index, entry in enumerate(entries[: head.size]):
        try:
            kinds[decode_event(index, entry).kind] += 1
        except (ValueError, KeyError, TypeError):
            bad.append(index)
    report.kinds = dict(kinds)
    report.add(
        "events decode",
        not bad,
        f"{len(kinds)} kinds" if not bad else f"{len(bad)} entries are not events, first {bad[0]}",
    )
    return report
