"""Wire models of the operator's routes: admission, participants, revocation, witness.

The federated catalog travels as plain DSP JSON (validated against the DSP 2025-1 schemas, not
modelled here). ``Participant.credential`` is the operator-signed membership credential: a public
statement, not a secret (every signed request carries it in ``TS-Credential``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from connectors.common.settings import OperatorAnchor
from trusted_space.identity import MembershipCredential, RevocationList

__all__ = [
    "AdmissionRequest",
    "CosignRequest",
    "CosignResult",
    "HashHex",
    "OperatorIdentity",
    "Participant",
    "RevocationListOut",
    "RevokeRequest",
    "RevokeResult",
    "WitnessedLog",
    "anchor_out",
    "participant_out",
    "revocation_list_out",
]

HashHex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="a SHA-256 hash")]


class AdmissionRequest(BaseModel):
    """What the operator's staff submit to admit an institution's node."""

    id: str = Field(min_length=2, max_length=63, description="participant id, e.g. tax-bureau")
    roles: list[str] = Field(min_length=1, max_length=3, description="provider and/or consumer")
    publicKey: str = Field(
        min_length=1, max_length=128, description="the node's Ed25519 key, base64url"
    )
    url: str = Field(min_length=1, max_length=2048, description="where other nodes reach it")
    ledgerVkey: str = Field(
        min_length=1,
        max_length=512,
        description="C2SP note verifier key of its ledger; must name the same key as publicKey",
    )


class Participant(BaseModel):
    """A member as the operator's registry knows it."""

    id: str
    roles: list[str]
    url: str | None = Field(description="null only for a member admitted out of band")
    publicKey: str
    ledgerVkey: str | None = Field(
        description="null only for a member admitted out of band (its checkpoints are not "
        "witnessed until it is admitted again with one)"
    )
    credential: str = Field(description="the operator-signed membership credential (public)")
    revoked: bool


class RevokeRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=1000, description="written to the ledger")


class RevokeResult(BaseModel):
    sequence: int = Field(description="sequence number of the new signed revocation list")
    pushed: dict[str, bool] = Field(description="member id -> whether it accepted the new list")


class RevocationListOut(BaseModel):
    token: str = Field(description="the operator-signed, cumulative revocation list")
    sequence: int


class CosignRequest(BaseModel):
    checkpoint: str = Field(
        min_length=1, max_length=8192, description="the node's signed checkpoint note"
    )
    proof: list[HashHex] = Field(
        default_factory=list,
        max_length=128,
        description="consistency proof (hex hashes) from the size the witness last cosigned",
    )
    old: int | None = Field(
        default=None,
        ge=0,
        le=2**62,
        description=(
            "the tree size the proof starts from (the size the node believes the witness last "
            "cosigned); if it is not, the answer is 409 `witness-size` with `witnessSize`, "
            "nothing is recorded as a fork, and the node retries with a proof from that size"
        ),
    )

    def proof_bytes(self) -> list[bytes]:
        return [bytes.fromhex(item) for item in self.proof]


class CosignResult(BaseModel):
    note: str = Field(description="the checkpoint with the witness cosignature appended")


class WitnessedLog(BaseModel):
    """What the witness vouches for about one member's log: public, so anyone can anchor on it.

    ``checkpoint`` is the newest note of this log the witness cosigned, with the log's signature
    and the witness's cosignature (check both: the log key is ``ledgerVkey``, the witness key is
    ``witnessVkey`` of ``GET /operator/identity``). ``ledgerVkey`` is the key the operator
    registered at admission, not what the node says about itself.
    """

    participant: str
    url: str | None
    origin: str
    ledgerVkey: str
    checkpoint: str | None = Field(description="the latest cosigned checkpoint note, or null")
    size: int | None = Field(description="its tree size")
    cosignedAt: int | None = Field(description="POSIX seconds of that cosignature")
    lastSubmissionAt: int | None = Field(
        default=None, description="POSIX seconds of the member's last submission, accepted or not"
    )
    refusals: int = Field(default=0, description="submissions the witness refused")
    lastRefusal: str | None = Field(default=None, description="why the last one was refused")
    alarms: list[str] = Field(
        default_factory=list,
        description="`not-submitting` (no submission for 3 intervals), `refused` (the last "
        "submission was refused), `never-witnessed`",
    )


class OperatorIdentity(BaseModel):
    """The space's trust anchor (compare its key fingerprint out of band)."""

    id: str
    key: str
    witnessVkey: str
    url: str


def anchor_out(anchor: OperatorAnchor) -> OperatorIdentity:
    return OperatorIdentity(**anchor.to_json())


def participant_out(
    credential: MembershipCredential, record: dict[str, Any] | None, *, revoked: bool
) -> Participant:
    """A registry entry from the verified credential and the admission record (if any)."""
    record = record or {}
    return Participant(
        id=credential.participant_id,
        roles=sorted(credential.roles),
        url=record.get("url"),
        publicKey=credential.public_key.to_b64(),
        ledgerVkey=record.get("ledgerVkey"),
        credential=credential.token,
        revoked=revoked,
    )


def revocation_list_out(rlist: RevocationList) -> RevocationListOut:
    return RevocationListOut(token=rlist.token, sequence=rlist.sequence)
