"""Shared test configuration: hypothesis profiles by cost, and the seed of the tests' data.

``HYPOTHESIS_PROFILE=ci`` (the default, used by ``make test``) keeps the suite inside its time
budget; ``thorough`` is for nightly or pre-release runs; ``dev`` is for quick local iteration.
"""

import os
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tests._postgres import PostgresServer
from tests._seeding import ENV, rng_for, session_seed

settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ------------------------------------------------------------------ seeded test data
#
# ``--test-seed N`` or ``TS_TEST_SEED=N`` picks the seed of every test's random data (default:
# tests._seeding.DEFAULT_SEED, so ``make test`` is deterministic); ``rng`` is a numpy generator
# per test, derived from the seed and the test's node id. ``python -m tests.run_seeds`` runs a
# selection under many seeds. Hypothesis tests keep Hypothesis's own seed (``--hypothesis-seed``).


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--test-seed",
        type=int,
        default=None,
        help=f"seed of the tests' random data (also ${ENV}; default: a fixed value)",
    )


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("--test-seed")
    if seed is not None:
        # Module-level data (drawn at collection) and subprocesses read the same variable.
        os.environ[ENV] = str(seed)


def pytest_report_header(config: pytest.Config) -> str:
    return f"test data seed: {session_seed()} (--test-seed / {ENV})"


@pytest.fixture(scope="session")
def test_seed() -> int:
    """The session's seed of test data."""
    return session_seed()


@pytest.fixture
def rng(request: pytest.FixtureRequest, test_seed: int) -> np.random.Generator:
    """A numpy generator for this test's data: the session seed and the test's node id."""
    return rng_for(request.node.nodeid, test_seed)


# ------------------------------------------------------------------ PostgreSQL
#
# A real server started by the suite (tests/_postgres.py), shared by the session and stopped at
# its end; each test that needs a store asks for a database of its own.


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (started on first use, never skipped)."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()
