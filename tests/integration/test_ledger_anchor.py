"""The witness anchors verification: rewritten, re-signed and rolled-back logs are caught.

Real node processes (the session's example space). Each attack is what an insider with file
access to its own node could do: stop the node, change its SQLite store, start it again. The
verifier is given **only the operator's URL and the member's id** (``ledger verify --operator
URL --participant ID``): the node's key comes from the operator's registry and the node must prove
that its log extends the newest head the operator's witness cosigned. The store is backed up
first (SQLite online backup) and restored afterwards, so the other tests see an intact node.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.spaces.space import RunningNode, RunningSpace
from tests._backups import sqlite_backup as backup
from trusted_space.merkle import leaf_hash

from .conftest import cli, ledger_events, signed_client
from .test_ledger import restore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VICTIM = "court"


def verify(operator: str, participant: str) -> subprocess.CompletedProcess[str]:
    return cli("ledger", "verify", "--operator", operator, "--participant", participant, "--json")


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return dict(json.loads(result.stdout))


def failed(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}


def grow(http: httpx.Client, space: RunningSpace, node: RunningNode, n: int) -> None:
    """Append ``n`` entries to the node's log (a token for another path: ``auth.refused``)."""
    with signed_client(space, "bank-a") as bank:
        for _ in range(n):
            other = f"{node.url}/catalog/datasets/dishonest-debtors"
            headers = bank.headers_for(node.name, "GET", other, b"")
            answer = http.get(f"{node.url}/catalog/datasets/court-judgments", headers=headers)
            assert answer.status_code == 401


def witnessed(node: RunningNode) -> dict[str, Any]:
    """Have the node's checkpoint cosigned now (the staff's button)."""
    with node.admin() as admin:
        answer: dict[str, Any] = admin.post("/management/ledger/checkpoint")
    return answer


def rewrite_entry(db: Path, index: int) -> None:
    """Edit one entry the way a careful forger does: new bytes *and* their leaf hash."""
    conn = sqlite3.connect(db)
    try:
        query = "SELECT entry FROM log_entries WHERE log = 'events' AND idx = ?"
        (entry,) = conn.execute(query, (index,)).fetchone()
        forged = bytes(entry).replace(b'"time":"2', b'"time":"1', 1)
        assert forged != bytes(entry)
        conn.execute(
            "UPDATE log_entries SET entry = ?, leaf_hash = ? WHERE log = 'events' AND idx = ?",
            (forged, leaf_hash(forged), index),
        )
        conn.commit()
    finally:
        conn.close()


def forget(db: Path, *namespaces: str) -> None:
    conn = sqlite3.connect(db)
    try:
        for namespace in namespaces:
            conn.execute("DELETE FROM documents WHERE namespace = ?", (namespace,))
        conn.commit()
    finally:
        conn.close()


def witness_log(http: httpx.Client, space: RunningSpace, pid: str) -> dict[str, Any]:
    answer = http.get(f"{space.operator.url}/operator/witness/logs/{pid}")
    answer.raise_for_status()
    return dict(answer.json())


def test_an_honest_log_verifies_from_the_operator_alone(
    space: RunningSpace, http: httpx.Client
) -> None:
    node = space[VICTIM]
    grow(http, space, node, 2)
    assert witnessed(node)["cosigned"] is True

    result = verify(space.operator.url, VICTIM)

    assert result.returncode == 0, result.stdout
    report = report_of(result)
    assert report["keySource"].startswith("registered at the operator")
    anchor = next(c for c in report["checks"] if c["name"] == "witness anchor")
    assert anchor["ok"] and anchor["detail"].startswith("extends the witness's latest")
    # The public record the verifier anchored on: registered key, cosigned head, no alarm.
    log = witness_log(http, space, VICTIM)
    assert log["checkpoint"] and log["size"] >= 2 and "refused" not in log["alarms"]


@pytest.mark.parametrize(
    "hide",
    [
        pytest.param(("ledger_checkpoint", "ledger_checkpoint_head"), id="edited-and-re-signed"),
        pytest.param(
            ("ledger_checkpoint", "ledger_checkpoint_head", "ledger_cosigned"),
            id="cosignatures-deleted-too",
        ),
    ],
)
def test_a_rewritten_log_is_caught_from_the_operator_alone(
    space: RunningSpace, http: httpx.Client, tmp_path: Path, hide: tuple[str, ...]
) -> None:
    node = space[VICTIM]
    grow(http, space, node, 3)
    assert witnessed(node)["cosigned"] is True
    refusals_before = witness_log(http, space, VICTIM)["refusals"]
    space.stop_node(VICTIM)
    db = node.layout.store
    saved = tmp_path / "backup.db"
    backup(db, saved)
    try:
        # Edit entry 1, recompute its leaf hash, hide what would make the node refuse to sign.
        rewrite_entry(db, 1)
        forget(db, *hide)
        space.start_node(VICTIM)

        result = verify(space.operator.url, VICTIM)
        # The node logs on and submits its next head: refused, and the operator shows it.
        grow(http, space, node, 1)
        submitted = witnessed(node)
        log = witness_log(http, space, VICTIM)

        assert result.returncode == 1, result.stdout
        problems = failed(report_of(result))
        assert problems["witness anchor"].startswith("REWRITTEN"), problems
        assert submitted["cosigned"] is False
        # (the node's own background round may have been refused as well)
        assert log["refusals"] > refusals_before and "refused" in log["alarms"]
        assert log["lastRefusal"].startswith("rewritten")
        refused = [
            e.body
            for e in ledger_events(http, space.operator.url)
            if e.kind == "checkpoint.refused" and e.body["origin"] == log["origin"]
        ]
        assert refused and refused[-1]["reason"].startswith("rewritten")
    finally:
        space.stop_node(VICTIM)
        restore(db, saved)
        space.start_node(VICTIM)
    assert verify(space.operator.url, VICTIM).returncode == 0


def test_a_rollback_to_a_backup_is_caught_from_the_operator_alone(
    space: RunningSpace, http: httpx.Client, tmp_path: Path
) -> None:
    node = space[VICTIM]
    grow(http, space, node, 1)
    assert witnessed(node)["cosigned"] is True
    space.stop_node(VICTIM)
    db = node.layout.store
    old = tmp_path / "older.db"
    backup(db, old)  # the backup the node will be rolled back to
    space.start_node(VICTIM)
    grow(http, space, node, 4)
    assert witnessed(node)["cosigned"] is True  # the witness now vouches for a longer log
    space.stop_node(VICTIM)
    latest = tmp_path / "latest.db"
    backup(db, latest)
    try:
        restore(db, old)
        space.start_node(VICTIM)
        grow(http, space, node, 1)  # the rolled-back node logs on, and submits its new head

        result = verify(space.operator.url, VICTIM)
        submitted = witnessed(node)
        log = witness_log(http, space, VICTIM)

        assert result.returncode == 1, result.stdout
        problems = failed(report_of(result))
        assert problems["witness anchor"].startswith("ROLLED BACK"), problems
        assert submitted["cosigned"] is False
        assert log["lastRefusal"].startswith("rolled back") and "refused" in log["alarms"]
    finally:
        space.stop_node(VICTIM)
        restore(db, latest)
        space.start_node(VICTIM)
    assert verify(space.operator.url, VICTIM).returncode == 0
