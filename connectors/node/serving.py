"""Synchronous scores of one or a few applicants, in standing sessions that micro-batch.

Why: a loan officer waits on the answer. The batch path (:mod:`connectors.node.queries`) queues a
job and pays the whole protocol set-up per query; here the bank's node keeps a standing session
per (protocol, model, purpose, agreements and datasets) — the model's declared ranges and the
providers' ledger keys looked up once, the analyst's keys kept and rotated
(:class:`~trusted_space.protocols.score.StandingKeys`, every ``score_key_rotation`` seconds and
on demand), the node's signed HTTP client and its connections — and runs the requests that
arrive while a run is in flight (``score_runs_in_flight`` at once, default 1) together as the
next run
(:func:`~trusted_space.protocols.score.serve_batch`). Each request is still authorised, charged,
recorded and receipted by every provider on its own, and gets only its own scores.

After a run the session lingers (``score_linger``, default 50 ms, at most) until the requests it
just answered are back: a loan system that asks again as soon as it is answered would otherwise
split into two halves that alternate, each run carrying half the load and paying the whole
per-run cost. It starts at once when they are all back, and never waits when it answered
nobody, so one client alone is not slowed.

A request waits for its run and is answered in the same HTTP exchange: its scores with one
receipt per provider, or a refusal (``403`` with the refusing providers' problem documents and
traces under ``refusals``, and the receipts of the providers that recorded a use). A failure of
the run (a provider unreachable) answers every request of that run with the error; the session
stays and the next run starts afresh at every provider.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Final

from connectors.node.compute import compute_node
from connectors.node.queries import prepare_score, provider_vkeys, with_catalog_ranges
from connectors.node.runtime import NodeRuntime
from trusted_space.compute import DataAccess
from trusted_space.errors import (
    NotFoundError,
    NotReadyError,
    RefusedError,
    TrustedSpaceError,
    ValidationError,
)
from trusted_space.events import canonical_json
from trusted_space.protocols.score import (
    MAX_SERVED_ENTITIES,
    ServedOutcome,
    ServedRequest,
    StandingKeys,
    serve_batch,
)
from trusted_space.queries.score import ScoreQuery

__all__ = [
    "MAX_REQUEST_ENTITIES",
    "ScoreServer",
    "ServedRefusal",
    "server_for",
    "shutdown",
]

log = logging.getLogger("trusted_space.serving")

MAX_REQUEST_ENTITIES: Final = 64
"""Entities one synchronous request may name (larger lists belong on the batch path)."""
MAX_SESSIONS: Final = 32
"""Standing sessions a node keeps (the least recently used is dropped beyond)."""


class ServedRefusal(RefusedError):
    """A served request refused by a provider (or by the analyst's own data).

    Its problem document carries every refusal (``refusals``: party → that party's problem
    document with its trace) and the receipts of the providers that recorded a use.
    """

    def __init__(self, outcome: ServedOutcome) -> None:
        first = next(iter(outcome.refusals.values()))
        super().__init__(
            str(first.get("detail") or "refused"),
            first.get("trace") or [],
            participant=first.get("participant") or next(iter(outcome.refusals)),
            decision_index=first.get("decisionIndex"),
        )
        self.outcome = outcome

    def problem_extensions(self) -> dict[str, Any]:
        return {
            **super().problem_extensions(),
            "peer": self.participant,
            "query": self.outcome.id,
            "refusals": dict(self.outcome.refusals),
            "receipts": dict(self.outcome.receipts),
        }


@dataclass
class _Pending:
    request: ServedRequest
    future: Future[tuple[ServedOutcome, dict[str, Any]]]
    queued: float = field(default_factory=time.perf_counter)


class _Session:
    """One standing session: the shared query, the keys, the queue of waiting requests."""

    def __init__(
        self,
        server: ScoreServer,
        key: str,
        query: ScoreQuery,
        data: DataAccess | None,
        impute: dict[str, float],
        vkeys: dict[str, str],
        rotate_after: float,
        runs_in_flight: int,
        linger: float,
    ) -> None:
        self.server = server
        self.key = key
        self.query = query
        self.data = data
        self.impute = impute
        self.vkeys = vkeys
        self.keys = StandingKeys(query.protocol, rotate_after=rotate_after)
        self.pending: list[_Pending] = []
        self.cond = threading.Condition()
        self.closed = False
        self.runs = 0
        self.served = 0
        self.failed_runs = 0
        self.largest_run = 0
        self.last_used = time.monotonic()
        self.linger = linger
        # After a run: how many requests to expect back, and until when to wait for them.
        self._expect = 0
        self._linger_until = 0.0
        self.threads = [
            threading.Thread(target=self._loop, name=f"serve-{key[:8]}-{i}", daemon=True)
            for i in range(runs_in_flight)
        ]
        for t in self.threads:
            t.start()

    def submit(self, request: ServedRequest) -> Future[tuple[ServedOutcome, dict[str, Any]]]:
        pending = _Pending(request, Future())
        with self.cond:
            if self.closed:
                raise NotReadyError("the scoring session is closing")
            self.pending.append(pending)
            self.last_used = time.monotonic()
            self.cond.notify()
        return pending.future

    def _take(self) -> list[_Pending] | None:
        """The next run: waiting requests, in arrival order, disjoint and within the limit."""
        with self.cond:
            while not self.pending and not self.closed:
                self.cond.wait()
            while (
                not self.closed
                and len(self.pending) < self._expect
                and sum(len(p.request.entities) for p in self.pending) < MAX_SERVED_ENTITIES
            ):
                left = self._linger_until - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            self._expect = 0
            if self.closed:
                return None
            taken: list[_Pending] = []
            seen: set[str] = set()
            size = 0
            for p in list(self.pending):
                ids = p.request.entities
                if size + len(ids) > MAX_SERVED_ENTITIES or seen.intersection(ids):
                    continue  # the next run takes it (an applicant asked twice at once)
                taken.append(p)
                seen.update(ids)
                size += len(ids)
            for p in taken:
                self.pending.remove(p)
            return taken

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._run(batch)

    def _expect_back(self, answered: int) -> None:
        """Before answering: the next run waits (a little) for these requests to come back."""
        if self.linger > 0:
            with self.cond:
                self._expect = len(self.pending) + answered
                self._linger_until = time.monotonic() + self.linger

    def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            runtime = self.server.runtime
            anchor = runtime.anchor
            node = compute_node(runtime)
            if anchor is None or node.transport is None:
                raise NotReadyError(f"{runtime.id} is not part of a space")
            outcomes = serve_batch(
                node.transport,
                runtime.id,
                anchor.operator_id,
                self.query,
                [p.request for p in batch],
                protocol=self.keys.protocol(),
                analyst_data=self.data,
                analyst_impute=self.impute,
                provider_vkeys=self.vkeys,
            )
        except BaseException as exc:  # every request of the run gets the error
            with self.cond:
                self.runs += 1
                self.failed_runs += 1
            if not isinstance(exc, TrustedSpaceError):
                log.exception("a served run of session %s failed", self.key[:12])
            self._expect_back(len(batch))
            for p in batch:
                p.future.set_exception(exc)
            return
        ran = time.perf_counter() - started
        with self.cond:
            self.runs += 1
            self.served += len(batch)
            self.largest_run = max(self.largest_run, len(batch))
        self._expect_back(len(batch))
        for p, outcome in zip(batch, outcomes, strict=True):
            timings = {"queued": round(started - p.queued, 6), "run": round(ran, 6)}
            p.future.set_result((outcome, {"run": len(batch), **timings}))

    def close(self) -> None:
        with self.cond:
            self.closed = True
            waiting, self.pending = self.pending, []
            self.cond.notify_all()
        for p in waiting:
            p.future.set_exception(NotReadyError("the scoring session closed"))

    def view(self) -> dict[str, Any]:
        with self.cond:
            age = self.keys.age
            return {
                "session": self.key[:16],
                "protocol": self.query.protocol,
                "mode": self.query.mode,
                "purpose": self.query.purpose,
                "providers": list(self.query.providers),
                "agreements": dict(self.query.agreements),
                "keyGeneration": self.keys.generation,
                "keyAgeSeconds": None if age is None else round(age, 3),
                "keyRotationSeconds": self.keys.rotate_after,
                "runs": self.runs,
                "failedRuns": self.failed_runs,
                "served": self.served,
                "largestRun": self.largest_run,
                "waiting": len(self.pending),
            }


def _session_key(doc: Mapping[str, Any]) -> str:
    """What requests must share to run together: everything in the query but its ids."""
    shared = {k: v for k, v in doc.items() if k not in ("entities", "id")}
    return hashlib.sha256(canonical_json(shared)).hexdigest()


class ScoreServer:
    """A consumer node's standing scoring sessions (one per shared query shape).

    Args:
        runtime: the node.
        rotate_after: seconds a session's keys are used before fresh ones replace them.
    """

    def __init__(self, runtime: NodeRuntime, *, rotate_after: float | None = None) -> None:
        self._runtime_ref = weakref.ref(runtime)
        self.node_id = runtime.id
        self.rotate_after = rotate_after or runtime.settings.score_key_rotation
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def runtime(self) -> NodeRuntime:
        runtime = self._runtime_ref()
        if runtime is None:
            raise NotReadyError(f"node {self.node_id} has shut down")
        return runtime

    def _session(self, doc: Mapping[str, Any]) -> tuple[_Session, ScoreQuery]:
        key = _session_key(doc)
        plan = prepare_score(self.runtime, doc)  # every request checked, JSON paths named
        query = plan.query
        if query.cohort:
            raise ValidationError("$.cohort: a synchronous score names its entities")
        if len(query.entities) > MAX_REQUEST_ENTITIES:
            raise ValidationError(
                f"$.entities: at most {MAX_REQUEST_ENTITIES} per synchronous score; larger "
                "lists go to POST /management/queries/score"
            )
        with self._lock:
            if self._closed:
                raise NotReadyError(f"{self.node_id} is shutting down")
            session = self._sessions.get(key)
        if session is not None:
            return session, query
        # Looked up once per session: the declared ranges and the providers' ledger keys.
        shared = with_catalog_ranges(self.runtime, query)
        vkeys = provider_vkeys(self.runtime, query.providers)
        fresh = _Session(
            self,
            key,
            shared,
            plan.analyst_data,
            plan.impute,
            vkeys,
            self.rotate_after,
            self.runtime.settings.score_runs_in_flight,
            self.runtime.settings.score_linger,
        )
        with self._lock:
            session = self._sessions.setdefault(key, fresh)
            dropped = self._evict() if session is fresh else []
        if session is not fresh:
            fresh.close()
        for old in dropped:
            old.close()
        return session, query

    def _evict(self) -> list[_Session]:
        if len(self._sessions) <= MAX_SESSIONS:
            return []
        oldest = sorted(self._sessions.values(), key=lambda s: s.last_used)
        dropped = oldest[: len(self._sessions) - MAX_SESSIONS]
        for s in dropped:
            del self._sessions[s.key]
        return dropped

    def score(self, doc: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        """Score the entities of ``doc`` (a score query) and wait for the answer.

        Returns:
            The result JSON: ``query`` (this request's id, named by its uses), ``entities``,
            ``logits``, ``outputs``, ``missing``, ``receipts`` (one per provider), ``link``,
            ``protocol``, ``run`` (requests in its run) and ``timings``.

        Raises:
            ValidationError: a bad request (400 naming the JSON path).
            ServedRefusal: refused by a provider's policy or data (403, with every trace).
            RemoteError: the run failed at a provider (the peer's status or 502).
            NotReadyError: the answer did not come within ``timeout`` seconds.
        """
        session, query = self._session(doc)
        future = session.submit(ServedRequest(query.id, query.entities))
        try:
            outcome, timings = future.result(timeout=timeout)
        except FutureTimeout as exc:
            raise NotReadyError(f"no answer within {timeout:g} s; the run goes on") from exc
        if not outcome.scored:
            raise ServedRefusal(outcome)
        if outcome.logits is None or outcome.outputs is None:  # pragma: no cover - scored
            raise ValidationError("no scores")
        return {
            "query": outcome.id,
            "protocol": query.protocol,
            "entities": list(outcome.entities),
            "logits": [float(v) for v in outcome.logits],
            "outputs": [float(v) for v in outcome.outputs],
            "missing": {p: list(m) for p, m in outcome.missing.items()},
            "receipts": outcome.receipts,
            "link": query.model.link.to_json(),
            "session": session.key[:16],
            "keyGeneration": session.keys.generation,
            "run": timings.pop("run"),
            "timings": timings,
        }

    def sessions(self) -> list[dict[str, Any]]:
        with self._lock:
            sessions = list(self._sessions.values())
        return [s.view() for s in sessions]

    def rotate(self, session: str | None = None) -> list[dict[str, Any]]:
        """Rotate the keys of one session (by its id's prefix) or of all; their views.

        Raises:
            NotFoundError: no session with that id.
        """
        with self._lock:
            chosen = [
                s for s in self._sessions.values() if session is None or s.key.startswith(session)
            ]
        if session is not None and not chosen:
            raise NotFoundError(f"no scoring session {session!r} on this node")
        for s in chosen:
            s.keys.rotate()
        return [s.view() for s in chosen]

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.close()


def server_for(runtime: NodeRuntime) -> ScoreServer:
    """The runtime's score server, created on first use (kept by the runtime)."""
    return runtime.service(ScoreServer, ScoreServer)


def shutdown(runtime: NodeRuntime) -> None:
    """Close the runtime's standing sessions (at app shutdown)."""
    server = runtime.drop_service(ScoreServer)
    if server is not None:
        server.shutdown()
