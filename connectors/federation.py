"""Calls a node makes to its operator. INTERFACE STUB — implemented with the operator routes."""

from __future__ import annotations

from connectors.runtime import NodeRuntime

__all__ = ["push_catalog", "submit_checkpoint"]


def push_catalog(runtime: NodeRuntime) -> bool:
    """Send this node's full DSP catalog to the operator's federated catalog; True if accepted."""
    raise NotImplementedError


def submit_checkpoint(runtime: NodeRuntime) -> str | None:
    """Sign a checkpoint, have the operator's witness cosign it, keep the cosigned note."""
    raise NotImplementedError
