"""Joint training over HTTP between in-process nodes: the bank's admin API and ``query train``.

The bank publishes its features and label, two providers publish theirs with offers permitting
``train``; the training is submitted to the bank's node (``POST /management/queries/train``),
runs over signed HTTP (PSI, dealer, secure SGD rounds), reports each epoch as its stage, and its
model equals the plaintext reference with the same schedule. The CLI writes the model file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from connectors.cli import train as train_commands
from connectors.cli.main import app as cli_app
from connectors.client.analyst import AnalystClient, QueryFailed
from connectors.node.queries import QueryJob
from tests._seeding import rng_for
from tests.connectors._space import InProcessSpace, Node, stop_negotiations
from tests.connectors.node._joint import negotiate_features, publish_table, write_table
from trusted_space.errors import RemoteError
from trusted_space.protocols.train import train_plaintext
from trusted_space.queries.score import Model
from trusted_space.queries.train import TrainParams

PURPOSE = "pre-loan-review"
N = 90
COLUMNS = {"bank-a": ["loans", "age"], "tax-bureau": ["tax_paid", "employees"], "court": ["cases"]}


@dataclass
class Training:
    space: InProcessSpace
    nodes: dict[str, Node]
    ids: list[str]
    x: dict[str, np.ndarray[Any, Any]]
    y: np.ndarray[Any, Any]
    agreements: dict[str, str]

    @property
    def bank(self) -> Node:
        return self.nodes["bank-a"]

    def client(self) -> AnalystClient:
        return AnalystClient(
            self.bank.url, self.bank.runtime.admin_token, transport=self.space.transport, poll=0.5
        )

    def doc(self, **kw: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "purpose": PURPOSE,
            "mode": "analyst-held",
            "agreements": dict(self.agreements),
            "datasets": {p: f"{p}-features" for p in COLUMNS},
            "features": {p: list(c) for p, c in COLUMNS.items()},
            "label": "default",
            "params": {"epochs": 2, "batchSize": 32, "learningRate": 0.3},
        }
        doc.update(kw)
        return doc

    def design(self) -> np.ndarray[Any, Any]:
        """The joint layout: the bank, the compute party (court sorts first), the other."""
        return np.hstack([self.x["bank-a"], self.x["court"], self.x["tax-bureau"]])


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Training]:
    root = tmp_path_factory.mktemp("train")
    rng = rng_for(f"{__name__}.training")
    ids = [f"ent-{i:03d}" for i in range(N)]
    with InProcessSpace(root, base_port=19470) as space:
        nodes = {p: space.add(p, ["consumer", "provider"] if p == "bank-a" else ["provider"])
                 for p in COLUMNS}  # fmt: skip
        for node in nodes.values():
            space.admit_direct(node)
        x = {p: rng.normal(0, 1.5, (N, len(c))) for p, c in COLUMNS.items()}
        z = x["bank-a"] @ [0.5, -0.3] + x["tax-bureau"] @ [0.8, 0.2] + x["court"] @ [-0.6] - 0.4
        y = (rng.random(N) < 1 / (1 + np.exp(-z))).astype(float)
        for party, columns in COLUMNS.items():
            published = [*columns, "default"] if party == "bank-a" else columns
            values = np.hstack([x[party], y[:, None]]) if party == "bank-a" else x[party]
            path = root / f"{party}.csv"
            write_table(path, ids, published, values)
            publish_table(nodes[party], path, published, purpose=PURPOSE, kinds=("score", "train"))
        agreements = negotiate_features(nodes["bank-a"], ("tax-bureau", "court"))
        yield Training(space, nodes, ids, x, y, agreements)
        stop_negotiations(space)


def test_training_through_the_banks_node_reports_epochs(
    training: Training, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages: list[str] = []
    original = QueryJob.progress

    def record(job: QueryJob, stage: str, fraction: float | None = None) -> None:
        stages.append(stage)
        original(job, stage, fraction)

    monkeypatch.setattr(QueryJob, "progress", record)
    with training.client() as client:
        view = client.submit_train(training.doc())  # no entities: every id of the bank's dataset
        assert view["kind"] == "train" and view["entities"] == N
        result = client.wait(view["id"])
    model = Model.from_json(result["model"])
    params = TrainParams(epochs=2, batch_size=32, learning_rate=0.3)
    plain = train_plaintext(training.design(), training.y, params, sigmoid=params.sigmoid)
    joint = np.concatenate([model.weights_of(p) for p in ("bank-a", "court", "tax-bureau")])
    assert np.allclose(joint, plain.weights, atol=2e-3)
    assert model.intercept == pytest.approx(plain.intercept, abs=2e-3)
    assert result["epochsRun"] == 2
    # Round trips to the compute party: 3 batches of 6 rounds, two rounds per call, one to close.
    assert [e["steps"] for e in result["timings"]["epochs"]] == [10, 10]
    assert "epoch 1/2 done" in stages and "epoch 2/2 done" in stages
    assert {p: len(r["epochs"]) for p, r in result["receipts"].items()} == {
        "tax-bureau": 2,
        "court": 2,
    }
    assert {r["sha256"] for r in result["records"].values()} == {result["modelSha256"]}


def test_a_bad_training_is_refused_at_submission(training: Training) -> None:
    with training.client() as client:
        for change, words in [
            ({"datasets": {**training.doc()["datasets"], "bank-a": "nope"}}, "no dataset"),
            ({"label": "no-such-column"}, "no-such-column"),
            ({"protocol": "paillier"}, "additive"),
        ]:
            with pytest.raises(RemoteError, match=words) as caught:
                client.submit_train(training.doc(**change))
            assert caught.value.status == 400


def test_a_policy_refusal_reaches_the_bank_with_its_trace(training: Training) -> None:
    with training.client() as client:
        view = client.submit_train(training.doc(purpose="marketing"))
        with pytest.raises(QueryFailed) as failed:
            client.wait(view["id"])
    assert failed.value.peer in ("court", "tax-bureau")
    assert any(step.get("left_operand") == "purpose" for step in failed.value.trace)


def test_query_train_cli_writes_the_model_file(
    training: Training, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_commands, "analyst_client", lambda *_, **__: training.client())
    out = tmp_path / "model.json"
    node = ["--node", "http://unused", "--token-file", str(out)]
    features = [f"--features={p}={','.join(c)}" for p, c in COLUMNS.items()]
    run = CliRunner().invoke(
        cli_app,
        [
            "query", "train", *node, *features, "--label", "default", "--purpose", PURPOSE,
            "--epochs", "2", "--batch-size", "32", "--learning-rate", "0.3",
            "--validation", "0.2", "--mode", "party-held", "--model-id", "lr-cli",
            "--out", str(out), "--json",
        ],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout)
    assert summary["mode"] == "party-held" and summary["validRows"] == 18
    assert len(summary["losses"]) == summary["epochsRun"]
    model = Model.from_json(json.loads(out.read_text(encoding="utf-8")))
    assert model.id == "lr-cli" and model.parties == ("bank-a",)
    assert set(summary["records"]) == {"bank-a", "court", "tax-bureau"}
