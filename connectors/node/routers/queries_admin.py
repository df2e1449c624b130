"""The analyst's query API: the bank's staff run joint queries from their own node (admin token).

- ``POST /management/queries/score``: body = a score query (:mod:`trusted_space.queries.score` JSON:
  purpose, protocol, mode, model, agreements, datasets, entities, ...). It is checked at once
  (``400`` naming the JSON path), then queued. The same query may come as an Arrow IPC stream
  (``Content-Type: application/vnd.apache.arrow.stream``: the ids a column, a million of them one
  buffer instead of a million JSON strings); any other media type is ``415``. Queued: ``202``
  with the query's view and a ``Location``.
- ``POST /management/queries/aggregate``: body =
:class:`~connectors.node.wire.queries.AggregateRequest`;
  same answers.
- ``POST /management/queries/train``: body = a joint training
  (:class:`trusted_space.queries.train.TrainQuery` JSON; without ``entities`` every id of the
  node's own dataset); same answers; the stage reports each epoch (and its held-out loss).
- ``GET /management/queries/{id}[?wait=S]``: state (``queued``, ``running``, ``done``, ``failed``),
  stage and estimated fraction; when done the result with the providers' receipts, when failed a
  problem document (a provider's refusal keeps its ``trace`` and names it in ``peer``). ``wait``
  holds the answer up to ``S`` seconds (at most 30) until the query finishes: a client polls with
  few requests and learns the end at once.
- ``GET /management/queries/{id}/result``: a finished query's result alone (``409`` before): JSON,
  or with ``Accept: application/vnd.apache.arrow.stream`` an Arrow IPC stream (the score's
  columns ``entities``, ``logits``, ``outputs``, ``bands`` as record batches, the rest as JSON in
  the schema metadata: :mod:`connectors.common.columnar`); ``406`` for any other ``Accept``.
  ``GET /management/queries/{id}?result=false`` polls without the result.
- ``GET /management/queries``: every query kept, without results.
- ``DELETE /management/queries/{id}[?by=NAME]``: cancel a queued or running query at every
  party (its providers and the operator stop their work for it and record the cancellation);
  ``200`` with the job ``cancelled`` (``cancelledBy``, each party's answer in ``parties``), or
  ``202`` if its worker has not stopped yet (read it again). A query that has already ended is
  ``409``; an unknown id ``404``.

Mounted on consumer nodes only. Query bodies may be large (a million entity ids), so
``/management/queries`` takes the larger compute body limit; it is still staff only.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from connectors.common.columnar import ARROW_STREAM, iter_result_stream, query_from_arrow
from connectors.node.deps import AdminDep, RuntimeDep
from connectors.node.pagination import PagerDep
from connectors.node.queries import QueryJob, runner_for
from connectors.node.wire.queries import AggregateRequest, QueryView
from trusted_space.errors import ConflictError, ValidationError

__all__ = [
    "MAX_WAIT_SECONDS",
    "cancel_query",
    "get_query",
    "get_result",
    "list_queries",
    "result_media_type",
    "score_body",
    "router",
    "submit_aggregate",
    "submit_score",
    "submit_train",
]

MAX_WAIT_SECONDS = 30.0

router = APIRouter(prefix="/management/queries", tags=["queries"])


def score_body(content_type: str | None, body: bytes) -> dict[str, Any]:
    """A score query's JSON document from a request body (``415`` for another media type)."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media == ARROW_STREAM:
        return query_from_arrow(body)
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(415, f"a score query is application/json or {ARROW_STREAM}")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"the score query is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValidationError("$: a score query is a JSON object")
    return doc


def result_media_type(accept: str | None) -> str:
    """JSON unless ``Accept`` asks for an Arrow IPC stream; ``406`` if it takes neither.

    Only a score's result has columns: other results are JSON, so a client asking for Arrow
    should accept JSON too (``Accept: application/vnd.apache.arrow.stream, application/json``).
    """
    wanted = (accept or "").lower()
    if ARROW_STREAM in wanted:
        return ARROW_STREAM
    if not wanted.strip() or any(m in wanted for m in ("application/json", "*/*", "application/*")):
        return "application/json"
    raise HTTPException(406, f"results are served as application/json or {ARROW_STREAM}")


def _accepted(job: QueryJob) -> Response:
    view = job.view(with_result=False)
    return JSONResponse(
        view.model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/management/queries/{job.id}"},
    )


_SCORE_BODY = {
    "description": (
        "A score query (trusted_space.queries.score.ScoreQuery JSON), or the same as an Arrow "
        f"IPC stream ({ARROW_STREAM}: the ids a string column ``entities``, the rest as JSON in "
        "the schema metadata ``trusted-space``)."
    ),
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object"}},
        ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}},
    },
}


@router.post(
    "/score",
    status_code=202,
    response_model=QueryView,
    openapi_extra={"requestBody": _SCORE_BODY},
    responses={415: {"description": "Neither JSON nor an Arrow IPC stream."}},
)
async def submit_score(_: AdminDep, runtime: RuntimeDep, request: Request) -> Response:
    """Check and queue a joint score run by this node as the analyst."""
    media, body = request.headers.get("content-type"), await request.body()

    def submit() -> QueryJob:  # parsing a million ids is work: off the event loop, as checking
        return runner_for(runtime).submit_score(score_body(media, body))

    return _accepted(await run_in_threadpool(submit))


@router.post("/train", status_code=202, response_model=QueryView)
def submit_train(
    _: AdminDep,
    runtime: RuntimeDep,
    body: Annotated[
        dict[str, Any],
        Body(description="A joint training (trusted_space.queries.train.TrainQuery JSON)."),
    ],
) -> Response:
    """Check and queue a joint training run by this node as the bank (progress per epoch)."""
    return _accepted(runner_for(runtime).submit_train(body))


@router.post("/aggregate", status_code=202, response_model=QueryView)
def submit_aggregate(_: AdminDep, runtime: RuntimeDep, body: AggregateRequest) -> Response:
    """Check and queue an aggregate run by this node as the analyst."""
    return _accepted(runner_for(runtime).submit_aggregate(body))


@router.get("", response_model=list[QueryView])
def list_queries(
    _: AdminDep,
    runtime: RuntimeDep,
    pages: PagerDep,
) -> list[QueryView]:
    """The queries this node keeps, oldest first (results left out; read one for its result)."""
    jobs = pages(runner_for(runtime).jobs(), lambda j: (j.submitted_at.isoformat(), j.id))
    return [job.view(with_result=False) for job in jobs]


@router.get("/{query_id}", response_model=QueryView)
def get_query(
    _: AdminDep,
    runtime: RuntimeDep,
    query_id: str,
    wait: Annotated[
        float, Query(ge=0, le=MAX_WAIT_SECONDS, description="Seconds to wait for the end.")
    ] = 0.0,
    result: Annotated[
        bool,
        Query(description="Include the result once done (``false``: read it at ``/result``)."),
    ] = True,
) -> Response:
    """One query: progress, then its result or error."""
    job = runner_for(runtime).wait(query_id, wait)
    # Results can hold millions of numbers: serialised once, without a second validation pass.
    return JSONResponse(job.view(with_result=result).model_dump(mode="json"))


@router.get(
    "/{query_id}/result",
    responses={
        200: {
            "description": "The result: JSON, or an Arrow IPC stream when ``Accept`` names it.",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        406: {"description": "``Accept`` names neither JSON nor an Arrow IPC stream."},
        409: {"description": "The query has not ended with a result."},
    },
)
def get_result(
    _: AdminDep,
    runtime: RuntimeDep,
    query_id: str,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """A finished query's result; a score's columns streamed as Arrow record batches on request."""
    media = result_media_type(accept)
    job = runner_for(runtime).get(query_id)
    if job.state != "done" or job.result is None:
        raise ConflictError(f"query {query_id!r} is {job.state}: it has no result")
    if media == ARROW_STREAM and job.kind == "score":
        if job.result_stream is not None:  # encoded when the job was stored
            return Response(job.result_stream, media_type=ARROW_STREAM)
        return StreamingResponse(iter_result_stream(job.result), media_type=ARROW_STREAM)
    return JSONResponse(job.result)


@router.delete(
    "/{query_id}",
    response_model=QueryView,
    responses={
        202: {"description": "Cancelling: its worker has not stopped yet."},
        409: {"description": "The query has already ended."},
    },
)
def cancel_query(
    _: AdminDep,
    runtime: RuntimeDep,
    query_id: str,
    by: Annotated[
        str,
        Query(
            min_length=1,
            max_length=80,
            pattern=r"^[\w.@ -]+$",
            description="Who cancels (kept in the job's record on this node only).",
        ),
    ] = "staff",
) -> Response:
    """Cancel a queued or running query here and at every party taking part."""
    job = runner_for(runtime).cancel(query_id, by, timeout=MAX_WAIT_SECONDS)
    if job.finished.is_set() and job.state != "cancelled":
        raise ConflictError(f"query {query_id!r} ended ({job.state}) before it could be cancelled")
    view = job.view(with_result=False).model_dump(mode="json")
    return JSONResponse(view, status_code=200 if job.finished.is_set() else 202)
