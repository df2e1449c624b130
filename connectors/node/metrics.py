"""``GET /metrics``: the node's health in Prometheus text format (version 0.0.4), for its staff.

What an operator of a node watches:

* ``ts_http_requests_total{method,route,status}`` and ``ts_http_request_duration_seconds``
  (a histogram per route): the route is the matched path template (``/management/queries/{id}``),
  never the raw path, so ids do not become labels;
* ``ts_policy_decisions_total{outcome}``: ``allowed`` / ``refused`` decisions on this node's
  ledger (tallied incrementally from the ledger's ``policy.decision`` entries);
* ``ts_queries{kind,protocol,state}``: the analyst queries this node holds (consumers);
* ``ts_ledger_entries`` and ``ts_witness_lag_entries`` (entries not yet covered by a checkpoint
  the operator's witness cosigned: a member whose lag keeps growing is not being witnessed).

The page needs the admin token (``Authorization: Bearer``, as Prometheus' ``bearer_token_file``
sends it): counts of decisions and queries are the institution's own business. No label carries
a secret, a dataset's content or a caller's identity. Written by hand rather than with
``prometheus_client``: a dozen lines of text format, no global registry to share between the
many apps a test process builds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.node.deps import AdminDep, RuntimeDep
from connectors.node.runtime import NodeRuntime
from trusted_space.events import EVENT_LOG, decode_event

__all__ = ["BUCKETS", "CONTENT_TYPE", "Metrics", "install_metrics", "metrics_page", "router"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (seconds) of the latency histogram."""
_COSIGNED_NAMESPACE = "ledger_cosigned"  # connectors.node.federation: the heads the witness signed

router = APIRouter(tags=["node"])


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}"


class Metrics:
    """The counters of one app (one node), kept in memory since it started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self.decisions: Counter[str] = Counter()
        self._decisions_seen = 0  # ledger entries already tallied

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            counts = self.buckets.setdefault(route, [0] * (len(BUCKETS) + 1))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self.sums[route] = self.sums.get(route, 0.0) + seconds

    def _tally_decisions(self, runtime: NodeRuntime) -> int:
        """Read the ledger entries written since the last scrape; return the ledger's size."""
        with runtime.transaction(readonly=True) as tx:
            size = int(tx.log_size(EVENT_LOG))
            start = self._decisions_seen
            entries = tx.log_entries(EVENT_LOG, start, size) if size > start else []
        for offset, entry in enumerate(entries):
            event = decode_event(start + offset, entry)
            if event.kind == "policy.decision":
                outcome = "allowed" if event.body.get("allowed") is True else "refused"
                self.decisions[outcome] += 1
        self._decisions_seen = size
        return size

    def render(self, runtime: NodeRuntime) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            size = self._tally_decisions(runtime)
            family("ts_http_requests_total", "counter", "HTTP requests answered, by route.")
            for (method, route, status), n in sorted(self.requests.items()):
                labels = _labels({"method": method, "route": route, "status": status})
                lines.append(f"ts_http_requests_total{labels} {n}")
            family("ts_http_request_duration_seconds", "histogram", "Time to answer, by route.")
            for route, counts in sorted(self.buckets.items()):
                for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                    labels = _labels({"route": route, "le": bound})
                    lines.append(f"ts_http_request_duration_seconds_bucket{labels} {n}")
                labels = _labels({"route": route})
                lines.append(f"ts_http_request_duration_seconds_sum{labels} {self.sums[route]}")
                lines.append(f"ts_http_request_duration_seconds_count{labels} {counts[-1]}")
            family("ts_policy_decisions_total", "counter", "Usage-policy decisions, by outcome.")
            for outcome in ("allowed", "refused"):
                n = self.decisions[outcome]
                lines.append(f'ts_policy_decisions_total{{outcome="{outcome}"}} {n}')
        family("ts_ledger_entries", "gauge", "Entries in this node's ledger.")
        lines.append(f"ts_ledger_entries {size}")
        with runtime.transaction(readonly=True) as tx:
            cosigned = tx.scan(_COSIGNED_NAMESPACE)
        witnessed = int(cosigned[-1].body["size"]) if cosigned else 0
        family(
            "ts_witness_lag_entries",
            "gauge",
            "Ledger entries not yet in a checkpoint the operator's witness cosigned.",
        )
        lines.append(f"ts_witness_lag_entries {max(0, size - witnessed)}")
        family("ts_queries", "gauge", "Analyst queries held by this node, by state.")
        if "consumer" in runtime.roles:
            from connectors.node.queries import runner_for  # local: consumers only

            held: Counter[tuple[str, str, str]] = Counter(
                (j.kind, j.protocol, j.state) for j in runner_for(runtime).jobs()
            )
            for (kind, protocol, state), n in sorted(held.items()):
                labels = _labels({"kind": kind, "protocol": protocol, "state": state})
                lines.append(f"ts_queries{labels} {n}")
        return "\n".join(lines) + "\n"


class _CountRequests:
    """Pure ASGI middleware: counts each HTTP request by route, status and time to answer.

    Not ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs the rest of the app
    in a task of its own and re-streams every response body through a memory channel, a fixed
    cost on every call between nodes and a copy of every large result (decision 59).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before it starts a response

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route: Any = scope.get("route")  # set by the router in this same scope
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(
                str(scope["method"]), str(path), status, time.perf_counter() - started
            )


def install_metrics(app: FastAPI) -> None:
    """Count every request of ``app`` and serve ``GET /metrics``."""
    metrics = Metrics()
    app.state.metrics = metrics
    app.add_middleware(_CountRequests, metrics=metrics)
    app.include_router(router)


@router.get("/metrics", response_class=Response, include_in_schema=True)
def metrics_page(_: AdminDep, runtime: RuntimeDep, request: Request) -> Response:
    """The node's metrics in Prometheus text format (admin token required)."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(runtime), media_type=CONTENT_TYPE)
