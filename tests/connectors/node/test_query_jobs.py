"""Query jobs are durable: a restarted analyst node finds every job, each in a defined state.

A node is "restarted" by building a second :class:`NodeRuntime` and :class:`QueryRunner` over the
same node directory and store file while the first still holds a running and a queued job (what a
``kill -9`` leaves behind: records that say ``running`` and ``queued``). The new runner must show
the finished job with its result, and the two interrupted ones as ``failed`` with an
``interrupted`` problem that says what they were doing.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.common.settings import init_node
from connectors.node.queries import QueryJob, QueryRunner
from connectors.node.runtime import NodeRuntime
from trusted_space.errors import ConflictError, NotFoundError

HANG_GUARD = 60.0


def _job(query_id: str) -> QueryJob:
    return QueryJob(
        id=query_id,
        kind="score",
        protocol="paillier",
        providers=("tax-bureau",),
        entities=3,
        submitted_at=datetime.now(UTC),
    )


def test_restarted_node_finds_finished_running_and_queued_jobs(tmp_path: Path) -> None:
    settings = init_node(tmp_path / "bank", name="bank-a", roles=["consumer"], port=0)
    first = NodeRuntime(settings)
    runner = QueryRunner(first, workers=1)
    started, release = threading.Event(), threading.Event()

    def blocked(job: QueryJob) -> dict[str, Any]:
        started.set()
        release.wait(HANG_GUARD)
        return {"never": "stored"}

    done = runner._add(_job("q-done"), lambda j: {"logits": [0.5, 1.5]})
    assert runner.wait(done.id, HANG_GUARD).state == "done"
    runner._add(_job("q-running"), blocked)
    assert started.wait(HANG_GUARD)
    runner._add(_job("q-queued"), lambda j: {})  # behind the running one: one worker
    assert [j.state for j in runner.jobs()] == ["done", "running", "queued"]

    try:
        second = NodeRuntime(settings)  # the restart: same directory, same store
        again = QueryRunner(second, workers=1)

        jobs = {j.id: j for j in again.jobs()}
        assert {k: j.state for k, j in jobs.items()} == {
            "q-done": "done",
            "q-running": "failed",
            "q-queued": "failed",
        }
        assert again.get("q-done").view().result == {"logits": [0.5, 1.5]}
        for query_id, was in (("q-running", "running"), ("q-queued", "queued")):
            error = again.get(query_id).view().error
            assert error is not None and error["type"].endswith("/interrupted")
            assert f"while the query was {was}" in error["detail"]
            assert again.get(query_id).finished.is_set()
        with pytest.raises(NotFoundError):
            again.get("q-never")
        with pytest.raises(ConflictError):  # an id this node already ran is not reused
            again._add(_job("q-done"), lambda j: {})
        again.shutdown()
        second.close()
    finally:
        release.set()
        runner.shutdown()
        first.close()


def test_a_queued_query_cancelled_ends_at_once_and_never_starts(tmp_path: Path) -> None:
    settings = init_node(tmp_path / "bank", name="bank-a", roles=["consumer"], port=0)
    runtime = NodeRuntime(settings)
    runner = QueryRunner(runtime, workers=1)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def blocked(job: QueryJob) -> dict[str, Any]:
        started.set()
        release.wait(HANG_GUARD)
        return {}

    try:
        runner._add(_job("q-running"), blocked)
        assert started.wait(HANG_GUARD)
        runner._add(_job("q-queued"), lambda j: ran.append(j.id) or {})

        cancelled = runner.cancel("q-queued", "alice", timeout=0)

        assert (cancelled.state, cancelled.cancelled_by, cancelled.parties) == (
            "cancelled",
            "alice",
            {},
        )
        with pytest.raises(ConflictError, match="already ended"):
            runner.cancel("q-queued", "alice", timeout=0)
        with pytest.raises(NotFoundError):
            runner.cancel("q-unknown", "alice", timeout=0)
    finally:
        release.set()
    assert runner.wait("q-running", HANG_GUARD).state == "done"
    runner.shutdown()
    runner._pool.shutdown(wait=True)
    assert ran == []  # the cancelled job never ran
    stored = QueryRunner(NodeRuntime(settings), workers=1).get("q-queued")
    assert (stored.state, stored.cancelled_by) == ("cancelled", "alice")
