"""Membership credentials: what the operator issues to a participant, and their verification."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from trusted_space.errors import ValidationError, VerificationError
from trusted_space.identity.jws import (
    CLOCK_SKEW,
    CompactJWS,
    check_participant_id,
    from_epoch,
    int_claim,
    participant_claim,
    sign_compact,
    str_claim,
    to_epoch,
)
from trusted_space.keys import ALGORITHM, SigningKey, VerifyKey, b64url_encode

__all__ = [
    "CREDENTIAL_TYP",
    "ROLES",
    "MembershipCredential",
    "check_credential_window",
    "issue_credential",
    "verify_credential",
]

CREDENTIAL_TYP = "ts-credential+jws"
ROLES = frozenset({"operator", "provider", "consumer"})
DEFAULT_CREDENTIAL_VALIDITY = timedelta(days=365)
_CREDENTIAL_CLAIMS = frozenset({"cid", "sub", "roles", "key", "iss", "iat", "nbf", "exp"})


@dataclass(frozen=True)
class MembershipCredential:
    """The operator's statement that ``participant_id`` holds ``public_key`` and ``roles``."""

    credential_id: str
    participant_id: str
    roles: frozenset[str]
    public_key: VerifyKey
    issuer: str
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    token: str

    def valid_at(self, now: datetime, *, skew: timedelta = CLOCK_SKEW) -> bool:
        """Whether ``now`` lies inside ``[not_before - skew, expires_at + skew)``."""
        return self.not_before - skew <= now < self.expires_at + skew


def _check_roles(roles: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(roles)
    if not chosen or not chosen <= ROLES:
        raise ValidationError(f"roles must be a non-empty subset of {sorted(ROLES)}")
    return chosen


def issue_credential(
    operator_key: SigningKey,
    operator_id: str,
    participant_id: str,
    roles: Iterable[str],
    public_key: VerifyKey,
    *,
    now: datetime,
    not_before: datetime | None = None,
    valid_for: timedelta = DEFAULT_CREDENTIAL_VALIDITY,
) -> MembershipCredential:
    """Sign a membership credential (pure: nothing is stored; see :class:`OperatorAuthority`).

    Raises:
        ValidationError: bad participant id, roles, or a validity window that ends before it starts.
    """
    check_participant_id(operator_id)
    check_participant_id(participant_id)
    chosen = _check_roles(roles)
    iat = to_epoch(now)
    nbf = to_epoch(not_before) if not_before is not None else iat
    exp = nbf + int(valid_for.total_seconds())
    if exp <= nbf:
        raise ValidationError("credential validity must be positive")
    claims = {
        "cid": secrets.token_urlsafe(16),
        "sub": participant_id,
        "roles": sorted(chosen),
        "key": public_key.to_b64(),
        "iss": operator_id,
        "iat": iat,
        "nbf": nbf,
        "exp": exp,
    }
    header = {"alg": ALGORITHM, "typ": CREDENTIAL_TYP, "kid": operator_key.verify_key.fingerprint}
    token = sign_compact(operator_key, header, claims)
    return _credential_from_claims(claims, token)


def _credential_from_claims(claims: Mapping[str, Any], token: str) -> MembershipCredential:
    if set(claims) != _CREDENTIAL_CLAIMS:
        raise VerificationError("claims")
    roles = claims["roles"]
    if (
        not isinstance(roles, list)
        or not roles
        or roles != sorted(set(roles))
        or not all(isinstance(r, str) and r in ROLES for r in roles)
    ):
        raise VerificationError("claims:roles")
    try:
        key = VerifyKey.from_b64(str_claim(claims, "key"))
    except ValidationError as exc:
        raise VerificationError("claims:key") from exc
    if b64url_encode(key.raw) != claims["key"]:
        raise VerificationError("claims:key")
    nbf, exp = int_claim(claims, "nbf"), int_claim(claims, "exp")
    if exp <= nbf:
        raise VerificationError("claims:exp")
    return MembershipCredential(
        credential_id=str_claim(claims, "cid"),
        participant_id=participant_claim(claims, "sub"),
        roles=frozenset(roles),
        public_key=key,
        issuer=participant_claim(claims, "iss"),
        issued_at=from_epoch(int_claim(claims, "iat")),
        not_before=from_epoch(nbf),
        expires_at=from_epoch(exp),
        token=token,
    )


def verify_credential(
    token: str,
    operator_key: VerifyKey,
    *,
    operator_id: str,
    now: datetime | None,
    skew: timedelta = CLOCK_SKEW,
) -> MembershipCredential:
    """Verify a credential's signature, shape and (unless ``now`` is ``None``) validity window.

    Revocation is a property of the store, not of the token: use :meth:`MemberDirectory.active`.

    Raises:
        VerificationError: for every failure (``reason`` says which).
    """
    jws = CompactJWS.parse(token, typ=CREDENTIAL_TYP, header_keys=frozenset({"alg", "typ", "kid"}))
    if jws.header["kid"] != operator_key.fingerprint:
        raise VerificationError("credential-kid")
    jws.require_signature(operator_key)
    credential = _credential_from_claims(jws.payload, token)
    if credential.issuer != operator_id:
        raise VerificationError("credential-issuer")
    if now is not None:
        check_credential_window(credential, now, skew=skew)
    return credential


def check_credential_window(
    credential: MembershipCredential, now: datetime, *, skew: timedelta = CLOCK_SKEW
) -> None:
    """Refuse a verified credential outside its validity window (``skew`` allowed either side).

    Raises:
        VerificationError: ``credential-not-yet-valid`` or ``credential-expired``.
    """
    to_epoch(now)  # refuses a naive datetime with ValidationError
    if now < credential.not_before - skew:
        raise VerificationError("credential-not-yet-valid")
    if now >= credential.expires_at + skew:
        raise VerificationError("credential-expired")
