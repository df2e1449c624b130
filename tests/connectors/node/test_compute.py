"""Joint queries over HTTP between in-process nodes: frames, authentication, operations by role,
refusals carrying their trace, scores equal to plaintext, the analyst's admin API and client, and
the data access over registered sources."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from connectors.cli import query as query_commands
from connectors.cli.main import app as cli_app
from connectors.client.analyst import AnalystClient, QueryFailed, QueryProgress
from connectors.common.columnar import ARROW_STREAM, query_to_arrow, result_from_arrow
from connectors.node import queries
from connectors.node.compute import (
    COMPUTE_CONTENT_TYPE,
    HttpTransport,
    SourceData,
    compute_node,
)
from tests._seeding import rng_for
from tests.connectors._space import InProcessSpace, Node, stop_negotiations
from tests.connectors.node._joint import negotiate_features, publish_table, write_table
from trusted_space.errors import NotFoundError, StoreError, ValidationError
from trusted_space.events import decode_event
from trusted_space.ledger import Receipt
from trusted_space.protocols.aggregate import set_column_bounds
from trusted_space.protocols.score import check_use_receipt, run_score
from trusted_space.queries.score import ScoreQuery
from trusted_space.transport import RemoteError, frame, unframe

PURPOSE = "pre-loan-review"
N = 48
COLUMNS = {"bank-a": ["loans"], "tax-bureau": ["tax_paid", "employees"], "court": ["judgments"]}
WEIGHTS = {
    "bank-a": {"loans": 0.4},
    "tax-bureau": {"tax_paid": -0.8, "employees": 0.25},
    "court": {"judgments": 1.1},
}
INTERCEPT = -0.3


@dataclass
class Joint:
    space: InProcessSpace
    nodes: dict[str, Node]
    ids: list[str]
    values: dict[str, np.ndarray[Any, Any]]
    agreements: dict[str, str]
    files: dict[str, Path]

    @property
    def bank(self) -> Node:
        return self.nodes["bank-a"]

    def plaintext(self, entities: list[str] | None = None) -> np.ndarray[Any, Any]:
        rows = [self.ids.index(e) for e in (entities or self.ids)]
        z = np.full(len(rows), INTERCEPT)
        for party, weights in WEIGHTS.items():
            z = z + self.values[party][rows] @ np.array(list(weights.values()))
        return z

    def query_doc(self, protocol: str, **kw: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "purpose": PURPOSE,
            "protocol": protocol,
            "mode": "analyst-held",
            "model": {
                "intercept": INTERCEPT,
                "link": "logistic",
                "weights": {p: dict(w) for p, w in WEIGHTS.items()},
            },
            "agreements": dict(self.agreements),
            "datasets": {p: f"{p}-features" for p in COLUMNS},
            "entities": list(self.ids),
        }
        doc.update(kw)
        return doc


@pytest.fixture(scope="module")
def joint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Joint]:
    root = tmp_path_factory.mktemp("compute")
    rng = rng_for(f"{__name__}.joint")
    ids = [f"ent-{i:03d}" for i in range(N)]
    with InProcessSpace(root, base_port=19400) as space:
        nodes = {
            "bank-a": space.add("bank-a", ["consumer", "provider"]),
            # tax-bureau aligns by OT-extension PSI from one id on; court keeps ECDH's default
            "tax-bureau": space.add("tax-bureau", ["provider"], settings={"psi_ot_min_ids": 1}),
            "court": space.add("court", ["provider"]),
        }
        for node in nodes.values():
            space.admit_direct(node)
        values, files = {}, {}
        for party, columns in COLUMNS.items():
            values[party] = rng.uniform(-3, 3, (N, len(columns)))
            files[party] = root / f"{party}.csv"
            write_table(files[party], ids, columns, values[party])
            publish_table(
                nodes[party], files[party], columns, purpose=PURPOSE, kinds=("score", "aggregate")
            )
        agreements = negotiate_features(nodes["bank-a"], ("tax-bureau", "court"))
        yield Joint(space, nodes, ids, values, agreements, files)
        stop_negotiations(space)


def _poll(node: Node, query_id: str) -> dict[str, Any]:
    for _ in range(60):
        view = node.client.get(
            f"/management/queries/{query_id}", params={"wait": 5}, headers=node.admin_headers
        )
        assert view.status_code == 200, view.text
        if view.json()["state"] in ("done", "failed"):
            return dict(view.json())
    raise AssertionError(f"query {query_id} did not finish")


def _analyst(joint: Joint) -> AnalystClient:
    return AnalystClient(
        joint.bank.url,
        joint.bank.runtime.admin_token,
        transport=joint.space.transport,
        poll=0.5,
    )


# -- the wire --------------------------------------------------------------------------------------


def test_operations_by_role(joint: Joint) -> None:
    client = joint.bank.runtime.client
    tax = client.get_json(
        f"{joint.nodes['tax-bureau'].url}/compute/operations", audience="tax-bureau"
    )
    operator = joint.space.operator
    op = client.get_json(f"{operator.url}/compute/operations", audience=operator.id)
    assert tax["participant"] == "tax-bureau"
    assert {"score.open", "score.run", "align.open", "stats.open"} <= set(tax["operations"])
    assert "aggregate.add" not in tax["operations"]
    assert {"aggregate.open", "aggregate.add", "aggregate.take", "dealer.triple"} <= set(
        op["operations"]
    )
    assert not {"score.run", "align.open"} & set(op["operations"])


def test_compute_needs_a_signed_request(joint: Joint) -> None:
    tax = joint.nodes["tax-bureau"]
    for response in (
        tax.client.post(
            "/compute/score.open",
            content=frame({"query": "q"}),
            headers={"Content-Type": COMPUTE_CONTENT_TYPE},
        ),
        tax.client.get("/compute/operations"),
        tax.client.post("/compute/score.open", content=b"", headers=tax.admin_headers),
    ):
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")


def test_unknown_operation_is_404(joint: Joint) -> None:
    transport = HttpTransport(joint.bank.runtime)
    for peer, operation in (
        ("tax-bureau", "score.nothing"),
        ("tax-bureau", "dealer.triple"),  # the operator's, not a provider's
        (joint.space.operator.id, "score.open"),
    ):
        with pytest.raises(RemoteError) as caught:
            transport.call(peer, operation, {"query": "q"})
        assert caught.value.status == 404
        assert caught.value.peer == peer
        assert caught.value.problem["type"].endswith("/not-found")


def test_bad_frame_is_400_and_frames_round_trip(joint: Joint) -> None:
    tax = joint.nodes["tax-bureau"]
    response = joint.bank.runtime.client.request(
        "POST",
        f"{tax.url}/compute/score.open",
        audience=tax.id,
        content=b"not a frame at all",
        content_type=COMPUTE_CONTENT_TYPE,
        check=False,
    )
    assert response.status_code == 400
    assert "frame" in response.json()["detail"]
    # a well-formed frame with a bad header: 400 naming the field, a framed body never
    reply = joint.bank.runtime.client.request(
        "POST",
        f"{tax.url}/compute/score.entities",
        audience=tax.id,
        content=frame({"query": "no-such-query", "offset": 0, "count": 1}, b"x"),
        content_type=COMPUTE_CONTENT_TYPE,
        check=False,
    )
    assert reply.status_code == 404
    header, payload = unframe(frame({"a": [1, "é"]}, b"\x00\xff"))
    assert header == {"a": [1, "é"]} and payload == b"\x00\xff"


@pytest.mark.parametrize(
    "header",
    [{}, {"query": 1}, {"query": "q", "offset": -1, "count": "x"}, {"block": [], "query": "q"}],
)
def test_malformed_headers_are_never_500(joint: Joint, header: dict[str, Any]) -> None:
    transport = HttpTransport(joint.bank.runtime)
    targets = [
        ("tax-bureau", op) for op in compute_node(joint.nodes["tax-bureau"].runtime).operations
    ]
    operator = joint.space.operator.id
    targets += [(operator, op) for op in compute_node(joint.space.operator.runtime).operations]
    for peer, operation in targets:
        with pytest.raises(RemoteError) as caught:
            transport.call(peer, operation, header, b"\x01\x02")
        assert 400 <= caught.value.status < 500, (peer, operation, caught.value.problem)


# -- scores --------------------------------------------------------------------------------------


def test_refusal_trace_reaches_the_analyst(joint: Joint) -> None:
    doc = joint.query_doc("additive", purpose="marketing")
    query = ScoreQuery.from_json(doc)
    bank = joint.bank.runtime
    with pytest.raises(RemoteError) as caught:
        run_score(
            HttpTransport(bank),
            bank.id,
            joint.space.operator.id,
            query,
            analyst_data=compute_node(bank).data,
        )
    problem = caught.value.problem
    assert caught.value.status == 403
    assert caught.value.peer == "court"  # providers are called in sorted order
    assert problem["type"].endswith("/policy-refused")
    assert problem["participant"] == "court"
    failed = [s for s in problem["trace"] if s.get("outcome") == "violated"]
    assert failed and failed[0]["left_operand"] == "purpose"
    # the refusal is on the provider's own ledger, at the index it names
    court = joint.nodes["court"].runtime.ledger
    entry = decode_event(
        problem["decisionIndex"],
        court.entries(problem["decisionIndex"], problem["decisionIndex"] + 1)[0],
    )
    assert entry.kind == "policy.decision" and entry.body["allowed"] is False


@pytest.mark.parametrize("protocol", ["ckks", "additive"])
def test_score_through_http_equals_plaintext(joint: Joint, protocol: str) -> None:
    bank = joint.bank
    submitted = bank.client.post(
        "/management/queries/score", json=joint.query_doc(protocol), headers=bank.admin_headers
    )
    assert submitted.status_code == 202, submitted.text
    assert submitted.headers["location"] == f"/management/queries/{submitted.json()['id']}"
    assert submitted.json()["state"] in ("queued", "running", "done")
    view = _poll(bank, submitted.json()["id"])
    assert view["state"] == "done", view["error"]
    result = view["result"]
    assert result["entities"] == joint.ids
    logits = np.asarray(result["logits"])
    assert float(np.max(np.abs(logits - joint.plaintext()))) <= 1e-3
    assert np.allclose(result["outputs"], 1 / (1 + np.exp(-logits)))
    assert set(result["receipts"]) == {"tax-bureau", "court"}
    for provider, receipt in result["receipts"].items():
        body = check_use_receipt(
            receipt,
            participant=provider,
            query=result["query"],
            analyst="bank-a",
            agreement=joint.agreements[provider],
            dataset=f"{provider}-features",
            entities=joint.ids,
            vkey=joint.nodes[provider].runtime.ledger.vkey,
        )
        assert body["protocol"] == protocol and body["columns"] == COLUMNS[provider]


def test_paillier_score_through_the_analyst_client(joint: Joint) -> None:
    updates: list[QueryProgress] = []
    with _analyst(joint) as client:
        query = client.score_query(
            {"intercept": INTERCEPT, "link": "logistic", "weights": WEIGHTS},
            joint.ids[:20],
            protocol="paillier",
            purpose=PURPOSE,
        )
        assert query.agreements == joint.agreements
        assert query.datasets["bank-a"] == "bank-a-features"
        result = client.score(query, progress=updates.append)
    assert float(np.max(np.abs(result.logits - joint.plaintext(joint.ids[:20])))) <= 1e-6
    assert set(result.receipts) == {"tax-bureau", "court"}
    assert updates and updates[-1].state == "done" and updates[-1].fraction == 1.0
    for receipt in result.receipts.values():
        parsed = Receipt.from_json(
            {k: v for k, v in receipt.items() if k not in ("vkey", "participant")}
        )
        assert decode_event(parsed.index, parsed.entry).body["entities"] == 20


def test_cohort_score_aligns_by_psi(joint: Joint) -> None:
    outsiders = ["nobody-1", "nobody-2"]
    doc = joint.query_doc("ckks", entities=[*joint.ids[:10], *outsiders], cohort=True)
    doc["model"] = {
        "intercept": INTERCEPT,
        "link": "identity",
        "weights": {p: w for p, w in WEIGHTS.items() if p != "bank-a"},
    }
    del doc["datasets"]["bank-a"]
    with _analyst(joint) as client:
        result = client.score(doc)
    assert list(result.entities) == joint.ids[:10]
    expected = joint.plaintext(joint.ids[:10]) - joint.values["bank-a"][:10] @ np.array([0.4])
    assert float(np.max(np.abs(result.logits - expected))) <= 1e-3
    assert result.missing == {"court": tuple(outsiders), "tax-bureau": tuple(outsiders)}


def test_failed_query_keeps_the_providers_trace(joint: Joint) -> None:
    with _analyst(joint) as client, pytest.raises(QueryFailed) as caught:
        client.score(joint.query_doc("additive", purpose="marketing"))
    assert caught.value.peer == "court"
    assert caught.value.problem["peerStatus"] == 403
    assert any(s.get("left_operand") == "purpose" for s in caught.value.trace)


def test_query_admin_api_checks_its_input(joint: Joint) -> None:
    bank = joint.bank
    bad = joint.query_doc("ckks")
    bad["model"]["weights"]["court"]["judgments"] = "heavy"
    response = bank.client.post("/management/queries/score", json=bad, headers=bank.admin_headers)
    assert response.status_code == 400
    assert "$.model.weights.court.judgments" in response.json()["detail"]
    missing_own = joint.query_doc("ckks")
    del missing_own["datasets"]["bank-a"]
    response = bank.client.post(
        "/management/queries/score", json=missing_own, headers=bank.admin_headers
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("$.")
    assert (
        bank.client.post("/management/queries/score", json=joint.query_doc("ckks")).status_code
        == 401
    )
    unknown = bank.client.get("/management/queries/urn:uuid:nope", headers=bank.admin_headers)
    assert unknown.status_code == 404
    tax = joint.nodes["tax-bureau"]  # a provider only: no query API
    assert tax.client.get("/management/queries", headers=tax.admin_headers).status_code == 404
    listed = bank.client.get("/management/queries", headers=bank.admin_headers).json()
    assert all(q["result"] is None for q in listed)


def test_aggregate_through_the_admin_api(joint: Joint) -> None:
    tax = joint.nodes["tax-bureau"]
    with tax.runtime.transaction() as tx:
        set_column_bounds(tx, "tax-bureau-features", {"tax_paid": (-3.0, 3.0)})
    cohort = joint.ids[5:25]
    with _analyst(joint) as client:
        result = client.aggregate(
            {
                "provider": "tax-bureau",
                "agreement": joint.agreements["tax-bureau"],
                "dataset": "tax-bureau-features",
                "column": "tax_paid",
                "statistic": "sum",
                "protocol": "ckks",
                "purpose": PURPOSE,
                "cohort": [*cohort, "outsider"],
            }
        )
    assert result.cohort_size == len(cohort)
    expected = float(joint.values["tax-bureau"][5:25, 0].sum())
    assert result.value is not None and abs(result.value - expected) <= 1e-2
    assert len(result.receipts) == 2  # alignment and release


# -- data access ---------------------------------------------------------------------------------


def test_source_data_streams_lookups(joint: Joint) -> None:
    runtime = joint.nodes["tax-bureau"].runtime
    data = SourceData(runtime.store, runtime.id, chunk_rows=7)
    assert data.columns("tax-bureau-features") == ["tax_paid", "employees"]
    wanted = [joint.ids[40], "absent", joint.ids[3], joint.ids[40], joint.ids[47]]
    found, values = data.lookup("tax-bureau-features", wanted, ["employees", "tax_paid"])
    assert found.tolist() == [True, False, True, True, True]
    x = joint.values["tax-bureau"]
    expected = x[[40, 3, 40, 47]][:, [1, 0]]
    assert np.allclose(values[found], expected, atol=1e-8)
    assert np.isnan(values[1]).all()
    chunks = list(data.scan("tax-bureau-features", ["tax_paid"], chunk_rows=10))
    assert [len(k) for k, _ in chunks] == [10, 10, 10, 10, 8]
    assert [k for keys, _ in chunks for k in keys] == joint.ids
    assert np.allclose(np.concatenate([v for _, v in chunks])[:, 0], x[:, 0], atol=1e-8)
    with pytest.raises(ValidationError):
        data.lookup("tax-bureau-features", joint.ids[:2], ["entity"])  # the key is not a feature
    with pytest.raises(NotFoundError):
        data.lookup("no-such-dataset", joint.ids[:2], ["tax_paid"])


def test_a_broken_source_does_not_leak_its_path(joint: Joint, tmp_path: Path) -> None:
    runtime = joint.nodes["court"].runtime
    path = joint.files["court"]
    saved = path.read_bytes()
    try:
        path.write_text("entity,judgments\nent-000,not-a-number\n", encoding="utf-8")
        data = SourceData(runtime.store, runtime.id)
        with pytest.raises(StoreError) as caught:
            data.lookup("court-features", ["ent-000"], ["judgments"])
        assert str(path) not in str(caught.value) and "court-features" in str(caught.value)
    finally:
        path.write_bytes(saved)


# -- the CLI against the in-process analyst node ---------------------------------------------------


def test_query_cli_scores_aggregates_and_reports(
    joint: Joint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query_commands, "analyst_client", lambda *_, **__: _analyst(joint))
    ids = tmp_path / "ids.csv"
    ids.write_text("entity,note\n" + "".join(f"{e},x\n" for e in joint.ids[:12]), encoding="utf-8")
    model = tmp_path / "model.json"
    model.write_text(
        json.dumps({"intercept": INTERCEPT, "link": "identity", "weights": WEIGHTS}),
        encoding="utf-8",
    )
    out = tmp_path / "scores.csv"
    node = ["--node", "http://unused", "--token-file", str(ids)]
    runner = CliRunner()
    scored = runner.invoke(
        cli_app,
        [
            "query", "score", *node, "--model", str(model), "--entities", str(ids),
            "--protocol", "additive", "--purpose", PURPOSE,
            "--out", str(out), "--json",
        ],
    )  # fmt: skip
    assert scored.exit_code == 0, scored.output
    summary = json.loads(scored.stdout)
    assert summary["entities"] == 12 and set(summary["receipts"]) == {"tax-bureau", "court"}
    assert all(r["verifiedByNode"] and r["inclusionPath"] for r in summary["receipts"].values())
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id,logit,score" and len(lines) == 13
    logits = np.array([float(line.split(",")[1]) for line in lines[1:]])
    assert float(np.max(np.abs(logits - joint.plaintext(joint.ids[:12])))) <= 1e-3

    banded = runner.invoke(
        cli_app,
        [
            "query", "score", *node, "--model", str(model), "--entities", str(ids),
            "--protocol", "additive", "--purpose", PURPOSE,
            "--band-edge", "-1", "--band-edge", "1", "--out", str(tmp_path / "bands.csv"),
        ],
    )  # fmt: skip
    assert banded.exit_code == 0, banded.output
    band_lines = (tmp_path / "bands.csv").read_text(encoding="utf-8").splitlines()
    assert band_lines[0] == "id,band"
    near = np.min(np.abs(logits[:, None] - np.array([-1.0, 1.0])[None, :]), axis=1) < 1e-3
    bands = np.array([int(line.split(",")[1]) for line in band_lines[1:]])
    expected = np.searchsorted([-1.0, 1.0], logits, side="left")
    assert np.array_equal(bands[~near], expected[~near])

    status = runner.invoke(cli_app, ["query", "status", summary["query"], *node])
    assert status.exit_code == 0 and "done" in status.stdout

    refused = runner.invoke(
        cli_app,
        [
            "query", "score", *node, "--model", str(model), "--entities", str(ids),
            "--protocol", "ckks", "--purpose", "marketing",
            "--out", str(tmp_path / "no.csv"),
        ],
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "court" in refused.output and "purpose" in refused.output
    assert not (tmp_path / "no.csv").exists()

    counted = runner.invoke(
        cli_app,
        [
            "query", "aggregate", *node, "--provider", "court", "--column", "judgments",
            "--statistic", "count", "--protocol", "paillier", "--purpose", PURPOSE,
            "--cohort", str(ids), "--json",
        ],
    )  # fmt: skip
    assert counted.exit_code == 0, counted.output
    assert json.loads(counted.stdout)["value"] == pytest.approx(12, abs=1e-6)


def test_a_receipt_under_another_key_fails_the_query(
    joint: Joint, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = joint.nodes["tax-bureau"].runtime.ledger.vkey
    monkeypatch.setattr(queries, "provider_vkeys", lambda *_: {"court": wrong})
    with _analyst(joint) as client, pytest.raises(QueryFailed) as caught:
        client.score(joint.query_doc("additive"))
    assert caught.value.problem["type"].endswith("/invalid-receipt")
    assert "signature" in caught.value.problem["detail"]


def test_the_client_reads_the_same_numbers_as_arrow_and_as_json(joint: Joint) -> None:
    doc = joint.query_doc("additive")
    with _analyst(joint) as client:  # binary: ids and result as Arrow IPC streams
        binary = client.score_json(doc)
        as_json = client.result(binary["query"])
        client.binary = False
        assert client.result(binary["query"]) == binary  # the JSON the node serves
        typed = client.score(doc)
    assert binary == as_json
    assert binary["entities"] == joint.ids == list(typed.entities)
    assert np.array_equal(
        np.asarray(binary["logits"]).view(np.uint64), typed.logits.view(np.uint64)
    )
    assert float(np.max(np.abs(typed.logits - joint.plaintext()))) <= 1e-3


def test_the_result_api_negotiates_its_format(joint: Joint) -> None:
    bank = joint.bank
    with _analyst(joint) as client:
        done = client.score_json(joint.query_doc("ckks", entities=joint.ids[:8]))
    path = f"/management/queries/{done['query']}/result"
    polled = bank.client.get(
        f"/management/queries/{done['query']}",
        params={"result": "false"},
        headers=bank.admin_headers,
    )
    assert polled.json()["state"] == "done" and polled.json()["result"] is None
    arrow = bank.client.get(path, headers={**bank.admin_headers, "Accept": ARROW_STREAM})
    assert arrow.headers["content-type"] == ARROW_STREAM
    assert result_from_arrow(arrow.content) == done
    assert bank.client.get(path, headers=bank.admin_headers).json() == done
    refused = bank.client.get(path, headers={**bank.admin_headers, "Accept": "text/csv"})
    assert refused.status_code == 406
    assert refused.json()["type"].endswith("/not-acceptable")
    assert ARROW_STREAM in refused.json()["detail"]
    unknown = bank.client.get(
        "/management/queries/urn:uuid:nope/result", headers=bank.admin_headers
    )
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    ("content_type", "body", "status", "named"),
    [
        (ARROW_STREAM, b"not arrow", 400, "not an Arrow IPC stream"),
        (ARROW_STREAM, b"", 400, "not an Arrow IPC stream"),
        ("text/csv", b"id\na\n", 415, ARROW_STREAM),
        ("application/json", b"{nope", 400, "not JSON"),
        ("application/json", b"[1]", 400, "a JSON object"),
    ],
)
def test_a_bad_query_body_is_a_clear_problem(
    joint: Joint, content_type: str, body: bytes, status: int, named: str
) -> None:
    bank = joint.bank
    response = bank.client.post(
        "/management/queries/score",
        content=body,
        headers={**bank.admin_headers, "Content-Type": content_type},
    )
    assert response.status_code == status, response.text
    assert named in response.json()["detail"]


def test_an_arrow_query_is_checked_like_a_json_one(joint: Joint) -> None:
    bank = joint.bank
    doc = joint.query_doc("ckks", entities=[joint.ids[0], joint.ids[0]])
    response = bank.client.post(
        "/management/queries/score",
        content=query_to_arrow(doc),
        headers={**bank.admin_headers, "Content-Type": ARROW_STREAM},
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("$.entities[1]")
