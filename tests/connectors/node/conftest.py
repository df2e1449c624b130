"""Fixtures of the node tests: an admitted provider and consumer in the in-process space.

A test module that wants the provider to hold data overrides ``tax`` with a fixture of the same
name that takes this one and publishes on it.
"""

from __future__ import annotations

import pytest

from tests.connectors._space import InProcessSpace, Node


@pytest.fixture
def tax(space: InProcessSpace) -> Node:
    """``tax-bureau``, an admitted provider."""
    node = space.add("tax-bureau", ["provider"])
    space.admit_direct(node)
    return node


@pytest.fixture
def bank(space: InProcessSpace, tax: Node) -> Node:
    """``bank-a``, an admitted consumer (added after the provider)."""
    node = space.add("bank-a", ["consumer"])
    space.admit_direct(node)
    return node
