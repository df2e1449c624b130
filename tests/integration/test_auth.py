"""Signed requests between real nodes: replays, re-targeted tokens and revoked members refused.

Every refusal answers the same ``401`` body (no oracle on which check failed), while the
refusing node's ledger records the real reason.
"""

from __future__ import annotations

import httpx
import pytest

from connectors.client.http import SignedClient, encode_json
from connectors.spaces.space import RunningSpace
from trusted_space.errors import VerificationError

from .conftest import catalog_request, ledger_events, signed_client

pytestmark = pytest.mark.integration


def refusal_reasons(http: httpx.Client, url: str) -> list[str]:
    return [e.body["reason"] for e in ledger_events(http, url) if e.kind == "auth.refused"]


def post(http: httpx.Client, url: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    return http.post(url, content=body, headers={**headers, "Content-Type": "application/json"})


def test_replayed_and_retargeted_requests_refused_alike(
    space: RunningSpace, http: httpx.Client, bank: SignedClient
) -> None:
    tax, court = space["tax-bureau"], space["court"]
    body = encode_json(catalog_request())
    tax_url = f"{tax.url}/catalog/request"
    for_tax = bank.headers_for("tax-bureau", "POST", tax_url, body)
    path_x = f"{court.url}/catalog/datasets/dishonest-debtors"
    for_x = bank.headers_for("court", "GET", path_x, b"")

    first = post(http, tax_url, for_tax, body)
    replayed = post(http, tax_url, for_tax, body)
    fresh = bank.headers_for("tax-bureau", "POST", tax_url, body)
    other_provider = post(http, f"{court.url}/catalog/request", fresh, body)
    other_path = http.get(f"{court.url}/catalog/datasets/court-judgments", headers=for_x)

    assert first.status_code == 200
    refused = [replayed, other_provider, other_path]
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert replayed.content == other_provider.content == other_path.content
    assert replayed.headers["content-type"].startswith("application/problem+json")
    assert "replay" in refusal_reasons(http, tax.url)
    assert {"audience", "path"} <= set(refusal_reasons(http, court.url))


@pytest.mark.slow
def test_revoked_member_refused(space: RunningSpace, http: httpx.Client) -> None:
    space.add_node("bank-b", ["consumer"])
    court_url = f"{space['court'].url}/catalog/request"
    with signed_client(space, "bank-b") as bank_b:
        before = bank_b.request(
            "POST", court_url, audience="court", json_body=catalog_request(), check=False
        )
        with space.operator.admin() as operator:
            revoked = operator.post(
                "/operator/participants/bank-b/revoke", {"reason": "integration test"}
            )

        after = bank_b.request(
            "POST", court_url, audience="court", json_body=catalog_request(), check=False
        )

    assert before.status_code == 200
    assert {d["@id"] for d in before.json()["dataset"]} >= {"court-judgments"}
    assert revoked["pushed"]["court"] is True
    assert after.status_code == 401
    assert after.json()["title"] == "Unauthorized"
    assert after.json()["detail"] == VerificationError.PUBLIC_MESSAGE
    reasons = [
        e.body
        for e in ledger_events(http, space["court"].url)
        if e.kind == "auth.refused" and e.body.get("claimed_issuer") == "bank-b"
    ]
    assert reasons and reasons[-1]["reason"] == "revoked"
    with signed_client(space, "bank-a") as bank_a:  # the shared bank is unaffected
        still = bank_a.request(
            "POST", court_url, audience="court", json_body=catalog_request(), check=False
        )
    assert still.status_code == 200
