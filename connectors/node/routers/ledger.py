"""Every node's ledger, in public: checkpoints, entries, proofs, witness cosignatures.

Why public: the ledger exists so that *others* can check what this node did. An analyst verifies
a receipt's inclusion proof, an auditor downloads the whole log and recomputes its root
(``trusted-space ledger verify``), and anyone holding an older checkpoint asks for a consistency
proof. Nothing secret or identifying is in a ledger entry by construction (events carry member
ids, salted commitments and decisions, never data, never an entity id), so no authentication is
needed to read it.

- ``GET /ledger/checkpoint``: the latest signed checkpoint note (``text/plain``). A fresh one is
  signed when the log grew since the last; when this node holds the witness-cosigned form of that
  exact checkpoint, that form is returned. A store edited underneath the node makes it refuse to
  sign (``409``) rather than publish a fork.
- ``GET /ledger/entries?start=&end=``: the exact entry bytes (standard base64), at most
  :data:`~connectors.node.wire.ledger.MAX_ENTRIES_PER_PAGE` per call, clipped to the log size.
- ``GET /ledger/proof/inclusion?index=&size=`` and ``GET /ledger/proof/consistency?first=&second=``:
  RFC 9162 proofs (sizes default to the current size).
- ``GET /ledger/cosignatures``: every checkpoint of this log the operator's witness cosigned.
- ``POST /management/ledger/checkpoint`` (staff): sign a checkpoint now, submit it to the
  witness.
- ``GET /management/ledger/openings/{commitment}`` (staff, and the auditors they give the token
  to): the opening (salt, value, and what it stands for) of a salted commitment in an entry.

Who reads what: entries are public because they name no data subject, consent subject or
customer — those appear only as salted commitments (:mod:`trusted_space.commitments`); the
analyst of a use gets its opening in its receipt, the node's staff and auditors here.

Bad parameters are ``400``/``422`` with the reason, never a ``500``; all reads are read-only
transactions.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse

from connectors.node import federation
from connectors.node.deps import AdminDep, RuntimeDep
from connectors.node.runtime import NodeRuntime
from connectors.node.wire.ledger import (
    MAX_ENTRIES_PER_PAGE,
    CheckpointSubmitted,
    CommitmentOpening,
    ConsistencyProofOut,
    CosignedNotes,
    EntriesPage,
    InclusionProofOut,
    entries_page,
)
from trusted_space.commitments import opening as stored_opening
from trusted_space.errors import NotFoundError, ValidationError
from trusted_space.ledger import open_checkpoint

__all__ = [
    "checkpoint",
    "opening",
    "consistency",
    "cosignatures",
    "entries",
    "inclusion",
    "latest_checkpoint",
    "router",
    "submit",
]

router = APIRouter(tags=["ledger"])

_MAX_INDEX = 2**62
Index = Annotated[int, Query(ge=0, le=_MAX_INDEX)]
OptIndex = Annotated[int | None, Query(ge=0, le=_MAX_INDEX)]


def latest_checkpoint(runtime: NodeRuntime) -> str:
    """The newest checkpoint covering the whole log; cosigned if this node holds that form.

    Raises:
        ConflictError: the log no longer matches a checkpoint this node published.
    """
    ledger = runtime.ledger
    published = ledger.checkpoints()
    note = published[-1] if published else ""
    if not note or open_checkpoint(note, ledger.verifier).size != ledger.size():
        note = ledger.checkpoint()
    with runtime.transaction(readonly=True) as tx:
        cosigned = federation.cosigned_version(tx, note)
    return cosigned or note


@router.get(
    "/ledger/checkpoint",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {}}, "description": "a C2SP signed checkpoint note"},
        409: {"description": "the log no longer matches a checkpoint this node published"},
    },
)
def checkpoint(runtime: RuntimeDep) -> PlainTextResponse:
    return PlainTextResponse(latest_checkpoint(runtime), media_type="text/plain; charset=utf-8")


@router.get("/ledger/entries", response_model=EntriesPage)
def entries(runtime: RuntimeDep, start: Index = 0, end: OptIndex = None) -> EntriesPage:
    """Entries ``start <= i < end`` (``end`` defaults to a full page), clipped to the log size."""
    stop = start + MAX_ENTRIES_PER_PAGE if end is None else end
    if stop <= start:
        raise ValidationError(f"end ({stop}) must be greater than start ({start})")
    size = runtime.ledger.size()
    stop = min(stop, size, start + MAX_ENTRIES_PER_PAGE)
    if start >= stop:
        return entries_page(start, [])
    return entries_page(start, runtime.ledger.entries(start, stop))


def _size_or_current(runtime: NodeRuntime, size: int | None, name: str) -> int:
    current = runtime.ledger.size()
    if size is None:
        return current
    if size > current:
        raise ValidationError(f"{name} {size} is larger than the log ({current} entries)")
    return size


@router.get("/ledger/proof/inclusion", response_model=InclusionProofOut)
def inclusion(runtime: RuntimeDep, index: Index, size: OptIndex = None) -> InclusionProofOut:
    """Inclusion path of entry ``index`` in the tree of ``size`` leaves (default: current)."""
    n = _size_or_current(runtime, size, "size")
    if index >= n:
        raise ValidationError(f"index {index} is not in a tree of size {n}")
    proof = runtime.ledger.inclusion_proof(index, n)
    return InclusionProofOut(
        index=index, size=n, root=runtime.ledger.root(n).hex(), proof=[p.hex() for p in proof]
    )


@router.get("/ledger/proof/consistency", response_model=ConsistencyProofOut)
def consistency(runtime: RuntimeDep, first: Index, second: OptIndex = None) -> ConsistencyProofOut:
    """Proof that the tree of ``second`` leaves (default: current) extends that of ``first``."""
    n = _size_or_current(runtime, second, "second")
    if first > n:
        raise ValidationError(f"first ({first}) must not exceed second ({n})")
    proof = runtime.ledger.consistency_proof(first, n)
    return ConsistencyProofOut(first=first, second=n, proof=[p.hex() for p in proof])


@router.get("/ledger/cosignatures", response_model=CosignedNotes)
def cosignatures(runtime: RuntimeDep) -> CosignedNotes:
    with runtime.transaction(readonly=True) as tx:
        return CosignedNotes(notes=federation.cosigned_notes(tx))


@router.post(
    "/management/ledger/checkpoint", response_model=CheckpointSubmitted, tags=["management"]
)
def submit(runtime: RuntimeDep, _: AdminDep) -> CheckpointSubmitted:
    """Sign a checkpoint now and have the operator's witness cosign it (best effort)."""
    cosigned = federation.submit_checkpoint(runtime)
    if cosigned is not None:
        return CheckpointSubmitted(note=cosigned, cosigned=True)
    return CheckpointSubmitted(note=runtime.ledger.latest_checkpoint(), cosigned=False)


@router.get(
    "/management/ledger/openings/{commitment}",
    response_model=CommitmentOpening,
    tags=["management"],
)
def opening(
    commitment: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")],
    runtime: RuntimeDep,
    _: AdminDep,
) -> CommitmentOpening:
    """Open a commitment of this node's ledger for an auditor (``404`` if not this node's)."""
    with runtime.transaction(readonly=True) as tx:
        doc = stored_opening(tx, commitment)
    if doc is None:
        raise NotFoundError("no such commitment in this node's ledger")
    return CommitmentOpening(
        commitment=commitment,
        what=str(doc.get("what", "")),
        salt=str(doc["salt"]),
        value=doc.get("value"),
        detail=doc.get("detail"),
    )
