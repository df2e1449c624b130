"""Several in-process nodes wired together: each node's outgoing calls reach the others' apps.

``InProcessSpace`` builds nodes in a temporary directory (real SQLite stores, real keys), routes
httpx requests by ``host:port`` to each node's ASGI app through a TestClient, and can admit nodes
at the operator exactly as ``space up`` does over the network (operator admin API, then the node's
``PUT /management/credential``) once those routes exist; ``admit_direct`` does it through the core
API for tests that do not depend on the operator routes.

Beside it, what the node and client tests do to such nodes, written once: admit through the
operator's HTTP route (:func:`admit_http`), grow a ledger (:func:`grow`), publish a small dataset
through the core (:func:`publish_dataset`) and send a request signed for one call (:func:`signed`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from connectors.client.http import encode_json
from connectors.common.settings import NodeSettings, OperatorAnchor, init_node, load_settings
from connectors.node import negotiation
from connectors.node.app import create_app
from connectors.node.runtime import NodeRuntime
from trusted_space.catalog import (
    DataResource,
    Dataset,
    Field,
    FieldType,
    KeyKind,
    PublishedDataset,
    Responsibility,
    Table,
    Tier,
    publish,
)
from trusted_space.events import record_event

__all__ = [
    "InProcessSpace",
    "Node",
    "RoutingTransport",
    "admission_body",
    "admit_http",
    "catalog_offer",
    "grow",
    "publish_dataset",
    "signed",
    "stop_negotiations",
]

GRADE_OF = {Tier.UNCONDITIONAL: 1, Tier.CONDITIONAL: 2, Tier.ZONE: 3}


class RoutingTransport(httpx.BaseTransport):
    """Sends each request to the TestClient registered for its ``host:port``."""

    def __init__(self) -> None:
        self.clients: dict[str, TestClient] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        netloc = f"{request.url.host}:{request.url.port}"
        client = self.clients.get(netloc)
        if client is None:
            raise httpx.ConnectError(f"no in-process node at {netloc}", request=request)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        response = client.request(
            request.method,
            request.url.raw_path.decode("ascii"),
            content=request.read(),
            headers=headers,
        )
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=response.content,
            request=request,
        )


@dataclass
class Node:
    """One in-process node: settings, runtime, app and a TestClient."""

    settings: NodeSettings
    runtime: NodeRuntime
    app: FastAPI
    client: TestClient
    admin_headers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.settings.name

    @property
    def url(self) -> str:
        return self.settings.url


class InProcessSpace:
    """An operator plus any number of nodes, all in this process.

    Usage::

        with InProcessSpace(tmp_path) as space:
            op = space.operator
            tax = space.add("tax-bureau", ["provider"])
            space.admit_direct(tax)
    """

    def __init__(self, root: Path, *, operator: str = "city-centre", base_port: int = 19000):
        self.root = root
        self.transport = RoutingTransport()
        self._stack = ExitStack()
        self._next_port = base_port
        self.nodes: dict[str, Node] = {}
        self.operator = self._start(operator, ["operator"], anchor=None)

    def __enter__(self) -> InProcessSpace:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        for node in self.nodes.values():
            node.runtime.close()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    @property
    def anchor(self) -> OperatorAnchor:
        return OperatorAnchor.load(self.operator.settings.layout.operator)

    def _start(
        self,
        name: str,
        roles: list[str],
        anchor: OperatorAnchor | None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Node:
        self._next_port += 1
        directory = self.root / name
        init_node(directory, name=name, roles=roles, port=self._next_port, operator=anchor)
        settings = load_settings(directory)
        if overrides:
            settings = settings.model_copy(update=dict(overrides))
        runtime = NodeRuntime(settings, transport=self.transport)
        app = create_app(settings, runtime=runtime)
        client = self._stack.enter_context(
            TestClient(app, base_url=settings.url, raise_server_exceptions=False)
        )
        self.transport.clients[f"{settings.host}:{settings.port}"] = client
        node = Node(
            settings,
            runtime,
            app,
            client,
            {"Authorization": f"Bearer {runtime.admin_token}"},
        )
        self.nodes[name] = node
        return node

    def add(
        self,
        name: str,
        roles: list[str],
        *,
        anchored: bool = True,
        settings: Mapping[str, Any] | None = None,
    ) -> Node:
        """A new node anchored to this space's operator (not admitted yet).

        ``anchored=False`` makes a node that knows no operator at all (not part of any space);
        ``settings`` overrides node settings (e.g. ``{"psi_ot_min_ids": 1}``).
        """
        return self._start(name, roles, self.anchor if anchored else None, settings)

    def admit_direct(self, node: Node) -> None:
        """Admit ``node`` through the core API (no operator routes needed)."""
        op = self.operator.runtime
        assert op.authority is not None
        with op.transaction() as tx:
            credential = op.authority.issue(
                tx, node.id, node.runtime.roles, node.runtime.key.verify_key, now=op.clock()
            )
        op.remember_peer(node.id, node.url, sorted(node.runtime.roles))
        node.runtime.install_credential(credential.token)
        for other in self.nodes.values():
            if other is not node:
                other.runtime.remember_peer(node.id, node.url, sorted(node.runtime.roles))
                node.runtime.remember_peer(other.id, other.url, sorted(other.runtime.roles))


def stop_negotiations(space: InProcessSpace) -> None:
    """Let every node's negotiation driver finish, then stop it (before the space closes)."""
    for node in space:
        negotiation.drain(node.runtime)
        negotiation.shutdown(node.runtime)


def admission_body(node: Node, **overrides: Any) -> dict[str, Any]:
    """The operator's admission request for ``node`` (``overrides`` replace fields)."""
    body = {
        "id": node.id,
        "roles": sorted(node.runtime.roles),
        "publicKey": node.runtime.key.verify_key.to_b64(),
        "url": node.url,
        "ledgerVkey": node.runtime.ledger.vkey,
    }
    body.update(overrides)
    return body


def admit_http(space: InProcessSpace, node: Node) -> dict[str, Any]:
    """Admit ``node`` through the operator's HTTP admission and install its credential."""
    op = space.operator
    response = op.client.post(
        "/operator/participants", json=admission_body(node), headers=op.admin_headers
    )
    assert response.status_code == 201, response.text
    doc: dict[str, Any] = response.json()
    node.runtime.install_credential(doc["credential"])
    return doc


def grow(node: Node, n: int) -> None:
    """Append ``n`` test events to ``node``'s ledger."""
    with node.runtime.transaction() as tx:
        for i in range(n):
            record_event(tx, "test.event", {"i": i})


def catalog_offer(name: str, purpose: str = "pre-loan-review") -> dict[str, Any]:
    return {
        "@id": f"urn:uuid:offer-{name}",
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {"leftOperand": "purpose", "operator": "eq", "rightOperand": purpose}
                ],
            }
        ],
    }


def publish_dataset(
    node: Node, name: str, tier: Tier, *, offers: list[dict[str, Any]] | None = None
) -> PublishedDataset:
    """Publish ``urn:uuid:ds-<name>`` on ``node`` through the core (no management routes)."""
    offers = offers if offers is not None else [catalog_offer(name)]
    table = Table(
        name,
        (
            Field("uscc", FieldType.STRING, 1, "enterprise"),
            Field("amount", FieldType.FLOAT, GRADE_OF[tier], "an amount in CNY"),
        ),
    )
    dataset = Dataset(
        id=f"urn:uuid:ds-{name}",
        owner=node.id,
        title=f"{name} records",
        responsibility=Responsibility("resp-1", "Collection duty"),
        resource=DataResource("res-1", f"{name} resource"),
        table=table,
        tier=tier,
        key_column="uscc",
        key_kind=KeyKind.USCC,
        offer_ids=tuple(o["@id"] for o in offers),
    )
    with node.runtime.transaction() as tx:
        return publish(tx, dataset, offers)


def signed(caller: Node, target: Node, method: str, path: str, body: Any = None) -> Any:
    """A request from ``caller`` to ``target`` signed for this one call."""
    content = b"" if body is None else encode_json(body)
    headers = caller.runtime.client.headers_for(target.id, method, target.url + path, content)
    if body is not None:
        headers["Content-Type"] = "application/json"
    return target.client.request(method, path, content=content, headers=headers)
