"""Catalogs over real HTTP: DSP-valid, open tier for strangers, every tier for members."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from connectors.client.http import SignedClient
from connectors.spaces.space import RunningSpace
from trusted_space import dsp

from .conftest import OPERATOR, catalog_request

pytestmark = pytest.mark.integration

ALL = {"tax-paid", "court-judgments", "dishonest-debtors", "bank-a-loans"}
OPEN = {"dishonest-debtors"}
PROVIDERS = {"tax-bureau": {"tax-paid"}, "court": {"court-judgments", "dishonest-debtors"}}


def dataset_ids(catalog: dict[str, Any]) -> set[str]:
    found = {d["@id"] for d in catalog.get("dataset", [])}
    for nested in catalog.get("catalog", []):
        found |= dataset_ids(nested)
    return found


def federated(space: RunningSpace, fetch: Any, want: set[str]) -> dict[str, Any]:
    """The operator's federated catalog, once every provider's push has arrived (best effort)."""
    deadline = time.monotonic() + 15
    while True:
        doc: dict[str, Any] = fetch()
        if dataset_ids(doc) >= want or time.monotonic() > deadline:
            return doc
        time.sleep(0.2)


def test_federated_catalog_anonymous_sees_only_open_data(
    space: RunningSpace, http: httpx.Client
) -> None:
    url = f"{space.operator.url}/operator/catalog/request"

    doc = federated(space, lambda: http.post(url, json=catalog_request()).json(), OPEN)

    dsp.validate(doc, "catalog/catalog-schema.json")
    assert doc["participantId"] == OPERATOR
    assert dataset_ids(doc) == OPEN
    for nested in doc.get("catalog", []):
        for dataset in nested.get("dataset", []):
            assert dataset["https://w3id.org/trusted-space/v1/tier"] == "unconditional"


def test_federated_catalog_member_sees_every_tier(space: RunningSpace, bank: SignedClient) -> None:
    url = f"{space.operator.url}/operator/catalog/request"

    doc = federated(space, lambda: bank.post_json(url, catalog_request(), audience=OPERATOR), ALL)

    dsp.validate(doc, "catalog/catalog-schema.json")
    assert dataset_ids(doc) == ALL
    owners = {nested["participantId"] for nested in doc["catalog"]}
    assert owners == {"tax-bureau", "court", "bank-a"}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_provider_catalog_per_caller(
    space: RunningSpace, http: httpx.Client, bank: SignedClient, provider: str
) -> None:
    url = f"{space[provider].url}/catalog/request"

    anonymous = http.post(url, json=catalog_request())
    member = bank.post_json(url, catalog_request(), audience=provider)

    assert anonymous.status_code == 200
    dsp.validate(anonymous.json(), "catalog/catalog-schema.json")
    dsp.validate(member, "catalog/catalog-schema.json")
    assert anonymous.json()["participantId"] == provider
    assert dataset_ids(anonymous.json()) == PROVIDERS[provider] & OPEN
    assert dataset_ids(member) == PROVIDERS[provider]


def test_hidden_dataset_looks_absent_to_a_stranger(
    space: RunningSpace, http: httpx.Client, bank: SignedClient
) -> None:
    base = space["tax-bureau"].url

    hidden = http.get(f"{base}/catalog/datasets/tax-paid")
    absent = http.get(f"{base}/catalog/datasets/no-such-dataset")
    seen = bank.get_json(f"{base}/catalog/datasets/tax-paid", audience="tax-bureau")

    assert hidden.status_code == absent.status_code == 404
    assert hidden.json()["detail"].replace("tax-paid", "X") == absent.json()["detail"].replace(
        "no-such-dataset", "X"
    )
    dsp.validate(seen, "catalog/dataset-schema.json")
    assert seen["@id"] == "tax-paid"
