"""``trusted-space demo`` runs a whole space of real node processes and its checks all pass.

The demo is run small (2,000 enterprises, 200 applicants) as the CLI with ``--json
--keep-running``: while the space is up a node answers at the URL printed on the ready line;
SIGTERM stops it cleanly (exit 0, every node down). The assertions are on the JSON summary a
newcomer's scripts would read.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.demo.data import PARTIES, PROVIDERS, SOCIAL, TAX
from connectors.demo.run import DATASET_IDS, OPERATOR, TOLERANCE

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _run_keep_running(out: Path) -> tuple[subprocess.Popen[str], dict[str, Any], dict[str, Any]]:
    """Start the demo small with --json --keep-running; return it, its summary and ready line.

    On the demo's own data seed (2025), not the session's (tests._seeding): two of its checks
    are seed-dependent by nature at this size. "Government data improve the prediction" compares
    AUCs on 200 applicants (about 24 defaults): the joint model is not above the bank's alone for
    19 of 500 seeds measured. And "AUC equals the plaintext AUC (3 decimals)" turns on whether
    the protocol's logit error reorders a defaulter and a non-defaulter (about two such pairs
    per seed lie within 2e-3, and one swap moves the AUC by ~2e-4).
    """
    command = [
        sys.executable,
        "-c",
        "import sys; from connectors.cli.main import main; sys.argv[0] = 'trusted-space'; main()",
        "demo",
        "--entities",
        "2000",
        "--applicants",
        "200",
        "--out",
        str(out),
        "--json",
        "--keep-running",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line or line.startswith('{"ready"'):
            break
        lines.append(line)
    assert line.startswith('{"ready"'), "".join(lines)[-2000:]
    return process, json.loads("".join(lines)), json.loads(line)


def test_demo_runs_a_space_passes_every_check_and_stops_on_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    process, summary, ready = _run_keep_running(out)
    try:
        # While it keeps running, the nodes answer at the URLs printed.
        assert ready["nodes"] == summary["nodes"]
        assert httpx.get(ready["nodes"]["bank"] + "/healthz", timeout=10).status_code == 200

        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    assert code == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(ready["nodes"]["bank"] + "/healthz", timeout=2)
    failed = [c for c in summary["checks"] if not c["ok"]]
    assert summary["ok"] is True and not failed, failed
    # Six nodes, each with its own directory (store, keys, ledger).
    assert set(summary["nodes"]) == {OPERATOR, *PARTIES}
    for name in summary["nodes"]:
        node_dir = out / "nodes" / name
        assert (node_dir / "keys" / "node.key").is_file() and (node_dir / "store.db").is_file()
    # Catalog tiers and agreements.
    assert [r["dataset"] for r in summary["catalog"]["anonymous"]] == [
        DATASET_IDS["market-registration"]
    ]
    assert {r["tier"] for r in summary["catalog"]["member"]} == {
        "unconditional",
        "conditional",
        "zone",
    }
    assert set(summary["agreements"]) == set(PROVIDERS)
    # The model was trained jointly through the nodes, as well as plaintext training would.
    model = summary["model"]
    assert model["epochsRun"] >= 1 and model["receipts"] >= len(PROVIDERS) * 2
    assert abs(model["aucJoint"] - model["aucPlaintextReference"]) <= 0.005
    assert model["maxWeightErrorVsPlaintext"] < 1e-3
    # Every protocol scored every applicant, close to float64, with verified receipts.
    assert [p["protocol"] for p in summary["protocols"]] == ["paillier", "ckks", "additive"]
    for p in summary["protocols"]:
        assert p["entities"] == 200
        assert p["maxAbsLogitError"] <= TOLERANCE[p["protocol"]]
        assert round(p["auc"], 3) == round(p["aucPlaintext"], 3)
        assert set(p["receipts"]) == set(PROVIDERS)
        assert all(r["verified"] and r["leafIndex"] < r["treeSize"] for r in p["receipts"].values())
    assert summary["auc"]["jointPlaintext"] > summary["auc"]["bankAlone"]
    # The tax bureau's policy requires noise: each bin is within the clamp of the Laplace noise
    # (64 scales) of the plaintext count, never off by chance.
    aggregate = summary["aggregate"]
    assert aggregate["epsilon"] == 1.0 and aggregate["noiseScales"]
    bound = 64 * max(aggregate["noiseScales"]) + 1e-3
    assert set(aggregate["counts"]) == set(aggregate["expected"])
    assert all(abs(aggregate["counts"][g] - c) <= bound for g, c in aggregate["expected"].items())
    # Risk monitoring under the tax bureau's band-only permission: bands, never a logit.
    monitoring = summary["monitoring"]
    assert monitoring["logitsReleased"] is False and monitoring["wrongBands"] == 0
    assert sum(monitoring["counts"].values()) == 200
    assert set(monitoring["receipts"]) == {TAX, "court"}
    # The four refusals, each with the provider's trace.
    refusals = {r["case"]: r for r in summary["refusals"]}
    assert refusals["wrong purpose"]["refusedBy"] == TAX
    assert any(s["left_operand"] == "purpose" for s in refusals["wrong purpose"]["blocking"])
    assert refusals["no consent"]["refusedBy"] == SOCIAL
    assert refusals["no consent"]["refusedEntities"] == [summary["consents"]["withoutConsent"]]
    # The column read (weight 1 on one tax column, analyst-held): the tax bureau binds the model.
    assert refusals["column read"]["refusedBy"] == TAX
    assert "model" in {s["left_operand"] for s in refusals["column read"]["blocking"]}
    # A Paillier monitoring score would open the logit at the bank: refused naming ``release``.
    logit = refusals["logit where a band is required"]
    assert logit["refusedBy"] == TAX
    assert "release" in {s["left_operand"] for s in logit["blocking"]}
    # Ledgers verified from outside and witnessed.
    assert {entry["node"] for entry in summary["ledgers"]} == set(summary["nodes"])
    assert all(e["ok"] and e["cosignedCheckpoints"] >= 1 for e in summary["ledgers"])
    checked = summary["receiptsChecked"]
    assert checked["verified"] == checked["checked"] >= 3 * len(PROVIDERS) + model["receipts"]
    # The report, and no node left running.
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count("<svg") == 3 and "<script" not in report
    space = json.loads((out / "nodes" / "space.json").read_text(encoding="utf-8"))
    assert all(n["pid"] is None for n in space["nodes"])
