"""``trusted-space example default-credit`` on the real data set: secure AUC = plaintext AUC.

The data live outside the repository (``../shared/data/default_credit`` next to the checkout, or
``/work/shared/data/default_credit``); without them the test is skipped. With them, the whole
example runs through real node processes: the model is trained jointly and must do as well as
plaintext training on the same schedule; for every protocol the AUC of the secure scores must
equal the plaintext AUC to three decimals (issue 5's accuracy criterion); and the government's
features must improve on the bank's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors.cli.main import app
from connectors.demo.example import GUEST_FILE, HOST_FILE, find_data, read_default_credit

REPO = Path(__file__).resolve().parents[3]
DATA = find_data(None, REPO)

needs_data = pytest.mark.skipif(DATA is None, reason="default_credit data set not present")


@needs_data
def test_files_align_by_id() -> None:
    assert DATA is not None
    data = read_default_credit(DATA)

    assert len(data.ids) == 30_000 == data.guest_x.shape[0] == data.host_x.shape[0]
    assert (data.guest_x.shape[1], data.host_x.shape[1]) == (13, 10)
    assert 0.2 < data.labels.mean() < 0.25


@needs_data
@pytest.mark.slow
@pytest.mark.integration
def test_secure_auc_equals_plaintext_auc_for_every_protocol() -> None:
    assert DATA is not None

    result = CliRunner().invoke(app, ["example", "default-credit", "--data", str(DATA), "--json"])

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert [p["protocol"] for p in summary["protocols"]] == ["paillier", "ckks", "additive"]
    for p in summary["protocols"]:
        assert p["scored"] == summary["data"]["scored"] == 9_000
        assert round(p["auc"], 3) == round(p["aucPlaintext"], 3)
        assert p["receiptsVerified"] == ["government"]
    assert summary["aucJointPlaintext"] > summary["aucBankAlone"] + 0.03
    model = summary["model"]
    assert abs(model["aucJoint"] - model["aucPlaintextReference"]) <= 0.005
    assert model["receiptsVerified"] == 1 + model["epochsRun"]  # alignment, then one per epoch


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / GUEST_FILE).write_text("id,y,x0\n1,0,0.5\n", encoding="utf-8")

    result = CliRunner().invoke(app, ["example", "default-credit", "--data", str(tmp_path)])

    assert result.exit_code == 2
    assert HOST_FILE.split("_host")[0] in result.output
