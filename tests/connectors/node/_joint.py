"""A joint computation on in-process nodes: each party's table published, the bank's agreements.

The compute, training and hostile tests build the same thing: the bank and two providers, each
with a CSV of numbers keyed by ``entity`` registered through the management API under one local
offer, and the bank holding a finalised agreement with each provider. These are the steps, written
once; each test keeps its own data and its own mix of parties.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from connectors.node import negotiation
from connectors.spaces.local import LocalParty, local_dataset, local_offer
from tests.connectors._space import Node
from trusted_space.contracts import NegotiationState

__all__ = ["BOUND", "FINAL", "negotiate_features", "publish_table", "write_table"]

FINAL = (NegotiationState.FINALIZED, NegotiationState.TERMINATED)
BOUND = 8.0
"""The declared range of every published test column."""


def write_table(
    path: Path, ids: list[str], columns: list[str], values: np.ndarray[Any, Any]
) -> None:
    """A CSV of ``entity`` and ``columns``, one row per id, numbers to nine decimals."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["entity", *columns])
        for e, row in zip(ids, values, strict=True):
            out.writerow([e, *(f"{v:.9f}" for v in row)])


def publish_table(
    node: Node, path: Path, columns: list[str], *, purpose: str, kinds: tuple[str, ...]
) -> None:
    """Register ``path`` as ``<node>-features`` on ``node``, under one offer for ``kinds``.

    Every column declares the range :data:`BOUND` (the tests' values stay within it).
    """
    bounds = dict.fromkeys(columns, BOUND)
    body = {
        "dataset": local_dataset(LocalParty(node.id, path), "entity", columns, bounds=bounds),
        "source": {"kind": "csv", "path": str(path)},
        "offers": [local_offer(purpose=purpose, kinds=kinds)],
    }
    response = node.client.post("/management/datasets", json=body, headers=node.admin_headers)
    assert response.status_code == 201, response.text


def negotiate_features(bank: Node, providers: Iterable[str]) -> dict[str, str]:
    """The agreement id ``bank`` holds for each provider's ``<provider>-features``."""
    agreements = {}
    for provider in providers:
        started = bank.client.post(
            "/management/negotiations",
            json={"provider": provider, "datasetId": f"{provider}-features"},
            headers=bank.admin_headers,
        )
        assert started.status_code == 201, started.text
        record = negotiation.wait_for(bank.runtime, started.json()["id"], FINAL)
        assert record.state is NegotiationState.FINALIZED
        signed = record.signed_agreement()
        assert signed is not None
        agreements[provider] = signed.id
    return agreements
