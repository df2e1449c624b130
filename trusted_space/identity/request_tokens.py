"""Request tokens: a signed, short-lived, single-use token bound to one HTTP request.

:func:`issue_request_token` signs method, path, audience and body digest; the
:class:`Verifier` checks them, the sender's credential and the replay cache.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from trusted_space.errors import ConflictError, NotFoundError, ValidationError, VerificationError
from trusted_space.events import record_event
from trusted_space.identity.directory import MemberDirectory
from trusted_space.identity.jws import (
    CLOCK_SKEW,
    MAX_TOKEN_LENGTH,
    PARTICIPANT_RE,
    CompactJWS,
    body_sha256,
    check_participant_id,
    from_epoch,
    int_claim,
    participant_claim,
    sign_compact,
    str_claim,
    strict_b64,
    to_epoch,
)
from trusted_space.keys import ALGORITHM, SigningKey, b64url_decode, b64url_encode
from trusted_space.store import Transaction

__all__ = [
    "DEFAULT_REQUEST_LIFETIME",
    "MAX_REQUEST_LIFETIME",
    "REQUEST_TYP",
    "VerifiedRequest",
    "Verifier",
    "issue_request_token",
    "purge_replay_cache",
    "record_refusal",
]

REQUEST_TYP = "ts-request+jws"
MAX_REQUEST_LIFETIME = timedelta(minutes=2)
DEFAULT_REQUEST_LIFETIME = timedelta(seconds=60)
_METHOD_RE = re.compile(r"[A-Z]{1,16}")
_JTI_RE = re.compile(r"[A-Za-z0-9_-]{22}")
_MAX_PATH = 2048
_NS_REPLAY = "replay"
_REQUEST_CLAIMS = frozenset({"iss", "aud", "iat", "exp", "jti", "bsh", "htm", "htp"})


def _check_method_path(method: str, path: str) -> None:
    if not isinstance(method, str) or _METHOD_RE.fullmatch(method) is None:
        raise ValidationError(f"bad HTTP method {method!r}")
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or len(path) > _MAX_PATH
        or not path.isascii()
        or any(c.isspace() for c in path)
    ):
        raise ValidationError("bad HTTP path")


def issue_request_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    method: str,
    path: str,
    body: bytes,
    now: datetime,
    lifetime: timedelta = DEFAULT_REQUEST_LIFETIME,
) -> str:
    """Sign a token for one request from ``issuer`` to ``audience``.

    Args:
        key: the issuer's own signing key (the one its credential names).
        issuer: the sending participant id.
        audience: the receiving participant id.
        method: HTTP method, upper case.
        path: HTTP path as sent, including any query string.
        body: the exact request body bytes (``b""`` when empty).
        now: issue time.
        lifetime: at most :data:`MAX_REQUEST_LIFETIME` (2 minutes).

    Raises:
        ValidationError: bad ids, method or path, or a lifetime that is not in (0, 2 min].
    """
    check_participant_id(issuer)
    check_participant_id(audience)
    _check_method_path(method, path)
    if not isinstance(body, bytes):
        raise ValidationError("body must be bytes")
    if not timedelta(0) < lifetime <= MAX_REQUEST_LIFETIME:
        raise ValidationError("request token lifetime must be in (0, 2 minutes]")
    iat = to_epoch(now)
    claims = {
        "iss": issuer,
        "aud": audience,
        "iat": iat,
        "exp": iat + int(lifetime.total_seconds()),
        "jti": b64url_encode(secrets.token_bytes(16)),
        "bsh": body_sha256(body),
        "htm": method,
        "htp": path,
    }
    return sign_compact(key, {"alg": ALGORITHM, "typ": REQUEST_TYP}, claims)


@dataclass(frozen=True)
class VerifiedRequest:
    """Who sent a request, established by :meth:`Verifier.verify_request`."""

    participant_id: str
    roles: frozenset[str]
    credential_id: str
    token_id: str
    issued_at: datetime
    expires_at: datetime


class Verifier:
    """Verifies request tokens addressed to this node (``node_id``).

    Args:
        node_id: this node's participant id (the only audience accepted).
        directory: the node's member directory (credentials and revocations).
        skew: clock-skew allowance on ``iat``/``exp`` and credential windows.
    """

    def __init__(
        self, node_id: str, directory: MemberDirectory, *, skew: timedelta = CLOCK_SKEW
    ) -> None:
        self.node_id = check_participant_id(node_id)
        self.directory = directory
        self.skew = skew

    def verify_request(
        self,
        tx: Transaction,
        token: str,
        *,
        body: bytes,
        method: str,
        path: str,
        now: datetime,
    ) -> VerifiedRequest:
        """Verify a request token and consume its ``jti``.

        Order: structure and pinned header → issuer's key from the directory (the only use of an
        unverified claim) → signature → claims → credential window and revocation → replay cache.
        The ``jti`` is consumed last, so a token refused for another reason does not fill the cache.

        Raises:
            VerificationError: for every failure; ``reason`` names it.
        """
        jws = CompactJWS.parse(token, typ=REQUEST_TYP)
        claimed_issuer = jws.payload.get("iss")
        if not isinstance(claimed_issuer, str) or PARTICIPANT_RE.fullmatch(claimed_issuer) is None:
            raise VerificationError("claims:iss")
        try:
            credential = self.directory.get(tx, claimed_issuer)
        except NotFoundError as exc:
            raise VerificationError("unknown-issuer") from exc
        jws.require_signature(credential.public_key)

        claims = jws.payload
        if set(claims) - _REQUEST_CLAIMS:
            raise VerificationError("claims:extra")
        if _REQUEST_CLAIMS - set(claims):
            raise VerificationError("claims:missing")
        if participant_claim(claims, "aud") != self.node_id:
            raise VerificationError("audience")
        iat, exp = int_claim(claims, "iat"), int_claim(claims, "exp")
        if exp <= iat or exp - iat > int(MAX_REQUEST_LIFETIME.total_seconds()):
            raise VerificationError("lifetime")
        now_s, skew_s = to_epoch(now), int(self.skew.total_seconds())
        if iat > now_s + skew_s:
            raise VerificationError("not-yet-valid")
        if exp + skew_s <= now_s:
            raise VerificationError("expired")
        jti = str_claim(claims, "jti")
        if _JTI_RE.fullmatch(jti) is None or len(strict_b64(jti, "jti")) != 16:
            raise VerificationError("claims:jti")
        if not hmac.compare_digest(str_claim(claims, "bsh").encode(), body_sha256(body).encode()):
            raise VerificationError("body-hash")
        if claims["htm"] != method:
            raise VerificationError("method")
        if claims["htp"] != path:
            raise VerificationError("path")

        self.directory.active(tx, claimed_issuer, now=now, skew=self.skew)

        try:
            tx.insert(_NS_REPLAY, f"{claimed_issuer}/{jti}", {"until": exp + skew_s})
        except ConflictError as exc:
            raise VerificationError("replay") from exc
        return VerifiedRequest(
            participant_id=claimed_issuer,
            roles=credential.roles,
            credential_id=credential.credential_id,
            token_id=jti,
            issued_at=from_epoch(iat),
            expires_at=from_epoch(exp),
        )


def purge_replay_cache(tx: Transaction, now: datetime) -> int:
    """Delete replay-cache entries whose tokens can no longer pass verification; return how many.

    An entry is kept until ``exp`` + clock skew: until then the token would still be accepted if
    its ``jti`` were forgotten.
    """
    cutoff = to_epoch(now)
    purged = 0
    for doc in tx.scan(_NS_REPLAY):
        if int(doc.body["until"]) < cutoff and tx.delete(_NS_REPLAY, doc.key):
            purged += 1
    return purged


def record_refusal(
    tx: Transaction,
    error: VerificationError,
    *,
    token: object,
    audience: str,
    method: str | None = None,
    path: str | None = None,
    now: datetime | None = None,
) -> int:
    """Append ``auth.refused`` with the real reason; return the ledger index.

    Call it in a fresh transaction (the verifying one rolled back with the error). The claimed
    issuer is included when it can be read and is a well-formed participant id; it is a *claim*,
    not authenticated, and is labelled so.
    """
    body: dict[str, Any] = {"reason": error.reason, "audience": audience}
    claimed = _claimed_issuer(token)
    if claimed is not None:
        body["claimed_issuer"] = claimed
    if method is not None and _METHOD_RE.fullmatch(method):
        body["method"] = method
    if path is not None:
        body["path"] = path[:_MAX_PATH]
    return record_event(tx, "auth.refused", body, time=now)


def _claimed_issuer(token: object) -> str | None:
    """Best-effort, unauthenticated read of ``iss`` for the ledger (``None`` = not readable)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        return None
    try:
        payload = json.loads(b64url_decode(token.split(".")[1]).decode("utf-8"))
    except (ValidationError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    if isinstance(issuer, str) and PARTICIPANT_RE.fullmatch(issuer):
        return issuer
    return None
