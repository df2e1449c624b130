"""What the operator publishes as the verifier's anchor, re-checked receipts, and openings.

In-process nodes (one ASGI app each, real HTTP semantics through the test transport):

- ``GET /operator/witness/logs[/{id}]`` is public and serves the registered key and the latest
  cosigned head (signed by the log, cosigned by the witness);
- ``verify_receipts_file`` (``ledger verify --receipts``): a receipt whose entry is still in the
  node's log passes; after a rollback or a rewrite of the node's log it fails, and says which;
- a node whose checkpoints are signed by another key than the one registered fails (RE-SIGNED);
- a commitment's opening is served to the node's staff only.
"""

from __future__ import annotations

import json
import sqlite3
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from connectors.cli import ledger as ledger_cmd
from connectors.cli.main import app
from connectors.client.verify import Report, verify_node, verify_receipts_file
from connectors.node import federation
from tests.connectors._space import InProcessSpace, Node, admit_http, grow
from trusted_space.commitments import commit, verify_opening
from trusted_space.events import record_event
from trusted_space.keys import SigningKey
from trusted_space.ledger import Ledger, open_checkpoint
from trusted_space.notes import parse_vkey, verify_cosignature


@pytest.fixture
def tax(space: InProcessSpace) -> Node:
    node = space.add("tax-bureau", ["provider"])
    admit_http(space, node)
    grow(node, 10)
    assert federation.submit_checkpoint(node.runtime) is not None
    return node


def receipts(node: Node, indices: list[int]) -> list[dict[str, Any]]:
    out = []
    for index in indices:
        doc = node.runtime.ledger.receipt(index).to_json()
        out.append(doc | {"participant": node.settings.name, "vkey": node.runtime.ledger.vkey})
    return out


def check(space: InProcessSpace, docs: list[Any], **kwargs: Any) -> Report:
    with httpx.Client(transport=space.transport) as client:
        return verify_receipts_file(client, docs, operator=space.operator.url, **kwargs)


def details(report: Report) -> list[str]:
    return [c.detail for c in report.checks if not c.ok]


def sql(node: Node, statement: str, *args: object) -> None:
    with sqlite3.connect(node.settings.layout.store) as db:
        db.execute(statement, args)


def test_the_witnessed_log_is_public_signed_and_cosigned(space: InProcessSpace, tax: Node) -> None:
    with httpx.Client(transport=space.transport) as anonymous:  # no credential at all
        listed = anonymous.get(f"{space.operator.url}/operator/witness/logs")
        one = anonymous.get(f"{space.operator.url}/operator/witness/logs/tax-bureau")
    unknown = space.operator.client.get("/operator/witness/logs/nobody")

    assert listed.status_code == 200 and one.status_code == 200
    doc = one.json()
    assert doc["ledgerVkey"] == tax.runtime.ledger.vkey and doc["size"] == 10
    head = open_checkpoint(doc["checkpoint"], doc["ledgerVkey"])
    assert head.size == 10 and head.root == tax.runtime.ledger.root(10)
    verify_cosignature(doc["checkpoint"], parse_vkey(space.anchor.witness_vkey))
    assert doc["alarms"] == [] and doc["refusals"] == 0
    assert any(row["participant"] == "tax-bureau" for row in listed.json())
    assert unknown.status_code == 404


def test_receipts_still_in_the_log_verify(space: InProcessSpace, tax: Node) -> None:
    docs = receipts(tax, [0, 4])
    grow(tax, 5)  # the log moved on: consistency from each receipt's head to now

    report = check(space, docs)

    assert report.ok, details(report)
    assert [c.name for c in report.checks] == ["receipt 0", "receipt 1"]
    assert all("operator registry" in c.detail for c in report.checks)


def test_receipts_after_a_rollback_fail(space: InProcessSpace, tax: Node) -> None:
    grow(tax, 4)
    docs = receipts(tax, [12])  # issued at size 14
    sql(tax, "DELETE FROM log_entries WHERE log = 'events' AND idx >= 11")
    sql(
        tax,
        "DELETE FROM documents WHERE namespace IN ('ledger_checkpoint', 'ledger_checkpoint_head')",
    )

    report = check(space, docs)

    assert not report.ok and details(report)[0].startswith("ROLLED BACK")


def test_receipts_after_a_rewrite_fail(space: InProcessSpace, tax: Node) -> None:
    docs = receipts(tax, [3])
    sql(tax, "DELETE FROM log_entries WHERE log = 'events' AND idx >= 2")
    sql(
        tax,
        "DELETE FROM documents WHERE namespace IN ('ledger_checkpoint', 'ledger_checkpoint_head')",
    )
    grow(tax, 20)  # longer than the receipt's head, but another history

    report = check(space, docs)

    assert not report.ok and details(report)[0].startswith("REWRITTEN")


def test_a_forged_receipt_and_an_empty_file_fail(space: InProcessSpace, tax: Node) -> None:
    (doc,) = receipts(tax, [1])
    forged = doc | {"index": 2}

    assert not check(space, [forged]).ok
    assert not check(space, []).ok
    assert not check(space, ["not a receipt"]).ok


def test_a_log_signed_by_another_key_is_reported_re_signed(
    space: InProcessSpace, tax: Node
) -> None:
    # The node swaps in a key of its own choosing (same origin) and serves heads signed by it.
    rogue = SigningKey.generate()
    tax.runtime.ledger = Ledger(tax.runtime.store, rogue, tax.runtime.ledger.origin)
    sql(
        tax,
        "DELETE FROM documents WHERE namespace IN ('ledger_checkpoint', 'ledger_checkpoint_head')",
    )
    grow(tax, 1)  # a new head, which only the rogue key signs

    with httpx.Client(transport=space.transport) as client:
        report = verify_node(client, tax.url, operator=space.operator.url)

    submitted = federation.submit_checkpoint(tax.runtime)
    record = space.operator.client.get("/operator/witness/logs/tax-bureau").json()

    failed = {c.name: c.detail for c in report.checks if not c.ok}
    assert failed["checkpoint"].startswith("RE-SIGNED"), failed
    assert submitted is None  # the witness refuses it, and the operator shows it
    assert record["lastRefusal"].startswith("signed with a key the operator did not register")
    assert "refused" in record["alarms"]
    staff = space.operator.client.get("/operator/members", headers=space.operator.admin_headers)
    (member,) = [m for m in staff.json() if m["id"] == "tax-bureau"]
    assert any("last checkpoint was refused" in a for a in member["alarms"])


def test_an_opening_is_served_to_staff_only(space: InProcessSpace, tax: Node) -> None:
    with tax.runtime.transaction() as tx:
        digest, salt = commit(tx, "entity", "91110000802100433B")
        record_event(tx, "test.committed", {"entity": digest})

    anonymous = tax.client.get(f"/management/ledger/openings/{digest}")
    staff = tax.client.get(f"/management/ledger/openings/{digest}", headers=tax.admin_headers)
    missing = tax.client.get(f"/management/ledger/openings/{'0' * 64}", headers=tax.admin_headers)
    malformed = tax.client.get("/management/ledger/openings/xyz", headers=tax.admin_headers)

    assert anonymous.status_code == 401
    assert staff.status_code == 200
    opened = staff.json()
    assert opened["value"] == "91110000802100433B" and opened["salt"] == salt
    assert verify_opening(digest, opened["salt"], opened["value"])
    assert not verify_opening(digest, opened["salt"], "91110000802100434B")
    assert missing.status_code == 404 and malformed.status_code == 422


def test_cli_checks_a_receipts_file(
    space: InProcessSpace, tax: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def client(**kwargs: object) -> httpx.Client:
        return httpx.Client(transport=space.transport)

    monkeypatch.setattr(ledger_cmd, "httpx", types.SimpleNamespace(Client=client))
    result_file = tmp_path / "result.json"
    result_file.write_text(json.dumps({"receipts": {"tax-bureau": receipts(tax, [2])[0]}}))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json")
    runner = CliRunner()
    args = ["ledger", "verify", "--operator", space.operator.url, "--json", "--receipts"]

    good = runner.invoke(app, [*args, str(result_file)])
    sql(tax, "DELETE FROM log_entries WHERE log = 'events' AND idx >= 1")
    sql(
        tax,
        "DELETE FROM documents WHERE namespace IN ('ledger_checkpoint', 'ledger_checkpoint_head')",
    )
    bad = runner.invoke(app, [*args, str(result_file)])
    unreadable = runner.invoke(app, [*args, str(garbage)])

    assert good.exit_code == 0, good.output
    assert json.loads(good.output)["ok"] is True
    assert bad.exit_code == 1 and json.loads(bad.output)["ok"] is False
    assert unreadable.exit_code == 2
