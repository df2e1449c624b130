"""One real space for the whole integration session: real node processes on loopback.

The space is the example in ``examples/space`` (operator ``city-centre``, providers
``tax-bureau`` and ``court``, and ``bank-a``, consumer and provider), started with
:func:`connectors.spaces.space.up` on free ports in a temporary directory and stopped at the end of
the
session. Tests talk to it over real HTTP, as members (a :class:`SignedClient` built from a node's
own directory: key file and the credential the operator issued) or anonymously, and run the
``trusted-space`` CLI as a subprocess.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.client.http import SignedClient
from connectors.spaces.space import RunningSpace, load_config, up
from tests.integration._space import member_credential
from trusted_space.events import Event, decode_event
from trusted_space.keys import SigningKey

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "space" / "space.toml"
OPERATOR = "city-centre"
CLI_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSpace]:
    config = dataclasses.replace(
        load_config(EXAMPLE), dir=tmp_path_factory.mktemp("space"), base_port=0
    )
    with up(config, timeout=60) as running:
        yield running


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def signed_client(space: RunningSpace, name: str) -> SignedClient:
    """A signed client acting as node ``name`` (its key file and its credential)."""
    node = space[name]
    key = SigningKey.load(node.layout.node_key)
    credential = member_credential(node.name, key, space.operator.url, space.operator.name)
    return SignedClient(node.name, key, lambda: credential, timeout=30)


@pytest.fixture(scope="session")
def bank(space: RunningSpace) -> Iterator[SignedClient]:
    with signed_client(space, "bank-a") as client:
        yield client


def cli(
    *args: str, timeout: float = CLI_TIMEOUT, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``trusted-space ARGS`` as a separate process (the console script of this venv)."""
    script = Path(sys.executable).with_name("trusted-space")
    argv = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from connectors.cli.main import main; main()"]
    )
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
        cwd=cwd,
    )


def catalog_request() -> dict[str, Any]:
    return {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "CatalogRequestMessage",
        "filter": [],
    }


def ledger_events(http: httpx.Client, url: str) -> list[Event]:
    """Every entry of a node's ledger, fetched page by page and decoded."""
    events: list[Event] = []
    while True:
        page = http.get(f"{url}/ledger/entries", params={"start": len(events)})
        page.raise_for_status()
        entries = page.json()["entries"]
        if not entries:
            return events
        for raw in entries:
            events.append(decode_event(len(events), base64.b64decode(raw)))
