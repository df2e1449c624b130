"""Placeholder for the node's periodic work (filled in with the ledger/operator routes)."""

from __future__ import annotations

from connectors.runtime import NodeRuntime

__all__ = ["Background"]


class Background:
    """Periodic jobs of a node; started with the app, stopped at shutdown."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime

    def start(self) -> None:
        """Start the jobs (none yet)."""

    def stop(self) -> None:
        """Stop the jobs and wait for them."""
