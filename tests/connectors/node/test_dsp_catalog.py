"""DSP catalog endpoints: version document, catalog and datasets, each filtered for the caller."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.client.http import encode_json
from tests.connectors._space import InProcessSpace, Node, catalog_offer, publish_dataset, signed
from trusted_space import dsp
from trusted_space.catalog import TS_NAMESPACE, Tier

CATALOG_REQUEST: dict[str, Any] = {
    "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
    "@type": "CatalogRequestMessage",
    "filter": [],
}


@pytest.fixture
def tax(tax: Node) -> Node:
    """The provider, holding one dataset of every tier."""
    for tier in Tier:
        publish_dataset(tax, tier.value, tier)
    return tax


def test_dspace_version_document_validates(tax: Node) -> None:
    response = tax.client.get("/.well-known/dspace-version")
    assert response.status_code == 200
    doc = response.json()
    dsp.validate(doc, "common/protocol-version-schema.json")
    assert doc == {"protocolVersions": [{"version": "2025-1", "path": "/", "binding": "HTTPS"}]}


def test_anonymous_catalog_shows_only_unconditional(tax: Node) -> None:
    response = tax.client.post("/catalog/request", json=CATALOG_REQUEST)
    assert response.status_code == 200
    catalog = response.json()
    dsp.validate(catalog, "catalog/catalog-schema.json")
    assert [d["@id"] for d in catalog["dataset"]] == ["urn:uuid:ds-unconditional"]
    assert catalog["participantId"] == "tax-bureau"
    assert catalog["service"][0]["endpointURL"] == tax.url


def test_member_catalog_shows_every_tier(tax: Node, bank: Node) -> None:
    response = signed(bank, tax, "POST", "/catalog/request", CATALOG_REQUEST)
    assert response.status_code == 200
    catalog = response.json()
    dsp.validate(catalog, "catalog/catalog-schema.json")
    tiers = {d["@id"]: d[TS_NAMESPACE + "tier"] for d in catalog["dataset"]}
    assert tiers == {f"urn:uuid:ds-{t.value}": t.value for t in Tier}


def test_catalog_request_is_validated(tax: Node) -> None:
    response = tax.client.post("/catalog/request", json={"@type": "CatalogRequestMessage"})
    assert response.status_code == 400
    body = response.json()
    assert body["type"].endswith("/invalid-dsp-message")
    assert body["@type"] == "CatalogError" and body["reason"]
    dsp.validate(body, "catalog/catalog-error-schema.json")


def test_a_bad_signature_is_refused_not_downgraded_to_anonymous(tax: Node, bank: Node) -> None:
    content = encode_json(CATALOG_REQUEST)
    headers = bank.runtime.client.headers_for(tax.id, "POST", tax.url + "/catalog/request", b"x")
    headers["Content-Type"] = "application/json"
    response = tax.client.post("/catalog/request", content=content, headers=headers)
    assert response.status_code == 401


@pytest.mark.parametrize("tier", list(Tier))
def test_dataset_member_view_validates(tax: Node, bank: Node, tier: Tier) -> None:
    response = signed(bank, tax, "GET", f"/catalog/datasets/urn:uuid:ds-{tier.value}")
    assert response.status_code == 200
    doc = response.json()
    dsp.validate(doc, "catalog/dataset-schema.json")
    assert doc["@id"] == f"urn:uuid:ds-{tier.value}"
    assert doc["hasPolicy"] == [catalog_offer(tier.value)]


def test_invisible_dataset_looks_unknown(tax: Node) -> None:
    hidden = tax.client.get("/catalog/datasets/urn:uuid:ds-zone")
    unknown = tax.client.get("/catalog/datasets/urn:uuid:ds-nothing")
    public = tax.client.get("/catalog/datasets/urn:uuid:ds-unconditional")
    assert public.status_code == 200
    assert hidden.status_code == unknown.status_code == 404
    strip = [
        json.dumps(r.json()).replace(r.url.path.rsplit("/", 1)[-1], "ID") for r in (hidden, unknown)
    ]
    assert strip[0] == strip[1]


def test_member_asking_for_unknown_dataset_gets_404(tax: Node, bank: Node) -> None:
    response = signed(bank, tax, "GET", "/catalog/datasets/urn:uuid:ds-nothing")
    assert response.status_code == 404
    assert response.json()["@type"] == "CatalogError"


def test_empty_catalog_of_the_operator_validates(space: InProcessSpace) -> None:
    response = space.operator.client.post("/catalog/request", json=CATALOG_REQUEST)
    assert response.status_code == 200
    catalog = response.json()
    dsp.validate(catalog, "catalog/catalog-schema.json")
    assert "dataset" not in catalog
