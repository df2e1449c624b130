"""A score is not a column read, across real node processes (issue 13, model binding).

A provider (tax bureau) publishes a zone dataset whose score permission binds the model: only
party-held weights (``model eq party-held``), at least two of its columns carrying weight, no
column above 80% of the partial's variance. A bank, following the protocol but choosing its
inputs, tries to read the columns with weights of its own choice; each attempt is refused by the
provider's node with ``403`` and a trace whose blocking step names ``model``, and nothing is
read (no ``query.use`` on the provider's ledger):

* an analyst-held model with weight 1 on one column (the identity link: the column read);
* several columns packed into one logit (weights 1, 2^8, 2^16, 2^24 here);
* a linear system: several queries with different weight vectors (binding makes every query
  use weights the provider holds, so the analyst cannot vary them).

Party-held models are owned: bank-a submits its model part, the provider's staff approve it
(a record in both ledgers, by digest), and bank-a scores with it; bank-b can neither score with
bank-a's model nor replace it by submitting under the same id; a model part that breaks a rule
is refused at submission with the trace naming the rule.

Release granularity: a second tax dataset lets only a band leave (``release eq band``,
``releaseBands lteq 4``). An additive band score gives bank-a the bands of the float64 logits
and no logit (its node's job result, and the provider's ``query.use`` records a band release);
a Paillier score of the same model is refused with a trace naming ``release`` and the protocol
to use.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from connectors.cli.main import app
from connectors.client.analyst import AnalystClient, QueryFailed
from connectors.spaces.space import (
    DatasetConfig,
    NodeConfig,
    RunningSpace,
    SourceConfig,
    SpaceConfig,
    up,
)
from tests.integration._space import count_limited_offer, settled, tax_records
from tests.integration.conftest import ledger_events
from trusted_space.errors import RemoteError
from trusted_space.queries.score import Model, ScoreQuery

pytestmark = pytest.mark.integration

DATASET = "tax-binding"
BANDS = "tax-bands"
EDGES = (1.5, 3.0, 6.0)
PURPOSE = "pre-loan-review"
QUIET = {"log_level": "warning"}
COLUMNS = ("a", "b", "c", "d")
HELD = [f"ent-{i:03d}" for i in range(24)]
# Four columns in one logit: values are below 16 in steps of 0.5, so 2^8 apart none overlap.
# (The 1, 2^15, 2^36, 2^39 are refused the same way; an honest analyst's own node would
# already decline logits that large, but an attacker runs its own node, so the provider's
# refusal is what counts.)
PACKED = {"a": 1.0, "b": 2.0**8, "c": 2.0**16, "d": 2.0**24}


def _rule(left: str, op: str, value: str) -> dict[str, Any]:
    return {"leftOperand": left, "operator": op, "rightOperand": value}


@dataclasses.dataclass
class Space:
    running: RunningSpace
    agreement: str
    agreements: dict[str, str]

    def bank(self, name: str = "bank-a") -> AnalystClient:
        return AnalystClient.from_dir(self.running[name].dir, timeout=60)

    def party_held(self, name: str, model_id: str) -> dict[str, Any]:
        """A party-held score by ``name`` of every held entity with the model ``model_id``."""
        model = Model.from_json(
            {"intercept": 0.0, "link": "identity", "weights": {}, "id": model_id}
        )
        query = ScoreQuery(
            purpose=PURPOSE,
            protocol="paillier",
            model=model,
            agreements={"tax-bureau": self.agreements[name]},
            datasets={"tax-bureau": DATASET},
            entities=tuple(HELD),
            id_kind="opaque",
            mode="party-held",
        )
        with self.bank(name) as bank:
            return bank.score_json(query, timeout=60)

    def submit(
        self, name: str, model_id: str, weights: dict[str, float], *, dataset: str = DATASET
    ) -> tuple[int, Any]:
        """``name``'s node submits a model part: (status, body or problem document)."""
        agreement = self.agreements[name] if dataset == DATASET else self.agreements[dataset]
        with self.running[name].admin(timeout=60) as admin:
            try:
                body = admin.post(
                    "/management/models/submit",
                    {
                        "provider": "tax-bureau",
                        "agreement": agreement,
                        "dataset": dataset,
                        "model": model_id,
                        "weights": weights,
                    },
                )
            except RemoteError as exc:
                return exc.status, exc.problem
        return 200, body

    def staff(self, action: str, owner: str, model_id: str) -> Any:
        with self.running["tax-bureau"].admin(timeout=60) as admin:
            return admin.post(
                f"/management/models/submissions/{action}",
                {"owner": owner, "model": model_id, "reason": "checked by the risk office"},
            )

    def ledger(self, name: str) -> list[Any]:
        with httpx.Client(timeout=30) as http:
            return ledger_events(http, self.running[name].url)

    def score(self, weights: dict[str, float], protocol: str = "ckks") -> dict[str, Any]:
        """An analyst-held score of every held entity with ``weights`` on the tax columns."""
        model = {"intercept": 0.0, "link": "identity", "weights": {"tax-bureau": weights}}
        with self.bank() as bank:
            query = bank.score_query(
                model,
                HELD,
                protocol=protocol,
                purpose=PURPOSE,
                agreements={"tax-bureau": self.agreement},
            )
            return bank.score_json(query, timeout=60)

    def uses(self) -> list[Any]:
        with httpx.Client(timeout=30) as http:
            events = ledger_events(http, self.running["tax-bureau"].url)
        return [e for e in events if e.kind == "query.use"]


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    root: Path = tmp_path_factory.mktemp("binding")
    rows = root / "tax.csv"
    rows.write_text(
        "entity,"
        + ",".join(COLUMNS)
        + "\n"
        + "".join(
            f"{e}," + ",".join(f"{(7 * i + 3 * j) % 11}.5" for j in range(len(COLUMNS))) + "\n"
            for i, e in enumerate(HELD)
        ),
        encoding="utf-8",
    )
    offer = count_limited_offer(
        1000,
        purpose=PURPOSE,
        protocols=["ckks", "paillier"],
        models=["party-held"],
        rules=[_rule("modelMinColumns", "gteq", "2"), _rule("modelMaxShare", "lteq", "0.8")],
    )
    ds = DatasetConfig(
        file=root / "tax.json",
        dataset=tax_records(DATASET, "Tax columns (model binding)", COLUMNS, bound=16.0),
        source=SourceConfig("csv", rows),
        offers=(offer,),
    )
    band_offer = count_limited_offer(
        1000,
        purpose=PURPOSE,
        protocols=["additive", "paillier"],
        models=["party-held"],
        rules=[_rule("release", "eq", "band"), _rule("releaseBands", "lteq", "4")],
    )
    bands = DatasetConfig(
        file=root / "bands.json",
        dataset=tax_records(BANDS, "Tax columns (bands only)", COLUMNS, bound=16.0),
        source=SourceConfig("csv", rows),
        offers=(band_offer,),
    )
    config = SpaceConfig(
        path=root / "space.toml",
        name="binding",
        dir=root / "space",
        host="127.0.0.1",
        base_port=0,
        nodes=(
            NodeConfig("city-centre", ("operator",)),
            NodeConfig("tax-bureau", ("provider",), settings=QUIET, datasets=(ds, bands)),
            NodeConfig("bank-a", ("consumer",), settings=QUIET),
            NodeConfig("bank-b", ("consumer",), settings=QUIET),
        ),
    )
    with up(config, timeout=90) as running:
        agreements = {}
        for bank, dataset, offered in (
            ("bank-a", DATASET, offer),
            ("bank-b", DATASET, offer),
            ("bank-a", BANDS, band_offer),
        ):
            with running[bank].admin(timeout=60) as admin:
                started = admin.post(
                    "/management/negotiations",
                    {
                        "provider": "tax-bureau",
                        "datasetId": dataset,
                        "offerId": str(offered["@id"]),
                    },
                )
                view = settled(admin.get, started["id"], 60)
            assert view["state"] == "FINALIZED", view
            agreements[bank if dataset == DATASET else dataset] = str(view["agreementId"])
        yield Space(running, agreements["bank-a"], agreements)


def _refused_by_model(
    space: Space, weights: dict[str, float], protocol: str = "ckks"
) -> dict[str, Any]:
    with pytest.raises(QueryFailed) as info:
        space.score(weights, protocol)
    failed = info.value
    assert failed.peer == "tax-bureau", failed.problem
    blocking = [s for s in failed.trace if s["blocking"]]
    operands = {s["left_operand"] for s in blocking}
    # ``model`` refuses weights of the analyst's choice; the rules cannot hold for them either
    assert operands == {"model", "modelMinColumns", "modelMaxShare"}, blocking
    assert [s["seen"] for s in blocking if s["left_operand"] == "model"] == ["analyst-held"]
    return failed.problem


def test_a_unit_weight_on_one_column_is_refused(space: Space) -> None:
    before = len(space.uses())

    problem = _refused_by_model(space, {"a": 1.0})

    assert "not accepted here" in str(problem.get("detail")) or any(
        "not accepted here" in s["message"] for s in problem["trace"]
    )
    assert len(space.uses()) == before  # refused before anything was read


def test_columns_packed_into_one_logit_are_refused(space: Space) -> None:
    before = len(space.uses())

    # Paillier: exact integers, so a packed logit would unpack (CKKS could not carry it)
    _refused_by_model(space, PACKED, "paillier")

    assert len(space.uses()) == before


def test_a_linear_system_over_several_queries_is_refused_query_by_query(
    space: Space, rng: np.random.Generator
) -> None:
    before = len(space.uses())
    vectors = rng.uniform(-2.0, 2.0, size=(len(COLUMNS), len(COLUMNS)))

    for row in vectors:
        _refused_by_model(space, {c: float(w) for c, w in zip(COLUMNS, row, strict=True)})

    assert len(space.uses()) == before  # not one of the equations was answered


BALANCED = {"a": 0.5, "b": -0.4, "c": 0.3, "d": 0.45}


def _plain(weights: dict[str, float]) -> list[float]:
    rows = [[(7 * i + 3 * j) % 11 + 0.5 for j in range(len(COLUMNS))] for i in range(len(HELD))]
    return [sum(weights[c] * x for c, x in zip(COLUMNS, row, strict=True)) for row in rows]


def test_an_approved_model_part_is_owned_and_bound(space: Space) -> None:
    status_code, sent = space.submit("bank-a", "credit-a", BALANCED)
    assert status_code == 200, sent
    pending = space.staff("approve", "bank-a", "credit-a")
    assert pending["state"] == "approved"
    with space.running["bank-a"].admin(timeout=60) as admin:
        status = admin.post(
            "/management/models/status", {"provider": "tax-bureau", "model": "credit-a"}
        )
    assert status["state"] == "approved" and status["sha256"] == sent["sha256"]

    result = space.party_held("bank-a", "credit-a")

    order = [HELD.index(e) for e in result["entities"]]
    expected = _plain(BALANCED)
    assert np.allclose(result["logits"], [expected[i] for i in order], atol=1e-6)
    # both ledgers hold the approval by digest; the provider's query.use names model and digest
    provider = space.ledger("tax-bureau")
    (approved,) = [e for e in provider if e.kind == "model.approved"]
    (seen,) = [e for e in space.ledger("bank-a") if e.kind == "model.approval"]
    assert approved.body["sha256"] == seen.body["sha256"] == sent["sha256"]
    use = [e for e in provider if e.kind == "query.use"][-1]
    assert use.body["model"] == {
        "mode": "approved",
        "id": "credit-a",
        "sha256": sent["sha256"],
    }
    # No weight as a number (a timestamp's "…:10.452…" holds the characters by chance).
    weight = re.compile(r"(?<![\d.])0\.45(?!\d)")
    assert not weight.search(json.dumps(use.body)) and not weight.search(json.dumps(approved.body))
    # the owner is told: its receipt carries the query.use entry, with the model's digest
    receipt = result["receipts"]["tax-bureau"]
    entry = json.loads(base64.b64decode(receipt["entry"]))
    assert entry["body"]["model"]["sha256"] == sent["sha256"]


def test_another_member_cannot_use_a_party_held_model(space: Space) -> None:
    if not any(e.kind == "model.approved" for e in space.ledger("tax-bureau")):
        test_an_approved_model_part_is_owned_and_bound(space)

    with pytest.raises(QueryFailed) as info:
        space.party_held("bank-b", "credit-a")

    assert info.value.peer == "tax-bureau"
    assert "no model 'credit-a' of yours" in str(info.value.problem.get("detail"))


def test_another_member_cannot_overwrite_a_party_held_model(space: Space) -> None:
    if not any(e.kind == "model.approved" for e in space.ledger("tax-bureau")):
        test_an_approved_model_part_is_owned_and_bound(space)
    before = space.party_held("bank-a", "credit-a")
    other = {"a": -1.0, "b": 0.9, "c": 0.8, "d": -0.7}

    assert space.submit("bank-b", "credit-a", other)[0] == 200
    space.staff("approve", "bank-b", "credit-a")  # bank-b's own model of that id

    after = space.party_held("bank-a", "credit-a")
    assert after["logits"] == before["logits"]
    mine = space.party_held("bank-b", "credit-a")
    assert np.allclose(sorted(mine["logits"]), sorted(_plain(other)), atol=1e-6)
    status, again = space.submit("bank-a", "credit-a", other)  # an id names one set of weights
    assert status == 409, again


def test_a_model_part_breaking_a_rule_is_refused_naming_it(space: Space) -> None:
    status, refused = space.submit(
        "bank-a", "unit-weight", {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0}
    )

    assert status == 403, refused
    assert refused["peer"] == "tax-bureau"  # relayed by bank-a's node: the provider's trace
    blocking = [s for s in refused["peerProblem"]["trace"] if s["blocking"]]
    assert {s["left_operand"] for s in blocking} == {"modelMinColumns", "modelMaxShare"}
    pending = [e for e in space.ledger("tax-bureau") if e.kind == "model.submitted"]
    assert pending[-1].body["rulesHeld"] is False


def test_the_cli_submits_a_model_part_and_the_staff_approve_it(
    space: Space, tmp_path: Path
) -> None:
    weights = tmp_path / "part.json"
    weights.write_text(json.dumps({"a": 0.2, "b": 0.3, "c": -0.25, "d": 0.1}), encoding="utf-8")
    bank = ["--node-dir", str(space.running["bank-a"].dir)]
    staff = ["--node-dir", str(space.running["tax-bureau"].dir)]
    runner = CliRunner()

    to = ["--provider", "tax-bureau", "--agreement", space.agreement, "--dataset", DATASET]
    submitted = runner.invoke(
        app, ["model", "submit", *to, "--model", "cli-part", "--weights", str(weights), *bank]
    )
    pending = runner.invoke(app, ["model", "submissions", "--state", "pending", *staff])
    which = ["--owner", "bank-a", "--model", "cli-part"]
    approved = runner.invoke(app, ["model", "approve", *which, "--reason", "reviewed", *staff])
    status = runner.invoke(
        app, ["model", "status", "--provider", "tax-bureau", "--model", "cli-part", *bank]
    )

    assert submitted.exit_code == 0, submitted.output
    assert json.loads(submitted.output)["state"] == "pending"
    assert pending.exit_code == 0, pending.output
    assert [(s["owner"], s["model"]) for s in json.loads(pending.output)] == [
        ("bank-a", "cli-part")
    ]
    assert approved.exit_code == 0 and json.loads(approved.output)["state"] == "approved"
    assert status.exit_code == 0 and json.loads(status.output)["state"] == "approved"
    assert len(space.party_held("bank-a", "cli-part")["logits"]) == len(HELD)


def _band_query(space: Space, protocol: str, edges: tuple[float, ...] = ()) -> dict[str, Any]:
    """bank-a's party-held score of every held entity on the bands-only dataset."""
    model = Model.from_json(
        {"intercept": 0.0, "link": "logistic", "weights": {}, "id": "credit-bands"}
    )
    query = ScoreQuery(
        purpose=PURPOSE,
        protocol=protocol,
        model=model,
        agreements={"tax-bureau": space.agreements[BANDS]},
        datasets={"tax-bureau": BANDS},
        entities=tuple(HELD),
        id_kind="opaque",
        mode="party-held",
        band_edges=edges,
    )
    with space.bank("bank-a") as bank:
        return bank.score_json(query, timeout=60)


@pytest.fixture(scope="module")
def band_model(space: Space) -> None:
    status, sent = space.submit("bank-a", "credit-bands", BALANCED, dataset=BANDS)
    assert status == 200, sent
    assert space.staff("approve", "bank-a", "credit-bands")["state"] == "approved"


def test_only_the_band_leaves_under_a_band_policy(space: Space, band_model: None) -> None:
    expected = np.array(_plain(BALANCED))
    assert np.min(np.abs(expected[:, None] - np.array(EDGES)[None, :])) > 1e-3  # no near tie

    result = _band_query(space, "additive", EDGES)

    assert result["bands"] == np.searchsorted(EDGES, expected, side="left").tolist()
    assert set(np.unique(result["bands"])) == {0, 1, 2, 3}  # every band occurs
    assert "logits" not in result and "outputs" not in result
    use = [e for e in space.uses() if e.body["query"] == result["query"]]
    assert [e.body["release"] for e in use] == [{"kind": "band", "bands": 4}]


def test_a_protocol_that_opens_the_logit_is_refused_naming_the_release_rule(
    space: Space, band_model: None
) -> None:
    before = len(space.uses())

    with pytest.raises(QueryFailed) as info:
        _band_query(space, "paillier")

    blocking = [s for s in info.value.trace if s["blocking"]]
    assert {s["left_operand"] for s in blocking} == {"release", "releaseBands"}, blocking
    release = next(s for s in blocking if s["left_operand"] == "release")
    assert release["seen"] == "logit" and "'additive'" in release["message"]
    assert len(space.uses()) == before  # refused before anything was read
