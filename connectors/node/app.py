"""``create_app(settings)``: one FastAPI app per node, with the routers of its roles.

=====================  =====================  ==============================================
router                 mounted on             who may call
=====================  =====================  ==============================================
node                   every node             anyone (health, identity)
metrics                every node             the node's staff (Prometheus text, /metrics)
dsp_catalog            every node             anyone (open tier) / members (their view)
dsp_negotiation        provider, consumer     members (signed requests)
contracts_admin        provider, consumer     the node's staff (start/track negotiations)
dsp_transfer           provider, consumer     members; data pulls with a transfer token
compute                every node             members (signed requests, policy-checked)
ledger                 every node             anyone (proofs are public by design)
management             every node             the node's staff (admin token)
usage, audit           every node             the node's staff (dry run, usage, verification)
console                every node             anyone (the page); staff after sign-in
operator               operator               admin (admission), members, anyone (anchor)
queries_admin          consumer               the node's staff (run joint queries as analyst)
score_admin            consumer               the node's staff (score one or a few, synchronously)
operator_admin         operator               the node's staff (members, witness record)
=====================  =====================  ==============================================

Settings are read when this is called (at start), never at import. The runtime is built here so
the app is complete as soon as it exists (in-process tests and API fuzzing drive it without a
server); background jobs start with the ASGI lifespan and stop with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from connectors import __version__
from connectors.common.logs import RequestIds
from connectors.common.settings import NodeSettings
from connectors.node import negotiation, queries, serving
from connectors.node.apidocs import install_api_docs
from connectors.node.background import Background
from connectors.node.console import router as console
from connectors.node.console.sessions import SessionStore
from connectors.node.metrics import install_metrics
from connectors.node.problems import BodySizeLimit, document_problems, install_error_handlers
from connectors.node.routers import (
    audit,
    budgets,
    compute,
    contracts_admin,
    dsp_catalog,
    dsp_negotiation,
    dsp_transfer,
    ledger,
    lookup,
    lookup_admin,
    management,
    models,
    node,
    operator,
    operator_admin,
    queries_admin,
    score_admin,
    transfers_admin,
    usage,
)
from connectors.node.runtime import NodeRuntime

__all__ = ["create_app"]

_DESCRIPTION = """\
A connector node of a trusted data space: **data usable but not visible**.

Raw records never leave their owner; only agreed results leave, only to whoever is entitled to
them, and every use is written to this node's tamper-evident ledger.

Authentication: member-to-member calls carry a `TS-Request` token signed for that one request
(and the sender's `TS-Credential`); the node's own staff use `Authorization: Bearer <admin token>`
on `/management`. Errors are `application/problem+json` (RFC 9457).
"""


def create_app(
    settings: NodeSettings,
    *,
    runtime: NodeRuntime | None = None,
    transport: httpx.BaseTransport | None = None,
) -> FastAPI:
    """Build the node's app.

    Args:
        settings: the node's settings (see :mod:`connectors.common.settings`).
        runtime: an already built runtime (tests); default: built from ``settings``.
        transport: httpx transport for the node's outgoing calls (tests).
    """
    rt = runtime if runtime is not None else NodeRuntime(settings, transport=transport)
    background = Background(rt)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        background.start()
        if rt.roles & {"provider", "consumer"}:
            negotiation.resume(rt)  # steps a restarted node still owes its counter-parties
        try:
            yield
        finally:
            background.stop()
            negotiation.shutdown(rt)
            queries.shutdown(rt)
            serving.shutdown(rt)
            if runtime is None:  # we built it, so we close it (checkpoints the SQLite WAL)
                rt.close()

    app = FastAPI(
        title=f"trusted-space node {rt.id}",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from local assets by install_api_docs: no CDN
        redoc_url=None,
    )
    app.state.runtime = rt
    app.state.background = background
    app.state.console_sessions = SessionStore()
    install_error_handlers(app)
    install_api_docs(app)
    install_metrics(app)

    def limit_for(path: str) -> int:
        if path.startswith(("/compute", "/management/queries")):
            return settings.max_compute_body_bytes
        return settings.max_body_bytes

    app.add_middleware(BodySizeLimit, limit_for=limit_for)
    # Outermost: the request id is set before anything else runs and is on every answer.
    app.add_middleware(RequestIds, access_log=settings.log_format == "json")

    app.include_router(node.router)
    app.include_router(dsp_catalog.router)
    app.include_router(ledger.router)
    app.include_router(management.router)
    app.include_router(usage.router)
    app.include_router(budgets.router)
    app.include_router(models.router)
    app.include_router(audit.router)
    app.include_router(console.router)
    app.include_router(compute.router)
    if rt.roles & {"provider", "consumer"}:
        app.include_router(dsp_negotiation.router)
        app.include_router(contracts_admin.router)
        app.include_router(dsp_transfer.router)
        app.include_router(transfers_admin.router)
        app.include_router(lookup.router)
    if "consumer" in rt.roles:
        app.include_router(queries_admin.router)
        app.include_router(score_admin.router)
        app.include_router(lookup_admin.router)
    if rt.is_operator:
        app.include_router(operator.router)
        app.include_router(operator_admin.router)
    document_problems(app)
    return app
