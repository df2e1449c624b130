"""Joint queries run *from* the analyst's node: the node holds the keys and orchestrates.

Why at the node: the analyst side of every protocol needs the node's identity (providers
authenticate the signed calls and check that the agreement's assignee is the sender), its
transport and its own data (a bank is also a data holder; its own partial is computed locally, in
plaintext, after decryption). So the bank's staff and scripts do not run protocols themselves:
they submit a query to their node's admin API (:mod:`connectors.node.routers.queries_admin`, used by
:class:`connectors.client.analyst.AnalystClient`) and the node runs the driver
(:func:`trusted_space.protocols.score.run_score`,
:func:`trusted_space.protocols.aggregate.run_aggregate`) over its
:class:`~connectors.node.compute.HttpTransport` in a background worker.

A :class:`QueryRunner` per runtime keeps the jobs in memory: state, progress (stage and an
estimated fraction, observed from the protocol's calls), and when done the result with the
providers' receipts, or the error as a problem document (a provider's refusal keeps its trace).
Receipts are checked by the driver against the providers' ledger keys as registered at the
operator (``GET /operator/participants/{id}``), not only against the key a receipt carries.
Keys generated for a query (Paillier pairs, CKKS secret contexts) live only inside the worker
that runs it, so a query cannot resume after a restart.

Jobs are durable: each job's record (``query.job``, without its result) is written to the node's
store when it is queued, when it starts and when it ends, and a finished job's result is kept
beside it (``query.result``; a score's as an Arrow stream, ``columnar.stored_result``).
After a restart the node finds every job it had: finished ones as they ended, and those that
were queued or running end as ``failed`` with an ``interrupted`` problem saying so (their
providers' ledgers keep the uses they made). At most :data:`KEEP_FINISHED` finished jobs are also
kept in memory.

A queued or running job can be cancelled (:meth:`QueryRunner.cancel`, ``DELETE
/management/queries/{id}``): every party taking part (its providers and the operator) is told at
once (``query.cancel``, :mod:`trusted_space.protocols.cancel`: each drops the query's sessions,
refuses any later call of it and records the cancellation on its ledger), and the job's own
worker stops before its next call, so no block starts after the cancellation. The job ends
``cancelled``, naming who cancelled it and what each party answered.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from connectors.client.catalog import declared_ranges, fetch_catalog
from connectors.common.columnar import result_of_stored, result_to_arrow, stored_result
from connectors.common.logs import request_id
from connectors.node.compute import compute_node
from connectors.node.problems import problem, problem_for
from connectors.node.runtime import NodeRuntime
from connectors.node.wire.queries import (
    AggregateRequest,
    QueryView,
    aggregate_query,
    aggregate_result_json,
)
from trusted_space.catalog import load_dataset
from trusted_space.compute import DataAccess
from trusted_space.errors import (
    ConflictError,
    NotFoundError,
    NotReadyError,
    RemoteError,
    TrustedSpaceError,
    ValidationError,
    VerificationError,
)
from trusted_space.protocols._common import block_ranges
from trusted_space.protocols.aggregate import run_aggregate
from trusted_space.protocols.cancel import cancel_at
from trusted_space.protocols.registry import get_score_protocol
from trusted_space.protocols.score import ENTITY_CHUNK, run_score
from trusted_space.queries.aggregate import AggregateQuery
from trusted_space.queries.score import ScoreQuery
from trusted_space.transport import Reply, Transport

__all__ = [
    "KEEP_FINISHED",
    "ProgressTransport",
    "QueryJob",
    "QueryRunner",
    "prepare_score",
    "provider_vkeys",
    "runner_for",
    "shutdown",
    "with_catalog_ranges",
]

log = logging.getLogger("trusted_space.queries")

KEEP_FINISHED: Final = 64
"""Finished jobs kept in memory per node (oldest dropped first; the store keeps them all)."""
JOB_NAMESPACE: Final = "query.job"
RESULT_NAMESPACE: Final = "query.result"
_WORKERS: Final = 2
ENDED: Final = frozenset({"done", "failed", "cancelled"})
"""The states a job never leaves."""


class _Cancelled(Exception):
    """Raised inside a job's worker at its next step once the job is cancelled (not an error)."""


# -- jobs ---------------------------------------------------------------------------------------


@dataclass
class QueryJob:
    """One query this node runs as the analyst."""

    id: str
    kind: str
    protocol: str
    providers: tuple[str, ...]
    entities: int
    submitted_at: datetime
    state: str = "queued"
    stage: str = "queued"
    fraction: float = 0.0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    result_stream: bytes | None = field(default=None, repr=False)  # a score's, as Arrow IPC
    error: dict[str, Any] | None = None
    cancelled_by: str | None = None
    parties: dict[str, str] | None = None
    finished: threading.Event = field(default_factory=threading.Event, repr=False)
    cancelling: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def progress(self, stage: str, fraction: float | None = None) -> None:
        """Record what the query is doing; fractions only grow and stay below 1 until done.

        Every protocol step reports here before it calls a party, so this is where a cancelled
        job stops (:class:`_Cancelled`, caught by the runner).
        """
        with self._lock:  # cancel() sets ``cancelling`` and its stage under this lock
            if self.cancelling.is_set():
                raise _Cancelled(self.id)
            self.stage = stage
            if fraction is not None:
                self.fraction = max(self.fraction, min(0.99, max(0.0, fraction)))

    def record(self) -> dict[str, Any]:
        """The job's durable record (its result is stored apart, :data:`RESULT_NAMESPACE`)."""
        return self.view(with_result=False).model_dump(mode="json")

    @classmethod
    def from_record(cls, doc: Mapping[str, Any], result: dict[str, Any] | None) -> QueryJob:
        """A finished job as read back from the store."""

        def when(value: Any) -> datetime | None:
            return None if value is None else datetime.fromisoformat(str(value))

        job = cls(
            id=str(doc["id"]),
            kind=str(doc["kind"]),
            protocol=str(doc["protocol"]),
            providers=tuple(str(p) for p in doc["providers"]),
            entities=int(doc["entities"]),
            submitted_at=datetime.fromisoformat(str(doc["submittedAt"])),
            state=str(doc["state"]),
            stage=str(doc["stage"]),
            fraction=float(doc["fraction"]),
            started_at=when(doc.get("startedAt")),
            finished_at=when(doc.get("finishedAt")),
            result=result,
            error=doc.get("error"),
            cancelled_by=doc.get("cancelledBy"),
            parties=doc.get("parties"),
        )
        if job.state in ENDED:
            job.finished.set()
        return job

    def view(self, *, with_result: bool = True) -> QueryView:
        with self._lock:
            return QueryView(
                id=self.id,
                kind=self.kind,  # type: ignore[arg-type]
                protocol=self.protocol,
                providers=list(self.providers),
                entities=self.entities,
                state=self.state,  # type: ignore[arg-type]
                stage=self.stage,
                fraction=self.fraction,
                submittedAt=self.submitted_at.isoformat(),
                startedAt=None if self.started_at is None else self.started_at.isoformat(),
                finishedAt=None if self.finished_at is None else self.finished_at.isoformat(),
                result=self.result if with_result else None,
                error=self.error,
                cancelledBy=self.cancelled_by,
                parties=self.parties,
            )


class ProgressTransport(Transport):
    """A transport that reports each call to ``observe`` (before and after) and passes it on.

    Calls carry the request id of the request that submitted the query, from whichever thread
    the protocol makes them (its lanes do not inherit the worker's context).
    """

    def __init__(
        self, inner: Transport, observe: Callable[[str, str, bool], None], sender: str
    ) -> None:
        self._inner = inner
        self._observe = observe
        self._request_id = request_id.get()
        self.sender = sender
        # The inner transport's (``observe`` must then be thread-safe: see _CallCounter).
        self.max_concurrency = inner.max_concurrency

    def call(
        self, peer: str, operation: str, header: Mapping[str, Any], payload: bytes = b""
    ) -> Reply:
        self._observe(peer, operation, False)
        token = request_id.set(self._request_id)
        try:
            reply = self._inner.call(peer, operation, header, payload)
        finally:
            request_id.reset(token)
        self._observe(peer, operation, True)
        return reply


_STAGES: Final = {
    "align.open": "aligning with {peer} (PSI)",
    "align.request": "aligning with {peer} (PSI)",
    "align.response": "aligning with {peer} (PSI)",
    "aggregate.open": "opening the aggregation at {peer}",
    "score.open": "opening the query at {peer}",
    "score.entities": "sending entity ids to {peer}",
    "score.run": "reading and checking at {peer}",
    "score.block": "computing at {peer}",
    "score.beaver": "interactive rounds with {peer}",
    "aggregate.take": "collecting the sums from {peer}",
    "dealer.triple": "fetching Beaver triples from {peer}",
    "stats.open": "sending the encrypted cohort to {peer}",
    "stats.count": "checking the cohort size with {peer}",
    "stats.release": "computing at {peer}",
    "stats.fetch": "fetching the result from {peer}",
    "stats.entities": "computing at {peer}",
}


class _CallCounter:
    """Progress from the calls made, against the calls a query is expected to make."""

    def __init__(self, job: QueryJob, expected: int) -> None:
        self.job = job
        self.expected = max(1, expected)
        self.done = 0
        self._lock = threading.Lock()  # calls to several providers run in parallel

    def __call__(self, peer: str, operation: str, finished: bool) -> None:
        stage = _STAGES.get(operation, f"{operation} at {{peer}}").format(peer=peer)
        with self._lock:
            if finished:
                self.done += 1
            done = self.done
        self.job.progress(stage, done / self.expected)


def _expected_score_calls(query: ScoreQuery) -> int:
    protocol = get_score_protocol(query.protocol)
    terms = max((len(query.model.columns(p)) for p in query.providers), default=1)
    blocks = len(block_ranges(len(query.entities), protocol.block_rows(query, max(terms, 1))))
    chunks = math.ceil(len(query.entities) / ENTITY_CHUNK)
    per_provider = 2 + chunks + blocks  # open, ids, run, then one call per block
    if query.protocol == "additive" and query.mode == "analyst-held":
        per_provider += blocks  # each round also fetches a triple share
    if query.cohort:
        per_provider += 3
    return 1 + len(query.providers) * per_provider + blocks


# -- preparing a score query ------------------------------------------------------------------


def with_catalog_ranges(runtime: NodeRuntime, query: ScoreQuery) -> ScoreQuery:
    """``query`` with every provider column's declared range from the space's catalog.

    The analyst gives no bound: each provider publishes its columns' ranges (field ``bound``) and
    the protocols scale by them (:mod:`trusted_space.protocols.scaling`). Ranges the query
    already names are kept (the provider refuses any that is not its catalog's). Party-held
    queries need none (the providers check their own).

    Raises:
        NotReadyError: no operator anchor, or the operator cannot be reached.
        ValidationError: a model column whose catalog declares no range (named).
    """
    if query.mode != "analyst-held":
        return query
    lacking = {
        p: query.datasets[p]
        for p in query.providers
        if set(query.model.columns(p)) - set(query.ranges.get(p, {}))
    }
    if not lacking:
        return query
    anchor = runtime.anchor
    if anchor is None:
        raise NotReadyError(f"{runtime.id} has no operator anchor: it is not part of a space")
    catalog = fetch_catalog(
        anchor.url, federated=True, signer=runtime.client, audience=anchor.operator_id
    )
    declared = declared_ranges(catalog, lacking)
    ranges = {p: dict(r) for p, r in query.ranges.items()}
    for p, found in declared.items():
        ranges[p] = {**found, **ranges.get(p, {})}
    for p in lacking:
        for column in query.model.columns(p):
            if column not in ranges.get(p, {}):
                raise ValidationError(
                    f"column {column!r} of {p}'s dataset {query.datasets[p]!r} declares no "
                    "range in the catalog: a score cannot use it until its provider declares "
                    "the field's bound"
                )
    return dataclasses.replace(query, ranges=ranges)


def provider_vkeys(runtime: NodeRuntime, providers: Sequence[str]) -> dict[str, str]:
    """The providers' ledger vkeys as registered at the operator (receipts are checked with them).

    Raises:
        NotReadyError: no operator anchor, or the operator cannot be reached.
        RemoteError: the operator does not know a provider.
    """
    anchor = runtime.anchor
    if anchor is None:
        raise NotReadyError(f"{runtime.id} has no operator anchor: it is not part of a space")
    out: dict[str, str] = {}
    for p in providers:
        info = runtime.client.get_json(
            f"{anchor.url}/operator/participants/{p}", audience=anchor.operator_id
        )
        vkey = info.get("ledgerVkey") if isinstance(info, dict) else None
        if isinstance(vkey, str) and vkey:
            out[p] = vkey
    return out


@dataclass(frozen=True)
class _ScorePlan:
    query: ScoreQuery
    analyst_data: DataAccess | None
    impute: dict[str, float]


def prepare_score(runtime: NodeRuntime, doc: Mapping[str, Any]) -> _ScorePlan:
    """Parse and check a score query before it is queued (``ValidationError`` naming the path).

    The analyst's own columns (the model's weights for this node) must come from a dataset this
    node published, named in ``datasets``; its published ``imputeDefault`` values are used for
    ``impute``.
    """
    if "consumer" not in runtime.roles:
        raise ValidationError(f"{runtime.id} is not a consumer: it does not run joint queries")
    query = ScoreQuery.from_json(doc)
    if runtime.id in query.agreements:
        raise ValidationError(f"$.agreements.{runtime.id}: the analyst is not its own provider")
    if query.cohort and query.mode == "party-held":
        raise ValidationError(
            "$.cohort: a PSI cohort needs the provider columns, which party-held mode does not name"
        )
    own = query.model.columns(runtime.id)
    impute: dict[str, float] = {}
    data: DataAccess | None = None
    if own:
        dataset_id = query.datasets.get(runtime.id)
        if dataset_id is None:
            raise ValidationError(
                f"$.datasets.{runtime.id}: the model has columns of {runtime.id}; name the "
                "dataset of this node that holds them"
            )
        with runtime.transaction(readonly=True) as tx:
            try:
                dataset = load_dataset(tx, dataset_id).dataset
            except NotFoundError as exc:
                raise ValidationError(
                    f"$.datasets.{runtime.id}: no dataset {dataset_id!r} published here"
                ) from exc
        for column in own:
            try:
                f = dataset.table.field(column)
            except ValidationError as exc:
                raise ValidationError(f"$.model.weights.{runtime.id}.{column}: {exc}") from exc
            if f.impute_default is not None:
                impute[column] = f.impute_default
        data = compute_node(runtime).data
    return _ScorePlan(query, data, impute)


# -- the runner -------------------------------------------------------------------------------


def _problem_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, RemoteError):
        return {**exc.problem, "peer": exc.peer, "peerStatus": exc.status}
    if isinstance(exc, VerificationError):
        # A provider's receipt failed the analyst's own check: the reason is for our staff (no
        # oracle for anyone else: it never leaves this node).
        response = problem(
            502, "invalid-receipt", "A provider's receipt does not verify", exc.reason
        )
    else:
        response = problem_for(exc)
    doc: dict[str, Any] = json.loads(bytes(response.body))
    return doc


class QueryRunner:
    """The analyst queries of one node: a small worker pool and the jobs it ran.

    Args:
        runtime: the node.
        workers: queries run at once (more wait ``queued``).
        keep: finished jobs kept.
    """

    def __init__(
        self, runtime: NodeRuntime, *, workers: int = _WORKERS, keep: int = KEEP_FINISHED
    ) -> None:
        self._runtime_ref = weakref.ref(runtime)
        self.node_id = runtime.id
        self.keep = keep
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"query-{runtime.id}"
        )
        self._jobs: OrderedDict[str, QueryJob] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._recover()

    # -- durability ------------------------------------------------------------------------
    def _recover(self) -> None:
        """End the jobs a previous run of this node left queued or running (it cannot resume)."""
        runtime = self.runtime
        with runtime.transaction() as tx:
            for doc in tx.scan(JOB_NAMESPACE):
                if doc.body.get("state") in ENDED:
                    continue
                was = doc.body.get("state")
                body = dict(doc.body)
                body.update(
                    state="failed",
                    stage="interrupted",
                    finishedAt=runtime.clock().isoformat(),
                    error=json.loads(
                        bytes(
                            problem(
                                503,
                                "interrupted",
                                "Interrupted by a restart",
                                f"the node restarted while the query was {was}; its keys were "
                                "lost with the process, so it cannot resume: submit it again",
                            ).body
                        )
                    ),
                )
                tx.put(JOB_NAMESPACE, doc.key, body)
                log.warning("query %s was %s when the node stopped: failed", doc.key, was)

    def _save(self, job: QueryJob) -> None:
        """Write the job's record (and its result once done) in one transaction."""
        record = job.record()
        with self.runtime.transaction() as tx:
            tx.put(JOB_NAMESPACE, job.id, record)
            if job.result is not None:
                stored = job.result
                if job.kind == "score":  # encoded once: stored, and served as it is
                    job.result_stream = job.result_stream or result_to_arrow(job.result)
                    stored = stored_result(job.result_stream)
                tx.put(RESULT_NAMESPACE, job.id, stored)

    @property
    def runtime(self) -> NodeRuntime:
        """The node (held weakly: the runner never keeps a closed node alive)."""
        runtime = self._runtime_ref()
        if runtime is None:
            raise NotReadyError(f"node {self.node_id} has shut down")
        return runtime

    # -- submission ------------------------------------------------------------------------
    def _add(self, job: QueryJob, work: Callable[[QueryJob], dict[str, Any]]) -> QueryJob:
        with self._lock:
            if self._closed:
                raise NotReadyError(f"{self.runtime.id} is shutting down")
            if job.id in self._jobs:
                raise ConflictError(f"query {job.id!r} was already submitted here")
            with self.runtime.transaction() as tx:
                tx.insert(JOB_NAMESPACE, job.id, job.record())  # a ConflictError if known
            self._jobs[job.id] = job
            self._trim()
            # In the submitting request's context: its request id goes on the job's calls.
            self._pool.submit(contextvars.copy_context().run, self._run, job, work)
        return job

    def _trim(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.finished.is_set()]
        for k in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[k]

    def submit_score(self, doc: Mapping[str, Any]) -> QueryJob:
        """Queue a score query (checked first: ``ValidationError`` naming the JSON path)."""
        plan = prepare_score(self.runtime, doc)
        query = plan.query
        job = QueryJob(
            id=query.id,
            kind="score",
            protocol=query.protocol,
            providers=query.providers,
            entities=len(query.entities),
            submitted_at=self.runtime.clock(),
        )
        return self._add(job, lambda j: self._score(j, plan))

    def submit_train(self, doc: Mapping[str, Any]) -> QueryJob:
        """Queue a joint training (checked first: ``ValidationError`` naming the JSON path)."""
        from connectors.node.training import prepare_train, train_job  # local: imports this module

        query = prepare_train(self.runtime, doc)
        job = QueryJob(
            id=query.id,
            kind="train",
            protocol=query.protocol,
            providers=query.providers,
            entities=len(query.entities),
            submitted_at=self.runtime.clock(),
        )

        def work(j: QueryJob) -> dict[str, Any]:
            j.progress("looking up the providers' ledger keys")
            vkeys = provider_vkeys(self.runtime, query.providers)
            return train_job(self.runtime, query, vkeys, j.progress)

        return self._add(job, work)

    def submit_aggregate(self, body: AggregateRequest) -> QueryJob:
        """Queue an aggregate (checked first)."""
        if "consumer" not in self.runtime.roles:
            raise ValidationError(f"{self.runtime.id} is not a consumer: it runs no queries")
        anchor = self.runtime.anchor
        if anchor is None:
            raise NotReadyError(f"{self.runtime.id} has no operator anchor")
        query = aggregate_query(body, anchor.operator_id)
        job = QueryJob(
            id=query.id,
            kind="aggregate",
            protocol=query.protocol,
            providers=(query.provider,),
            entities=len(query.cohort) + len(query.entities),
            submitted_at=self.runtime.clock(),
        )
        return self._add(job, lambda j: self._aggregate(j, query))

    # -- running ---------------------------------------------------------------------------
    def _run(self, job: QueryJob, work: Callable[[QueryJob], dict[str, Any]]) -> None:
        with job._lock:
            if job.cancelling.is_set():
                return  # cancelled while queued: already ended by cancel()
            job.state = "running"
            job.stage = "starting"
            job.started_at = self.runtime.clock()
        try:
            self._save(job)
            result = work(job)
        except BaseException as exc:  # a job never raises into the pool
            if job.cancelling.is_set():
                # Whatever the step in flight raised (a party that already dropped the query
                # answers 409), the job ends as its staff asked.
                log.info("query %s cancelled by %s", job.id, job.cancelled_by)
                with job._lock:
                    job.state, job.stage = "cancelled", "cancelled"
                    job.finished_at = self.runtime.clock()
            elif isinstance(exc, TrustedSpaceError):
                log.info("query %s failed: %s", job.id, exc)
            else:
                log.exception("query %s failed", job.id)
            if not job.cancelling.is_set():
                error = _problem_of(exc)
                with job._lock:
                    job.state, job.error = "failed", error
                    job.finished_at = self.runtime.clock()
        else:
            with job._lock:
                job.state, job.stage, job.fraction, job.result = "done", "done", 1.0, result
                job.finished_at = self.runtime.clock()
        try:
            self._save(job)
        except TrustedSpaceError:  # the store failed: the job's end is still seen in memory
            log.exception("query %s: its end could not be stored", job.id)
        finally:
            job.finished.set()

    def _score(self, job: QueryJob, plan: _ScorePlan) -> dict[str, Any]:
        runtime = self.runtime
        query = plan.query
        anchor = runtime.anchor
        if anchor is None:
            raise NotReadyError(f"{runtime.id} has no operator anchor")
        job.progress("looking up the providers' ledger keys")
        vkeys = provider_vkeys(runtime, query.providers)
        query = with_catalog_ranges(runtime, query)
        node = compute_node(runtime)
        if node.transport is None:  # pragma: no cover - always set by build_compute_node
            raise NotReadyError("no transport")
        transport = ProgressTransport(
            node.transport, _CallCounter(job, _expected_score_calls(query)), runtime.id
        )
        job.progress("preparing keys")
        result = run_score(
            transport,
            runtime.id,
            anchor.operator_id,
            query,
            analyst_data=plan.analyst_data,
            analyst_impute=plan.impute,
            provider_vkeys=vkeys,
        )
        out = result.to_json()
        out["protocol"] = query.protocol
        out["link"] = query.model.link.to_json()
        return out

    def _aggregate(self, job: QueryJob, query: AggregateQuery) -> dict[str, Any]:
        node = compute_node(self.runtime)
        if node.transport is None:  # pragma: no cover
            raise NotReadyError("no transport")
        expected = 6 if query.cohort else 1
        transport = ProgressTransport(node.transport, _CallCounter(job, expected), self.runtime.id)
        job.progress("preparing keys")
        result = run_aggregate(transport, self.runtime.id, query)
        return aggregate_result_json(result)

    # -- cancelling ------------------------------------------------------------------------
    def cancel(self, query_id: str, by: str, *, timeout: float) -> QueryJob:
        """Cancel a queued or running job; the job, after up to ``timeout`` s for it to stop.

        The parties taking part are told at once (their in-flight step finishes; nothing of the
        query starts after), then the job's worker stops before its next call.

        Raises:
            NotFoundError: no such query on this node.
            ConflictError: the query has already ended (done, failed or cancelled).
        """
        ended = self.get(query_id)  # NotFoundError
        with self._lock:
            job = self._jobs.get(query_id)
            if job is None or job.finished.is_set():
                raise ConflictError(
                    f"query {query_id!r} has already ended ({ended.state}): nothing to cancel"
                )
            if job.cancelling.is_set():
                raise ConflictError(f"query {query_id!r} is already being cancelled")
            with job._lock:  # the worker decides under this lock whether the job starts
                job.cancelled_by = by
                job.cancelling.set()
                queued = job.started_at is None
                if queued:  # no party has heard of it: it ends here and never starts
                    job.state, job.stage, job.parties = "cancelled", "cancelled", {}
                    job.finished_at = self.runtime.clock()
                else:
                    job.stage = "cancelling"
        if queued:
            self._save(job)
            job.finished.set()
            return job
        job.parties = self._tell_parties(job)
        if job.finished.wait(timeout) and job.state == "cancelled":
            self._save(job)  # with the parties' answers, which may arrive after the worker ended
        return job

    def _tell_parties(self, job: QueryJob) -> dict[str, str]:
        runtime = self.runtime
        transport = compute_node(runtime).transport
        if transport is None:  # pragma: no cover - always set by build_compute_node
            return {}
        parties = list(job.providers)
        if runtime.anchor is not None:
            parties.append(runtime.anchor.operator_id)
        return cancel_at(transport, parties, job.id)

    # -- reading ---------------------------------------------------------------------------
    def get(self, query_id: str) -> QueryJob:
        with self._lock:
            job = self._jobs.get(query_id)
        if job is not None:
            return job
        with self.runtime.transaction(readonly=True) as tx:
            doc = tx.get(JOB_NAMESPACE, query_id)
            result = tx.get(RESULT_NAMESPACE, query_id)
        if doc is None:
            raise NotFoundError(f"no query {query_id!r} on this node")
        return QueryJob.from_record(
            doc.body, None if result is None else result_of_stored(result.body)
        )

    def jobs(self) -> list[QueryJob]:
        """Every job this node has run or runs, oldest first (without results)."""
        with self.runtime.transaction(readonly=True) as tx:
            stored = {d.key: QueryJob.from_record(d.body, None) for d in tx.scan(JOB_NAMESPACE)}
        with self._lock:
            stored.update(self._jobs)  # the live view of jobs this run holds
        return sorted(stored.values(), key=lambda j: (j.submitted_at, j.id))

    def wait(self, query_id: str, timeout: float) -> QueryJob:
        """The job, after waiting up to ``timeout`` seconds for it to finish."""
        job = self.get(query_id)
        if timeout > 0:
            job.finished.wait(timeout)
        return job

    def shutdown(self) -> None:
        """Refuse new queries; queued ones are dropped, running ones finish in the background."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)


def runner_for(runtime: NodeRuntime) -> QueryRunner:
    """The runtime's query runner, created on first use (kept by the runtime)."""
    return runtime.service(QueryRunner, QueryRunner)


def shutdown(runtime: NodeRuntime) -> None:
    """Stop the runtime's runner (at app shutdown)."""
    runner = runtime.drop_service(QueryRunner)
    if runner is not None:
        runner.shutdown()
