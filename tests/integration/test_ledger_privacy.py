"""An anonymous scrape of every public ledger after a real demo run names no data subject.

The demo runs small (2,000 enterprises, 200 applicants; real node processes: operator, four
government departments, the bank) and is kept running. Then, as an outsider with no credential,
the test downloads every node's ``/ledger/entries`` and searches the raw entry bytes for every
enterprise id of the run — the applicants, the one without consent, the training set, every
other — and for every id's hash in the plausible canonical forms: SHA-256 of the id, of its JSON
string, of the one-element JSON list (the old ``entities_sha256`` of a single lookup), hex (both
cases) and base64 (standard and URL-safe, padded or not); and the hashes of the applicant list
and of the training list, in order and sorted, as canonical JSON, comma- and newline-joined. An
outsider who can compute these can confirm a guess; none may appear. The consent registrations
and refusal traces of the run are in those ledgers, as salted commitments only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.client.http import AdminClient
from connectors.demo.data import PROVIDERS, generate
from connectors.demo.run import OPERATOR
from trusted_space.events import canonical_json, decode_event

from .conftest import cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ENTITIES, APPLICANTS, SEED = 2000, 200, 2025
START_DEADLINE = 300.0  # a bound on the demo's start, not a performance assertion


def _start(out: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    command = [
        sys.executable,
        "-c",
        "import sys; from connectors.cli.main import main; sys.argv[0] = 'trusted-space'; main()",
        "demo",
        "--entities",
        str(ENTITIES),
        "--applicants",
        str(APPLICANTS),
        "--seed",
        str(SEED),
        "--out",
        str(out),
        "--json",
        "--keep-running",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    lines: list[str] = []
    line = ""
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line or line.startswith('{"ready"'):
            break
        lines.append(line)
    assert line.startswith('{"ready"'), "".join(lines)[-2000:]
    return process, json.loads("".join(lines))


def _encodings(digest: bytes) -> set[str]:
    b64 = base64.b64encode(digest).decode()
    url = base64.urlsafe_b64encode(digest).decode()
    return {digest.hex(), digest.hex().upper(), b64, b64.rstrip("="), url, url.rstrip("=")}


def _hashes(blobs: Iterable[bytes]) -> set[str]:
    out: set[str] = set()
    for blob in blobs:
        out |= _encodings(hashlib.sha256(blob).digest())
    return out


def _list_forms(ids: list[str]) -> list[bytes]:
    forms = []
    for order in (ids, sorted(ids)):
        forms += [canonical_json(order), ",".join(order).encode(), "\n".join(order).encode()]
    return forms


def scrape(http: httpx.Client, url: str) -> list[bytes]:
    """Every entry of a node's ledger, as an anonymous caller gets them."""
    entries: list[bytes] = []
    while True:
        page = http.get(f"{url}/ledger/entries", params={"start": len(entries)})
        page.raise_for_status()
        items = page.json()["entries"]
        if not items:
            return entries
        entries += [base64.b64decode(e) for e in items]


def test_no_public_ledger_names_an_entity_after_a_demo_run(tmp_path: Path) -> None:
    data = generate(ENTITIES, applicants=APPLICANTS, seed=SEED)
    ids = set(data.ids)
    applicants = data.ids_at(data.applicants)
    singles = [e.encode() for e in ids]
    singles += [canonical_json(e) for e in ids] + [canonical_json([e]) for e in ids]
    lists = _list_forms(applicants) + _list_forms(data.ids_at(data.train))
    digests = _hashes(singles) | _hashes(lists)

    out = tmp_path / "demo-output"
    process, summary = _start(out)
    try:
        with httpx.Client(timeout=60) as http:
            ledgers = {name: scrape(http, url) for name, url in summary["nodes"].items()}
        # The bank's receipts, as its staff get them with each result, re-checked from outside
        # against each provider's current log, anchored at the operator only.
        results = _bank_receipts(summary["nodes"]["bank"], out / "nodes" / "bank")
        receipts = _receipts_in(results)
        receipts_file = tmp_path / "results.json"
        receipts_file.write_text(json.dumps(results), encoding="utf-8")
        operator = summary["nodes"][OPERATOR]
        rechecked = cli(
            "ledger", "verify", "--operator", operator, "--receipts", str(receipts_file), "--json"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()

    # The run did what the scrape is about: consents registered, lookups and refusals logged.
    assert summary["ok"] is True, [c for c in summary["checks"] if not c["ok"]]
    kinds = {decode_event(i, e).kind for entries in ledgers.values() for i, e in enumerate(entries)}
    assert {"consent.registered", "consent.check", "query.use", "policy.decision"} <= kinds
    text = b"\n".join(e for entries in ledgers.values() for e in entries).decode("utf-8")
    assert sum(len(entries) for entries in ledgers.values()) > 100

    id_hits, digest_hits = _search(text, ids, digests)
    report = json.loads(rechecked.stdout)

    assert not id_hits, sorted(id_hits)[:5]
    assert not digest_hits, sorted(digest_hits)[:5]
    # Every score receipt carries the opening of its entities commitment, and all still hold.
    scored = [r for r in receipts if "openings" in r]
    assert len(scored) >= 3 * len(PROVIDERS)
    assert rechecked.returncode == 0 and report["ok"] is True, rechecked.stdout[-2000:]
    assert len(report["checks"]) == len(receipts)
    # The search itself finds what it looks for (an id inside a string, an old-style digest).
    planted = json.dumps(
        {
            "consent_id": f"c-{applicants[0]}",
            "entities_sha256": hashlib.sha256(lists[0]).hexdigest(),
        }
    )
    assert _search(planted, ids, digests) == (
        {applicants[0]},
        {hashlib.sha256(lists[0]).hexdigest()},
    )


def _bank_receipts(url: str, node_dir: Path) -> list[dict[str, Any]]:
    """Every finished query of the bank with its result (its staff's API)."""
    with AdminClient.from_dir(url, node_dir, timeout=60) as admin:
        return [
            admin.get(f"/management/queries/{q['id']}") for q in admin.get("/management/queries")
        ]


def _receipts_in(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        if {"checkpoint", "index", "entry"} <= value.keys():
            return [value]
        return [r for v in value.values() for r in _receipts_in(v)]
    if isinstance(value, list):
        return [r for v in value for r in _receipts_in(v)]
    return []


def _search(text: str, ids: set[str], digests: set[str]) -> tuple[set[str], set[str]]:
    id_hits = {w for t in re.split(r"[^0-9A-Z]", text) for w in _windows(t, 18)} & ids
    tokens = set(re.split(r"[^0-9A-Za-z+/=_-]", text))
    digest_hits = {w for t in tokens for n in (64, 44, 43) for w in _windows(t, n) if w in digests}
    return id_hits, digest_hits


def _windows(token: str, n: int) -> Iterable[str]:
    return (token[i : i + n] for i in range(len(token) - n + 1)) if len(token) >= n else ()
