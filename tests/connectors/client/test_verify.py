"""Independent ledger verification: passes on an honest node, catches an edited or cut store."""

from __future__ import annotations

import json
import random
import sqlite3
import types

import httpx
import pytest
from typer.testing import CliRunner

from connectors.cli import ledger as ledger_cmd
from connectors.cli.main import app
from connectors.client.verify import Report, verify_node
from connectors.node import federation
from tests.connectors._space import InProcessSpace, Node, admit_http, grow


@pytest.fixture
def tax(space: InProcessSpace) -> Node:
    """An admitted provider with a witnessed history: 20 events, cosigned, then 10 more."""
    node = space.add("tax-bureau", ["provider"])
    admit_http(space, node)
    grow(node, 20)
    assert federation.submit_checkpoint(node.runtime) is not None
    grow(node, 10)
    assert federation.submit_checkpoint(node.runtime) is not None
    grow(node, 3)
    return node


def run(space: InProcessSpace, node: Node, **kwargs: object) -> Report:
    with httpx.Client(transport=space.transport) as client:
        return verify_node(
            client, node.url, operator=space.operator.url, rng=random.Random(7), **kwargs
        )


def failed(report: Report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


def sql(node: Node, statement: str, *args: object) -> None:
    with sqlite3.connect(node.settings.layout.store) as db:
        db.execute(statement, args)


def test_an_honest_node_verifies(space: InProcessSpace, tax: Node) -> None:
    report = run(space, tax)
    assert report.ok, failed(report)
    assert report.size == tax.runtime.ledger.size()
    assert report.kinds["test.event"] == 33
    assert report.key_source.startswith("registered at the operator")
    names = [c.name for c in report.checks]
    assert names == [
        "ledger key",
        "checkpoint",
        "checkpoint cosignature",
        "entries",
        "merkle root",
        "witness anchor",
        "inclusion proofs",
        "witnessed checkpoints",
        "events decode",
    ]
    witnessed = next(c for c in report.checks if c.name == "witnessed checkpoints")
    assert witnessed.detail.startswith("2 cosigned") and "city-centre/witness" in witnessed.detail

    pinned = run(
        space, tax, vkey=tax.runtime.ledger.vkey, witness_vkeys=[space.anchor.witness_vkey]
    )
    assert pinned.ok and pinned.key_source.startswith("registered at the operator")


def test_the_wrong_key_fails(space: InProcessSpace, tax: Node) -> None:
    bank = space.add("bank-a", ["consumer"])
    report = run(space, tax, vkey=bank.runtime.ledger.vkey)
    assert not report.ok
    assert "not the key the operator registered" in failed(report)["ledger key"]
    with httpx.Client(transport=space.transport) as client:
        unanchored = verify_node(client, tax.url, vkey=bank.runtime.ledger.vkey)
    assert not unanchored.ok and "checkpoint" in failed(unanchored)
    wrong_witness = run(space, tax, witness_vkeys=[tax.runtime.ledger.vkey])
    assert not wrong_witness.ok and "witness key" in failed(wrong_witness)


def test_an_entry_edited_in_the_store_is_caught(space: InProcessSpace, tax: Node) -> None:
    original = tax.runtime.ledger.entries(5, 6)[0]
    edited = original.replace(b'"i":5', b'"i":6')
    assert edited != original
    sql(tax, "UPDATE log_entries SET entry = ? WHERE log = 'events' AND idx = ?", edited, 5)
    report = run(space, tax)
    assert not report.ok
    problems = failed(report)
    assert "merkle root" in problems and "altered or removed" in problems["merkle root"]
    assert "witnessed checkpoints" in problems  # the prefix no longer hashes to the cosigned root


def test_a_log_cut_after_a_witnessed_checkpoint_is_caught(space: InProcessSpace, tax: Node) -> None:
    # cut below the witnessed size and hide the node's own checkpoints, so it signs a new head
    sql(tax, "DELETE FROM log_entries WHERE log = 'events' AND idx >= 12")
    sql(
        tax,
        "DELETE FROM documents WHERE namespace IN ('ledger_checkpoint', 'ledger_checkpoint_head')",
    )
    report = run(space, tax)
    assert not report.ok
    problems = failed(report)
    assert set(problems) == {"witnessed checkpoints", "witness anchor"}
    assert "entries were removed" in problems["witnessed checkpoints"]
    assert problems["witness anchor"].startswith("ROLLED BACK")


def test_a_cut_without_hiding_checkpoints_is_caught(space: InProcessSpace, tax: Node) -> None:
    sql(tax, "DELETE FROM log_entries WHERE log = 'events' AND idx >= 12")
    report = run(space, tax)
    assert not report.ok and "409" in failed(report)["checkpoint"]


def test_a_rewritten_history_is_caught(space: InProcessSpace, tax: Node) -> None:
    sql(tax, "DELETE FROM log_entries WHERE log = 'events' AND idx >= 12")
    sql(
        tax,
        "DELETE FROM documents WHERE namespace IN ('ledger_checkpoint', 'ledger_checkpoint_head')",
    )
    grow(tax, 40)  # longer than before, but a different history
    report = run(space, tax)
    assert not report.ok
    assert set(failed(report)) == {"witnessed checkpoints", "witness anchor"}
    assert failed(report)["witness anchor"].startswith("REWRITTEN")
    # and the witness refuses to cosign it
    assert federation.submit_checkpoint(tax.runtime) is None


def test_an_unreachable_node_is_a_failed_check_not_a_crash(space: InProcessSpace) -> None:
    with httpx.Client(transport=space.transport) as client:
        report = verify_node(client, "http://127.0.0.1:1")
    assert not report.ok and [c.name for c in report.checks] == ["ledger key"]


def test_cli_prints_a_table_or_json_and_exits_by_the_verdict(
    space: InProcessSpace, tax: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    def client(**kwargs: object) -> httpx.Client:
        return httpx.Client(transport=space.transport)

    monkeypatch.setattr(ledger_cmd, "httpx", types.SimpleNamespace(Client=client))
    runner = CliRunner()
    result = runner.invoke(
        app, ["ledger", "verify", "--node", tax.url, "--operator", space.operator.url]
    )
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and "merkle root" in result.output
    assert "[registered" in result.output  # details are printed literally, not as markup

    sql(tax, "UPDATE log_entries SET entry = ? WHERE log = 'events' AND idx = 0", b"{}")
    result = runner.invoke(app, ["ledger", "verify", "--node", tax.url, "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["ok"] is False
    assert any(c["name"] == "merkle root" and not c["ok"] for c in doc["checks"])
