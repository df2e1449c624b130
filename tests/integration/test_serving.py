"""The serving path across real node processes: scores now, each request its own use.

One throw-away local space for the module (an operator, a bank and two providers, each a
``node serve`` process on loopback; the court's offer limits every applicant to
:data:`ENTITY_BUDGET` scores). The bank's synchronous API (``POST /management/score`` through
:meth:`AnalystClient.score_now`, and the ``query score-now`` command) is checked against the
batch path and plaintext, under concurrent clients, with a refusal in the middle of a stream, a
provider restarted while the bank's sessions stand, and a key rotation.
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.client.analyst import QueryFailed
from connectors.client.catalog import follow_negotiation
from connectors.client.results import verify_receipts
from connectors.spaces.local import (
    LOCAL_PURPOSE,
    LocalParty,
    LocalSpace,
    local_dataset,
)
from tests._seeding import rng_for
from trusted_space.errors import RemoteError
from trusted_space.events import decode_event
from trusted_space.queries.score import Model

from .conftest import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 40
ENTITY_BUDGET = 2
PARTIES = {"bank": ["loans"], "tax": ["tax_paid", "employees"], "court": ["judgments"]}
TOLERANCE = {"additive": 1e-4, "ckks": 1e-3, "paillier": 1e-6}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("serving")
    rng = rng_for(f"{__name__}.served")
    ids = [f"firm-{i:03d}" for i in range(ROWS)]
    values: dict[str, np.ndarray[Any, Any]] = {}
    parties = []
    for party, columns in PARTIES.items():
        held = ids if party != "court" else ids[:-1]  # the court lacks the last firm
        values[party] = np.round(rng.uniform(-3, 3, (ROWS, len(columns))), 6)
        path = directory / f"{party}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["firm", *columns])
            for e, row in zip(ids, values[party], strict=True):
                if e in held:
                    out.writerow([e, *row])
        parties.append(LocalParty(party, path))
    weights = {
        p: {c: float(w) for c, w in zip(cs, rng.uniform(-1, 1, len(cs)), strict=True)}
        for p, cs in PARTIES.items()
    }
    model = Model.from_json({"intercept": 0.3, "link": "logistic", "weights": weights})
    budget = [
        {
            "leftOperand": "entityCount",
            "operator": "lteq",
            "rightOperand": {"@value": str(ENTITY_BUDGET), "@type": "xsd:integer"},
        },
        {"leftOperand": "entityPeriod", "operator": "eq", "rightOperand": "P30D"},
    ]
    local = LocalSpace(
        parties, model, "firm", work_dir=directory / "nodes", rules={"court": budget}
    )
    with local:
        local.start(timeout=120)
        yield {
            "local": local,
            "ids": ids,
            "values": values,
            "weights": weights,
            "model": model,
            "vkeys": local.ledger_vkeys(),
        }


def _doc(served: dict[str, Any], protocol: str, entities: list[str]) -> dict[str, Any]:
    local: LocalSpace = served["local"]
    return {
        "purpose": LOCAL_PURPOSE,
        "protocol": protocol,
        "mode": "analyst-held",
        "model": served["model"].to_json(),
        "agreements": dict(local.agreements),
        "datasets": {p.name: p.dataset_id for p in local.parties},
        "entities": entities,
    }


def _plain(served: dict[str, Any], entities: list[str]) -> np.ndarray[Any, Any]:
    rows = [served["ids"].index(e) for e in entities]
    z = np.full(len(rows), 0.3)
    for p, cs in PARTIES.items():
        z += served["values"][p][rows] @ np.array([served["weights"][p][c] for c in cs])
    return z


def _check_own_receipts(served: dict[str, Any], result: dict[str, Any]) -> None:
    """Each receipt verifies and its use names this request and its entity count only."""
    assert set(verify_receipts(result, served["vkeys"])) == {"tax", "court"}
    for receipt in result["receipts"].values():
        body = decode_event(receipt["index"], base64.b64decode(receipt["entry"])).body
        assert body["query"] == result["query"]
        assert body["entities"] == len(result["entities"])


@pytest.mark.parametrize("protocol", ["additive", "ckks", "paillier"])
def test_one_applicant_now_equals_the_batch_path(served: dict[str, Any], protocol: str) -> None:
    local: LocalSpace = served["local"]
    entity = served["ids"][{"additive": 0, "ckks": 1, "paillier": 2}[protocol]]

    with local.client() as client:
        now = client.score_now(_doc(served, protocol, [entity]))
        batch = client.score_json(_doc(served, protocol, [entity]))

    assert now["entities"] == [entity] and now["protocol"] == protocol
    assert abs(now["logits"][0] - batch["logits"][0]) <= 2 * TOLERANCE[protocol]
    assert abs(now["logits"][0] - _plain(served, [entity])[0]) <= TOLERANCE[protocol]
    assert now["outputs"][0] == pytest.approx(1 / (1 + np.exp(-now["logits"][0])))
    _check_own_receipts(served, now)
    assert now["query"] != batch["query"]


def test_a_few_applicants_in_one_request(served: dict[str, Any]) -> None:
    entities = served["ids"][3:6]
    with served["local"].client() as client:
        result = client.score_now(_doc(served, "additive", entities))
        with pytest.raises(RemoteError) as too_many:
            client.score_now(_doc(served, "additive", [f"x{i}" for i in range(65)]))
        with pytest.raises(RemoteError) as cohort:
            client.score_now({**_doc(served, "additive", entities), "cohort": True})
    assert too_many.value.status == 400 and "$.entities" in too_many.value.problem["detail"]
    assert cohort.value.status == 400 and "$.cohort" in cohort.value.problem["detail"]
    assert result["entities"] == entities
    assert np.max(np.abs(np.array(result["logits"]) - _plain(served, entities))) <= 1e-4
    _check_own_receipts(served, result)


def test_concurrent_clients_each_get_their_own_scores(served: dict[str, Any]) -> None:
    local: LocalSpace = served["local"]
    entities = served["ids"][6:14]

    def one(entity: str) -> dict[str, Any]:
        with local.client() as client:
            return client.score_now(_doc(served, "additive", [entity]))

    with ThreadPoolExecutor(len(entities)) as pool:
        results = list(pool.map(one, entities))

    for entity, result in zip(entities, results, strict=True):
        assert result["entities"] == [entity]
        assert abs(result["logits"][0] - _plain(served, [entity])[0]) <= 1e-4
        _check_own_receipts(served, result)
    assert len({r["query"] for r in results}) == len(entities)


def test_a_refusal_mid_stream_is_answered_alone(served: dict[str, Any]) -> None:
    local: LocalSpace = served["local"]
    spent, fresh, unheld = served["ids"][14], served["ids"][15:18], served["ids"][-1]
    with local.client() as client:
        for _ in range(ENTITY_BUDGET):  # the court's budget for this applicant, used up
            client.score_now(_doc(served, "additive", [spent]))

    def one(entities: list[str]) -> dict[str, Any] | QueryFailed:
        with local.client() as client:
            try:
                return client.score_now(_doc(served, "additive", entities))
            except QueryFailed as exc:
                return exc

    stream = [[spent], [fresh[0]], [unheld], [fresh[1], fresh[2]]]
    with ThreadPoolExecutor(len(stream)) as pool:
        over, first, missing, rest = pool.map(one, stream)

    assert isinstance(over, QueryFailed) and over.peer == "court"
    assert [s["left_operand"] for s in over.trace if s.get("blocking")] == ["entityCount"]
    assert set(over.problem["refusals"]) == {"court"}
    assert set(over.problem["receipts"]) == {"tax"}  # the tax bureau recorded its use
    assert isinstance(missing, QueryFailed) and missing.peer == "court"
    assert any(s["rule"] == "missing" for s in missing.trace)
    for result, entities in ((first, [fresh[0]]), (rest, fresh[1:])):
        assert isinstance(result, dict) and result["entities"] == entities
        assert np.max(np.abs(np.array(result["logits"]) - _plain(served, entities))) <= 1e-4
        _check_own_receipts(served, result)


def test_a_provider_restarted_while_sessions_stand(served: dict[str, Any]) -> None:
    local: LocalSpace = served["local"]
    assert local.space is not None
    with local.client() as client:
        before = client.score_now(_doc(served, "ckks", [served["ids"][20]]))
        sessions = {s["session"]: s["runs"] for s in client.serving_sessions()}
        local.space.stop_node("tax")
        local.space.start_node("tax")
        after = client.score_now(_doc(served, "ckks", [served["ids"][21]]))
    assert after["session"] == before["session"]  # the same standing session served it
    assert sessions[after["session"]] >= 1
    assert abs(after["logits"][0] - _plain(served, [served["ids"][21]])[0]) <= 1e-3
    _check_own_receipts(served, after)


def test_keys_rotate_on_demand_and_scores_stay_right(served: dict[str, Any]) -> None:
    with served["local"].client() as client:
        first = client.score_now(_doc(served, "paillier", [served["ids"][22]]))
        rotated = client.rotate_keys(first["session"])
        second = client.score_now(_doc(served, "paillier", [served["ids"][23]]))
    assert [s["session"] for s in rotated] == [first["session"]]
    assert second["keyGeneration"] == first["keyGeneration"] + 1
    assert abs(second["logits"][0] - _plain(served, [served["ids"][23]])[0]) <= 1e-6
    _check_own_receipts(served, second)


def test_score_now_from_the_command_line(served: dict[str, Any], tmp_path: Path) -> None:
    local: LocalSpace = served["local"]
    assert local.space is not None
    model = tmp_path / "model.json"
    model.write_text(json.dumps(served["model"].to_json()), encoding="utf-8")
    entities = served["ids"][24:26]
    run = cli(
        "query",
        "score-now",
        "--node-dir",
        str(local.space["bank"].dir),
        "--model",
        str(model),
        "--protocol",
        "additive",
        "--purpose",
        LOCAL_PURPOSE,
        *(f"--entity={e}" for e in entities),
        "--json",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["entities"] == entities
    assert np.max(np.abs(np.array(result["logits"]) - _plain(served, entities))) <= 1e-4
    _check_own_receipts(served, result)


def test_the_data_interface_service_across_processes(served: dict[str, Any]) -> None:
    """``/management/lookup`` at the bank → ``/data/lookup`` at the tax bureau, real processes.

    The tax bureau publishes its file again as a ``conditional`` dataset whose offer allows a
    raw pull (``transfer``) for the local purpose three times; the bank negotiates it and looks
    up two firms (the rows come back with a receipt its node verified), then is refused at the
    fourth call by ``count``, with the trace naming it.
    """
    local: LocalSpace = served["local"]
    assert local.space is not None
    tax = next(p for p in local.parties if p.name == "tax")
    dataset = local_dataset(tax, "firm", PARTIES["tax"])
    dataset.update(id="tax-lookup", tier="conditional", title="tax: one firm at a time")
    for f in dataset["table"]["fields"][1:]:
        f["grade"] = 2
    three = {"@value": "3", "@type": "xsd:integer"}
    offer = {
        "@id": "urn:uuid:offer-tax-lookup",
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {"leftOperand": "purpose", "operator": "eq", "rightOperand": LOCAL_PURPOSE},
                    {
                        "leftOperand": "computation",
                        "operator": "isAnyOf",
                        "rightOperand": ["transfer"],
                    },
                    {"leftOperand": "output", "operator": "isAnyOf", "rightOperand": ["raw"]},
                    {"leftOperand": "count", "operator": "lteq", "rightOperand": three},
                ],
            }
        ],
    }
    with local.space["tax"].admin() as http:
        http.post(
            "/management/datasets",
            {
                "dataset": dataset,
                "source": {"kind": "csv", "path": str(tax.path)},
                "offers": [offer],
            },
        )
    with local.space["bank"].admin() as http:
        view = follow_negotiation(http, "tax", "tax-lookup", timeout=60)
    assert view["state"] == "FINALIZED", view
    agreement = str(view["agreementId"])

    asked = [served["ids"][7], served["ids"][3]]
    with local.client() as client:
        answers = [
            client.lookup(
                "tax", agreement, "tax-lookup", asked, PARTIES["tax"], purpose=LOCAL_PURPOSE
            )
            for _ in range(3)
        ]
        with pytest.raises(QueryFailed) as refused:
            client.lookup(
                "tax", agreement, "tax-lookup", asked, PARTIES["tax"], purpose=LOCAL_PURPOSE
            )

    for answer in answers:
        assert [row["entity"] for row in answer["rows"]] == asked
        for row in answer["rows"]:
            expected = served["values"]["tax"][served["ids"].index(row["entity"])]
            assert row["found"] is True
            assert [row["values"][c] for c in PARTIES["tax"]] == pytest.approx(list(expected))
        body = decode_event(
            answer["receipt"]["index"], base64.b64decode(answer["receipt"]["entry"])
        )
        assert body.body["kind"] == "lookup" and body.body["entities"] == len(asked)
        assert served["ids"][7] not in json.dumps(body.body)  # committed, not named
    assert len({a["queryId"] for a in answers}) == 3
    assert refused.value.peer == "tax"
    assert [s["left_operand"] for s in refused.value.trace if s.get("blocking")] == ["count"]
