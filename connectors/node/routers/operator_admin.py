"""The operator's staff view of the space: members, their state, and the witness record.

- ``GET /operator/members``: every admitted member with roles, URL, key fingerprint, ledger
  origin, credential expiry and state (``admitted`` / ``revoked``), and what the witness knows of
  its ledger: the latest cosigned checkpoint (size, root), the member's current size (asked with
  a short timeout; ``None`` when it does not answer), the lag between the two, the number of
  refused submissions (fork evidence kept by the witness) and alarms derived from those.

Mounted on the operator only, staff only (``require_admin``). Members read the registry through
the signed ``GET /operator/participants``; this view is for running the space. No credential
token or key is in it, only fingerprints.

Alarms today: a member whose checkpoints the witness refused (``fork evidence``), one whose
last submission was refused (rolled back, rewritten, or an unregistered key), one that stopped
submitting (``witness_silence``), one that is unreachable, one whose ledger grew past
:data:`LAG_ALARM` entries without being witnessed. The same record is public at
``GET /operator/witness/logs``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi import APIRouter, Depends

from connectors.node.deps import RuntimeDep, require_admin
from connectors.node.federation import plain_client
from connectors.node.pagination import PagerDep
from connectors.node.runtime import NodeRuntime
from connectors.node.wire.console import MemberStatus
from trusted_space.errors import ConflictError, TrustedSpaceError
from trusted_space.ledger import FORK_NAMESPACE, WitnessState
from trusted_space.notes import parse_checkpoint, parse_note

__all__ = ["LAG_ALARM", "members", "router"]

LAG_ALARM = 1000
"""Entries logged since the latest cosigned checkpoint beyond which a member is flagged."""

_PARTICIPANTS = "participant"  # connectors.node.routers.operator.PARTICIPANT_NAMESPACE
_MEMBERS = "member"  # trusted_space.identity keeps each member's current credential here
_PROBE_TIMEOUT = 2.0

router = APIRouter(prefix="/operator", tags=["operator"], dependencies=[Depends(require_admin)])


def _current_size(runtime: NodeRuntime, url: str | None) -> int | None:
    if not url:
        return None
    try:
        with plain_client(runtime, timeout=_PROBE_TIMEOUT) as client:
            response = client.get(f"{url.rstrip('/')}/ledger/checkpoint")
            response.raise_for_status()
        return parse_checkpoint(parse_note(response.text).text).size
    except (httpx.HTTPError, TrustedSpaceError, ValueError):
        return None


@router.get("/members")
def members(
    runtime: RuntimeDep,
    pages: PagerDep,
) -> list[MemberStatus]:
    """Every member with its state and witness record (sizes probed concurrently; paged by id)."""
    if runtime.authority is None:
        raise ConflictError("this node is not an operator")
    directory = runtime.authority.directory
    witness = WitnessState(runtime.store)
    rows = []
    with runtime.transaction(readonly=True) as tx:
        for doc in tx.scan(_MEMBERS):
            pid = doc.key
            if pid == runtime.id:
                continue
            credential = directory.get(tx, pid)
            record = tx.get(_PARTICIPANTS, pid)
            body = dict(record.body) if record is not None else {}
            forks = len(tx.scan(FORK_NAMESPACE, f"{body.get('origin', pid)}/"))
            revoked = directory.is_revoked(tx, credential.credential_id)
            rows.append((pid, credential, body, forks, revoked))
    rows = pages(rows, lambda r: (r[0],))
    urls = [str(b["url"]) if b.get("url") and not r else None for _, _, b, _, r in rows]
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(lambda u: _current_size(runtime, u), urls))
    out = []
    for (pid, credential, body, forks, revoked), size in zip(rows, sizes, strict=True):
        origin = body.get("origin")
        latest = witness.latest(str(origin)) if origin else None
        lag = None if size is None or latest is None else max(0, size - latest.size)
        alarms = []
        if forks:
            alarms.append(f"the witness refused {forks} checkpoint(s): fork evidence kept")
        if size is None and not revoked:
            alarms.append("its ledger does not answer")
        if lag is not None and lag > LAG_ALARM:
            alarms.append(f"{lag} entries not witnessed yet")
        watch = witness.watch(str(origin)) if origin else {}
        if watch.get("last_refused") is True:
            alarms.append(f"its last checkpoint was refused: {watch.get('last_refusal')}")
        if watch.get("silent_since") is not None and not revoked:
            alarms.append("it stopped submitting checkpoints to the witness")
        out.append(
            MemberStatus(
                id=pid,
                roles=sorted(credential.roles),
                url=body.get("url"),
                keyFingerprint=credential.public_key.fingerprint,
                origin=origin,
                expiresAt=credential.expires_at.isoformat(),
                state="revoked" if revoked else "admitted",
                cosignedSize=None if latest is None else latest.size,
                cosignedRoot=None if latest is None else latest.root.hex(),
                currentSize=size,
                lag=lag,
                refusedSubmissions=forks,
                alarms=alarms,
            )
        )
    return sorted(out, key=lambda m: m.id)
