"""The data-interface service on in-process nodes: ``POST /data/lookup`` at the provider."""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.client.analyst import AnalystClient, QueryFailed
from connectors.node import negotiation
from connectors.node.routers.lookup_admin import verified_answer
from tests._seeding import random_for
from tests.connectors._space import InProcessSpace, Node, admit_http, signed
from tests.connectors.node._joint import FINAL
from trusted_space.commitments import verify_opening
from trusted_space.consent import sign_consent
from trusted_space.contracts import NegotiationState
from trusted_space.enforcement import entities_digest
from trusted_space.errors import RemoteError
from trusted_space.events import EVENT_LOG, Event, decode_event
from trusted_space.ledger import Receipt, verify_receipt
from trusted_space.uscc import generate_uscc

PURPOSE = "pre-loan-review"
ROWS = 6
"""Rows of the provider's table; the last two ids are never written (missing entities)."""


def _offer(tier: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = ["transfer"] if tier == "conditional" else ["score"]
    outputs = ["raw"] if tier == "conditional" else ["score"]
    return {
        "@id": f"urn:uuid:offer-{tier}",
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {"leftOperand": "purpose", "operator": "eq", "rightOperand": PURPOSE},
                    {"leftOperand": "computation", "operator": "isAnyOf", "rightOperand": kinds},
                    {"leftOperand": "output", "operator": "isAnyOf", "rightOperand": outputs},
                    *rules,
                ],
            }
        ],
    }


class World:
    def __init__(self, space: InProcessSpace, data: Path) -> None:
        self.space = space
        self.tax = space.add("tax-bureau", ["provider"])
        self.bank = space.add("bank-a", ["consumer"])
        self.other = space.add("bank-b", ["consumer"])
        nodes = [self.tax, self.bank, self.other]
        admit_http(space, self.tax)  # its ledger key registered at the operator
        for node in nodes:
            space.admit_direct(node)
        for node in nodes:
            for peer in nodes:
                if peer is not node:
                    token = peer.runtime.credential_token()
                    assert token is not None and node.runtime.directory is not None
                    with node.runtime.transaction() as tx:
                        node.runtime.directory.add(tx, token, now=node.runtime.clock())
        rng = random_for(f"{__name__}.World")
        self.ids = [generate_uscc(rng) for _ in range(ROWS + 2)]
        self.rows = {e: (round(rng.uniform(0, 1e6), 2), rng.randrange(1, 900)) for e in self.ids}
        path = data / "tax.csv"
        with path.open("w", encoding="utf-8", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["uscc", "tax_paid", "employees"])
            for e in self.ids[:ROWS]:
                out.writerow([e, *self.rows[e]])
        consent = {"leftOperand": "consent", "operator": "eq", "rightOperand": "required"}
        three = {"@value": "3", "@type": "xsd:integer"}
        count = {"leftOperand": "count", "operator": "lteq", "rightOperand": three}
        self.publish("tax-conditional", "conditional", path, [consent, count])
        self.publish("tax-zone", "zone", path, [])
        self.agreement = self.negotiate(self.bank, "tax-conditional")
        self.zone_agreement = self.negotiate(self.bank, "tax-zone")
        # consent for the first half of the ids, signed by the operator on their behalf
        now = self.tax.runtime.clock()
        op = space.operator.runtime
        for e in self.ids[: ROWS // 2] + self.ids[ROWS:]:
            token = sign_consent(
                op.key,
                issuer=op.id,
                entity=e,
                grantee=self.bank.id,
                purpose=PURPOSE,
                not_before=now - timedelta(minutes=1),
                expires_at=now + timedelta(days=1),
                now=now,
            ).token
            r = self.tax.client.post(
                "/management/consents", json={"token": token}, headers=self.tax.admin_headers
            )
            assert r.status_code == 201, r.text

    def publish(self, name: str, tier: str, path: Path, rules: list[dict[str, Any]]) -> None:
        grade = 2 if tier == "conditional" else 3
        dataset = {
            "id": name,
            "title": name,
            "tier": tier,
            "keyColumn": "uscc",
            "keyKind": "uscc",
            "responsibility": {"id": "tax-collection", "title": "Tax collection"},
            "resource": {"id": f"{name}-records", "title": "Tax records"},
            "table": {
                "name": name.replace("-", "_"),
                "fields": [
                    {"name": "uscc", "type": "string", "grade": 1},
                    {"name": "tax_paid", "type": "float", "grade": grade, "bound": 1e6},
                    {"name": "employees", "type": "int", "grade": grade, "bound": 900},
                ],
            },
        }
        body = {
            "dataset": dataset,
            "source": {"kind": "csv", "path": str(path)},
            "offers": [_offer(tier, rules)],
        }
        r = self.tax.client.post("/management/datasets", json=body, headers=self.tax.admin_headers)
        assert r.status_code == 201, r.text

    def negotiate(self, bank: Node, dataset: str) -> str:
        started = bank.client.post(
            "/management/negotiations",
            json={"provider": self.tax.id, "datasetId": dataset},
            headers=bank.admin_headers,
        )
        assert started.status_code == 201, started.text
        record = negotiation.wait_for(bank.runtime, started.json()["id"], FINAL)
        assert record.state is NegotiationState.FINALIZED
        agreement = record.signed_agreement()
        assert agreement is not None
        return agreement.id

    def lookup(self, caller: Node | None = None, **changes: Any) -> Any:
        body: dict[str, Any] = {
            "agreementId": self.agreement,
            "datasetId": "tax-conditional",
            "entities": [self.ids[0]],
            "columns": ["tax_paid", "employees"],
            "purpose": PURPOSE,
        }
        body.update(changes)
        return signed(caller or self.bank, self.tax, "POST", "/data/lookup", body)

    def events(self) -> list[Event]:
        with self.tax.runtime.transaction() as tx:
            size = tx.log_size(EVENT_LOG)
            return [decode_event(i, e) for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, size))]

    def public_ledger(self) -> str:
        r = self.tax.client.get("/ledger/entries", params={"start": 0})
        assert r.status_code == 200, r.text
        return "\n".join(base64.b64decode(e).decode() for e in r.json()["entries"])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    data = tmp_path / "data"
    data.mkdir()
    with InProcessSpace(tmp_path / "space") as space:
        yield World(space, data)


def _refused(response: Any, operand: str) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    problem: dict[str, Any] = response.json()
    violated = [s for s in problem["trace"] if s["outcome"] in ("violated", "partial")]
    assert operand in {s["left_operand"] for s in violated}, problem["trace"]
    return problem


def test_lookup_answers_the_rows_with_a_receipt_and_no_id_in_clear(world: World) -> None:
    asked = [world.ids[1], world.ids[0], world.ids[ROWS]]  # the last is not in the table
    r = world.lookup(entities=asked, queryId="urn:uuid:lookup-1")
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["queryId"] == "urn:uuid:lookup-1"
    assert [row["entity"] for row in view["rows"]] == asked
    for row, entity in zip(view["rows"][:2], asked[:2], strict=True):
        tax_paid, employees = world.rows[entity]
        assert row["found"] is True
        assert row["values"] == {"tax_paid": pytest.approx(tax_paid), "employees": employees}
        assert isinstance(row["values"]["employees"], int)
    assert view["rows"][2] == {"entity": asked[2], "found": False, "values": None}

    receipt = view["receipt"]
    assert receipt["participant"] == world.tax.id
    assert receipt["vkey"] == world.tax.runtime.ledger.vkey
    proof = Receipt.from_json(
        {k: v for k, v in receipt.items() if k not in ("vkey", "participant", "openings")}
    )
    verify_receipt(proof.checkpoint, receipt["vkey"], proof.entry, proof.index, proof.proof)
    use = decode_event(proof.index, proof.entry)
    assert use.kind == "query.use"
    assert use.body["kind"] == "lookup" and use.body["protocol"] is None
    assert use.body["entities"] == 3 and use.body["columns"] == ["tax_paid", "employees"]
    opening = receipt["openings"]["entities_commitment"]
    assert verify_opening(use.body["entities_commitment"], opening, entities_digest(asked))

    public = world.public_ledger()
    assert use.body["entities_commitment"] in public
    assert not any(e in public for e in world.ids)
    assert not any(str(v) in public for e in asked[:2] for v in world.rows[e][:1])
    assert [u.body["kind"] for u in world.events() if u.kind == "query.use"] == ["lookup"]


def test_lookup_without_consent_is_refused_with_its_trace(world: World) -> None:
    missing = world.ids[ROWS // 2]  # in the table, no consent
    problem = _refused(world.lookup(entities=[world.ids[0], missing]), "consent")
    text = json.dumps(problem)  # the caller may learn which of its ids lack consent, no value
    assert not any(str(world.rows[e][0]) in text for e in (missing, world.ids[0]))
    public = world.public_ledger()
    assert missing not in public and world.ids[0] not in public
    assert [e.kind for e in world.events()].count("query.use") == 0


def test_lookup_of_a_zone_dataset_is_refused(world: World) -> None:
    r = world.lookup(agreementId=world.zone_agreement, datasetId="tax-zone")
    problem = _refused(r, "tier")
    assert "computation only" in problem["detail"]


def test_lookup_under_another_members_agreement_is_refused(world: World) -> None:
    _refused(world.lookup(caller=world.other), "assignee")
    _refused(world.lookup(datasetId="tax-zone"), "target")


def test_lookup_stops_at_the_count_budget(world: World) -> None:
    for _ in range(3):
        assert world.lookup().status_code == 200
    _refused(world.lookup(), "count")
    assert [e.kind for e in world.events()].count("query.use") == 3


MALFORMED: list[dict[str, Any]] = [
    {"entities": []},
    {"entities": [f"e{i}" for i in range(17)]},
    {"columns": []},
    {"entities": "not a list"},
    {"purpose": ""},
    {"extra": 1},
    {"columns": ["uscc"]},
    {"columns": ["tax_paid", "tax_paid"]},
    {"columns": ["nope"]},
    {"datasetId": "no-such-dataset"},
    {"agreementId": "urn:uuid:no-such-agreement"},
]


def test_malformed_lookups_are_4xx(world: World) -> None:
    for change in MALFORMED:
        r = world.lookup(**change)
        assert 400 <= r.status_code < 500, (change, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert [e.kind for e in world.events()].count("query.use") == 0


def test_lookup_needs_a_signed_member(world: World) -> None:
    r = world.tax.client.post("/data/lookup", json={})
    assert r.status_code == 401


def test_the_banks_node_looks_up_and_checks_the_receipt(world: World) -> None:
    def order(**changes: Any) -> Any:
        body = {
            "provider": world.tax.id,
            "agreementId": world.agreement,
            "datasetId": "tax-conditional",
            "entities": [world.ids[2], world.ids[2]],
            "columns": ["employees"],
            "purpose": PURPOSE,
            **changes,
        }
        return world.bank.client.post(
            "/management/lookup", json=body, headers=world.bank.admin_headers
        )

    r = order()
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["provider"] == world.tax.id
    assert view["rows"] == [
        {
            "entity": world.ids[2],
            "found": True,
            "values": {"employees": world.rows[world.ids[2]][1]},
        }
    ]
    answer = {k: v for k, v in view.items() if k != "provider"}
    vkey = world.tax.runtime.ledger.vkey
    assert verified_answer(answer, world.tax.id, vkey, [world.ids[2]]) == answer
    with pytest.raises(RemoteError, match="not the use of these entities"):
        verified_answer(answer, world.tax.id, vkey, [world.ids[1]])
    with pytest.raises(RemoteError, match="does not verify"):
        verified_answer(answer, world.tax.id, world.bank.runtime.ledger.vkey, [world.ids[2]])
    problem = _refused(order(entities=[world.ids[ROWS - 1]]), "consent")
    assert problem["participant"] == world.tax.id
    assert world.bank.client.post("/management/lookup", json={}).status_code == 401


def test_the_python_client_looks_up_and_reports_a_refusal(world: World) -> None:
    client = AnalystClient(
        world.bank.url, world.bank.runtime.admin_token, transport=world.space.transport
    )
    with client:
        answer = client.lookup(
            world.tax.id,
            world.agreement,
            "tax-conditional",
            [world.ids[0]],
            ["tax_paid"],
            purpose=PURPOSE,
        )
        assert answer["rows"][0]["values"] == {
            "tax_paid": pytest.approx(world.rows[world.ids[0]][0])
        }
        with pytest.raises(QueryFailed) as refused:
            client.lookup(
                world.tax.id,
                world.agreement,
                "tax-conditional",
                [world.ids[0]],
                ["tax_paid"],
                purpose="marketing",
            )
    assert "purpose" in {s["left_operand"] for s in refused.value.trace}
