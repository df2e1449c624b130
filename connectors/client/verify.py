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
from trusted_space.ledger import Receipt, open_checkpoint
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

__all__ = [
    "PAGE",
    "Anchor",
    "Check",
    "Report",
    "fetch_anchor",
    "verify_node",
    "verify_receipts_file",
]

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


@dataclass(frozen=True)
class Anchor:
    """What the operator publishes about one member's log: the trust anchor of a verification.

    ``vkey`` is the ledger key the operator registered at admission; ``cosigned`` the newest
    checkpoint note of that log its witness cosigned (``None``: never witnessed); ``url`` the
    member's registered URL.
    """

    participant: str
    vkey: NoteVerifier
    witnesses: tuple[NoteVerifier, ...]
    cosigned: str | None
    url: str | None


def fetch_anchor(client: httpx.Client, operator: str, participant: str) -> Anchor:
    """The operator's registered key and witnessed head for ``participant`` (public routes).

    Raises:
        httpx.HTTPError, ValueError, KeyError, TrustedSpaceError: unreachable, unknown member,
            or a garbage answer.
    """
    base = operator.rstrip("/")
    identity = _get(client, f"{base}/operator/identity").json()
    witness = parse_vkey(str(identity["witnessVkey"]))
    if witness.sig_type != SIG_COSIGNATURE_V1:
        raise ValidationError("the operator's witness key is not a cosignature/v1 (0x04) key")
    doc = _get(client, f"{base}/operator/witness/logs/{participant}").json()
    vkey = parse_vkey(str(doc["ledgerVkey"]))
    if vkey.sig_type != SIG_ED25519:
        raise ValidationError("the registered ledger key is not an Ed25519 (0x01) note key")
    note = doc.get("checkpoint")
    url = doc.get("url")
    return Anchor(
        participant=participant,
        vkey=vkey,
        witnesses=(witness,),
        cosigned=str(note) if note else None,
        url=str(url) if url else None,
    )


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


def _check_anchor(
    client: httpx.Client,
    node: str,
    anchor: Anchor,
    head: Checkpoint,
    entries: Sequence[bytes] | None,
    report: Report,
) -> None:
    """The node's current log must extend the head the witness cosigned last (its anchor).

    Says which attack it found: *rolled back* (the log is smaller than the witnessed head),
    *rewritten* (same size, another root, or no consistency proof, or the entries no longer
    hash to the witnessed root).
    """
    name = "witness anchor"
    if anchor.cosigned is None:
        report.add(
            name, False, "the operator's witness never cosigned this log: nothing anchors it"
        )
        return
    try:
        witnessed = open_checkpoint(anchor.cosigned, anchor.vkey)
        for witness in anchor.witnesses:
            verify_cosignature(anchor.cosigned, witness)
    except VerificationError as exc:
        report.add(
            name, False, f"the operator's witnessed checkpoint does not verify: {exc.reason}"
        )
        return
    m, n = witnessed.size, head.size
    if n < m:
        report.add(
            name,
            False,
            f"ROLLED BACK: the node serves {n} entries, the witness cosigned size {m}",
        )
        return
    if n == m and head.root != witnessed.root:
        report.add(
            name,
            False,
            f"REWRITTEN: the node's root at size {m} is not the one the witness cosigned",
        )
        return
    try:
        doc = _get(client, f"{node}/ledger/proof/consistency", first=m, second=n).json()
        verify_consistency(m, n, _hashes(doc["proof"]), witnessed.root, head.root)
    except _FETCH_ERRORS as exc:
        report.add(
            name,
            False,
            f"REWRITTEN: the log of size {n} does not extend the head the witness cosigned at "
            f"size {m} ({_why(exc)})",
        )
        return
    if (
        entries is not None
        and len(entries) >= m
        and root_hash([leaf_hash(e) for e in entries[:m]]) != witnessed.root
    ):
        report.add(
            name,
            False,
            f"REWRITTEN: the entries do not hash to the root the witness cosigned at size {m}",
        )
        return
    report.add(
        name,
        True,
        f"extends the witness's latest cosigned head (size {m}, "
        f"{', '.join(w.name for w in anchor.witnesses)})",
    )


def verify_node(
    client: httpx.Client,
    node: str | None,
    *,
    vkey: str | None = None,
    witness_vkeys: Sequence[str] = (),
    operator: str | None = None,
    participant: str | None = None,
    samples: int = 16,
    rng: random.Random | None = None,
) -> Report:
    """Verify the ledger a node serves, trusting only the keys given (or fetched, as reported).

    With ``operator``, the operator is the only trust anchor: the node's ledger key comes from
    its registry (``GET /operator/witness/logs/{id}``), not from the node, and the node's log
    must extend the newest head the operator's witness cosigned (so a rewritten, re-signed or
    rolled-back log fails, and the report says which).

    Args:
        client: the HTTP client (tests pass one on an in-process transport).
        node: the node's base URL (``None``: the URL the operator registered for
            ``participant``).
        vkey: the node's ledger verifier key; without it and without ``operator``, fetched from
            the node's own ``/identity`` (trust on first use, reported as such).
        witness_vkeys: cosigner keys whose cosignatures must be on every witnessed checkpoint.
        operator: the operator's URL: the registry key, the witness key and its latest
            cosigned head come from there.
        participant: the member's id at the operator (default: the id the node gives).
        samples: how many random entries (besides the first and last) get an inclusion proof.
        rng: the sampling randomness (default: the system's).
    """
    report = Report((node or participant or "").rstrip("/"))
    chooser = rng if rng is not None else random.SystemRandom()
    anchor: Anchor | None = None

    try:
        if operator is not None:
            pid = participant
            if pid is None:
                if node is None:
                    raise ValidationError("give the node's URL or its participant id")
                pid = str(_get(client, f"{node.rstrip('/')}/identity").json()["id"])
            anchor = fetch_anchor(client, operator, pid)
            if node is None:
                if anchor.url is None:
                    raise ValidationError(f"the operator has no URL registered for {pid}")
                node = anchor.url
            verifier = anchor.vkey
            report.key_source = f"registered at the operator {operator} for {pid}"
            if vkey is not None and parse_vkey(vkey).vkey != verifier.vkey:
                raise ValidationError("--vkey is not the key the operator registered")
        else:
            if node is None:
                raise ValidationError("give the node's URL (or --operator and --participant)")
            verifier = _ledger_key(client, node.rstrip("/"), vkey, report)
    except _FETCH_ERRORS as exc:
        report.add("ledger key", False, _why(exc))
        return report
    node = node.rstrip("/")
    report.node = node
    report.add("ledger key", True, f"{verifier.name} [{report.key_source}]")

    try:
        note = _get(client, f"{node}/ledger/checkpoint").text
        head = open_checkpoint(note, verifier)
    except VerificationError as exc:
        detail = exc.reason
        if anchor is not None:
            detail = (
                "RE-SIGNED: the node's checkpoint does not verify under the key the operator "
                f"registered ({exc.reason})"
            )
        report.add("checkpoint", False, detail)
        return report
    except _FETCH_ERRORS as exc:
        report.add("checkpoint", False, _why(exc))
        return report
    report.size, report.root = head.size, head.root.hex()
    report.add("checkpoint", True, f"size {head.size}, root {head.root.hex()[:16]}…")

    try:
        if anchor is not None and not witness_vkeys:
            witnesses, witness_source = list(anchor.witnesses), f"fetched from {operator}"
        else:
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
        if anchor is not None:
            _check_anchor(client, node, anchor, head, None, report)
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

    if anchor is not None:
        _check_anchor(client, node, anchor, head, entries, report)
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


def verify_receipts_file(
    client: httpx.Client,
    receipts: Sequence[Any],
    *,
    operator: str | None = None,
    node: str | None = None,
    vkey: str | None = None,
) -> Report:
    """Check that every receipt's entry is still in its node's *current* log.

    For each receipt (as a result carries it: ``participant``, ``vkey``, ``checkpoint``,
    ``index``, ``entry``, ``proof``): the inclusion proof against the receipt's checkpoint,
    signed by the node's key (from the operator's registry with ``operator``, else ``vkey``, else
    the receipt's own ``vkey``, reported as such); then the node's current checkpoint and a
    consistency proof from the receipt's size to it. A node that rewrote or rolled back its log
    after issuing the receipt fails here, whatever its log says today. With ``operator`` the
    node's URL is the one it registered (``node`` overrides it).
    """
    report = Report(node or operator or "receipts")
    anchors: dict[str, Anchor] = {}
    for number, doc in enumerate(receipts):
        name = f"receipt {number}"
        try:
            if not isinstance(doc, dict):
                raise ValidationError("not a receipt object")
            parsed = Receipt.from_json(
                {k: v for k, v in doc.items() if k not in ("vkey", "participant")}
            )
            pid = str(doc.get("participant", ""))
            url = node
            if operator is not None:
                if pid not in anchors:
                    anchors[pid] = fetch_anchor(client, operator, pid)
                key: NoteVerifier = anchors[pid].vkey
                url = url or anchors[pid].url
                source = "operator registry"
            elif vkey is not None:
                key, source = parse_vkey(vkey), "--vkey"
            else:
                key, source = parse_vkey(str(doc["vkey"])), "the receipt's own vkey (unanchored)"
            if url is None:
                raise ValidationError("no node URL: give --node or --operator")
            old = parsed.verify(key)
            note = _get(client, f"{url.rstrip('/')}/ledger/checkpoint").text
            try:
                now = open_checkpoint(note, key)
            except VerificationError as exc:
                raise VerificationError(
                    f"RE-SIGNED: the node's current checkpoint does not verify ({exc.reason})"
                ) from exc
            if now.size < old.size:
                raise VerificationError(
                    f"ROLLED BACK: the node's log has {now.size} entries, the receipt was issued "
                    f"at size {old.size}"
                )
            try:
                proof = _get(
                    client,
                    f"{url.rstrip('/')}/ledger/proof/consistency",
                    first=old.size,
                    second=now.size,
                ).json()
                verify_consistency(old.size, now.size, _hashes(proof["proof"]), old.root, now.root)
            except _FETCH_ERRORS as exc:
                raise VerificationError(
                    f"REWRITTEN: the current log (size {now.size}) does not extend the receipt's "
                    f"checkpoint (size {old.size}): {_why(exc)}"
                ) from exc
        except (*_FETCH_ERRORS, VerificationError) as exc:
            report.add(name, False, _why(exc))
            continue
        report.add(
            name,
            True,
            f"{pid or 'node'} entry {parsed.index} still in the log (size {old.size} -> "
            f"{now.size}); key: {source}",
        )
    if not receipts:
        report.add("receipts", False, "the file holds no receipt")
    return report
