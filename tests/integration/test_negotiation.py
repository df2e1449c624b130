"""A contract negotiated with the CLI: FINALIZED on both sides, signed in both ledgers."""

from __future__ import annotations

import json

import httpx
import pytest

from connectors.spaces.space import RunningSpace

from .conftest import cli, ledger_events

pytestmark = pytest.mark.integration


def test_negotiate_to_finalized_and_agreement_in_both_ledgers(
    space: RunningSpace, http: httpx.Client
) -> None:
    bank, tax = space["bank-a"], space["tax-bureau"]

    result = cli(
        "negotiate",
        "--provider",
        "tax-bureau",
        "--dataset",
        "tax-paid",
        "--node-dir",
        str(bank.dir),
        "--timeout",
        "60",
        "--json",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "FINALIZED" in result.stdout
    json.loads(result.stdout)  # --json prints one document
    with bank.admin() as bank_admin, tax.admin() as tax_admin:
        mine = [
            n for n in bank_admin.get("/management/negotiations") if n["datasetId"] == "tax-paid"
        ]
        theirs = [
            n for n in tax_admin.get("/management/negotiations") if n["datasetId"] == "tax-paid"
        ]
        assert len(mine) == 1 and len(theirs) == 1
        consumer, provider = mine[0], theirs[0]
        assert consumer["state"] == provider["state"] == "FINALIZED"
        assert consumer["role"] == "consumer" and provider["role"] == "provider"
        assert consumer["agreementId"] == provider["agreementId"] is not None
        agreement_id = consumer["agreementId"]
        agreement = bank_admin.get(f"/management/agreements/{agreement_id}")
        assert agreement["authorises"] is True
    for node in (bank, tax):
        signed = [
            e
            for e in ledger_events(http, node.url)
            if e.kind == "agreement.signed" and e.body["agreementId"] == agreement_id
        ]
        assert len(signed) == 1, node.name
        assert signed[0].body["assigner"] == "tax-bureau"
        assert signed[0].body["assignee"] == "bank-a"
        assert signed[0].body["target"] == "tax-paid"
