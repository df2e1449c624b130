"""The container image and compose file: a space of three containers comes up and admits itself.

``deploy/compose.yaml`` builds the ``Dockerfile`` and starts an operator, a provider and a bank
in containers of their own, and its ``admit`` job admits both members. The test waits until each
node answers ``/readyz`` (the store answers and the node holds a credential) on its published
loopback port, then removes the project with its volumes.

It needs a working container runtime (``docker`` or ``podman`` with ``compose``, and a daemon or
service that answers); without one it is skipped, saying what it found.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
BUILD_TIMEOUT = 1800.0  # the first build downloads the base image and the wheels
READY_TIMEOUT = 180.0


def _compose_command() -> tuple[list[str] | None, str]:
    """``[runtime, "compose"]`` for the first runtime that answers, or why there is none."""
    found: list[str] = []
    for name in ("docker", "podman"):
        exe = shutil.which(name)
        if exe is None:
            continue
        info = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=60)
        if info.returncode != 0:
            found.append(f"{name} is on PATH but `{name} info` fails (no daemon or service)")
            continue
        version = subprocess.run(
            [exe, "compose", "version"], capture_output=True, text=True, timeout=60
        )
        if version.returncode != 0:
            found.append(f"{name} answers but has no `compose`")
            continue
        return [exe, "compose"], ""
    return None, "; ".join(found) or "neither docker nor podman is on PATH"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def compose_space() -> Iterator[dict[str, str]]:
    command, missing = _compose_command()
    if command is None:
        pytest.skip(f"no container runtime to run deploy/compose.yaml: {missing}")
    ports = {name: _free_port() for name in ("OPERATOR_PORT", "PROVIDER_PORT", "BANK_PORT")}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
    project = [*command, "-f", str(COMPOSE), "-p", f"ts-smoke-{uuid.uuid4().hex[:8]}"]
    try:
        up = subprocess.run(
            [*project, "up", "-d", "--build"],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            env=env,
        )
        assert up.returncode == 0, up.stderr[-3000:]
        yield {
            "operator": f"http://127.0.0.1:{ports['OPERATOR_PORT']}",
            "provider": f"http://127.0.0.1:{ports['PROVIDER_PORT']}",
            "bank": f"http://127.0.0.1:{ports['BANK_PORT']}",
        }
    finally:
        subprocess.run(
            [*project, "down", "-v", "--remove-orphans"],
            capture_output=True,
            timeout=300,
            env=env,
        )


def _ready(url: str, deadline: float) -> int:
    status = 0
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                status = http.get(url + "/readyz").status_code
            except httpx.HTTPError:
                status = 0
            if status == 200:
                break
            time.sleep(1)
    return status


def test_three_containers_come_up_admitted(compose_space: dict[str, str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    statuses = {name: _ready(url, deadline) for name, url in compose_space.items()}
    assert statuses == {"operator": 200, "provider": 200, "bank": 200}
    with httpx.Client(timeout=5) as http:
        bank = http.get(compose_space["bank"] + "/identity").json()
    assert (bank["id"], bank["url"]) == ("bank-a", "http://bank:8700")
