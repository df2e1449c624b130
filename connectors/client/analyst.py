"""The analyst's Python client: a bank's staff or scripts run joint queries through their node.

The analyst's node holds the keys and orchestrates (:mod:`connectors.node.queries`); this client
only
talks to that node's admin API with its admin token::

    from connectors.client.analyst import AnalystClient
    from trusted_space.queries.score import ScoreQuery

    with AnalystClient.from_dir("nodes/bank-a") as bank:
        query = bank.score_query(model, entities, protocol="ckks", purpose="pre-loan-review")
        result = bank.score(query, progress=lambda p: print(p.stage, p.fraction))
        print(result.outputs[:5], result.receipts.keys())

:meth:`AnalystClient.score_query` fills in, for each provider the model names, the agreement this
node holds with it (finalized and valid now) and the dataset it covers, and for the node's own
columns the dataset of its own that holds them. :meth:`score` and :meth:`aggregate` submit, then
poll ``GET /management/queries/{id}?wait=`` (long polls: the answer comes as soon as the query
ends) and call ``progress`` with each update. A failed query raises :class:`QueryFailed` with the
node's problem document: when a provider refused, ``peer`` names it and ``trace`` is its policy
trace.

Threats: the admin token is the node's master key for its staff; it is sent only to the node's
URL (over loopback or TLS in deployment) and never printed.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from connectors.client.http import AdminClient
from connectors.common.columnar import ARROW_STREAM, query_to_arrow, result_from_arrow
from connectors.common.errors import ConnectorError
from connectors.common.settings import load_settings
from connectors.common.tls import client_context
from trusted_space.errors import RemoteError
from trusted_space.queries.aggregate import AggregateResult
from trusted_space.queries.score import Model, ScoreQuery, ScoreResult

__all__ = [
    "AnalystClient",
    "QueryCancelled",
    "QueryFailed",
    "QueryProgress",
    "aggregate_result_from_json",
    "score_result_from_json",
]

_POLL_WAIT = 2.0


class QueryFailed(ConnectorError):
    """A query ended in ``failed``; ``problem`` is the node's problem document.

    Attributes:
        query_id: the query.
        problem: ``type``, ``title``, ``detail``; for a provider's refusal also ``peer`` (the
            provider), ``peerStatus`` and ``trace`` (its policy trace).
        peer: the refusing provider (``peer``, or the refusal's ``participant``).
    """

    def __init__(self, query_id: str, problem: Mapping[str, Any]) -> None:
        self.query_id = query_id
        self.problem = dict(problem)
        where = f"{self.peer}: " if self.peer else ""
        what = f"query {query_id} failed" if query_id else "refused"
        super().__init__(f"{what}: {where}{self.problem.get('detail', '')}")

    @property
    def peer(self) -> str | None:
        peer = self.problem.get("peer") or self.problem.get("participant")
        return peer if isinstance(peer, str) else None

    @property
    def trace(self) -> list[dict[str, Any]]:
        trace = self.problem.get("trace")
        return [dict(s) for s in trace] if isinstance(trace, list) else []


class QueryCancelled(QueryFailed):
    """A query ended ``cancelled``: ``by`` who cancelled it, ``parties`` each party's answer."""

    def __init__(self, query_id: str, by: str, parties: Mapping[str, str]) -> None:
        self.by = by
        self.parties = dict(parties)
        super().__init__(
            query_id,
            {"title": "Cancelled", "status": 409, "detail": f"cancelled by {by}"},
        )


@dataclass(frozen=True)
class QueryProgress:
    """One progress update of a running query."""

    id: str
    state: str
    stage: str
    fraction: float


def score_result_from_json(doc: Mapping[str, Any]) -> ScoreResult:
    """A :class:`ScoreResult` from its JSON (``ScoreResult.to_json``)."""
    bands = doc.get("bands")
    return ScoreResult(
        query_id=str(doc["query"]),
        entities=tuple(str(e) for e in doc["entities"]),
        logits=np.asarray(doc.get("logits", []), dtype=np.float64),
        outputs=np.asarray(doc.get("outputs", []), dtype=np.float64),
        bands=None if bands is None else np.asarray(bands, dtype=np.int64),
        band_edges=tuple(float(e) for e in doc.get("bandEdges", [])),
        missing={str(p): tuple(m) for p, m in dict(doc.get("missing", {})).items()},
        receipts={str(p): dict(r) for p, r in dict(doc.get("receipts", {})).items()},
        timings={str(k): float(v) for k, v in dict(doc.get("timings", {})).items()},
    )


def aggregate_result_from_json(doc: Mapping[str, Any]) -> AggregateResult:
    """An :class:`AggregateResult` from its JSON (``node.wire.queries.aggregate_result_json``)."""
    value = doc.get("value")
    return AggregateResult(
        query_id=str(doc["query"]),
        statistic=str(doc["statistic"]),
        protocol=str(doc["protocol"]),
        value=float("nan") if value is None and doc["statistic"] == "mean" else value,
        counts=tuple(float(c) for c in doc.get("counts", [])),
        bins=tuple(float(b) for b in doc.get("bins", [])),
        cohort_size=int(doc["cohortSize"]),
        epsilon=doc.get("epsilon"),
        noise_scales=tuple(float(s) for s in doc.get("noiseScales", [])),
        missing=tuple(str(m) for m in doc.get("missing", [])),
        receipts=tuple(dict(r) for r in doc.get("receipts", [])),
    )


class AnalystClient:
    """Runs joint queries from the analyst's node (its admin API).

    Args:
        node_url: the analyst node's URL.
        admin_token: its admin token (see :meth:`from_dir`).
        timeout: seconds per HTTP call.
        poll: seconds between progress updates while a query runs (long polls).
        transport: an httpx transport (tests).
        verify: how an ``https`` node is checked (as for
            :class:`~connectors.client.http.SignedClient`).
        binary: send a score's ids and read its result as Arrow IPC streams
            (:mod:`connectors.common.columnar`); ``False``: JSON throughout.
    """

    def __init__(
        self,
        node_url: str,
        admin_token: str,
        *,
        timeout: float = 300.0,
        poll: float = _POLL_WAIT,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        binary: bool = True,
    ) -> None:
        self.node_url = node_url.rstrip("/")
        self.poll = poll
        self.binary = binary
        self._http = AdminClient(
            self.node_url,
            admin_token,
            timeout=max(timeout, poll + 10),
            transport=transport,
            verify=verify,
        )
        self._id: str | None = None

    @classmethod
    def from_dir(cls, node_dir: str | Path, *, url: str | None = None, **kw: Any) -> AnalystClient:
        """The client of the node in ``node_dir`` (URL from its settings, token from its keys)."""
        settings = load_settings(node_dir)
        token = settings.layout.admin_token.read_text(encoding="utf-8").strip()
        kw.setdefault("verify", client_context(settings))
        return cls(url or settings.url, token, **kw)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AnalystClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- what the node knows -------------------------------------------------------------------
    @property
    def participant_id(self) -> str:
        """The analyst node's participant id."""
        if self._id is None:
            self._id = str(self._http.get("/identity")["id"])
        return self._id

    def agreements(self) -> list[dict[str, Any]]:
        """Agreements the node holds (``GET /management/agreements``)."""
        return list(self._http.get("/management/agreements"))

    def resolve_agreements(
        self, providers: Sequence[str], given: Mapping[str, str] | None = None
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Agreement and dataset per provider: ``given`` ids, else the one usable agreement.

        Returns:
            ``(agreements, datasets)``, provider id → id.

        Raises:
            ValueError: a provider with no usable agreement, or several (name one).
        """
        me = self.participant_id
        agreements: dict[str, str] = {}
        datasets: dict[str, str] = {}
        views = self.agreements()
        by_id = {v["id"]: v for v in views}
        for p in providers:
            if given and p in given:
                view = by_id.get(given[p])
                if view is None:
                    raise ValueError(f"{me} holds no agreement {given[p]!r}")
                if view["agreement"].get("assigner") != p:
                    raise ValueError(f"agreement {given[p]!r} is not with {p}")
            else:
                usable = [
                    v
                    for v in views
                    if v.get("authorises")
                    and v["agreement"].get("assigner") == p
                    and v["agreement"].get("assignee") == me
                ]
                if not usable:
                    raise ValueError(f"{me} holds no usable agreement with {p}; negotiate first")
                if len(usable) > 1:
                    ids = ", ".join(sorted(v["id"] for v in usable))
                    raise ValueError(f"several agreements with {p} ({ids}): name one")
                view = usable[0]
            agreements[p] = str(view["id"])
            datasets[p] = str(view["agreement"]["target"])
        return agreements, datasets

    def own_dataset(self, columns: Sequence[str]) -> str:
        """The one dataset this node published that holds every column in ``columns``."""
        matches = []
        for summary in self._http.get("/management/datasets"):
            view = self._http.get(f"/management/datasets/{quote(str(summary['id']), safe='')}")
            names = {f["name"] for f in view["dataset"]["table"]["fields"]}
            if set(columns) <= names:
                matches.append(str(summary["id"]))
        if len(matches) != 1:
            found = "none" if not matches else ", ".join(matches)
            raise ValueError(
                f"datasets of {self.participant_id} with columns {list(columns)}: {found}"
            )
        return matches[0]

    def score_query(
        self,
        model: Model | Mapping[str, Any],
        entities: Sequence[str],
        *,
        protocol: str,
        purpose: str,
        agreements: Mapping[str, str] | None = None,
        datasets: Mapping[str, str] | None = None,
        providers: Sequence[str] = (),
        **kw: Any,
    ) -> ScoreQuery:
        """A score query whose agreements and datasets are resolved from what the node holds.

        Args:
            model: the model (or its JSON).
            entities: the ids to score.
            protocol: ``paillier``, ``ckks`` or ``additive``.
            purpose: the declared purpose.
            agreements: agreement ids to use for some providers (others: the one usable).
            datasets: dataset ids to use (the node's own dataset, if it is ambiguous).
            providers: more providers than the model names: in ``party-held`` mode the model
                file names only the analyst's own part, the providers hold theirs.
            **kw: other :class:`ScoreQuery` fields (``mode``, ``cohort``, ``id_kind``,
                ``missing``, ...). No bound is needed: the node scales each provider column by
                the range its catalog declares (a column that declares none is refused).
        """
        parsed = model if isinstance(model, Model) else Model.from_json(model)
        me = self.participant_id
        named = [p for p in parsed.parties if p != me]
        wanted = [*named, *(p for p in dict.fromkeys(providers) if p not in named and p != me)]
        found_agreements, found_datasets = self.resolve_agreements(wanted, agreements)
        all_datasets = {**found_datasets, **dict(datasets or {})}
        own = parsed.columns(me)
        if own and me not in all_datasets:
            all_datasets[me] = self.own_dataset(own)
        kw.setdefault("mode", "analyst-held")
        return ScoreQuery(
            purpose=purpose,
            protocol=protocol,
            model=parsed,
            agreements=found_agreements,
            datasets=all_datasets,
            entities=tuple(entities),
            **kw,
        )

    # -- running -------------------------------------------------------------------------------
    def submit_score(self, query: ScoreQuery | Mapping[str, Any]) -> dict[str, Any]:
        """Queue a score query at the node; returns its view (``state`` ``queued``)."""
        doc = query.to_json() if isinstance(query, ScoreQuery) else dict(query)
        if not self.binary:
            return dict(self._http.post("/management/queries/score", doc))
        response = self._http.request(
            "POST",
            "/management/queries/score",
            content=query_to_arrow(doc),
            headers={"Content-Type": ARROW_STREAM},
        )
        return dict(response.json())

    def submit_train(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Queue a joint training (:class:`trusted_space.protocols.train.TrainQuery` JSON)."""
        return dict(self._http.post("/management/queries/train", dict(doc)))

    def submit_aggregate(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Queue an aggregate (:class:`~connectors.node.wire.queries.AggregateRequest` JSON)."""
        return dict(self._http.post("/management/queries/aggregate", dict(body)))

    def status(self, query_id: str, *, wait: float = 0.0, result: bool = True) -> dict[str, Any]:
        """The query's view after up to ``wait`` seconds (``result``: its result once done)."""
        path = f"/management/queries/{quote(query_id, safe=':')}"
        params: dict[str, Any] = {"wait": wait} if wait else {}
        if not result:
            params["result"] = "false"
        return dict(self._http.get(path, params=params or None))

    def result(self, query_id: str) -> dict[str, Any]:
        """A finished query's result JSON; a score's read as an Arrow stream when ``binary``."""
        path = f"/management/queries/{quote(query_id, safe=':')}/result"
        if not self.binary:
            return dict(self._http.get(path))
        accept = f"{ARROW_STREAM}, application/json;q=0.5"
        response = self._http.request("GET", path, headers={"Accept": accept})
        if response.headers.get("content-type", "").startswith(ARROW_STREAM):
            return result_from_arrow(response.content)
        return dict(response.json())

    def cancel(self, query_id: str, *, by: str = "staff") -> dict[str, Any]:
        """Cancel a queued or running query at every party; its view (``cancelled``).

        Raises:
            RemoteError: ``404`` unknown id; ``409`` it has already ended.
        """
        path = f"/management/queries/{quote(query_id, safe=':')}"
        view = dict(self._http.delete(path, params={"by": by}))
        if view["state"] != "cancelled":  # its worker was still finishing a step: follow it
            view = self.status(query_id, wait=self.poll)
        return view

    def wait(
        self,
        query_id: str,
        *,
        progress: Callable[[QueryProgress], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Follow a query to its end; return its result.

        Raises:
            QueryFailed: it failed (a provider's refusal: ``peer`` and ``trace``).
            TimeoutError: still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            view = self.status(query_id, wait=self.poll, result=not self.binary)
            if progress is not None:
                progress(
                    QueryProgress(query_id, view["state"], view["stage"], float(view["fraction"]))
                )
            if view["state"] == "done":
                return self.result(query_id) if self.binary else dict(view["result"])
            if view["state"] == "failed":
                raise QueryFailed(query_id, view.get("error") or {})
            if view["state"] == "cancelled":
                raise QueryCancelled(
                    query_id, str(view.get("cancelledBy")), view.get("parties") or {}
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"query {query_id} still {view['state']} ({view['stage']})")

    def score(
        self,
        query: ScoreQuery | Mapping[str, Any],
        *,
        progress: Callable[[QueryProgress], None] | None = None,
        timeout: float | None = None,
    ) -> ScoreResult:
        """Run a score query at the node and return its result (receipts checked by the node)."""
        view = self.submit_score(query)
        return score_result_from_json(self.wait(view["id"], progress=progress, timeout=timeout))

    def score_json(
        self,
        query: ScoreQuery | Mapping[str, Any],
        *,
        progress: Callable[[QueryProgress], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """As :meth:`score`, returning the result JSON (with ``protocol`` and ``link``)."""
        view = self.submit_score(query)
        return self.wait(view["id"], progress=progress, timeout=timeout)

    def lookup(
        self,
        provider: str,
        agreement_id: str,
        dataset_id: str,
        entities: Sequence[str],
        columns: Sequence[str],
        *,
        purpose: str,
        query_id: str | None = None,
    ) -> dict[str, Any]:
        """A few entities' columns of a provider's conditional dataset, with its receipt.

        The answer: ``queryId``, ``datasetId``, ``columns``, ``rows`` (``entity``, ``found``,
        ``values``; one per distinct entity, in order), ``receipt`` (checked by the node against
        the provider's key at the operator) and ``provider``.

        Raises:
            QueryFailed: refused by the provider (``trace`` in ``problem``).
            RemoteError: a bad request (400), or the provider failed (502).
        """
        body: dict[str, Any] = {
            "provider": provider,
            "agreementId": agreement_id,
            "datasetId": dataset_id,
            "entities": list(entities),
            "columns": list(columns),
            "purpose": purpose,
        }
        if query_id is not None:
            body["queryId"] = query_id
        try:
            return dict(self._http.post("/management/lookup", body))
        except RemoteError as exc:
            if exc.status == 403 and "trace" in exc.problem:
                raise QueryFailed(query_id or "", exc.problem) from exc
            raise

    def score_now(self, query: ScoreQuery | Mapping[str, Any]) -> dict[str, Any]:
        """Score one or a few entities and wait (``POST /management/score``, one round trip).

        The node runs the request in a standing session, together with others that arrive at
        the same time; the answer is this request's alone: ``query`` (its id, which its
        providers' uses name), ``entities``, ``logits``, ``outputs``, ``missing``, ``receipts``
        (one per provider, checked by the node), ``run`` (requests in its run), ``timings``.

        Raises:
            QueryFailed: refused (``peer``, ``trace``; every refusal under
                ``problem["refusals"]``, receipts of the providers that recorded a use under
                ``problem["receipts"]``).
            RemoteError: a bad request (400) or a failed run (a provider's status or 502).
        """
        doc = query.to_json() if isinstance(query, ScoreQuery) else dict(query)
        try:
            return dict(self._http.post("/management/score", doc))
        except RemoteError as exc:
            if exc.status == 403 and "refusals" in exc.problem:
                raise QueryFailed(str(exc.problem.get("query", "")), exc.problem) from exc
            raise

    def serving_sessions(self) -> list[dict[str, Any]]:
        """The node's standing scoring sessions (``GET /management/score/sessions``)."""
        return list(self._http.get("/management/score/sessions"))

    def rotate_keys(self, session: str | None = None) -> list[dict[str, Any]]:
        """Fresh keys for one standing session (its id) or all, from their next run."""
        params = {"session": session} if session else None
        return list(self._http.post("/management/score/sessions/rotate", None, params=params))

    def aggregate(
        self,
        body: Mapping[str, Any],
        *,
        progress: Callable[[QueryProgress], None] | None = None,
        timeout: float | None = None,
    ) -> AggregateResult:
        """Run an aggregate at the node and return its result."""
        view = self.submit_aggregate(body)
        result = self.wait(view["id"], progress=progress, timeout=timeout)
        return aggregate_result_from_json(result)
