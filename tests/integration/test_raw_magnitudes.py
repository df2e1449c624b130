"""One applicant scored on raw magnitudes through real nodes, with every protocol.

Pre-loan review scores one enterprise at a time, on columns as the owners keep them: yuan
amounts to millions, counts, a flag that is zero, a scorecard's weights down to ``3e-7``. Each
protocol's logit must be within its stated precision of float64 plaintext
(``trusted_space.protocols.scaling.STATED_PRECISION``), with no ``featureBound`` given anywhere:
the columns' declared ranges come from the catalog.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from trusted_space.policy import PROTOCOLS
from trusted_space.protocols.scaling import STATED_PRECISION

from .conftest import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APPLICANT = "firm-0001"
COLUMNS = {
    "bank": {"loan_balance": (1_734_500.0, 2.9e-7), "months_on_book": (37.0, -0.011)},
    "tax": {"tax_paid": (1_226_708.0, -3.1e-7), "employees": (41.0, 0.004)},
    "court": {"judgments": (0.0, 0.9), "fines_yuan": (25_000.0, 1.2e-5)},
}
INTERCEPT = -1.3


def _files(directory: Path) -> float:
    for party, columns in COLUMNS.items():
        with (directory / f"{party}.csv").open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["firm", *columns])
            out.writerow([APPLICANT, *(v for v, _ in columns.values())])
    model = {
        "intercept": INTERCEPT,
        "link": "logistic",
        "weights": {p: {c: w for c, (_, w) in cols.items()} for p, cols in COLUMNS.items()},
    }
    (directory / "model.json").write_text(json.dumps(model), encoding="utf-8")
    return INTERCEPT + sum(v * w for cols in COLUMNS.values() for v, w in cols.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_applicant_on_raw_magnitudes(protocol: str, tmp_path: Path) -> None:
    expected = _files(tmp_path)
    out = tmp_path / "scores.csv"
    run = cli(
        "local",
        "score",
        *(f"--party={p}={tmp_path / f'{p}.csv'}" for p in COLUMNS),
        "--id",
        "firm",
        "--model",
        str(tmp_path / "model.json"),
        "--protocol",
        protocol,
        "--out",
        str(out),
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert [r[0] for r in rows[1:]] == [APPLICANT]
    logit = float(rows[1][1])
    assert abs(logit - expected) <= STATED_PRECISION[protocol], (logit, expected)
    assert np.isfinite(logit)
