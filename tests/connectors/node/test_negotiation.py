"""Contract negotiation between in-process nodes: DSP endpoints, the driver, the admin API, CLI."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from connectors.cli import catalog as catalog_command
from connectors.cli.catalog import print_catalog
from connectors.cli.main import app as cli_app
from connectors.client.catalog import catalog_rows, fetch_catalog, follow_negotiation
from connectors.client.http import AdminClient, encode_json
from connectors.node import negotiation
from connectors.node.federation import push_catalog
from tests.connectors._space import (
    InProcessSpace,
    Node,
    catalog_offer,
    publish_dataset,
    signed,
    stop_negotiations,
)
from trusted_space import dsp
from trusted_space.catalog import Tier
from trusted_space.contracts import (
    NEGOTIATION_NAMESPACE,
    NegotiationState,
    SignedAgreement,
    contract_request_message,
    offer_for,
    termination_message,
)
from trusted_space.errors import RemoteError
from trusted_space.events import decode_event

DATASET = "urn:uuid:ds-tax"
FINAL = (NegotiationState.FINALIZED, NegotiationState.TERMINATED)


@pytest.fixture
def space(space: InProcessSpace) -> Iterator[InProcessSpace]:
    """The shared space, its negotiation drivers stopped before it closes."""
    yield space
    stop_negotiations(space)


@pytest.fixture
def tax(tax: Node) -> Node:
    """The provider, holding a zone dataset and a conditional one with two offers."""
    publish_dataset(tax, "tax", Tier.ZONE)
    publish_dataset(
        tax, "two", Tier.CONDITIONAL, offers=[catalog_offer("a"), catalog_offer("b", "audit")]
    )
    return tax


@pytest.fixture
def manual(monkeypatch: pytest.MonkeyPatch) -> None:
    """No automatic steps: negotiations stay where the test puts them."""
    monkeypatch.setattr(negotiation, "after_receipt", lambda *_: None)


def start(bank: Node, **body: Any) -> Any:
    return bank.client.post(
        "/management/negotiations",
        json={"provider": "tax-bureau", "datasetId": DATASET, **body},
        headers=bank.admin_headers,
    )


def events(node: Node, kind: str) -> list[dict[str, Any]]:
    ledger = node.runtime.ledger
    entries = ledger.entries(0, ledger.size())
    decoded = [decode_event(i, e) for i, e in enumerate(entries)]
    return [e.body for e in decoded if e.kind == kind]


def provider_pid_of(bank: Node, consumer_pid: str) -> str:
    return bank.runtime.negotiator.negotiation(consumer_pid).provider_pid


# -- the full flow ------------------------------------------------------------------------------


def test_negotiation_reaches_finalized_on_both_sides(tax: Node, bank: Node) -> None:
    created = start(bank)
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["role"] == "consumer" and view["counterparty"] == "tax-bureau"
    assert view["datasetId"] == DATASET and view["agreementId"] is None
    assert view["state"] in {"REQUESTED", "AGREED", "VERIFIED", "FINALIZED"}

    consumer = negotiation.wait_for(bank.runtime, view["id"], FINAL)
    provider = negotiation.wait_for(tax.runtime, consumer.provider_pid, FINAL)
    assert consumer.state is provider.state is NegotiationState.FINALIZED

    mine = bank.client.get(f"/management/negotiations/{view['id']}", headers=bank.admin_headers)
    agreement_id = mine.json()["agreementId"]
    assert agreement_id
    docs = [
        node.client.get(f"/management/agreements/{agreement_id}", headers=node.admin_headers)
        for node in (tax, bank)
    ]
    assert [d.status_code for d in docs] == [200, 200]
    views = [d.json() for d in docs]
    assert views[0]["agreement"] == views[1]["agreement"]
    assert all(v["state"] == "FINALIZED" and v["authorises"] for v in views)
    signed_agreement = SignedAgreement.from_json(views[1])
    signed_agreement.verify(tax.runtime.key.verify_key, bank.runtime.key.verify_key)
    assert signed_agreement.assigner == "tax-bureau" and signed_agreement.assignee == "bank-a"
    assert signed_agreement.target == DATASET

    for node in (tax, bank):
        recorded = events(node, "agreement.signed")
        assert [e["agreementId"] for e in recorded] == [agreement_id]
        listed = node.client.get("/management/agreements", headers=node.admin_headers).json()
        assert [a["id"] for a in listed] == [agreement_id]


def test_provider_view_and_dsp_get_for_the_counterparty_only(
    space: InProcessSpace, tax: Node, bank: Node
) -> None:
    view = start(bank).json()
    consumer = negotiation.wait_for(bank.runtime, view["id"], FINAL)
    ppid = consumer.provider_pid
    negotiation.wait_for(tax.runtime, ppid, FINAL)
    listed = tax.client.get("/management/negotiations", headers=tax.admin_headers).json()
    assert [(n["id"], n["role"], n["state"]) for n in listed] == [(ppid, "provider", "FINALIZED")]

    got = signed(bank, tax, "GET", f"/negotiations/{ppid}")
    assert got.status_code == 200
    dsp.validate(got.json(), "negotiation/contract-negotiation-schema.json")
    assert got.json()["state"] == "FINALIZED" and got.json()["consumerPid"] == view["id"]

    other = space.add("bank-b", ["consumer"])
    space.admit_direct(other)
    hidden = signed(other, tax, "GET", f"/negotiations/{ppid}")
    unknown = signed(other, tax, "GET", "/negotiations/urn:uuid:nothing")
    assert hidden.status_code == unknown.status_code == 404


def test_several_offers_need_a_choice(tax: Node, bank: Node) -> None:
    ambiguous = start(bank, datasetId="urn:uuid:ds-two")
    assert ambiguous.status_code == 400
    assert "urn:uuid:offer-a" in ambiguous.json()["detail"]
    chosen = start(bank, datasetId="urn:uuid:ds-two", offerId="urn:uuid:offer-b")
    assert chosen.status_code == 201
    record = negotiation.wait_for(bank.runtime, chosen.json()["id"], FINAL)
    assert record.state is NegotiationState.FINALIZED
    assert record.offer["@id"] == "urn:uuid:offer-b"


def test_agreement_before_the_consumer_applied_its_ack_is_retried(
    tax: Node, bank: Node, caplog: pytest.LogCaptureFixture
) -> None:
    out = bank.runtime.negotiator.request("tax-bureau", offer_for(DATASET, catalog_offer("tax")))
    with caplog.at_level(logging.INFO, logger="trusted_space.negotiation"):
        ack = bank.runtime.client.post_json(
            f"{tax.url}/negotiations/request", out.message, audience="tax-bureau"
        )
        # The provider's agreement meets a consumer that does not know its pid yet (404) ...
        deadline = time.monotonic() + 5
        while not any("ContractAgreementMessage" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the provider never tried to send its agreement"
            time.sleep(0.005)
        bank.runtime.negotiator.acknowledge(out, ack)  # ... and succeeds once it does
        record = negotiation.wait_for(bank.runtime, out.pending.consumer_pid, FINAL)
        negotiation.drain(tax.runtime)
    assert record.state is NegotiationState.FINALIZED


class LosesReplies:
    """Delivers requests to a node but loses the reply of the first one matching ``suffix``."""

    def __init__(self, client: Any, suffix: str) -> None:
        self.client = client
        self.suffix = suffix
        self.lost = 0

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if method == "POST" and path.endswith(self.suffix) and not self.lost:
            self.lost += 1
            raise httpx.ReadTimeout("reply lost")
        return response


def test_a_lost_reply_is_reconciled_from_the_peer_state(
    space: InProcessSpace, tax: Node, bank: Node
) -> None:
    netloc = f"{bank.settings.host}:{bank.settings.port}"
    lossy = LosesReplies(space.transport.clients[netloc], "/events")
    space.transport.clients[netloc] = lossy  # type: ignore[assignment]
    view = start(bank).json()
    consumer = negotiation.wait_for(bank.runtime, view["id"], FINAL)
    provider = negotiation.wait_for(tax.runtime, consumer.provider_pid, FINAL)
    assert lossy.lost == 1
    assert consumer.state is provider.state is NegotiationState.FINALIZED


# -- refusals -----------------------------------------------------------------------------------


def test_unpublished_offer_is_refused_with_a_reason_and_nothing_stored(
    tax: Node, bank: Node
) -> None:
    forged = catalog_offer("tax", purpose="anything-at-all")
    with pytest.raises(RemoteError) as info:
        negotiation.start_negotiation(bank.runtime, "tax-bureau", DATASET, offer=forged)
    assert info.value.status == 400
    problem = info.value.problem
    assert "not an offer published" in problem["detail"]
    assert problem["@type"] == "ContractNegotiationError" and problem["reason"]
    with tax.runtime.transaction() as tx:
        assert tx.scan(NEGOTIATION_NAMESPACE) == []
    with bank.runtime.transaction() as tx:
        assert tx.scan(NEGOTIATION_NAMESPACE) == []


def test_unknown_offer_or_dataset_is_refused_by_the_admin_api(tax: Node, bank: Node) -> None:
    no_offer = start(bank, offerId="urn:uuid:offer-nope")
    assert no_offer.status_code == 400
    assert "offer-nope" in no_offer.json()["detail"]
    no_dataset = start(bank, datasetId="urn:uuid:ds-nope")
    assert no_dataset.status_code == 404
    with tax.runtime.transaction() as tx:
        assert tx.scan(NEGOTIATION_NAMESPACE) == []


def test_provider_decision_can_refuse_and_terminates_both_sides(
    tax: Node, bank: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse = negotiation.AgreeDecision(False, "no pre-loan review this week")
    monkeypatch.setattr(negotiation, "decide_agreement", lambda *_: refuse)
    view = start(bank).json()
    consumer = negotiation.wait_for(bank.runtime, view["id"], FINAL)
    provider = negotiation.wait_for(tax.runtime, consumer.provider_pid, FINAL)
    assert consumer.state is provider.state is NegotiationState.TERMINATED
    assert consumer.signed_agreement() is None
    assert events(bank, "agreement.signed") == []


def test_request_with_foreign_callback_is_refused(tax: Node, bank: Node) -> None:
    msg = contract_request_message(
        consumer_pid="urn:uuid:c-1",
        offer=offer_for(DATASET, catalog_offer("tax")),
        callback_address="http://169.254.169.254/latest",
    )
    response = signed(bank, tax, "POST", "/negotiations/request", msg)
    assert response.status_code == 400
    assert "callbackAddress" in response.json()["detail"]


def test_only_a_consumer_may_request(space: InProcessSpace, tax: Node) -> None:
    court = space.add("court", ["provider"])
    space.admit_direct(court)
    msg = contract_request_message(
        consumer_pid="urn:uuid:c-1",
        offer=offer_for(DATASET, catalog_offer("tax")),
        callback_address=court.url,
    )
    response = signed(court, tax, "POST", "/negotiations/request", msg)
    assert response.status_code == 403
    assert "not admitted as a consumer" in response.json()["detail"]


def test_path_pid_must_match_the_message(tax: Node, bank: Node, manual: None) -> None:
    consumer = negotiation.start_negotiation(bank.runtime, "tax-bureau", DATASET)
    ppid, cpid = consumer.provider_pid, consumer.consumer_pid
    end = termination_message(provider_pid=ppid, consumer_pid=cpid, reason=["test"])

    wrong = signed(bank, tax, "POST", "/negotiations/urn:uuid:other/termination", end)
    assert wrong.status_code == 400
    body = wrong.json()
    dsp.validate(body, "negotiation/contract-negotiation-error-schema.json")
    assert body["providerPid"] == ppid and body["consumerPid"] == cpid

    swapped = signed(bank, tax, "POST", f"/negotiations/{cpid}/termination", end)
    assert swapped.status_code in (400, 404)  # our consumer pid is not a record of the provider
    wrong_type = signed(bank, tax, "POST", f"/negotiations/{ppid}/agreement/verification", end)
    assert wrong_type.status_code == 400
    assert "not accepted at this path" in wrong_type.json()["detail"]

    right = signed(bank, tax, "POST", f"/negotiations/{ppid}/termination", end)
    assert right.status_code == 200
    assert right.json()["state"] == "TERMINATED"


def test_unsigned_and_foreign_calls_are_unauthorized(tmp_path: Path, tax: Node, bank: Node) -> None:
    msg = contract_request_message(
        consumer_pid="urn:uuid:c-1",
        offer=offer_for(DATASET, catalog_offer("tax")),
        callback_address=bank.url,
    )
    unsigned = tax.client.post("/negotiations/request", json=msg)
    assert unsigned.status_code == 401

    with InProcessSpace(tmp_path / "elsewhere", operator="other-centre") as other:
        stranger = other.add("bank-a", ["consumer"])
        other.admit_direct(stranger)
        content = encode_json(msg)
        url = tax.url + "/negotiations/request"
        headers = stranger.runtime.client.headers_for(tax.id, "POST", url, content)
        headers["Content-Type"] = "application/json"
        foreign = tax.client.post("/negotiations/request", content=content, headers=headers)
    assert foreign.status_code == 401
    assert foreign.json()["detail"] == unsigned.json()["detail"]
    with tax.runtime.transaction() as tx:
        assert tx.scan(NEGOTIATION_NAMESPACE) == []


def test_admin_api_needs_the_admin_token(bank: Node) -> None:
    assert bank.client.get("/management/negotiations").status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert bank.client.get("/management/agreements", headers=bad).status_code == 401


# -- termination --------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["consumer", "provider"])
def test_terminate_from_either_side(tax: Node, bank: Node, manual: None, side: str) -> None:
    consumer = negotiation.start_negotiation(bank.runtime, "tax-bureau", DATASET)
    node, pid = (
        (bank, consumer.consumer_pid) if side == "consumer" else (tax, consumer.provider_pid)
    )
    response = node.client.post(
        f"/management/negotiations/{pid}/terminate",
        json={"reason": "changed our mind"},
        headers=node.admin_headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "TERMINATED" and response.json()["peerNotified"] is True
    assert bank.runtime.negotiator.negotiation(consumer.consumer_pid).state.value == "TERMINATED"
    assert tax.runtime.negotiator.negotiation(consumer.provider_pid).state.value == "TERMINATED"
    again = node.client.post(
        f"/management/negotiations/{pid}/terminate", headers=node.admin_headers
    )
    assert again.status_code == 409


def test_terminate_with_unreachable_peer_terminates_locally(
    space: InProcessSpace, tax: Node, bank: Node, manual: None
) -> None:
    consumer = negotiation.start_negotiation(bank.runtime, "tax-bureau", DATASET)
    space.transport.clients.pop(f"{tax.settings.host}:{tax.settings.port}")
    record, notified = negotiation.terminate(bank.runtime, consumer.consumer_pid, reason="gone")
    assert record.state is NegotiationState.TERMINATED and notified is False
    assert tax.runtime.negotiator.negotiation(consumer.provider_pid).state.value == "REQUESTED"


def test_resume_takes_the_steps_a_restarted_node_still_owes(
    tax: Node, bank: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = negotiation.after_receipt
    monkeypatch.setattr(negotiation, "after_receipt", lambda *_: None)
    consumer = negotiation.start_negotiation(bank.runtime, "tax-bureau", DATASET)
    assert tax.runtime.negotiator.negotiation(consumer.provider_pid).state.value == "REQUESTED"
    monkeypatch.setattr(negotiation, "after_receipt", real)
    assert negotiation.resume(bank.runtime) == 0
    assert negotiation.resume(tax.runtime) == 1
    provider = negotiation.wait_for(tax.runtime, consumer.provider_pid, FINAL)
    assert provider.state is NegotiationState.FINALIZED


def test_wait_for_times_out_with_the_state(tax: Node, bank: Node, manual: None) -> None:
    consumer = negotiation.start_negotiation(bank.runtime, "tax-bureau", DATASET)
    with pytest.raises(TimeoutError, match="REQUESTED"):
        negotiation.wait_for(bank.runtime, consumer.consumer_pid, FINAL, timeout=0.05)


# -- CLI functions --------------------------------------------------------------------------------


def test_cli_negotiation_follows_to_finalized(space: InProcessSpace, tax: Node, bank: Node) -> None:
    seen: list[str] = []
    token = bank.runtime.admin_token
    with AdminClient(bank.url, token, transport=space.transport) as client:
        view = follow_negotiation(
            client, "tax-bureau", DATASET, wait=True, timeout=10, poll=0.02, on_state=seen.append
        )
    assert view["state"] == "FINALIZED" and view["agreementId"]
    assert seen[-1] == "FINALIZED"


def test_cli_catalog_rows_anonymous_and_signed(
    space: InProcessSpace, tax: Node, bank: Node
) -> None:
    anonymous = fetch_catalog(tax.url, federated=False, transport=space.transport)
    assert catalog_rows(anonymous) == []
    member = fetch_catalog(tax.url, federated=False, signer=bank.runtime.client, audience=tax.id)
    rows = catalog_rows(member)
    assert [(r["provider"], r["dataset"], r["tier"]) for r in rows] == [
        ("tax-bureau", "urn:uuid:ds-tax", "zone"),
        ("tax-bureau", "urn:uuid:ds-two", "conditional"),
    ]
    assert rows[1]["offers"] == ["urn:uuid:offer-a", "urn:uuid:offer-b"]
    console = Console(record=True, width=200)
    print_catalog(rows, console)
    assert "urn:uuid:ds-two" in console.export_text()


def test_cli_federated_catalog_through_the_operator(
    space: InProcessSpace, tax: Node, bank: Node
) -> None:
    publish_dataset(tax, "open", Tier.UNCONDITIONAL)
    assert push_catalog(tax.runtime)
    op = space.operator
    anonymous = catalog_rows(fetch_catalog(op.url, federated=True, transport=space.transport))
    assert [r["dataset"] for r in anonymous] == ["urn:uuid:ds-open"]
    member = fetch_catalog(op.url, federated=True, signer=bank.runtime.client, audience=op.id)
    assert {(r["provider"], r["dataset"]) for r in catalog_rows(member)} == {
        ("tax-bureau", "urn:uuid:ds-open"),
        ("tax-bureau", "urn:uuid:ds-tax"),
        ("tax-bureau", "urn:uuid:ds-two"),
    }


def test_catalog_rows_of_a_federated_catalog() -> None:
    nested = {
        "@type": "Catalog",
        "participantId": "city-centre",
        "catalog": [
            {
                "participantId": "court",
                "dataset": {"@id": "d2", "hasPolicy": [{"@id": "o2"}]},
            },
            {"participantId": "tax-bureau", "dataset": [{"@id": "d1", "dct:title": "T"}]},
        ],
    }
    rows = catalog_rows(nested)
    assert [(r["provider"], r["dataset"], r["offers"]) for r in rows] == [
        ("court", "d2", ["o2"]),
        ("tax-bureau", "d1", []),
    ]


def test_cli_negotiate_command(
    space: InProcessSpace, tax: Node, bank: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    def in_process_admin(node: Any, node_dir: Any, token_file: Any) -> AdminClient:
        assert node_dir == bank.settings.dir
        return AdminClient(bank.url, bank.runtime.admin_token, transport=space.transport)

    runner = CliRunner()
    unknown_node = runner.invoke(cli_app, ["negotiate", "--provider", "x", "--dataset", "y"])
    assert unknown_node.exit_code == 2 and "--node-dir" in unknown_node.output
    monkeypatch.setattr(catalog_command, "admin_client", in_process_admin)
    args = ["negotiate", "--node-dir", str(bank.settings.dir), "--provider", "tax-bureau"]
    done = runner.invoke(cli_app, [*args, "--dataset", DATASET, "--json", "--timeout", "10"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["state"] == "FINALIZED"

    refused = runner.invoke(cli_app, [*args, "--dataset", "urn:uuid:ds-nope"])
    assert refused.exit_code == 1
    assert "no dataset 'urn:uuid:ds-nope'" in refused.output


def test_cli_catalog_list_command(
    space: InProcessSpace, tax: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_dataset(tax, "open", Tier.UNCONDITIONAL)
    real = catalog_command.fetch_catalog
    monkeypatch.setattr(
        catalog_command,
        "fetch_catalog",
        lambda *a, **k: real(*a, **k, transport=space.transport),
    )
    runner = CliRunner()
    as_json = runner.invoke(cli_app, ["catalog", "list", "--node", tax.url, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert [r["dataset"] for r in json.loads(as_json.stdout)] == ["urn:uuid:ds-open"]
    table = runner.invoke(cli_app, ["catalog", "list", "--node", tax.url])
    assert table.exit_code == 0 and "1 dataset(s)" in table.stdout
    assert runner.invoke(cli_app, ["catalog", "list"]).exit_code != 0
