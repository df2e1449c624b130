"""Acknowledged writes survive ``kill -9``: real nodes killed at random moments, many times.

See :mod:`tests.crash.harness` for what is driven and what is checked after every restart. The
number of kill rounds is ``TS_CRASH_ROUNDS`` if set, else 1,000 under
``HYPOTHESIS_PROFILE=thorough`` (``make thorough``) and 100 otherwise (``make test``); each round
kills both the provider and the operator.

The harness runs on both stores: each node on its own SQLite file, and each node on a database of
its own on the real PostgreSQL server the suite starts (``tests/_postgres.py``) with
``TS_CRASH_PG_ROUNDS`` rounds (default 300 thorough, 20 otherwise: the server's durability is not
ours to prove, the store's use of transactions is, and it needs fewer rounds to be exercised).

The kill moments come from a numpy generator seeded from the session's seed of test data
(``--test-seed`` / ``TS_TEST_SEED``, see ``tests/_seeding.py``; ``python -m tests.run_seeds``
varies it); the generator's seed is printed, and ``TS_CRASH_SEED=<seed>`` replays the same kill
moments (thread timing still varies from run to run).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.crash.harness import BANK, OPERATOR, PROVIDER, CrashHarness

NODES = (OPERATOR, PROVIDER, BANK)

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
ROUNDS = int(os.environ.get("TS_CRASH_ROUNDS") or (1000 if THOROUGH else 100))
PG_ROUNDS = int(os.environ.get("TS_CRASH_PG_ROUNDS") or (300 if THOROUGH else 20))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(300 + 6 * max(ROUNDS, PG_ROUNDS))
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_acknowledged_writes_survive_sigkill(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, rng: np.random.Generator
) -> None:
    rounds = ROUNDS if backend == "sqlite" else PG_ROUNDS
    stores: dict[str, str] = {}
    if backend == "postgresql":
        server = request.getfixturevalue("postgres")
        stores = {name: server.database(name.replace("-", "_")) for name in NODES}
    seed = int(os.environ.get("TS_CRASH_SEED") or rng.integers(2**63))
    print(f"crash harness ({backend}): seed {seed} (replay with TS_CRASH_SEED={seed}), {rounds}")
    started = time.monotonic()
    with CrashHarness(tmp_path, np.random.default_rng(seed), store_urls=stores) as harness:
        try:
            harness.setup()
            for _ in range(rounds):
                harness.round()
            figures = harness.finish()
        except AssertionError as exc:
            raise AssertionError(
                f"crash harness seed {seed} (replay with TS_CRASH_SEED={seed}), "
                f"after {harness.rounds} rounds: {exc}"
            ) from exc
    figures["seconds"] = round(time.monotonic() - started, 1)
    print("crash harness figures:", json.dumps(figures, sort_keys=True))

    assert figures["rounds"] == rounds
    assert figures["kills"] == 2 * rounds
    assert figures["uses"] > 0
    assert figures["triples"] > 0
    assert figures["negotiations"] > 0
