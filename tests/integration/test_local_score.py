"""``trusted-space local score`` as a user runs it: a real throw-away space over three CSV files.

Runs the CLI as a subprocess (it starts an operator and one node process per party, publishes the
files, negotiates, scores from the analyst's node and stops everything), then checks the scores
against plaintext and verifies every receipt of the ``--json`` summary by hand. The run keeps
its nodes in a *relative* ``--work-dir`` (resolved once, against the directory it runs in) and
writes to pipes, so its progress must come as lines; a failing run's ``--json`` is a problem.
"""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests._seeding import rng_for
from trusted_space.errors import VerificationError
from trusted_space.events import decode_event
from trusted_space.ledger import verify_receipt

from .conftest import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 200
PARTIES = {"bank": ["loans", "age"], "tax": ["tax_paid", "employees"], "court": ["judgments"]}


def _files(directory: Path) -> tuple[list[str], dict[str, np.ndarray[Any, Any]], dict[str, Any]]:
    rng = rng_for(f"{__name__}._files")
    ids = [f"firm-{i:04d}" for i in range(ROWS)]
    values = {}
    for party, columns in PARTIES.items():
        values[party] = np.round(rng.normal(0, 2, (ROWS, len(columns))), 6)
        with (directory / f"{party}.csv").open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["firm", *columns, "note"])  # an extra column nobody publishes
            for e, row in zip(ids, values[party], strict=True):
                out.writerow([e, *row, "private remark"])
    model = {
        "intercept": 0.2,
        "link": {"scorecard": {"offset": 600.0, "factor": -20.0}},
        "weights": {
            p: {c: float(w) for c, w in zip(cs, rng.uniform(-1, 1, len(cs)), strict=True)}
            for p, cs in PARTIES.items()
        },
    }
    (directory / "model.json").write_text(json.dumps(model), encoding="utf-8")
    return ids, values, model


def test_local_score_writes_scores_and_verifiable_receipts(tmp_path: Path) -> None:
    ids, values, model = _files(tmp_path)
    out = tmp_path / "scores.csv"
    args = [f"--party={p}={tmp_path / f'{p}.csv'}" for p in PARTIES]
    run = cli(
        "local",
        "score",
        *args,
        "--id",
        "firm",
        "--model",
        str(tmp_path / "model.json"),
        "--protocol",
        "additive",
        "--out",
        str(out),
        "--work-dir",
        "work",
        "--json",
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    # The relative work directory was resolved once: node directories right under it.
    assert sorted(p.name for p in (tmp_path / "work" / "space").iterdir() if p.is_dir()) == [
        "bank",
        "court",
        "local-operator",
        "tax",
    ]
    assert not list((tmp_path / "work" / "space").glob("*/work"))
    # Not a terminal: progress as plain lines on stderr.
    progress = [line for line in run.stderr.splitlines() if line.startswith("[")]
    assert progress and progress[-1] == "[100%] done", run.stderr[-3000:]
    assert "space: agreement with tax" in run.stderr.splitlines()

    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "logit", "points"]
    assert [r[0] for r in rows[1:]] == ids
    logits = np.array([float(r[1]) for r in rows[1:]])
    points = np.array([float(r[2]) for r in rows[1:]])
    expected = model["intercept"] + sum(
        values[p] @ np.array(list(model["weights"][p].values())) for p in PARTIES
    )
    assert float(np.max(np.abs(logits - expected))) <= 1e-3
    assert np.allclose(points, 600.0 - 20.0 * logits)

    assert summary["entities"] == ROWS and summary["analyst"] == "bank"
    assert summary["providers"] == ["court", "tax"]
    assert summary["timings"]["query"] > 0 and summary["entitiesPerSecond"] > 0
    assert set(summary["receipts"]) == {"court", "tax"}
    for provider, receipt in summary["receipts"].items():
        entry = base64.b64decode(receipt["entry"])
        head = verify_receipt(
            receipt["checkpoint"],
            receipt["vkey"],
            entry,
            receipt["leafIndex"],
            [bytes.fromhex(h) for h in receipt["inclusionPath"]],
        )
        assert head.size == receipt["treeSize"]
        assert receipt["vkey"].startswith(f"{provider}/ledger+")
        event = decode_event(receipt["leafIndex"], entry)
        assert event.kind == "query.use"
        assert event.body["analyst"] == "bank" and event.body["entities"] == ROWS
        assert event.body["columns"] == PARTIES[provider]
        assert event.body["agreement"] == summary["agreements"][provider]
        tampered = bytearray(entry)
        tampered[-5] ^= 1
        with pytest.raises(VerificationError):
            verify_receipt(
                receipt["checkpoint"],
                receipt["vkey"],
                bytes(tampered),
                receipt["leafIndex"],
                [bytes.fromhex(h) for h in receipt["inclusionPath"]],
            )


def test_local_score_reports_a_bad_model(tmp_path: Path) -> None:
    _files(tmp_path)
    (tmp_path / "model.json").write_text(
        json.dumps({"intercept": 0, "link": "logistic", "weights": {"nobody": {"x": 1.0}}}),
        encoding="utf-8",
    )
    run = cli(
        "local",
        "score",
        f"--party=bank={tmp_path / 'bank.csv'}",
        f"--party=tax={tmp_path / 'tax.csv'}",
        "--id",
        "firm",
        "--model",
        str(tmp_path / "model.json"),
        "--protocol",
        "ckks",
        "--out",
        str(tmp_path / "scores.csv"),
        "--json",
    )
    assert run.returncode == 1
    assert "nobody" in run.stderr
    assert not (tmp_path / "scores.csv").exists()
    failed = json.loads(run.stdout)
    assert failed["ok"] is False
    assert "nobody" in failed["problem"]["detail"]
