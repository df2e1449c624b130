"""A node that stops submitting checkpoints shows up at the operator (API and ledger).

Its own small space of real processes (the session space's operator waits minutes before it
calls a member silent): an operator told to flag a log after 3 quiet seconds, and a member that
submits every second until it is stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connectors.spaces.space import NodeConfig, RunningSpace, load_config, up

from .conftest import EXAMPLE, ledger_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MEMBER = "quiet-bank"
DEADLINE = 90.0  # a bound on waiting for background rounds, not a performance assertion


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSpace]:
    config = load_config(EXAMPLE)
    operator = dataclasses.replace(
        config.operator, settings={"witness_interval": 1, "witness_silence": 3}
    )
    member = NodeConfig(name=MEMBER, roles=("consumer",), settings={"witness_interval": 1})
    config = dataclasses.replace(
        config, dir=tmp_path_factory.mktemp("watch"), base_port=0, nodes=(operator, member)
    )
    with up(config, timeout=60) as running:
        yield running


def until(probe: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not seen within {DEADLINE} s: {what}")


def test_a_node_that_stops_submitting_is_flagged_at_the_operator(small: RunningSpace) -> None:
    url = f"{small.operator.url}/operator/witness/logs/{MEMBER}"
    with httpx.Client(timeout=30) as http:

        def log() -> dict[str, Any]:
            answer = http.get(url)  # anonymous: the record is public
            answer.raise_for_status()
            return dict(answer.json())

        first = until(lambda: log()["checkpoint"], "the member's first cosigned checkpoint")
        assert "not-submitting" not in log()["alarms"]

        small.stop_node(MEMBER)
        flagged = until(
            lambda: "not-submitting" in log()["alarms"] and log(), "the not-submitting alarm"
        )
        origin = flagged["origin"]
        silent = until(
            lambda: [
                e.body
                for e in ledger_events(http, small.operator.url)
                if e.kind == "witness.silent" and e.body["origin"] == origin
            ],
            "a witness.silent entry on the operator's ledger",
        )

    assert first and flagged["lastSubmissionAt"] is not None
    assert len(silent) == 1 and silent[0]["quiet_seconds"] > 3
