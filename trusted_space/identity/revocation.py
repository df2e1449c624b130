"""Revocation: the operator's signed, sequenced list of revoked credentials."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from trusted_space.errors import VerificationError
from trusted_space.identity.jws import (
    CompactJWS,
    from_epoch,
    int_claim,
    participant_claim,
    str_claim,
)
from trusted_space.keys import VerifyKey

__all__ = ["REVOCATION_TYP", "Revocation", "RevocationList", "parse_revocation_list"]

REVOCATION_TYP = "ts-revocations+jws"
_REVOCATION_CLAIMS = frozenset({"iss", "seq", "iat", "revoked"})
_REVOCATION_ENTRY = frozenset({"cid", "sub", "at"})


@dataclass(frozen=True)
class Revocation:
    credential_id: str
    participant_id: str
    revoked_at: datetime


@dataclass(frozen=True)
class RevocationList:
    """The operator's signed, cumulative list of revoked credentials."""

    issuer: str
    sequence: int
    issued_at: datetime
    revocations: tuple[Revocation, ...]
    token: str


def parse_revocation_list(token: str, key: VerifyKey, operator_id: str) -> RevocationList:
    jws = CompactJWS.parse(token, typ=REVOCATION_TYP, header_keys=frozenset({"alg", "typ", "kid"}))
    if jws.header["kid"] != key.fingerprint:
        raise VerificationError("revocation-kid")
    jws.require_signature(key)
    claims = jws.payload
    if set(claims) != _REVOCATION_CLAIMS or not isinstance(claims["revoked"], list):
        raise VerificationError("claims")
    if participant_claim(claims, "iss") != operator_id:
        raise VerificationError("revocation-issuer")
    entries: list[Revocation] = []
    for item in claims["revoked"]:
        if not isinstance(item, dict) or set(item) != _REVOCATION_ENTRY:
            raise VerificationError("claims:revoked")
        entries.append(
            Revocation(
                credential_id=str_claim(item, "cid"),
                participant_id=participant_claim(item, "sub"),
                revoked_at=from_epoch(int_claim(item, "at")),
            )
        )
    return RevocationList(
        issuer=operator_id,
        sequence=int_claim(claims, "seq"),
        issued_at=from_epoch(int_claim(claims, "iat")),
        revocations=tuple(entries),
        token=token,
    )
