"""Limits a member cannot reset, across real node processes (issue 13).

A provider (tax bureau) and a bank run as real processes. Each attack below is one a member that
follows the protocol but chooses its inputs would try; each is refused with ``403`` and a trace
whose blocking step names the rule:

* renegotiating the same offer to reset ``count`` (``count``);
* renegotiating to reset the privacy budget (``epsilonTotal``);
* an aggregate over one held entity plus nine made-up ids with ``missing: impute``
  (``minCohort``: the cohort is the held entities);
* the exact aggregate against a policy that requires noise (``epsilon``);
* a use after the provider suspended the agreement (``standing``), allowed again once resumed;
* scoring one entity more often than ``entityCount`` allows in the period, also across a
  renegotiation (``entityCount``; the trace says how many entities were over, never which);
* the bound oracle: probing a column's magnitude with the ranges a query declares (the
  provider scales by its catalog's declared range, so the answer is the same for a column whose
  values fit the probe and one whose values do not).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connectors.cli.main import app
from connectors.client.analyst import AnalystClient, QueryFailed
from connectors.client.http import SignedClient
from connectors.node.compute import COMPUTE_CONTENT_TYPE
from connectors.spaces.space import (
    DatasetConfig,
    NodeConfig,
    RunningNode,
    RunningSpace,
    SourceConfig,
    SpaceConfig,
    up,
)
from tests.integration._space import count_limited_offer, member_credential, settled, tax_records
from trusted_space.keys import SigningKey
from trusted_space.protocols._common import encode_ids
from trusted_space.transport import frame, unframe

pytestmark = pytest.mark.integration

DATASET = "tax-limits"
RANGED = "tax-ranged"
PURPOSE = "pre-loan-review"
STATS = "risk-monitoring"
QUIET = {"log_level": "warning"}
HELD = [f"ent-{i:03d}" for i in range(24)]


def _noisy_offer() -> dict[str, Any]:
    """Aggregates only with noise: at most epsilon 0.5 a query, 1.0 in total per member."""

    def c(left: str, op: str, right: Any) -> dict[str, Any]:
        return {"leftOperand": left, "operator": op, "rightOperand": right}

    return {
        "@id": f"urn:uuid:{uuid.uuid4()}",
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": [
                    c("purpose", "eq", STATS),
                    c("computation", "isAnyOf", ["aggregate"]),
                    c("output", "isAnyOf", ["aggregate"]),
                    c("minCohort", "gteq", {"@value": "5", "@type": "xsd:integer"}),
                    c("epsilon", "lteq", {"@value": "0.5", "@type": "xsd:decimal"}),
                    c("epsilonTotal", "lteq", "1.0"),
                ],
            }
        ],
    }


def _ranged_records() -> dict[str, Any]:
    """A zone dataset whose two columns declare the same range, 1024, in the catalog."""
    doc = tax_records(RANGED, "Tax (declared ranges)", ["small", "large"])
    for field in doc["table"]["fields"][1:]:
        field["bound"] = 1024.0
    return doc


@dataclasses.dataclass
class Space:
    space: RunningSpace
    scores: str  # offer id, count <= 2
    noisy: str  # offer id, noise required
    credential: str
    entity: str  # offer id, each entity scored at most twice per 30 days
    ranged: str  # offer id on the dataset with declared ranges
    signed: SignedClient | None = None

    @property
    def provider(self) -> RunningNode:
        return self.space["tax-bureau"]

    @property
    def bank(self) -> RunningNode:
        return self.space["bank-a"]

    def client(self) -> SignedClient:
        if self.signed is None:
            key = SigningKey.load(self.bank.layout.node_key)
            credential = self.credential
            self.signed = SignedClient("bank-a", key, lambda: credential, timeout=60)
        return self.signed

    def negotiate(self, offer_id: str, dataset: str = DATASET) -> str:
        with self.bank.admin(timeout=60) as admin:
            started = admin.post(
                "/management/negotiations",
                {"provider": "tax-bureau", "datasetId": dataset, "offerId": offer_id},
            )
            view = settled(admin.get, started["id"], 60)
        assert view["state"] == "FINALIZED", view
        return str(view["agreementId"])

    def call(self, operation: str, header: dict[str, Any], payload: bytes = b"") -> Any:
        response = self.client().request(
            "POST",
            f"{self.provider.url}/compute/{operation}",
            audience="tax-bureau",
            content=frame(header, payload),
            content_type=COMPUTE_CONTENT_TYPE,
            check=False,
        )
        if response.status_code == 200:
            return 200, unframe(response.content)[0]
        return response.status_code, response.json()

    def score(
        self,
        agreement: str,
        dataset: str,
        weights: dict[str, float],
        entities: list[str],
        **kw: Any,
    ) -> dict[str, Any]:
        """A real additive score through bank-a's node (analyst-held ``weights``)."""
        model = {"intercept": 0.0, "link": "identity", "weights": {"tax-bureau": weights}}
        with AnalystClient.from_dir(self.bank.dir, timeout=60) as bank:
            query = bank.score_query(
                model,
                entities,
                protocol="additive",
                purpose=PURPOSE,
                agreements={"tax-bureau": agreement},
                datasets={"tax-bureau": dataset},
                **kw,
            )
            return bank.score_json(query, timeout=60)

    def score_use(self, agreement: str) -> tuple[int, Any]:
        header = {
            "query": f"q-{uuid.uuid4().hex[:12]}",
            "agreement": agreement,
            "dataset": DATASET,
            "purpose": PURPOSE,
            "kind": "score",
            "protocol": "ckks",
            "columns": ["tax_paid"],
            "size": 3,
        }
        status, body = self.call("align.open", header)
        return status, body

    def aggregate(
        self, agreement: str, entities: list[str], *, epsilon: float | None, missing: str
    ) -> tuple[int, Any]:
        payload = encode_ids(entities)
        header: dict[str, Any] = {
            "query": f"q-{uuid.uuid4().hex[:12]}",
            "agreement": agreement,
            "dataset": DATASET,
            "column": "tax_paid",
            "statistic": "count",
            "protocol": "ckks",
            "purpose": STATS,
            "count": len(entities),
            "missing": missing,
            "part": 0,
            "parts": 1,
            "total": len(payload),
        }
        if epsilon is not None:
            header["epsilon"] = epsilon
        status, body = self.call("stats.entities", header, payload)
        return status, body


def _blocking(body: Any) -> list[str]:
    return [s["left_operand"] for s in body["trace"] if s["blocking"]]


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    root: Path = tmp_path_factory.mktemp("limits")
    rows = root / "tax.csv"
    rows.write_text(
        "entity,tax_paid\n" + "".join(f"{e},{100 + i}.25\n" for i, e in enumerate(HELD)),
        encoding="utf-8",
    )
    scores = count_limited_offer(2, purpose=PURPOSE, protocols=["ckks"])
    # analyst-held weights on zone data need the provider's explicit opt-in (model binding)
    model = {"leftOperand": "model", "operator": "eq", "rightOperand": "analyst-held"}
    scores["permission"][0]["constraint"].append(model)
    noisy = _noisy_offer()
    per_entity = count_limited_offer(
        100,
        purpose=PURPOSE,
        protocols=["additive"],
        models=["analyst-held"],
        rules=[
            {"leftOperand": "entityCount", "operator": "lteq", "rightOperand": "2"},
            {"leftOperand": "entityPeriod", "operator": "eq", "rightOperand": "P30D"},
        ],
    )
    ds = DatasetConfig(
        file=root / "tax.json",
        dataset=tax_records(DATASET, "Tax paid (limits)", ["tax_paid"], bound=256.0),
        source=SourceConfig("csv", rows),
        offers=(scores, noisy, per_entity),
    )
    ranged_rows = root / "ranged.csv"
    ranged_rows.write_text(  # small within 32, large up to 1000: both within the declared 1024
        "entity,small,large\n"
        + "".join(f"{e},{i + 1}.5,{1000 - 7 * i}.25\n" for i, e in enumerate(HELD)),
        encoding="utf-8",
    )
    ranged_offer = count_limited_offer(
        100, purpose=PURPOSE, protocols=["additive"], models=["analyst-held"]
    )
    ranged = DatasetConfig(
        file=root / "ranged.json",
        dataset=_ranged_records(),
        source=SourceConfig("csv", ranged_rows),
        offers=(ranged_offer,),
    )
    config = SpaceConfig(
        path=root / "space.toml",
        name="limits",
        dir=root / "space",
        host="127.0.0.1",
        base_port=0,
        nodes=(
            NodeConfig("city-centre", ("operator",)),
            NodeConfig("tax-bureau", ("provider",), settings=QUIET, datasets=(ds, ranged)),
            NodeConfig("bank-a", ("consumer",), settings=QUIET),
        ),
    )
    with up(config, timeout=90) as running:
        bank, operator = running["bank-a"], running.operator
        key = SigningKey.load(bank.layout.node_key)
        credential = member_credential("bank-a", key, operator.url, operator.name)
        limits = Space(
            running,
            str(scores["@id"]),
            str(noisy["@id"]),
            credential,
            str(per_entity["@id"]),
            str(ranged_offer["@id"]),
        )
        yield limits
        if limits.signed is not None:
            limits.signed.close()


def test_renegotiating_does_not_reset_count(space: Space) -> None:
    first = space.negotiate(space.scores)
    uses = [space.score_use(first) for _ in range(2)]
    assert [u[0] for u in uses] == [200, 200], uses
    status, body = space.score_use(first)
    assert status == 403 and _blocking(body) == ["count"]

    renegotiated = space.negotiate(space.scores)
    assert renegotiated != first
    status, body = space.score_use(renegotiated)

    assert status == 403, body
    assert _blocking(body) == ["count"]
    assert "renegotiating does not reset it" in body["detail"] or any(
        "renegotiating does not reset it" in s["message"] for s in body["trace"]
    )
    with space.provider.admin(timeout=30) as admin:  # the staff's views read the same account
        dry = admin.post(
            "/management/policy/dry-run",
            {
                "dataset": DATASET,
                "agreement": renegotiated,
                "assignee": "bank-a",
                "purpose": PURPOSE,
                "kind": "score",
                "protocol": "ckks",
            },
        )
        report = admin.get("/management/usage")
    assert not dry["allowed"]
    assert any(s["left_operand"] == "count" and s["blocking"] for s in dry["trace"])
    assert {b["agreement"]: b["uses"] for b in report["budgets"]}[first] == 2


def test_renegotiating_does_not_reset_epsilon(space: Space) -> None:
    first = space.negotiate(space.noisy)
    assert space.aggregate(first, HELD[:10], epsilon=0.5, missing="fail")[0] == 200
    assert space.aggregate(first, HELD[:10], epsilon=0.5, missing="fail")[0] == 200
    status, body = space.aggregate(first, HELD[:10], epsilon=0.5, missing="fail")
    assert status == 403 and _blocking(body) == ["epsilonTotal"], body

    renegotiated = space.negotiate(space.noisy)
    status, body = space.aggregate(renegotiated, HELD[10:20], epsilon=0.5, missing="fail")

    assert status == 403, body
    assert _blocking(body) == ["epsilonTotal"]
    with space.provider.admin(timeout=30) as admin:  # only the provider's staff reset it
        seen = admin.get(f"/management/budgets?member=bank-a&dataset={DATASET}")
        assert seen["spent"] == 1.0 and seen["limit"] is None
        reset = admin.post(
            "/management/budgets/reset",
            {"dataset": DATASET, "member": "bank-a", "reason": "new contract year"},
        )
        assert reset["spent"] == 0.0
    assert space.aggregate(renegotiated, HELD[10:20], epsilon=0.5, missing="fail")[0] == 200


def test_the_exact_aggregate_is_refused_when_noise_is_required(space: Space) -> None:
    agreement = space.negotiate(space.noisy)

    status, body = space.aggregate(agreement, HELD[:10], epsilon=None, missing="fail")

    assert status == 403, body
    assert _blocking(body) == ["epsilon"]


def test_made_up_ids_imputed_do_not_make_a_cohort(space: Space) -> None:
    agreement = space.negotiate(space.noisy)
    made_up = [f"made-up-{i}" for i in range(9)]

    status, body = space.aggregate(agreement, [HELD[0], *made_up], epsilon=0.1, missing="impute")

    assert status == 403, body
    assert _blocking(body) == ["minCohort"]
    step = next(s for s in body["trace"] if s["left_operand"] == "minCohort")
    assert step["seen"] == 1


def test_a_suspended_agreement_is_refused_until_resumed(space: Space) -> None:
    agreement = space.negotiate(space.scores)  # count is spent: check suspension on its own
    with space.provider.admin(timeout=30) as admin:
        view = admin.post(f"/management/agreements/{agreement}/suspend", {"reason": "review"})
        assert view["standing"] == "suspended" and view["authorises"] is False

    status, body = space.score_use(agreement)

    assert status == 403, body
    assert "standing" in _blocking(body)
    with space.provider.admin(timeout=30) as admin:
        view = admin.post(f"/management/agreements/{agreement}/resume", {"reason": "cleared"})
        assert view["standing"] == "active"
        admin.post(f"/management/agreements/{agreement}/terminate", {"reason": "contract ended"})
    status, body = space.score_use(agreement)
    assert status == 403 and "standing" in _blocking(body)
    assert any(s["seen"] == "terminated" for s in body["trace"] if s["left_operand"] == "standing")


def test_a_request_held_for_the_staff_stays_requested_until_approved(space: Space) -> None:
    with space.provider.admin(timeout=30) as admin:
        admin.put("/management/grants/mode", {"mode": "staff", "offerId": space.noisy})
    try:
        with space.bank.admin(timeout=60) as bank:
            started = bank.post(
                "/management/negotiations",
                {"provider": "tax-bureau", "datasetId": DATASET, "offerId": space.noisy},
            )
            with space.provider.admin(timeout=30) as admin:
                pending = _wait_pending(admin, 1)
                assert [p["consumer"] for p in pending] == ["bank-a"]
                assert bank.get(f"/management/negotiations/{started['id']}")["state"] == (
                    "REQUESTED"
                )
                admin.post(f"/management/grants/pending/{pending[0]['id']}/approve", {})
                assert admin.get("/management/grants/pending") == []
            approved = settled(bank.get, started["id"], 60)
            assert approved["state"] == "FINALIZED"

            second = bank.post(
                "/management/negotiations",
                {"provider": "tax-bureau", "datasetId": DATASET, "offerId": space.noisy},
            )
            with space.provider.admin(timeout=30) as admin:
                held = _wait_pending(admin, 1)
                admin.post(
                    f"/management/grants/pending/{held[0]['id']}/reject", {"reason": "not now"}
                )
            assert settled(bank.get, second["id"], 60)["state"] == "TERMINATED"
    finally:
        with space.provider.admin(timeout=30) as admin:
            admin.put("/management/grants/mode", {"mode": "auto", "offerId": space.noisy})


def _wait_pending(admin: Any, n: int) -> list[dict[str, Any]]:
    """The held requests once there are ``n`` (the provider holds them in the background)."""
    for _ in range(600):
        pending: list[dict[str, Any]] = admin.get("/management/grants/pending")
        if len(pending) >= n:
            return pending
        time.sleep(0.05)
    raise AssertionError(f"no {n} held requests: {pending}")


def test_the_cli_suspends_resumes_and_shows_budgets(space: Space) -> None:
    agreement = space.negotiate(space.noisy)
    staff = [
        "--node",
        space.provider.url,
        "--token-file",
        str(space.provider.layout.admin_token),
    ]
    runner = CliRunner()

    suspended = runner.invoke(app, ["agreement", "suspend", agreement, "--reason", "audit", *staff])
    status, body = space.aggregate(agreement, HELD[:10], epsilon=0.1, missing="fail")
    resumed = runner.invoke(app, ["agreement", "resume", agreement, "--reason", "done", *staff])
    shown = runner.invoke(
        app, ["budget", "show", "--member", "bank-a", "--dataset", DATASET, *staff]
    )

    assert suspended.exit_code == 0, suspended.output
    assert json.loads(suspended.output)["standing"] == "suspended"
    assert status == 403 and "standing" in _blocking(body)
    assert resumed.exit_code == 0 and json.loads(resumed.output)["standing"] == "active"
    assert shown.exit_code == 0 and json.loads(shown.output)["member"] == "bank-a"
    refused = runner.invoke(app, ["grants", "approve", "no-such-request", *staff])
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["problem"]["status"] == 404  # JSON on failure too


def test_an_entity_is_scored_at_most_entity_count_times_across_agreements(space: Space) -> None:
    agreement = space.negotiate(space.entity)
    weights = {"tax_paid": 0.01}
    for _ in range(2):
        space.score(agreement, DATASET, weights, HELD[:2])

    with pytest.raises(QueryFailed) as third:  # HELD[0] a third time, beside a fresh one
        space.score(agreement, DATASET, weights, [HELD[0], HELD[5]])
    renegotiated = space.negotiate(space.entity)
    with pytest.raises(QueryFailed) as again:  # a new agreement from the same offer: same account
        space.score(renegotiated, DATASET, weights, [HELD[1]])
    fresh = space.score(renegotiated, DATASET, weights, HELD[5:7])

    for refused, entities in ((third.value, 2), (again.value, 1)):
        assert refused.peer == "tax-bureau", refused.problem
        blocking = [s for s in refused.trace if s["blocking"]]
        assert [s["left_operand"] for s in blocking] == ["entityCount"], blocking
        assert blocking[0]["seen"] == {"entities": entities, "over": 1}
        assert not any(e in json.dumps(refused.problem) for e in HELD)  # never which entity
    assert fresh["entities"] == HELD[5:7] and len(fresh["logits"]) == 2


def test_a_refusal_does_not_depend_on_the_columns_values(space: Space) -> None:
    agreement = space.negotiate(space.ranged, RANGED)
    outcomes: dict[tuple[str, float], str] = {}
    for column in ("small", "large"):
        for probe in (16.0, 64.0, 1024.0):  # small fits 64, large fits only 1024
            try:
                space.score(
                    agreement,
                    RANGED,
                    {column: 0.001},
                    HELD[:4],
                    ranges={"tax-bureau": {column: probe}},
                )
                outcomes[column, probe] = "answered"
            except QueryFailed as failed:
                outcomes[column, probe] = str(failed.problem.get("detail")).replace(column, "<c>")

    for probe in (16.0, 64.0, 1024.0):
        assert outcomes["small", probe] == outcomes["large", probe], outcomes
    assert outcomes["small", 1024.0] == "answered"
    assert "not the catalog's declared range" in outcomes["small", 64.0]
