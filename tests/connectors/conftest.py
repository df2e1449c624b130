"""Fixtures of the connector tests: a fresh in-process space per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.connectors._space import InProcessSpace


@pytest.fixture
def space(tmp_path: Path) -> Iterator[InProcessSpace]:
    """An operator alone in a fresh in-process space; tests add and admit the nodes they need."""
    with InProcessSpace(tmp_path) as s:
        yield s
