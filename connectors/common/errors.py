"""The connector layer's errors, shared by the node, the clients and the tools.

Error tree (the core's tree is in :mod:`trusted_space.errors`)::

    ConnectorError
     ├── PolicyRefused     a policy decision said no: 403 with the evaluation trace
     ├── PeerError         another node answered with an error (its problem document attached)
     └── NotReady          the node lacks something to serve this (not admitted yet, no operator)

How each becomes an HTTP answer is the node's business (:mod:`connectors.node.problems`); a
client only raises and reads them, so it needs no web framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_MEDIA_TYPE",
    "ConnectorError",
    "NotReady",
    "PeerError",
    "PolicyRefused",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://w3id.org/trusted-space/problems/"


class ConnectorError(Exception):
    """Base class of errors raised by the connector layer."""


class PolicyRefused(ConnectorError):
    """A policy decision refused a request; carries the decision's trace (JSON) and reason."""

    def __init__(
        self,
        reason: str,
        trace: Sequence[Mapping[str, Any]],
        *,
        participant: str | None = None,
        decision_index: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.trace = [dict(step) for step in trace]
        self.participant = participant
        self.decision_index = decision_index


class PeerError(ConnectorError):
    """Another node refused or failed; ``problem`` is its problem document (when it sent one)."""

    def __init__(self, peer: str, status: int, problem: Mapping[str, Any] | None = None) -> None:
        self.peer = peer
        self.status = status
        self.problem = dict(problem or {})
        detail = self.problem.get("detail") or self.problem.get("title") or f"HTTP {status}"
        super().__init__(f"{peer} answered {status}: {detail}")


class NotReady(ConnectorError):
    """The node cannot serve this yet (not admitted, no operator anchor, peer unreachable)."""
