"""The staff's transfer routes (``/management/transfers``, admin token).

- ``POST /management/transfers`` ``{"agreementId", "purpose"?}`` (consumer): ask the agreement's
  provider for its dataset's rows; ``201`` with our record (``REQUESTED``, or ``STARTED`` when
  the provider's start message already arrived).
- ``GET /management/transfers``, ``GET /management/transfers/{id}``: this node's transfer
  records, both roles (``id`` is this side's process id).
- ``POST /management/transfers/{id}/pull`` ``{"path", "format"?}`` (consumer): wait for the start
  message, stream the rows into ``path`` (relative paths are under the node directory), complete
  the transfer; ``{"rows", "path"}``.

No response carries the pull token: the view model has no field for it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends

from connectors.node import transfer
from connectors.node.deps import RuntimeDep, require_admin
from connectors.node.pagination import PagerDep
from connectors.node.wire.transfer import (
    PullResult,
    TransferCreate,
    TransferPull,
    TransferView,
    transfer_view,
)
from trusted_space.contracts.transfer import list_transfers as stored_transfers
from trusted_space.contracts.transfer import load_transfer

__all__ = ["create_transfer", "get_transfer", "list_transfers", "pull_transfer", "router"]

router = APIRouter(
    prefix="/management/transfers",
    tags=["transfers"],
    dependencies=[Depends(require_admin)],
)

_MAX_START_WAIT = 30.0


@router.post("", status_code=201)
def create_transfer(body: TransferCreate, runtime: RuntimeDep) -> TransferView:
    """Request a transfer under an agreement this node holds as consumer."""
    record = transfer.request_transfer(runtime, body.agreement_id, purpose=body.purpose)
    with runtime.transaction(readonly=True) as tx:
        record = load_transfer(tx, record.pid)
    return transfer_view(record)


@router.get("")
def list_transfers(
    runtime: RuntimeDep,
    pages: PagerDep,
) -> list[TransferView]:
    """Every transfer of this node, as provider and as consumer (paged by id)."""
    with runtime.transaction(readonly=True) as tx:
        records = stored_transfers(tx)
    views = [transfer_view(r) for r in records]
    return pages(views, lambda v: (v.id,))


@router.get("/{pid}")
def get_transfer(pid: str, runtime: RuntimeDep) -> TransferView:
    """One transfer by this side's process id."""
    with runtime.transaction(readonly=True) as tx:
        return transfer_view(load_transfer(tx, pid))


@router.post("/{pid}/pull")
def pull_transfer(pid: str, body: TransferPull, runtime: RuntimeDep) -> PullResult:
    """Pull the rows of a transfer (consumer) into a file on this node, then complete it."""
    path = Path(body.path)
    if not path.is_absolute():
        path = Path(runtime.settings.dir) / path
    timeout = min(runtime.settings.request_timeout, _MAX_START_WAIT)
    transfer.wait_started(runtime, pid, timeout=timeout)
    record = transfer.pull(runtime, pid, path.resolve(), format=body.format)
    return PullResult(rows=record.rows or 0, path=record.path or str(path))
