"""One source of randomness for test data: a session seed, and a generator per test.

The seed comes from ``--test-seed N`` (pytest option, see ``tests/conftest.py``) or the
``TS_TEST_SEED`` environment variable, else :data:`DEFAULT_SEED`, so ``make test`` is
deterministic. Each test draws from its own generator, derived from the seed and the test's node
id: adding, removing or reordering tests changes no other test's data.

``python -m tests.run_seeds --seeds 50 <tests>`` runs a selection under many seeds.

Only test *data* comes from here. Keys, masks and nonces made by the code under test keep using
``secrets``/OS randomness.
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np

DEFAULT_SEED = 20240601
ENV = "TS_TEST_SEED"


def session_seed() -> int:
    """The seed of this run: ``TS_TEST_SEED`` (set by ``--test-seed``) or the default."""
    raw = os.environ.get(ENV, "").strip()
    return int(raw) if raw else DEFAULT_SEED


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def rng_for(name: str, seed: int | None = None) -> np.random.Generator:
    """A numpy generator for ``name`` (a test's node id, or a module's name for module-level
    data), derived from the session seed."""
    base = session_seed() if seed is None else seed
    return np.random.default_rng([base, _key(name)])


def random_for(name: str, seed: int | None = None) -> random.Random:
    """A :class:`random.Random` drawn from :func:`rng_for` (for code that takes one)."""
    return random.Random(int(rng_for(name, seed).integers(2**63)))
