"""Acknowledged writes survive ``kill -9``: real nodes killed at random moments, many times.

See :mod:`tests.crash.harness` for what is driven and what is checked after every restart. The
number of kill rounds is ``TS_CRASH_ROUNDS`` if set, else 1,000 under
``HYPOTHESIS_PROFILE=thorough`` (``make thorough``) and 100 otherwise (``make test``); each round
kills both the provider and the operator. The kill moments come from a numpy generator seeded from
the OS; the seed is printed, and ``TS_CRASH_SEED=<seed>`` replays the same kill moments (thread
timing still varies from run to run).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.crash.harness import CrashHarness

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
ROUNDS = int(os.environ.get("TS_CRASH_ROUNDS") or (1000 if THOROUGH else 100))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(300 + 6 * ROUNDS)
def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    seed = int(os.environ.get("TS_CRASH_SEED") or np.random.SeedSequence().entropy)
    print(f"crash harness: seed {seed} (replay with TS_CRASH_SEED={seed}), {ROUNDS} rounds")
    started = time.monotonic()
    with CrashHarness(tmp_path, np.random.default_rng(seed)) as harness:
        try:
            harness.setup()
            for _ in range(ROUNDS):
                harness.round()
            figures = harness.finish()
        except AssertionError as exc:
            raise AssertionError(
                f"crash harness seed {seed} (replay with TS_CRASH_SEED={seed}), "
                f"after {harness.rounds} rounds: {exc}"
            ) from exc
    figures["seconds"] = round(time.monotonic() - started, 1)
    print("crash harness figures:", json.dumps(figures, sort_keys=True))

    assert figures["rounds"] == ROUNDS
    assert figures["kills"] == 2 * ROUNDS
    assert figures["uses"] > 0
    assert figures["triples"] > 0
    assert figures["negotiations"] > 0
