"""The auditor's routes on any node (staff only): read the ledger, verify ledgers and receipts.

- ``GET /management/ledger/events?start=&limit=``: this node's own ledger, decoded (newest
  first when ``start`` is omitted). Public proofs stay at ``/ledger``; this is the readable view
  for the node's own staff, who may read everything their node logged.
- ``POST /management/verify/ledger`` ``{"member", "vkey"?}``: this node downloads the member's
  whole ledger and checks it as ``trusted-space ledger verify`` does
  (:func:`connectors.client.verify.verify_node`: recomputed root, signed checkpoint, inclusion
  proofs, the operator's witness cosignatures). The member's URL comes from this node's registry,
  never from the caller, so the route cannot be pointed at arbitrary hosts.
- ``POST /management/verify/receipt`` (a receipt as returned with a result): the receipt's
  signed checkpoint, inclusion proof and entry, and that its key is the key the operator
  registered for the participant it names.
- ``GET /management/catalog``: the space's federated catalog as this member sees it (the request
  to the operator is signed with this node's key), for browsing from the console.

Threats: a verification failure is reported check by check (it is the auditor's own node
answering its own staff; there is no oracle to hide). Fetches use short timeouts.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Body, Depends, Query

from connectors.client.catalog import catalog_rows, fetch_catalog
from connectors.client.verify import verify_node
from connectors.node.deps import RuntimeDep, require_admin
from connectors.node.federation import plain_client
from connectors.node.runtime import NodeRuntime
from connectors.node.wire.console import (
    FederatedCatalog,
    LedgerEventsPage,
    LedgerEventView,
    LedgerVerifyRequest,
    ReceiptCheckView,
    VerifyReport,
)
from trusted_space.errors import ConflictError, NotFoundError, TrustedSpaceError
from trusted_space.events import EVENT_LOG, decode_event
from trusted_space.identity import check_participant_id
from trusted_space.keys import VerifyKey
from trusted_space.ledger import Receipt
from trusted_space.notes import parse_vkey

__all__ = ["federated_catalog", "ledger_events", "router", "verify_ledger", "verify_receipt"]

MAX_EVENTS = 500
_VERIFY_TIMEOUT = 30.0

router = APIRouter(prefix="/management", tags=["audit"], dependencies=[Depends(require_admin)])


@router.get("/ledger/events")
def ledger_events(
    runtime: RuntimeDep,
    start: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 100,
) -> LedgerEventsPage:
    """Entries of this node's ledger, decoded; without ``start`` the newest ``limit``."""
    with runtime.transaction(readonly=True) as tx:
        size = tx.log_size(EVENT_LOG)
        first = max(0, size - limit) if start is None else min(start, size)
        raw = tx.log_entries(EVENT_LOG, first, min(size, first + limit))
    events = []
    for offset, entry in enumerate(raw):
        try:
            event = decode_event(first + offset, entry)
        except ValueError:
            events.append(LedgerEventView(index=first + offset, kind="?", time=None, body={}))
            continue
        events.append(
            LedgerEventView(index=event.index, kind=event.kind, time=event.time, body=event.body)
        )
    following = first + len(raw)
    if start is None:
        events.reverse()
    more = start is not None and following < size
    return LedgerEventsPage(
        size=size,
        events=events,
        next=f"/management/ledger/events?start={following}&limit={limit}" if more else None,
    )


def _operator_url(runtime: NodeRuntime) -> tuple[str, str]:
    if runtime.anchor is None:
        raise ConflictError(f"{runtime.id} has no operator anchor: it is not part of a space yet")
    return runtime.anchor.url, runtime.anchor.operator_id


def _registered_key(runtime: NodeRuntime, participant: str) -> VerifyKey:
    """The participant's key as this node knows it, else as the operator's registry has it."""
    try:
        return runtime.resolve_key(participant)
    except NotFoundError:
        operator_url, operator_id = _operator_url(runtime)
        record = runtime.client.get_json(
            f"{operator_url}/operator/participants/{participant}", audience=operator_id
        )
        return VerifyKey.from_b64(str(record["publicKey"]))


@router.post("/verify/ledger")
def verify_ledger(body: LedgerVerifyRequest, runtime: RuntimeDep) -> VerifyReport:
    """Verify a member's whole ledger from outside, against the operator's witness."""
    member = check_participant_id(body.member)
    operator_url, _ = _operator_url(runtime)
    try:
        url = runtime.peer_url(member)
    except NotFoundError:
        raise
    except (TrustedSpaceError, httpx.HTTPError) as exc:
        raise NotFoundError(f"member {member!r}: no URL known here or at the operator") from exc
    with plain_client(runtime, timeout=_VERIFY_TIMEOUT) as client:
        report = verify_node(client, url, vkey=body.vkey, operator=operator_url)
    doc = report.to_json()
    return VerifyReport(
        member=member,
        node=url,
        ok=report.ok,
        checks=list(doc["checks"]),
        events=dict(doc["kinds"]),
        entries=report.size or 0,
    )


@router.post("/verify/receipt")
def verify_receipt(
    runtime: RuntimeDep, receipt: Annotated[dict[str, Any], Body()]
) -> ReceiptCheckView:
    """Check one receipt: proof, signed checkpoint, and the signer's registered key."""
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: str) -> bool:
        checks.append({"name": name, "ok": ok, "detail": detail})
        return ok

    participant = receipt.get("participant")
    pid = participant if isinstance(participant, str) else None
    event: dict[str, Any] | None = None
    try:
        parsed = Receipt.from_json(receipt)
        add("format", True, f"receipt of entry {parsed.index}")
    except TrustedSpaceError as exc:
        add("format", False, str(exc))
        return ReceiptCheckView(ok=False, participant=pid, checks=checks, event=None)
    vkey = receipt.get("vkey")
    try:
        verifier = parse_vkey(str(vkey))
        registered = _registered_key(runtime, check_participant_id(str(pid)))
        add(
            "signer key",
            verifier.key == registered,
            f"the receipt's key is {pid}'s registered key"
            if verifier.key == registered
            else f"the receipt's key is not the key registered for {pid}",
        )
    except (TrustedSpaceError, httpx.HTTPError) as exc:
        add("signer key", False, f"cannot check the key of {pid!r}: {exc}")
    try:
        checkpoint = parsed.verify(str(vkey))
        add(
            "inclusion proof",
            True,
            f"entry {parsed.index} is in the signed checkpoint of size {checkpoint.size}",
        )
        event = asdict(decode_event(parsed.index, parsed.entry))
    except (TrustedSpaceError, ValueError, KeyError, TypeError) as exc:
        add("inclusion proof", False, f"does not verify ({type(exc).__name__})")
    return ReceiptCheckView(
        ok=all(c["ok"] for c in checks), participant=pid, checks=checks, event=event
    )


@router.get("/catalog")
def federated_catalog(runtime: RuntimeDep) -> FederatedCatalog:
    """The federated catalog as this member sees it (the request is signed with its key)."""
    operator_url, operator_id = _operator_url(runtime)
    catalog = fetch_catalog(
        operator_url, federated=True, signer=runtime.client, audience=operator_id
    )
    return FederatedCatalog(rows=catalog_rows(catalog), catalog=catalog)
