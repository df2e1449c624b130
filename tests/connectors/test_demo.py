"""The demonstration behind ``make demo`` succeeds and its JSON summary says what ran."""

from __future__ import annotations

import json

import pytest

from connectors.demo import TOLERANCE, run


def test_demo_json_summary_has_every_protocol_within_bounds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok = run(entities=60, json_output=True)

    summary = json.loads(capsys.readouterr().out)
    assert ok is True and summary["ok"] is True
    assert {p["protocol"] for p in summary["protocols"]} == set(TOLERANCE)
    for protocol in summary["protocols"]:
        assert protocol["entities"] == 60
        assert protocol["max_abs_logit_error"] <= TOLERANCE[protocol["protocol"]]
