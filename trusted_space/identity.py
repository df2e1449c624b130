"""Membership credentials, their revocation, and signed request tokens between nodes.

Why: every node-to-node request crosses an institutional boundary, and the receiving node must know
*which member* sent it before any policy is evaluated. The operator (the space authority) vouches
for a member's Ed25519 key with a signed membership credential; the member signs each request with
that key in a short-lived token bound to this one request.

Threats and what stops them:

- **Forged or altered tokens / credentials**: Ed25519 signatures over the exact bytes sent. The
  algorithm is pinned: the header must say ``"alg": "EdDSA"``, so ``alg: none`` and the classic
  ``HS256``-with-the-public-key-as-HMAC-secret confusion are refused before any key is touched.
- **Malleable encodings** (two different strings that verify as the same token): every segment must
  be the canonical unpadded base64url of its bytes (``keys.b64url_decode`` alone tolerates stray
  characters and non-zero trailing bits), and header and payload must be canonical JSON (sorted
  keys, no whitespace, no duplicate keys). One token, one string.
- **Token confusion**: each kind has its own ``typ`` (``ts-credential+jws``, ``ts-request+jws``,
  ``ts-revocations+jws``) and an exact claim set, so a credential cannot be presented as a request.
- **Replay**: a request token carries a 128-bit random ``jti``; the receiver inserts
  ``issuer/jti`` into a persistent replay cache (store namespace ``replay``) in the verifying
  transaction. Entries are kept until the token can no longer pass the expiry check
  (``exp`` + clock skew), then :func:`purge_replay_cache` may delete them.
- **Re-targeting**: the token binds audience (receiving node), HTTP method, path, and the SHA-256 of
  the body, so it cannot be redirected to another node, endpoint, or payload.
- **Long-lived stolen tokens**: lifetime ``exp - iat`` is at most 2 minutes, refused at issue and at
  verification.
- **Departed or compromised members**: the operator revokes credentials; the revocation list is
  signed, carries a strictly increasing sequence number (an attacker cannot roll a node back to an
  older list that omits a revocation), and is applied on every node.
- **Verification oracles**: every failure raises the same :class:`~trusted_space.errors.
  VerificationError` (``str()`` is always ``"verification failed"``); ``.reason`` keeps the real
  cause and :func:`record_refusal` writes it to the ledger.

Token format (all three kinds): JWS compact serialisation,
``b64url(header) "." b64url(payload) "." b64url(signature)``, the signature being Ed25519 over the
ASCII of the first two segments. Header and payload are canonical JSON; times are integer seconds
since the Unix epoch (UTC).

- credential: header ``{"alg":"EdDSA","kid":<operator key fingerprint>,
  "typ":"ts-credential+jws"}``; claims ``cid`` credential id, ``sub`` participant id, ``roles``
  (sorted list), ``key`` member public key (b64url), ``iss`` operator id, ``iat``, ``nbf``, ``exp``.
- request: header ``{"alg":"EdDSA","typ":"ts-request+jws"}``; claims ``iss``, ``aud`` (receiving
  participant id), ``iat``, ``exp`` (at most ``iat`` + 120), ``jti`` (22-char b64url of 16 random
  bytes), ``bsh`` (b64url SHA-256 of the body), ``htm`` (HTTP method), ``htp`` (HTTP path as sent,
  with any query string).
- revocation list: header ``{"alg":"EdDSA","kid":<operator key fingerprint>,
  "typ":"ts-revocations+jws"}``; claims ``iss``, ``seq``, ``iat``, ``revoked``: a list of
  ``{"cid","sub","at"}`` sorted by ``cid``. Cumulative: each list is the whole set, not a delta.

Store layout: ``member/<participant>`` (latest credential token), ``issued/<participant>/<cid>``
(operator only), ``revocation/<cid>``, ``revocation-list/current`` (latest signed list and its
sequence), ``replay/<issuer>/<jti>``.

Transactions: run :meth:`Verifier.verify_request` in its own transaction and commit it before
handling the request, so the ``jti`` stays consumed even if the handler fails. A refusal rolls that
transaction back; record it with :func:`record_refusal` in a fresh transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from trusted_space.errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import canonical_json, record_event
from trusted_space.keys import ALGORITHM, SigningKey, VerifyKey, b64url_decode, b64url_encode
from trusted_space.store import Transaction

__all__ = [
    "CLOCK_SKEW",
    "CREDENTIAL_TYP",
    "DEFAULT_REQUEST_LIFETIME",
    "MAX_REQUEST_LIFETIME",
    "REQUEST_TYP",
    "REVOCATION_TYP",
    "ROLES",
    "CompactJWS",
    "MemberDirectory",
    "MembershipCredential",
    "OperatorAuthority",
    "Revocation",
    "RevocationList",
    "VerifiedRequest",
    "Verifier",
    "body_sha256",
    "check_participant_id",
    "issue_credential",
    "issue_request_token",
    "purge_replay_cache",
    "record_refusal",
    "sign_compact",
    "to_epoch",
    "verify_credential",
]

CREDENTIAL_TYP = "ts-credential+jws"
REQUEST_TYP = "ts-request+jws"
REVOCATION_TYP = "ts-revocations+jws"
ROLES = frozenset({"operator", "provider", "consumer"})
MAX_REQUEST_LIFETIME = timedelta(minutes=2)
DEFAULT_REQUEST_LIFETIME = timedelta(seconds=60)
CLOCK_SKEW = timedelta(seconds=30)
DEFAULT_CREDENTIAL_VALIDITY = timedelta(days=365)

MAX_TOKEN_LENGTH = 16_384
_PARTICIPANT_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,62}")
_METHOD_RE = re.compile(r"[A-Z]{1,16}")
_JTI_RE = re.compile(r"[A-Za-z0-9_-]{22}")
_MAX_PATH = 2048

_NS_MEMBER = "member"
_NS_ISSUED = "issued"
_NS_REVOCATION = "revocation"
_NS_REVOCATION_LIST = "revocation-list"
_NS_REPLAY = "replay"
_CURRENT = "current"

_CREDENTIAL_CLAIMS = frozenset({"cid", "sub", "roles", "key", "iss", "iat", "nbf", "exp"})
_REQUEST_CLAIMS = frozenset({"iss", "aud", "iat", "exp", "jti", "bsh", "htm", "htp"})
_REVOCATION_CLAIMS = frozenset({"iss", "seq", "iat", "revoked"})
_REVOCATION_ENTRY = frozenset({"cid", "sub", "at"})


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def check_participant_id(value: object) -> str:
    """Return ``value`` if it is a participant id slug, else raise :class:`ValidationError`.

    ``re.fullmatch`` rather than ``$``: ``$`` also matches before a trailing newline.
    """
    if not isinstance(value, str) or _PARTICIPANT_RE.fullmatch(value) is None:
        raise ValidationError(f"not a participant id: {value!r}")
    return value


def to_epoch(moment: datetime) -> int:
    """Integer seconds since the epoch of an aware datetime (naive ones are refused)."""
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValidationError("datetimes must be timezone-aware (UTC)")
    return int(moment.timestamp())


def _from_epoch(value: int) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def body_sha256(body: bytes) -> str:
    """The ``bsh`` claim: unpadded base64url of SHA-256 over the exact body bytes."""
    return b64url_encode(hashlib.sha256(body).digest())


def _strict_b64(segment: str, what: str) -> bytes:
    """Decode base64url and insist the segment is the one canonical encoding of its bytes."""
    try:
        raw = b64url_decode(segment)
    except ValidationError as exc:
        raise VerificationError(f"bad-base64:{what}") from exc
    if b64url_encode(raw) != segment:
        raise VerificationError(f"bad-base64:{what}")
    return raw


def _canonical_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
        canonical = canonical_json(value)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise VerificationError(f"bad-json:{what}") from exc
    if not isinstance(value, dict):
        raise VerificationError(f"bad-json:{what}")
    if canonical != raw:
        raise VerificationError(f"non-canonical-json:{what}")
    return value


def _int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims[name]
    if type(value) is not int or value < 0:
        raise VerificationError(f"claims:{name}")
    return value


def _str_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or not value:
        raise VerificationError(f"claims:{name}")
    return value


def _participant_claim(claims: Mapping[str, Any], name: str) -> str:
    try:
        return check_participant_id(claims[name])
    except ValidationError as exc:
        raise VerificationError(f"claims:{name}") from exc


# ----------------------------------------------------------------------------------------------
# Compact JWS
# ----------------------------------------------------------------------------------------------


def sign_compact(key: SigningKey, header: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    """Sign canonical ``header`` and ``payload`` into a JWS compact string.

    ``header["alg"]`` is forced to be ``EdDSA``: there is nothing else this code can sign with.
    """
    if header.get("alg") != ALGORITHM:
        raise ValidationError(f"header alg must be {ALGORITHM}")
    signing_input = (
        b64url_encode(canonical_json(dict(header))) + "." + b64url_encode(canonical_json(payload))
    )
    return signing_input + "." + b64url_encode(key.sign(signing_input.encode("ascii")))


@dataclass(frozen=True)
class CompactJWS:
    """A parsed but **not yet verified** compact token.

    Trust nothing in it before :meth:`verify_signature` returns ``True``, except to choose which
    key to verify with.
    """

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @classmethod
    def parse(
        cls, token: object, *, typ: str, header_keys: frozenset[str] = frozenset({"alg", "typ"})
    ) -> CompactJWS:
        """Parse and check the structure of a token of kind ``typ``.

        Args:
            token: the compact string.
            typ: the only ``typ`` accepted.
            header_keys: the exact set of header parameters expected.

        Raises:
            VerificationError: wrong shape, bad base64, non-canonical JSON, ``alg`` other than
                EdDSA, unexpected ``typ`` or header parameters.
        """
        if not isinstance(token, str) or not token.isascii() or len(token) > MAX_TOKEN_LENGTH:
            raise VerificationError("malformed")
        parts = token.split(".")
        if len(parts) != 3:
            raise VerificationError("segments")
        header = _canonical_object(_strict_b64(parts[0], "header"), "header")
        alg = header.get("alg")
        if alg != ALGORITHM:
            if alg is None:
                raise VerificationError("alg-missing")
            raise VerificationError("alg-none" if alg == "none" else "alg-not-eddsa")
        if header.get("typ") != typ:
            raise VerificationError("typ")
        if set(header) != header_keys:
            raise VerificationError("header")
        payload = _canonical_object(_strict_b64(parts[1], "payload"), "payload")
        signature = _strict_b64(parts[2], "signature")
        if len(signature) != 64:
            raise VerificationError("signature")
        return cls(header, payload, (parts[0] + "." + parts[1]).encode("ascii"), signature)

    def verify_signature(self, key: VerifyKey) -> bool:
        """Whether the Ed25519 signature over the first two segments is valid under ``key``."""
        return key.verify(self.signature, self.signing_input)

    def require_signature(self, key: VerifyKey) -> None:
        """Raise :class:`VerificationError` unless the signature is valid under ``key``."""
        if not self.verify_signature(key):
            raise VerificationError("signature")


# ----------------------------------------------------------------------------------------------
# Membership credentials
# ----------------------------------------------------------------------------------------------


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
        key = VerifyKey.from_b64(_str_claim(claims, "key"))
    except ValidationError as exc:
        raise VerificationError("claims:key") from exc
    if b64url_encode(key.raw) != claims["key"]:
        raise VerificationError("claims:key")
    nbf, exp = _int_claim(claims, "nbf"), _int_claim(claims, "exp")
    if exp <= nbf:
        raise VerificationError("claims:exp")
    return MembershipCredential(
        credential_id=_str_claim(claims, "cid"),
        participant_id=_participant_claim(claims, "sub"),
        roles=frozenset(roles),
        public_key=key,
        issuer=_participant_claim(claims, "iss"),
        issued_at=_from_epoch(_int_claim(claims, "iat")),
        not_before=_from_epoch(nbf),
        expires_at=_from_epoch(exp),
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
        to_epoch(now)  # refuses a naive datetime with ValidationError
        if now < credential.not_before - skew:
            raise VerificationError("credential-not-yet-valid")
        if now >= credential.expires_at + skew:
            raise VerificationError("credential-expired")
    return credential


# ----------------------------------------------------------------------------------------------
# Revocation
# ----------------------------------------------------------------------------------------------


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


def _parse_revocation_list(token: str, key: VerifyKey, operator_id: str) -> RevocationList:
    jws = CompactJWS.parse(token, typ=REVOCATION_TYP, header_keys=frozenset({"alg", "typ", "kid"}))
    if jws.header["kid"] != key.fingerprint:
        raise VerificationError("revocation-kid")
    jws.require_signature(key)
    claims = jws.payload
    if set(claims) != _REVOCATION_CLAIMS or not isinstance(claims["revoked"], list):
        raise VerificationError("claims")
    if _participant_claim(claims, "iss") != operator_id:
        raise VerificationError("revocation-issuer")
    entries: list[Revocation] = []
    for item in claims["revoked"]:
        if not isinstance(item, dict) or set(item) != _REVOCATION_ENTRY:
            raise VerificationError("claims:revoked")
        entries.append(
            Revocation(
                credential_id=_str_claim(item, "cid"),
                participant_id=_participant_claim(item, "sub"),
                revoked_at=_from_epoch(_int_claim(item, "at")),
            )
        )
    return RevocationList(
        issuer=operator_id,
        sequence=_int_claim(claims, "seq"),
        issued_at=_from_epoch(_int_claim(claims, "iat")),
        revocations=tuple(entries),
        token=token,
    )


# ----------------------------------------------------------------------------------------------
# Member directory (every node) and operator authority (operator node)
# ----------------------------------------------------------------------------------------------


class MemberDirectory:
    """The members this node knows, their credentials and the revocations it has applied.

    Every node has one, configured with the operator's id and verify key (obtained out of band at
    deployment, like a root certificate). Credentials arrive at admission (the operator stores its
    own issues here) or are fetched from the operator and added with :meth:`add`, which verifies
    them; nothing unverified is ever stored.
    """

    def __init__(self, operator_id: str, operator_key: VerifyKey) -> None:
        self.operator_id = check_participant_id(operator_id)
        self.operator_key = operator_key

    def add(self, tx: Transaction, token: str, *, now: datetime) -> MembershipCredential:
        """Verify a credential and make it the current one for its participant.

        A credential whose ``not_before`` is still ahead may be stored; it is refused at use until
        then (:meth:`active`).

        An older credential never replaces a newer one (``iat`` decides), so a replayed stale
        credential cannot undo a key rotation.

        Raises:
            VerificationError: the credential does not verify, is out of its window, or is revoked.
        """
        credential = verify_credential(
            token, self.operator_key, operator_id=self.operator_id, now=None
        )
        if to_epoch(now) >= to_epoch(credential.expires_at):
            raise VerificationError("credential-expired")
        if self.is_revoked(tx, credential.credential_id):
            raise VerificationError("revoked")
        current = tx.get(_NS_MEMBER, credential.participant_id)
        if current is not None and current.body["iat"] > to_epoch(credential.issued_at):
            raise VerificationError("credential-superseded")
        tx.put(
            _NS_MEMBER,
            credential.participant_id,
            {
                "token": token,
                "cid": credential.credential_id,
                "iat": to_epoch(credential.issued_at),
            },
        )
        return credential

    def get(self, tx: Transaction, participant_id: str) -> MembershipCredential:
        """The stored credential of a participant, re-verified; no time or revocation checks.

        Raises:
            NotFoundError: the participant is not known here.
        """
        doc = tx.get(_NS_MEMBER, participant_id)
        if doc is None:
            raise NotFoundError(f"no member {participant_id!r}")
        return verify_credential(
            doc.body["token"], self.operator_key, operator_id=self.operator_id, now=None
        )

    def active(
        self, tx: Transaction, participant_id: str, *, now: datetime, skew: timedelta = CLOCK_SKEW
    ) -> MembershipCredential:
        """The participant's credential if it is known, inside its window and not revoked.

        Raises:
            VerificationError: ``unknown-issuer``, ``revoked``, ``credential-expired``, ...
        """
        doc = tx.get(_NS_MEMBER, participant_id)
        if doc is None:
            raise VerificationError("unknown-issuer")
        credential = verify_credential(
            doc.body["token"], self.operator_key, operator_id=self.operator_id, now=now, skew=skew
        )
        if self.is_revoked(tx, credential.credential_id):
            raise VerificationError("revoked")
        return credential

    def is_revoked(self, tx: Transaction, credential_id: str) -> bool:
        return tx.get(_NS_REVOCATION, credential_id) is not None

    def revocation_sequence(self, tx: Transaction) -> int:
        """Sequence number of the latest revocation list applied here (-1 when none)."""
        doc = tx.get(_NS_REVOCATION_LIST, _CURRENT)
        return -1 if doc is None else int(doc.body["seq"])

    def current_revocation_list(self, tx: Transaction) -> RevocationList:
        """The latest signed revocation list applied (or, on the operator, issued) here.

        Raises:
            NotFoundError: no list has been applied yet.
        """
        doc = tx.require(_NS_REVOCATION_LIST, _CURRENT)
        return _parse_revocation_list(doc.body["token"], self.operator_key, self.operator_id)

    def apply_revocation_list(self, tx: Transaction, token: str) -> int:
        """Verify a signed revocation list from the operator and apply it.

        Returns:
            How many revocations were new on this node.

        Raises:
            VerificationError: the list does not verify.
            ConflictError: its sequence is older than the one applied here (a rollback attempt),
                or equal with different content (the operator equivocated).
        """
        rlist = _parse_revocation_list(token, self.operator_key, self.operator_id)
        current = tx.get(_NS_REVOCATION_LIST, _CURRENT)
        if current is not None:
            seq = int(current.body["seq"])
            if rlist.sequence == seq and hmac.compare_digest(current.body["token"], token):
                return 0
            if rlist.sequence <= seq:
                raise ConflictError(
                    f"revocation list {rlist.sequence} is not newer than applied list {seq}"
                )
        added = 0
        for entry in rlist.revocations:
            if tx.get(_NS_REVOCATION, entry.credential_id) is None:
                tx.put(_NS_REVOCATION, entry.credential_id, _revocation_body(entry))
                added += 1
        tx.put(_NS_REVOCATION_LIST, _CURRENT, {"seq": rlist.sequence, "token": token})
        return added


def _revocation_body(entry: Revocation) -> dict[str, Any]:
    return {
        "cid": entry.credential_id,
        "sub": entry.participant_id,
        "at": to_epoch(entry.revoked_at),
    }


class OperatorAuthority:
    """The operator node's side: admit participants, revoke them, sign the revocation list.

    Every issue and revocation is recorded in the ledger in the same transaction.
    """

    def __init__(self, operator_id: str, signing_key: SigningKey) -> None:
        self.operator_id = check_participant_id(operator_id)
        self._key = signing_key
        self.directory = MemberDirectory(operator_id, signing_key.verify_key)

    def issue(
        self,
        tx: Transaction,
        participant_id: str,
        roles: Iterable[str],
        public_key: VerifyKey,
        *,
        now: datetime,
        not_before: datetime | None = None,
        valid_for: timedelta = DEFAULT_CREDENTIAL_VALIDITY,
    ) -> MembershipCredential:
        """Issue a credential, store it in this node's directory, record ``credential.issued``."""
        credential = issue_credential(
            self._key,
            self.operator_id,
            participant_id,
            roles,
            public_key,
            now=now,
            not_before=not_before,
            valid_for=valid_for,
        )
        tx.insert(
            _NS_ISSUED,
            f"{participant_id}/{credential.credential_id}",
            {"cid": credential.credential_id, "exp": to_epoch(credential.expires_at)},
        )
        self.directory.add(tx, credential.token, now=now)
        record_event(
            tx,
            "credential.issued",
            {
                "credential_id": credential.credential_id,
                "participant": participant_id,
                "roles": sorted(credential.roles),
                "key": public_key.fingerprint,
                "not_before": credential.not_before.isoformat(),
                "expires_at": credential.expires_at.isoformat(),
            },
            time=now,
        )
        return credential

    def revoke(
        self, tx: Transaction, participant_id: str, *, now: datetime, reason: str
    ) -> RevocationList:
        """Revoke every credential ever issued to ``participant_id`` and sign a new list.

        Raises:
            NotFoundError: no credential was ever issued to that participant.
        """
        issued = tx.scan(_NS_ISSUED, f"{check_participant_id(participant_id)}/")
        if not issued:
            raise NotFoundError(f"no credential was issued to {participant_id!r}")
        revoked: list[str] = []
        for doc in issued:
            cid = doc.body["cid"]
            if tx.get(_NS_REVOCATION, cid) is None:
                entry = Revocation(cid, participant_id, now)
                tx.put(_NS_REVOCATION, cid, _revocation_body(entry))
                revoked.append(cid)
        rlist = self._sign_list(tx, now)
        record_event(
            tx,
            "credential.revoked",
            {
                "participant": participant_id,
                "credential_ids": revoked,
                "reason": reason,
                "list_sequence": rlist.sequence,
            },
            time=now,
        )
        return rlist

    def revocation_list(self, tx: Transaction, *, now: datetime) -> RevocationList:
        """The current signed list, for other nodes to fetch (an empty list, seq 0, at first)."""
        if tx.get(_NS_REVOCATION_LIST, _CURRENT) is None:
            return self._sign_list(tx, now)
        return self.directory.current_revocation_list(tx)

    def _sign_list(self, tx: Transaction, now: datetime) -> RevocationList:
        seq = self.directory.revocation_sequence(tx) + 1
        entries = sorted(
            (d.body for d in tx.scan(_NS_REVOCATION)), key=lambda body: str(body["cid"])
        )
        header = {"alg": ALGORITHM, "typ": REVOCATION_TYP, "kid": self._key.verify_key.fingerprint}
        claims = {"iss": self.operator_id, "seq": seq, "iat": to_epoch(now), "revoked": entries}
        token = sign_compact(self._key, header, claims)
        tx.put(_NS_REVOCATION_LIST, _CURRENT, {"seq": seq, "token": token})
        return _parse_revocation_list(token, self._key.verify_key, self.operator_id)


# ----------------------------------------------------------------------------------------------
# Request tokens
# ----------------------------------------------------------------------------------------------


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
        if not isinstance(claimed_issuer, str) or _PARTICIPANT_RE.fullmatch(claimed_issuer) is None:
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
        if _participant_claim(claims, "aud") != self.node_id:
            raise VerificationError("audience")
        iat, exp = _int_claim(claims, "iat"), _int_claim(claims, "exp")
        if exp <= iat or exp - iat > int(MAX_REQUEST_LIFETIME.total_seconds()):
            raise VerificationError("lifetime")
        now_s, skew_s = to_epoch(now), int(self.skew.total_seconds())
        if iat > now_s + skew_s:
            raise VerificationError("not-yet-valid")
        if exp + skew_s <= now_s:
            raise VerificationError("expired")
        jti = _str_claim(claims, "jti")
        if _JTI_RE.fullmatch(jti) is None or len(_strict_b64(jti, "jti")) != 16:
            raise VerificationError("claims:jti")
        if not hmac.compare_digest(_str_claim(claims, "bsh").encode(), body_sha256(body).encode()):
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
            issued_at=_from_epoch(iat),
            expires_at=_from_epoch(exp),
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
    if isinstance(issuer, str) and _PARTICIPANT_RE.fullmatch(issuer):
        return issuer
    return None
