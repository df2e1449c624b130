"""``trusted-space local train`` across real node processes on a subset of default_credit.

Runs the CLI as a subprocess (an operator, the bank and a government node, each a ``node serve``
process on loopback; PSI alignment, two-party secure SGD, the model released to the bank), then
checks the model against the plaintext reference trained on the same rows with the same
hyper-parameters (test AUC within 0.005, and above the bank-only model), that every node recorded
the same model hash, and that every receipt (alignment and one per epoch) verifies. Skipped when
the data set is not there (CI has it in ``../shared`` next to the checkout).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from trusted_space.protocols.train import auc, train_plaintext
from trusted_space.queries.score import Model
from trusted_space.queries.train import TrainParams

from .conftest import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GUEST, HOST = "default_credit_hetero_guest.csv", "default_credit_hetero_host.csv"
ROWS, TRAIN, EPOCHS = 3000, 2100, 3


def _data_dir() -> Path | None:
    for candidate in (
        Path(__file__).resolve().parents[2] / "../shared/data/default_credit",
        Path("/work/shared/data/default_credit"),
    ):
        if (candidate / GUEST).is_file() and (candidate / HOST).is_file():
            return candidate
    return None


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1 : ROWS + 1]


def test_local_train_matches_the_plaintext_reference(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = _data_dir()
    if data is None:
        pytest.skip("default_credit is not available (../shared/data/default_credit)")
    guest_header, guest = _rows(data / GUEST)
    host_header, host = _rows(data / HOST)
    assert [r[0] for r in guest] == [r[0] for r in host]
    order = rng.permutation(ROWS)
    train, test = np.sort(order[:TRAIN]), np.sort(order[TRAIN:])
    with (tmp_path / "bank.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([guest_header, *(guest[i] for i in train)])
    with (tmp_path / "gov.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([host_header, *host])  # all rows: PSI finds the bank's
    out = tmp_path / "model.json"

    run = cli(
        "local",
        "train",
        f"--party=bank={tmp_path / 'bank.csv'}",
        f"--party=gov={tmp_path / 'gov.csv'}",
        "--id",
        "id",
        "--label",
        "y",
        "--epochs",
        str(EPOCHS),
        "--out",
        str(out),
        "--json",
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    model = Model.from_json(json.loads(out.read_text(encoding="utf-8")))

    y = np.array([float(r[1]) for r in guest])
    xb = np.array([[float(v) for v in r[2:]] for r in guest])
    xh = np.array([[float(v) for v in r[1:]] for r in host])
    x = np.hstack([xb, xh])  # the joint layout: the bank's columns, then the compute party's
    weights = np.concatenate([model.weights_of("bank"), model.weights_of("gov")])
    assert model.columns("bank") == tuple(guest_header[2:])
    assert model.columns("gov") == tuple(host_header[1:])

    params = TrainParams(epochs=EPOCHS)
    plain = train_plaintext(x[train], y[train], params)
    bank_only = train_plaintext(xb[train], y[train], params)
    joint_auc = auc(model.intercept + x[test] @ weights, y[test])
    assert abs(joint_auc - auc(plain.logits(x[test]), y[test])) <= 0.005
    assert joint_auc > auc(bank_only.logits(xb[test]), y[test])
    same_sigmoid = train_plaintext(x[train], y[train], params, sigmoid=params.sigmoid)
    assert np.allclose(weights, same_sigmoid.weights, atol=1e-3)

    assert summary["cohort"] == TRAIN and summary["epochsRun"] == EPOCHS
    assert summary["records"]["bank"]["sha256"] == summary["records"]["gov"]["sha256"]
    assert summary["modelSha256"] == summary["records"]["bank"]["sha256"]
    receipts = summary["receipts"]["gov"]
    assert len(receipts) == 1 + EPOCHS and all(r["verified"] for r in receipts)
