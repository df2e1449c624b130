"""The serving API: a bank's loan system scores one or a few applicants and waits (admin token).

- ``POST /management/score``: body = a score query (the JSON of
  ``POST /management/queries/score``) naming at most
  :data:`~connectors.node.serving.MAX_REQUEST_ENTITIES` entities. Answered in the same exchange:
  ``200`` with this request's scores and one receipt per provider (its own ``query.use``), ``403``
  with every refusing provider's trace under ``refusals`` (and the receipts of the providers
  that recorded a use), ``400`` naming the JSON path of a bad body.
- ``GET /management/score/sessions``: the standing sessions (protocol, providers, key age and
  generation, runs, requests served, largest run, requests waiting).
- ``POST /management/score/sessions/rotate[?session=ID]``: fresh keys for one session or all,
  used from the next run on.

Mounted on consumer nodes only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from connectors.node.deps import AdminDep, RuntimeDep
from connectors.node.serving import server_for

__all__ = ["list_sessions", "rotate_keys", "router", "score_now"]

router = APIRouter(prefix="/management/score", tags=["serving"])


@router.post("")
def score_now(
    _: AdminDep,
    runtime: RuntimeDep,
    body: Annotated[
        dict[str, Any],
        Body(description="A score query (ScoreQuery JSON) of one or a few entities."),
    ],
) -> dict[str, Any]:
    """Score now: this request's scores and receipts, or its refusal with the traces."""
    return server_for(runtime).score(body, timeout=runtime.settings.request_timeout)


@router.get("/sessions")
def list_sessions(_: AdminDep, runtime: RuntimeDep) -> list[dict[str, Any]]:
    """The standing scoring sessions of this node."""
    return server_for(runtime).sessions()


@router.post("/sessions/rotate")
def rotate_keys(
    _: AdminDep,
    runtime: RuntimeDep,
    session: Annotated[str | None, Query(min_length=4, max_length=64)] = None,
) -> list[dict[str, Any]]:
    """Fresh keys for one session (``session``: its id) or for all, from their next run."""
    return server_for(runtime).rotate(session)
