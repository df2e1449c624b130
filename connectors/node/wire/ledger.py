"""Wire models of the ledger routes: entries, proofs, cosigned checkpoints.

Entries travel as standard base64 of their exact bytes (what the Merkle tree hashes); hashes as
lowercase hex. Nothing here can hold a secret: a ledger is public by design. The one exception is
:class:`CommitmentOpening`, served to the node's staff and auditors only (it can name an entity).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "MAX_ENTRIES_PER_PAGE",
    "CheckpointSubmitted",
    "CommitmentOpening",
    "ConsistencyProofOut",
    "CosignedNotes",
    "EntriesPage",
    "InclusionProofOut",
    "entries_page",
]

MAX_ENTRIES_PER_PAGE = 1000


class EntriesPage(BaseModel):
    start: int = Field(description="index of the first entry returned")
    entries: list[str] = Field(description="standard base64 of each entry's exact bytes")


class InclusionProofOut(BaseModel):
    index: int
    size: int
    root: str = Field(description="root hash of the tree of `size` leaves, hex")
    proof: list[str] = Field(description="inclusion path, leaf side first, hex")


class ConsistencyProofOut(BaseModel):
    first: int
    second: int
    proof: list[str] = Field(description="RFC 9162 consistency proof, hex")


class CosignedNotes(BaseModel):
    notes: list[str] = Field(description="checkpoints cosigned by the witness, oldest first")


class CheckpointSubmitted(BaseModel):
    note: str = Field(description="the checkpoint just signed (cosigned when `cosigned`)")
    cosigned: bool


class CommitmentOpening(BaseModel):
    """How a salted commitment of an entry opens (staff and auditors only)."""

    commitment: str
    what: str = Field(description="what the value is (entities, consent.registered, ...)")
    salt: str = Field(description="the 32-byte salt, standard base64")
    value: Any = Field(description="the committed value")
    detail: Any = Field(default=None, description="what the value stands for (e.g. the ids)")


def entries_page(start: int, entries: Sequence[bytes]) -> EntriesPage:
    return EntriesPage(start=start, entries=[base64.b64encode(e).decode("ascii") for e in entries])
