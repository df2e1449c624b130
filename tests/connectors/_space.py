"""Several in-process nodes wired together: each node's outgoing calls reach the others' apps.

``InProcessSpace`` builds nodes in a temporary directory (real SQLite stores, real keys), routes
httpx requests by ``host:port`` to each node's ASGI app through a TestClient, and can admit nodes
at the operator exactly as ``space up`` does over the network (operator admin API, then the node's
``PUT /management/credential``) once those routes exist; ``admit_direct`` does it through the core
API for tests that do not depend on the operator routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from connectors.common.settings import NodeSettings, OperatorAnchor, init_node, load_settings
from connectors.node.app import create_app
from connectors.node.runtime import NodeRuntime

__all__ = ["InProcessSpace", "Node", "RoutingTransport"]


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

    def _start(self, name: str, roles: list[str], anchor: OperatorAnchor | None) -> Node:
        self._next_port += 1
        directory = self.root / name
        init_node(directory, name=name, roles=roles, port=self._next_port, operator=anchor)
        settings = load_settings(directory)
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

    def add(self, name: str, roles: list[str], *, anchored: bool = True) -> Node:
        """A new node anchored to this space's operator (not admitted yet).

        ``anchored=False`` makes a node that knows no operator at all (not part of any space).
        """
        return self._start(name, roles, self.anchor if anchored else None)

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
