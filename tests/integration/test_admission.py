"""Every node of the space is admitted and ready; the operator's registry lists them all."""

from __future__ import annotations

import httpx
import pytest

from connectors.client.http import SignedClient
from connectors.spaces.space import RunningSpace, read_space_file

from .conftest import OPERATOR

pytestmark = pytest.mark.integration


def test_every_node_ready_and_admitted(space: RunningSpace, http: httpx.Client) -> None:
    assert set(space.nodes) >= {OPERATOR, "tax-bureau", "court", "bank-a"}
    for name in ("city-centre", "tax-bureau", "court", "bank-a"):
        node = space[name]
        ready = http.get(f"{node.url}/readyz")
        identity = http.get(f"{node.url}/identity").json()
        assert ready.status_code == 200, (name, ready.text)
        assert identity["id"] == name
        assert identity["admitted"] is True
        assert identity["operator"] == OPERATOR
        assert identity["url"] == node.url
        assert sorted(identity["roles"]) == sorted(node.config.roles)


def test_registry_lists_every_member(space: RunningSpace, bank: SignedClient) -> None:
    members = bank.get_json(f"{space.operator.url}/operator/participants", audience=OPERATOR)
    by_id = {m["id"]: m for m in members}
    for name in ("tax-bureau", "court", "bank-a"):
        assert by_id[name]["url"] == space[name].url
        assert by_id[name]["revoked"] is False


def test_space_file_records_running_processes(space: RunningSpace) -> None:
    doc = read_space_file(space.dir)
    recorded = {n["name"]: n for n in doc["nodes"]}
    for name, node in space.nodes.items():
        assert recorded[name]["pid"] == node.pid
        assert recorded[name]["url"] == node.url
    assert "token" not in str(doc).lower()
