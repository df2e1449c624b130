"""DSP 2025-1 raw-row transfer between in-process nodes: checks, policy, pull token, schemas."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from connectors.node import sources
from tests.connectors._space import InProcessSpace, Node
from trusted_space import dsp
from trusted_space.catalog import (
    DataResource,
    Dataset,
    Field,
    FieldType,
    KeyKind,
    Responsibility,
    Table,
    Tier,
    publish,
)
from trusted_space.contracts import SignedAgreement, new_id, offer_for, run_negotiation
from trusted_space.contracts.transfer import (
    PURPOSE_PROPERTY,
    TOKEN_NAMESPACE,
    TRANSITIONS,
    TransferMessage,
    TransferState,
    agreement_purpose,
    next_state,
    parse_message,
    transfer_completion_message,
    transfer_process,
    transfer_request_message,
    transfer_start_message,
    transfer_suspension_message,
    transfer_termination_message,
)
from trusted_space.errors import IllegalTransitionError, SchemaValidationError, ValidationError
from trusted_space.events import EVENT_LOG, Event, decode_event
from trusted_space.metering import usage
from trusted_space.policy import from_odrl

EXAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "dsp_examples" / "transfer"
PURPOSE = "pre-loan-review"
ROWS = [
    ("91350100M000100Y43", "2023", "1200.5", 'a, quoted "name"'),
    ("91110000100000008T", "2023", "88", ""),
    ("91440300MA5F00000W", "2024", "0", "深圳"),
    ("911100007109354421", "2024", "-3.25", "line\nbreak"),
    ("91310000132200821H", "2022", "10", "x"),
]
HEADER = ["uscc", "year", "tax_paid", "name"]


# -- fixtures -----------------------------------------------------------------------------------


class MemorySource(sources.Source):
    """A tiny in-memory table (extra column ``secret`` must never be sent)."""

    def __init__(self, spec: sources.SourceSpec, rows: Sequence[tuple[str, ...]]) -> None:
        self.spec = spec
        self.rows = list(rows)

    def column_names(self) -> list[str]:
        return [*HEADER, "secret"]

    def _read(self, wanted: list[str], chunk_rows: int, numeric: bool) -> Iterator[sources.Chunk]:
        key_column, columns = wanted[0], wanted[1:]
        assert not numeric and key_column == "uscc" and "secret" not in columns
        step = 2  # several chunks even for a tiny table
        for start in range(0, len(self.rows), step):
            part = self.rows[start : start + step]
            cols = {c: np.array([r[HEADER.index(c)] for r in part], dtype=object) for c in columns}
            yield sources.Chunk([r[0] for r in part], cols)


@pytest.fixture
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> list[sources.SourceSpec]:
    opened: list[sources.SourceSpec] = []

    def open_source(spec: sources.SourceSpec) -> sources.Source:
        opened.append(spec)
        return MemorySource(spec, ROWS)

    monkeypatch.setattr(sources, "open_source", open_source)
    return opened


class Space:
    def __init__(self, space: InProcessSpace) -> None:
        self.space = space
        self.tax = space.add("tax-bureau", ["provider"])
        self.bank = space.add("bank-a", ["consumer"])
        self.other = space.add("bank-b", ["consumer"])
        nodes = [self.tax, self.bank, self.other]
        for node in nodes:
            space.admit_direct(node)
        # Each member learns the others' credentials (over HTTP this rides on TS-Credential).
        for node in nodes:
            for peer in nodes:
                if peer is not node:
                    token = peer.runtime.credential_token()
                    assert token is not None and node.runtime.directory is not None
                    with node.runtime.transaction() as tx:
                        node.runtime.directory.add(tx, token, now=node.runtime.clock())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Space]:
    with InProcessSpace(tmp_path) as space:
        yield Space(space)


def an_offer(n: int, *constraints: dict[str, Any]) -> dict[str, Any]:
    return {
        "@id": f"urn:uuid:offer-{n}",
        "@type": "Offer",
        "permission": [{"action": "use", "constraint": list(constraints)}],
    }


def purpose_is(*purposes: str) -> dict[str, Any]:
    if len(purposes) == 1:
        return {"leftOperand": "purpose", "operator": "eq", "rightOperand": purposes[0]}
    return {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": list(purposes)}


def count_at_most(n: int) -> dict[str, Any]:
    return {
        "leftOperand": "count",
        "operator": "lteq",
        "rightOperand": {"@value": str(n), "@type": "xsd:integer"},
    }


def publish_dataset(
    node: Node, ds_id: str, offer: dict[str, Any], *, tier: Tier = Tier.CONDITIONAL, grade: int = 2
) -> None:
    table = Table(
        "tax_paid",
        (
            Field("uscc", FieldType.STRING, 1),
            Field("year", FieldType.INT, 1),
            Field("tax_paid", FieldType.FLOAT, grade),
            Field("name", FieldType.STRING, 1),
        ),
    )
    dataset = Dataset(
        id=ds_id,
        owner=node.id,
        title="Annual tax paid",
        responsibility=Responsibility("resp-1", "Tax collection"),
        resource=DataResource("res-1", "Tax records"),
        table=table,
        tier=tier,
        key_column="uscc",
        key_kind=KeyKind.USCC,
        offer_ids=(offer["@id"],),
    )
    with node.runtime.transaction() as tx:
        publish(tx, dataset, [offer])
        tx.put("source", ds_id, sources.SourceSpec("csv", f"/data/{ds_id[-8:]}.csv").to_json())


def agree(world: Space, ds_id: str, offer: dict[str, Any], **window: Any) -> SignedAgreement:
    return run_negotiation(
        world.tax.runtime.negotiator,
        world.bank.runtime.negotiator,
        offer_for(ds_id, offer),
        **window,
    )


def events(node: Node, kind: str | None = None) -> list[Event]:
    with node.runtime.transaction(readonly=True) as tx:
        size = tx.log_size(EVENT_LOG)
        found = [decode_event(i, e) for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, size))]
    return [e for e in found if kind is None or e.kind == kind]


def dsp_post(sender: Node, receiver: Node, path: str, body: dict[str, Any]) -> httpx.Response:
    return sender.runtime.client.request(
        "POST", f"{receiver.url}{path}", audience=receiver.id, json_body=body, check=False
    )


def request_message(sender: Node, agreement_id: str, **kw: Any) -> dict[str, Any]:
    return transfer_request_message(
        consumer_pid=new_id(),
        agreement_id=agreement_id,
        callback_address=sender.url,
        **({"purpose": PURPOSE} | kw),
    )


def start_transfer(world: Space, agreement_id: str, **body: Any) -> dict[str, Any]:
    r = world.bank.client.post(
        "/management/transfers",
        json={"agreementId": agreement_id, **body},
        headers=world.bank.admin_headers,
    )
    assert r.status_code == 201, r.text
    view: dict[str, Any] = r.json()
    return view


def pull_token(node: Node, consumer_pid: str) -> str:
    with node.runtime.transaction(readonly=True) as tx:
        doc = tx.get(TOKEN_NAMESPACE, consumer_pid)
    assert doc is not None
    return str(doc.body["token"])


def provider_view(world: Space, provider_pid: str) -> dict[str, Any]:
    r = world.tax.client.get(
        f"/management/transfers/{provider_pid}", headers=world.tax.admin_headers
    )
    assert r.status_code == 200
    view: dict[str, Any] = r.json()
    return view


# -- happy path ----------------------------------------------------------------------------------


def test_conditional_dataset_rows_pulled_equal_the_source(
    world: Space, fake_sources: list[sources.SourceSpec], tmp_path: Path
) -> None:
    offer = an_offer(1, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    signed = agree(world, "urn:uuid:ds-tax", offer)

    view = start_transfer(world, signed.id)
    assert view["role"] == "consumer" and view["agreementId"] == signed.id
    assert view["state"] == "STARTED"  # the start message arrived right after the ACK
    assert "token" not in json.dumps(view).lower().replace("tokenexpiresat", "")
    out = tmp_path / "pulled" / "tax.csv"
    r = world.bank.client.post(
        f"/management/transfers/{view['id']}/pull",
        json={"path": str(out)},
        headers=world.bank.admin_headers,
    )

    assert r.status_code == 200, r.text
    assert r.json() == {"rows": len(ROWS), "path": str(out.resolve())}
    with out.open(encoding="utf-8", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == HEADER  # declared columns only: the source's 'secret' is not there
    assert [tuple(row) for row in table[1:]] == ROWS
    mine = world.bank.client.get(
        f"/management/transfers/{view['id']}", headers=world.bank.admin_headers
    ).json()
    assert mine["state"] == "COMPLETED" and mine["rows"] == len(ROWS)
    theirs = provider_view(world, mine["providerPid"])
    assert theirs["state"] == "COMPLETED" and theirs["counterparty"] == "bank-a"
    assert theirs["purpose"] == PURPOSE
    decisions = events(world.tax, "policy.decision")
    assert [d.body["allowed"] for d in decisions] == [True]
    assert decisions[0].body["query_kind"] == "transfer" and decisions[0].body["output"] == "raw"
    served = events(world.tax, "transfer.served")
    assert [(e.body["rows"], e.body["complete"]) for e in served] == [(len(ROWS), True)]
    with world.tax.runtime.transaction(readonly=True) as tx:
        assert usage(tx, agreement_id=signed.id).count("transfer") == 1
    moves = [(e.body["from"], e.body["to"]) for e in events(world.bank, "transfer.transition")]
    assert moves[0] == (None, "REQUESTED") and moves[-1] == ("STARTED", "COMPLETED")
    with world.bank.runtime.transaction(readonly=True) as tx:
        assert tx.get(TOKEN_NAMESPACE, view["id"]) is None  # the token is forgotten


def test_ndjson_pull_and_unconditional_dataset(
    world: Space, fake_sources: list[sources.SourceSpec], tmp_path: Path
) -> None:
    offer = an_offer(2, purpose_is(PURPOSE, "risk-monitoring"))
    publish_dataset(world.tax, "urn:uuid:ds-open", offer, tier=Tier.UNCONDITIONAL, grade=1)
    signed = agree(world, "urn:uuid:ds-open", offer)

    view = start_transfer(world, signed.id, purpose="risk-monitoring")
    r = world.bank.client.post(
        f"/management/transfers/{view['id']}/pull",
        json={"path": "pulled/open.ndjson", "format": "ndjson"},
        headers=world.bank.admin_headers,
    )

    assert r.status_code == 200, r.text
    out = Path(r.json()["path"])
    assert out.is_relative_to(world.bank.settings.dir)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == [dict(zip(HEADER, row, strict=True)) for row in ROWS]
    assert events(world.tax, "policy.decision")[0].body["purpose"] == "risk-monitoring"


def test_pull_from_a_real_csv_source(world: Space, tmp_path: Path) -> None:
    source_file = tmp_path / "tax.csv"
    with source_file.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([[*HEADER, "secret"], *[[*row, "s3cr3t"] for row in ROWS]])
    try:
        sources.open_source(sources.SourceSpec("csv", str(source_file)))
    except NotImplementedError:
        pytest.skip("connectors.node.sources is not implemented yet")
    offer = an_offer(3, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-csv", offer)
    with world.tax.runtime.transaction() as tx:
        tx.put("source", "urn:uuid:ds-csv", sources.SourceSpec("csv", str(source_file)).to_json())
    signed = agree(world, "urn:uuid:ds-csv", offer)

    view = start_transfer(world, signed.id)
    out = tmp_path / "copy.csv"
    r = world.bank.client.post(
        f"/management/transfers/{view['id']}/pull",
        json={"path": str(out)},
        headers=world.bank.admin_headers,
    )

    assert r.status_code == 200, r.text
    with out.open(encoding="utf-8", newline="") as f:
        assert [tuple(row) for row in csv.reader(f)] == [tuple(HEADER), *ROWS]
    assert "s3cr3t" not in out.read_text(encoding="utf-8")


# -- refusals ------------------------------------------------------------------------------------


def test_zone_dataset_has_no_transfer_and_the_tier_is_named(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(
        4,
        purpose_is(PURPOSE),
        {"leftOperand": "computation", "operator": "isAnyOf", "rightOperand": ["score"]},
        {"leftOperand": "output", "operator": "isAnyOf", "rightOperand": ["score"]},
    )
    publish_dataset(world.tax, "urn:uuid:ds-zone", offer, tier=Tier.ZONE, grade=3)
    signed = agree(world, "urn:uuid:ds-zone", offer)

    r = dsp_post(
        world.bank, world.tax, "/transfers/request", request_message(world.bank, signed.id)
    )

    assert r.status_code == 400
    assert "tier 'zone'" in r.json()["detail"] and "no transfer" in r.json()["detail"]
    assert fake_sources == []  # nothing was opened
    refusal = events(world.tax, "policy.decision")[-1].body
    assert refusal["allowed"] is False and "tier 'zone'" in refusal["reason"]
    with world.tax.runtime.transaction(readonly=True) as tx:
        assert tx.scan("transfer") == []


def test_agreement_of_another_consumer_is_refused_like_an_unknown_one(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(5, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    signed = agree(world, "urn:uuid:ds-tax", offer)

    stolen = dsp_post(
        world.other, world.tax, "/transfers/request", request_message(world.other, signed.id)
    )
    unknown = dsp_post(
        world.other,
        world.tax,
        "/transfers/request",
        request_message(world.other, "urn:uuid:no-such-agreement"),
    )

    assert stolen.status_code == unknown.status_code == 404
    assert stolen.json()["detail"].replace(signed.id, "X") == unknown.json()["detail"].replace(
        "urn:uuid:no-such-agreement", "X"
    )
    decisions = events(world.tax, "policy.decision")
    assert decisions and not any(d.body["allowed"] for d in decisions)
    assert {d.body["assignee"] for d in decisions} == {"bank-b"}
    with world.tax.runtime.transaction(readonly=True) as tx:
        assert tx.scan("transfer") == []
        assert usage(tx, agreement_id=signed.id).total == 0
    # The local driver refuses too: bank-b holds no such agreement.
    r = world.other.client.post(
        "/management/transfers", json={"agreementId": signed.id}, headers=world.other.admin_headers
    )
    assert r.status_code == 404


def test_purpose_not_allowed_is_refused_with_trace_on_the_ledger(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(6, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    signed = agree(world, "urn:uuid:ds-tax", offer)

    r = dsp_post(
        world.bank,
        world.tax,
        "/transfers/request",
        request_message(world.bank, signed.id, purpose="marketing"),
    )

    assert r.status_code == 403
    problem = r.json()
    assert problem["type"].endswith("/policy-refused") and "marketing" in problem["detail"]
    blocking = [s for s in problem["trace"] if s["blocking"]]
    assert [(s["left_operand"], s["seen"]) for s in blocking] == [("purpose", "marketing")]
    entry = events(world.tax, "policy.decision")[-1]
    assert entry.index == problem["decisionIndex"]
    assert entry.body["allowed"] is False and entry.body["trace"] == problem["trace"]
    # Through the consumer's staff API the same refusal arrives as the provider's problem.
    r = world.bank.client.post(
        "/management/transfers",
        json={"agreementId": signed.id, "purpose": "marketing"},
        headers=world.bank.admin_headers,
    )
    assert r.status_code == 403 and r.json()["peerStatus"] == 403  # relayed, not a 502
    assert r.json()["type"].endswith("/peer-refused") and r.json()["peer"] == "tax-bureau"
    again = r.json()["peerProblem"]["trace"]
    assert [s for s in again if s["blocking"]] == blocking
    # The checks made before the policy open the trace (the instant in them differs per request).
    assert [s["left_operand"] for s in again] == [s["left_operand"] for s in problem["trace"]]
    assert [s["left_operand"] for s in again][:3] == ["agreement", "state", "dateTime"]
    mine = world.bank.client.get("/management/transfers", headers=world.bank.admin_headers).json()
    assert [t["state"] for t in mine] == ["TERMINATED"] and "marketing" in mine[0]["reason"]


def test_count_exhausted_after_one_use(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(7, purpose_is(PURPOSE), count_at_most(1))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    signed = agree(world, "urn:uuid:ds-tax", offer)

    first = dsp_post(
        world.bank, world.tax, "/transfers/request", request_message(world.bank, signed.id)
    )
    second = dsp_post(
        world.bank, world.tax, "/transfers/request", request_message(world.bank, signed.id)
    )

    assert first.status_code == 201 and second.status_code == 403
    assert "count" in second.json()["detail"]
    assert [d.body["allowed"] for d in events(world.tax, "policy.decision")] == [True, False]
    # bank-a's node never asked for the first one, so it refused the start message: the
    # provider's process ended there and its token with it.
    record = provider_view(world, first.json()["providerPid"])
    assert record["state"] == "TERMINATED" and "start message not delivered" in record["reason"]


def test_expired_agreement_is_refused_with_its_window(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(8, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    now = world.tax.runtime.clock()
    signed = agree(
        world,
        "urn:uuid:ds-tax",
        offer,
        valid_from=now - timedelta(days=2),
        valid_until=now - timedelta(days=1),
    )

    r = dsp_post(
        world.bank, world.tax, "/transfers/request", request_message(world.bank, signed.id)
    )

    assert r.status_code == 403 and "outside the agreement's validity window" in r.json()["detail"]
    assert events(world.tax, "policy.decision")[-1].index == r.json()["decisionIndex"]


def test_a_suspended_agreement_transfers_nothing_until_resumed(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(9, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    signed = agree(world, "urn:uuid:ds-tax", offer)
    suspended = world.tax.client.post(
        f"/management/agreements/{signed.id}/suspend",
        json={"reason": "under review"},
        headers=world.tax.admin_headers,
    )

    r = dsp_post(
        world.bank, world.tax, "/transfers/request", request_message(world.bank, signed.id)
    )

    assert suspended.status_code == 200 and suspended.json()["standing"] == "suspended"
    assert r.status_code == 403
    blocking = [s for s in r.json()["trace"] if s["blocking"]]
    assert [(s["left_operand"], s["seen"]) for s in blocking] == [("standing", "suspended")]
    assert events(world.tax, "agreement.standing")[-1].body["to"] == "suspended"
    # Only the provider that granted it can change its standing.
    foreign = world.bank.client.post(
        f"/management/agreements/{signed.id}/resume",
        json={"reason": "mine now"},
        headers=world.bank.admin_headers,
    )
    assert foreign.status_code == 404


def test_request_checks_format_callback_and_schema(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(9, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    signed = agree(world, "urn:uuid:ds-tax", offer)

    push = request_message(world.bank, signed.id, format="HttpData-PUSH")
    elsewhere = request_message(world.bank, signed.id) | {"callbackAddress": "http://10.0.0.1"}
    invalid = {k: v for k, v in request_message(world.bank, signed.id).items() if k != "format"}

    assert dsp_post(world.bank, world.tax, "/transfers/request", push).status_code == 400
    r = dsp_post(world.bank, world.tax, "/transfers/request", elsewhere)
    assert r.status_code == 400 and "callbackAddress" in r.json()["detail"]
    r = dsp_post(world.bank, world.tax, "/transfers/request", invalid)
    assert r.status_code == 400 and r.json()["type"].endswith("/invalid-dsp-message")
    unsigned = world.tax.client.post("/transfers/request", json=request_message(world.bank, "x"))
    assert unsigned.status_code == 401


# -- the pull token ------------------------------------------------------------------------------


def test_pull_token_wrong_expired_reused_unknown_all_answer_the_same_401(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(10, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    signed = agree(world, "urn:uuid:ds-tax", offer)
    first = start_transfer(world, signed.id)
    second = start_transfer(world, signed.id)
    token1 = pull_token(world.bank, first["id"])
    token2 = pull_token(world.bank, second["id"])
    data1 = f"/transfers/{first['providerPid']}/data"
    data2 = f"/transfers/{second['providerPid']}/data"

    def get(path: str, token: str | None, accept: str = "*/*") -> httpx.Response:
        headers = {"Accept": accept}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return world.tax.client.get(path, headers=headers)

    wrong = get(data1, token1[:-2] + "xx")
    missing = get(data1, None)
    other_transfer = get(data1, token2)
    unknown = get("/transfers/urn:uuid:nope/data", token1)
    not_acceptable = get(data1, token1, accept="text/html")  # refused before the token is spent
    ok = get(data1, token1)
    reused = get(data1, token1)
    clock = world.tax.runtime.clock
    world.tax.runtime.clock = lambda: clock() + timedelta(minutes=6)
    expired = get(data2, token2)
    world.tax.runtime.clock = clock

    assert not_acceptable.status_code == 406
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/csv")
    assert len(list(csv.reader(ok.text.splitlines()))) == len(ROWS) + 1
    refused = [wrong, missing, other_transfer, unknown, reused, expired]
    assert {r.status_code for r in refused} == {401}
    assert len({r.content for r in refused}) == 1
    assert token1 not in refused[0].text
    reasons = [e.body["reason"] for e in events(world.tax, "auth.refused")]
    for reason in (
        "pull-token-mismatch",
        "transfer-unknown",
        "pull-token-used",
        "pull-token-expired",
    ):
        assert reason in reasons
    assert all(token1 not in json.dumps(e.body) for e in events(world.tax))


def test_termination_kills_the_token_and_only_the_counterparty_sees_a_process(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(11, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    signed = agree(world, "urn:uuid:ds-tax", offer)
    view = start_transfer(world, signed.id)
    ppid, cpid = view["providerPid"], view["consumerPid"]
    token = pull_token(world.bank, cpid)

    seen = world.bank.runtime.client.request(
        "GET", f"{world.tax.url}/transfers/{ppid}", audience="tax-bureau", check=False
    )
    stranger = world.other.runtime.client.request(
        "GET", f"{world.tax.url}/transfers/{ppid}", audience="tax-bureau", check=False
    )
    illegal = dsp_post(
        world.bank,
        world.tax,
        f"/transfers/{ppid}/start",
        transfer_start_message(
            provider_pid=ppid, consumer_pid=cpid, endpoint="http://x", token="t"
        ),
    )
    ended = dsp_post(
        world.bank,
        world.tax,
        f"/transfers/{ppid}/termination",
        transfer_termination_message(
            provider_pid=ppid, consumer_pid=cpid, code="user", reason=["no longer needed"]
        ),
    )
    pulled = world.tax.client.get(
        f"/transfers/{ppid}/data", headers={"Authorization": f"Bearer {token}"}
    )

    assert seen.status_code == 200 and seen.json()["state"] == "STARTED"
    dsp.validate(seen.json(), "transfer/transfer-process-schema.json")
    assert stranger.status_code == 404
    assert (
        illegal.status_code == 409 and "cannot be sent by the consumer" in illegal.json()["detail"]
    )
    assert ended.status_code == 200 and ended.json()["state"] == "TERMINATED"
    assert pulled.status_code == 401
    record = provider_view(world, ppid)
    assert record["state"] == "TERMINATED" and "no longer needed" in record["reason"]


def test_suspension_from_the_provider_reaches_the_consumer(
    world: Space, fake_sources: list[sources.SourceSpec], tmp_path: Path
) -> None:
    offer = an_offer(12, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    signed = agree(world, "urn:uuid:ds-tax", offer)
    view = start_transfer(world, signed.id)

    r = dsp_post(
        world.tax,
        world.bank,
        f"/transfers/{view['consumerPid']}/suspension",
        transfer_suspension_message(
            provider_pid=view["providerPid"], consumer_pid=view["consumerPid"], code="maintenance"
        ),
    )
    pulled = world.bank.client.post(
        f"/management/transfers/{view['id']}/pull",
        json={"path": str(tmp_path / "x.csv")},
        headers=world.bank.admin_headers,
    )

    assert r.status_code == 200 and r.json()["state"] == "SUSPENDED"
    with world.bank.runtime.transaction(readonly=True) as tx:
        assert tx.get(TOKEN_NAMESPACE, view["id"]) is None
    assert pulled.status_code == 409 and "SUSPENDED" in pulled.json()["detail"]
    assert not (tmp_path / "x.csv").exists()


# -- messages and the state machine -------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [k for k in TransferMessage],
    ids=[k.value for k in TransferMessage],
)
def test_known_answer_examples_parse(kind: TransferMessage) -> None:
    stem = {
        TransferMessage.REQUEST: "transfer-request-message",
        TransferMessage.START: "transfer-start-message",
        TransferMessage.COMPLETION: "transfer-completion-message",
        TransferMessage.SUSPENSION: "transfer-suspension-message",
        TransferMessage.TERMINATION: "transfer-termination-message",
    }[kind]
    example = json.loads((EXAMPLES / f"{stem}.json").read_text(encoding="utf-8"))
    assert parse_message(example, kind)["@type"] == kind.value
    broken = {k: v for k, v in example.items() if k != "consumerPid"}
    with pytest.raises(SchemaValidationError):
        parse_message(broken, kind)
    other = next(k for k in TransferMessage if k is not kind)
    with pytest.raises(ValidationError):
        parse_message(example, other)


def test_built_messages_validate() -> None:
    ids = {"provider_pid": new_id(), "consumer_pid": new_id()}
    request = transfer_request_message(
        consumer_pid=ids["consumer_pid"],
        agreement_id=new_id(),
        callback_address="http://127.0.0.1:1",
        purpose=PURPOSE,
    )
    assert request[PURPOSE_PROPERTY] == PURPOSE
    start = transfer_start_message(**ids, endpoint="http://127.0.0.1:2/data", token="secret")
    props = {p["name"]: p["value"] for p in start["dataAddress"]["endpointProperties"]}
    assert props == {"authorization": "secret", "authType": "bearer"}
    for message, schema in (
        (request, "transfer-request-message"),
        (start, "transfer-start-message"),
        (transfer_completion_message(**ids), "transfer-completion-message"),
        (transfer_suspension_message(**ids, code="1"), "transfer-suspension-message"),
        (transfer_termination_message(**ids, reason=["x"]), "transfer-termination-message"),
        (transfer_process(**ids, state=TransferState.STARTED), "transfer-process"),
    ):
        dsp.validate(message, f"transfer/{schema}-schema.json")


def test_every_message_on_the_wire_validates(
    world: Space,
    fake_sources: list[sources.SourceSpec],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wire: list[dict[str, Any]] = []
    forward = world.space.transport.handle_request

    def recording(request: httpx.Request) -> httpx.Response:
        response = forward(request)
        if "/transfers" in request.url.path and not request.url.path.endswith("/data"):
            if request.method == "POST":
                wire.append(json.loads(request.read()))
            if response.is_success:
                wire.append(response.json())
        return response

    monkeypatch.setattr(world.space.transport, "handle_request", recording)
    offer = an_offer(13, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-tax", offer)
    signed = agree(world, "urn:uuid:ds-tax", offer)

    view = start_transfer(world, signed.id)
    r = world.bank.client.post(
        f"/management/transfers/{view['id']}/pull",
        json={"path": str(tmp_path / "w.csv")},
        headers=world.bank.admin_headers,
    )

    assert r.status_code == 200
    schemas = {
        "TransferRequestMessage": "transfer-request-message",
        "TransferStartMessage": "transfer-start-message",
        "TransferCompletionMessage": "transfer-completion-message",
        "TransferProcess": "transfer-process",
    }
    assert sorted(m["@type"] for m in wire) == sorted(
        ["TransferRequestMessage", "TransferStartMessage", "TransferCompletionMessage"]
        + ["TransferProcess"] * 3
    )
    for message in wire:
        dsp.validate(message, f"transfer/{schemas[message['@type']]}-schema.json")


def test_state_machine_table() -> None:
    assert next_state(TransferState.REQUESTED, TransferMessage.START, "provider") is (
        TransferState.STARTED
    )
    with pytest.raises(IllegalTransitionError):
        next_state(TransferState.REQUESTED, TransferMessage.START, "consumer")
    with pytest.raises(IllegalTransitionError):
        next_state(TransferState.REQUESTED, TransferMessage.COMPLETION, "consumer")
    for terminal in (TransferState.COMPLETED, TransferState.TERMINATED):
        assert not [k for (s, k) in TRANSITIONS if s is terminal]
    for state in (TransferState.REQUESTED, TransferState.STARTED, TransferState.SUSPENDED):
        for sender in ("provider", "consumer"):
            assert next_state(state, TransferMessage.TERMINATION, sender) is (
                TransferState.TERMINATED
            )


def test_agreement_purpose_is_the_single_permitted_one() -> None:
    def policy(*permissions: list[dict[str, Any]]) -> Any:
        return from_odrl(
            {
                "@id": "urn:uuid:p",
                "@type": "Offer",
                "target": "urn:uuid:d",
                "assigner": "tax-bureau",
                "permission": [{"action": "use", "constraint": c} for c in permissions],
            }
        )

    assert agreement_purpose(policy([purpose_is(PURPOSE)])) == PURPOSE
    assert agreement_purpose(policy([purpose_is(PURPOSE, "x")])) is None
    assert agreement_purpose(policy([purpose_is(PURPOSE)], [])) is None  # any purpose
    assert agreement_purpose(policy([purpose_is(PURPOSE)], [purpose_is(PURPOSE)])) == PURPOSE


def test_transfer_of_a_withdrawn_dataset_is_the_providers_refusal_not_a_502(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(1, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-gone", offer)
    signed = agree(world, "urn:uuid:ds-gone", offer)
    gone = world.tax.client.delete(
        "/management/datasets/urn:uuid:ds-gone", headers=world.tax.admin_headers
    )
    assert gone.status_code == 200, gone.text

    r = world.bank.client.post(
        "/management/transfers",
        json={"agreementId": signed.id, "purpose": PURPOSE},
        headers=world.bank.admin_headers,
    )

    assert 400 <= r.status_code < 500, r.text  # the provider refused: not a gateway failure
    problem, tax = r.json(), world.tax.runtime.settings.name
    assert problem["type"].endswith("/peer-refused")
    assert problem["peer"] == tax and problem["status"] == problem["peerStatus"] == 404
    assert problem["detail"].startswith(f"{tax} answered 404")
    assert "ds-gone" in problem["detail"]


def _metric(text: str, name: str, labels: str = "") -> float:
    line = next(x for x in text.splitlines() if x.startswith(f"{name}{labels} "))
    return float(line.rsplit(" ", 1)[1])


def test_metrics_count_requests_decisions_and_the_ledger(
    world: Space, fake_sources: list[sources.SourceSpec]
) -> None:
    offer = an_offer(1, purpose_is(PURPOSE))
    publish_dataset(world.tax, "urn:uuid:ds-metrics", offer)
    signed = agree(world, "urn:uuid:ds-metrics", offer)
    start_transfer(world, signed.id)  # allowed
    refused = world.bank.client.post(
        "/management/transfers",
        json={"agreementId": signed.id, "purpose": "marketing"},
        headers=world.bank.admin_headers,
    )
    assert refused.status_code == 403
    assert world.tax.client.get("/healthz").status_code == 200

    assert world.tax.client.get("/metrics").status_code == 401  # the node's staff only
    page = world.tax.client.get("/metrics", headers=world.tax.admin_headers)

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = page.text
    decisions = events(world.tax, "policy.decision")
    allowed = sum(1 for e in decisions if e.body["allowed"] is True)
    assert _metric(text, "ts_policy_decisions_total", '{outcome="allowed"}') == allowed >= 1
    refusals = len(decisions) - allowed
    assert _metric(text, "ts_policy_decisions_total", '{outcome="refused"}') == refusals >= 1
    assert _metric(text, "ts_ledger_entries") == len(events(world.tax))
    assert _metric(text, "ts_witness_lag_entries") == len(events(world.tax))  # no witness here
    healthz = '{method="GET",route="/healthz",status="200"}'
    assert _metric(text, "ts_http_requests_total", healthz) >= 1
    assert _metric(text, "ts_http_request_duration_seconds_count", '{route="/healthz"}') >= 1
    # A refusal is counted with its own status (read from the answer as it is sent).
    assert (
        _metric(text, "ts_http_requests_total", '{method="GET",route="/metrics",status="401"}') == 1
    )
    assert "urn:uuid:ds-metrics" not in text  # routes are templates, ids are not labels
    bank = world.bank.client.get("/metrics", headers=world.bank.admin_headers).text
    assert "# TYPE ts_queries gauge" in bank
