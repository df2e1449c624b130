"""Data-subject consent: an enterprise authorises one grantee to use its data for one purpose.

Why: a provider (tax bureau, court, ...) may release a score about an enterprise to a bank only if
that enterprise agreed, for that bank, for that purpose (e.g. ``pre-loan-review``), at that time.
The policy engine's ``consent`` constraint asks this module, through :class:`ConsentChecker`.

Threats and what stops them:

- **Forged consent** (a bank claims an enterprise agreed): a consent is a signed token, signed
  either by the entity's own Ed25519 key (registered on this node beforehand with
  :meth:`ConsentRegistry.register_entity_key`) or by the operator, which registers consents given
  on paper or through its portal. Nothing unsigned is ever stored.
- **Stretching a consent** to another bank, purpose or time: grantee, purpose and validity window
  are signed claims, and the store is keyed by ``grantee/purpose/entity`` so a lookup can only
  find consents for exactly that triple.
- **Ignoring a withdrawal**: :meth:`ConsentRegistry.revoke` marks a consent revoked; a revoked
  consent never counts again, whatever time is asked about (safe by default: use the ledger to
  reconstruct past decisions).
- **Leaking who is being looked at, or who is whose customer**: the ledger is public, and
  "bank-a asked about enterprise X" or "X consented to bank-a" is itself sensitive (an unsalted
  hash of one USCC is confirmed by hashing the open registry). So ``consent.check`` carries the
  count and a *salted* commitment to the sorted entity list, and ``consent.registered``,
  ``consent.revoked`` and ``consent.key_registered`` carry only a salted commitment to their
  content (:mod:`trusted_space.commitments`); the openings stay in this node's store for its
  staff and auditors.

Consent token: JWS compact (see :mod:`trusted_space.identity`) with header
``{"alg":"EdDSA","kid":<signer key fingerprint>,"typ":"ts-consent+jws"}`` and claims ``cid``
(consent id), ``sub`` (entity id, opaque here: USCCs are validated elsewhere), ``aud`` (grantee
participant id), ``purpose``, ``iss`` (the entity itself, or the operator's participant id),
``iat``, ``nbf``, ``exp`` (integer seconds since the epoch; valid for ``nbf <= t < exp``).

Store layout: ``consent/<grantee>/<purpose>/<entity>/<cid>`` (the token and revocation state),
``consent-id/<cid>`` (index to the former), ``entity-key/<entity>``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from trusted_space.commitments import commit
from trusted_space.errors import NotFoundError, ValidationError, VerificationError
from trusted_space.events import canonical_json, record_event
from trusted_space.identity import CompactJWS, check_participant_id, sign_compact, to_epoch
from trusted_space.identity.jws import int_claim
from trusted_space.keys import ALGORITHM, SigningKey, VerifyKey
from trusted_space.store import Transaction

__all__ = [
    "CONSENT_TYP",
    "Consent",
    "ConsentChecker",
    "ConsentRegistry",
    "TransactionConsentChecker",
    "check_entity_id",
    "check_purpose",
    "sign_consent",
]

CONSENT_TYP = "ts-consent+jws"

_ENTITY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_PURPOSE_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
_CLAIMS = frozenset({"cid", "sub", "aud", "purpose", "iss", "iat", "nbf", "exp"})
_HEADER = frozenset({"alg", "typ", "kid"})

_NS_CONSENT = "consent"
_NS_CONSENT_ID = "consent-id"
_NS_ENTITY_KEY = "entity-key"


class ConsentChecker(Protocol):
    """The policy engine's question: does a consent cover (entity, grantee, purpose) at ``at``?"""

    def has_consent(self, entity: str, grantee: str, purpose: str, at: datetime) -> bool: ...


def check_entity_id(value: object) -> str:
    """Return ``value`` if it can name an entity (no ``/``, bounded length), else raise.

    Raises:
        ValidationError: it cannot.
    """
    if not isinstance(value, str) or _ENTITY_RE.fullmatch(value) is None:
        raise ValidationError(f"not an entity id: {value!r}")
    return value


def check_purpose(value: object) -> str:
    """Return ``value`` if it is a purpose slug (e.g. ``pre-loan-review``), else raise.

    Raises:
        ValidationError: it is not.
    """
    if not isinstance(value, str) or _PURPOSE_RE.fullmatch(value) is None:
        raise ValidationError(f"not a purpose: {value!r}")
    return value


def _well_formed(entity: object, grantee: object, purpose: object) -> bool:
    return (
        isinstance(entity, str)
        and _ENTITY_RE.fullmatch(entity) is not None
        and isinstance(grantee, str)
        and re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,62}", grantee) is not None
        and isinstance(purpose, str)
        and _PURPOSE_RE.fullmatch(purpose) is not None
    )


@dataclass(frozen=True)
class Consent:
    """A verified consent."""

    consent_id: str
    entity: str
    grantee: str
    purpose: str
    issuer: str
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    token: str

    @property
    def operator_registered(self) -> bool:
        """Whether the operator signed it (rather than the entity itself)."""
        return self.issuer != self.entity

    def valid_at(self, at: datetime) -> bool:
        """Whether ``at`` lies in ``[not_before, expires_at)`` (revocation is the store's job)."""
        return self.not_before <= at < self.expires_at


def sign_consent(
    key: SigningKey,
    *,
    issuer: str,
    entity: str,
    grantee: str,
    purpose: str,
    not_before: datetime,
    expires_at: datetime,
    now: datetime,
) -> Consent:
    """Sign a consent token.

    Args:
        key: the entity's key (then ``issuer == entity``) or the operator's key (then ``issuer``
            is the operator's participant id).
        issuer: who signs.
        entity: the data subject.
        grantee: the participant allowed to use the data.
        purpose: the purpose slug.
        not_before: start of validity.
        expires_at: end of validity (exclusive).
        now: signing time.

    Raises:
        ValidationError: malformed ids or an empty window.
    """
    check_entity_id(entity)
    check_participant_id(grantee)
    check_purpose(purpose)
    if issuer != entity:
        check_participant_id(issuer)
    nbf, exp = to_epoch(not_before), to_epoch(expires_at)
    if exp <= nbf:
        raise ValidationError("consent window is empty")
    claims = {
        "cid": secrets.token_urlsafe(16),
        "sub": entity,
        "aud": grantee,
        "purpose": purpose,
        "iss": issuer,
        "iat": to_epoch(now),
        "nbf": nbf,
        "exp": exp,
    }
    header = {"alg": ALGORITHM, "typ": CONSENT_TYP, "kid": key.verify_key.fingerprint}
    token = sign_compact(key, header, claims)
    return _consent_from_claims(claims, token)


def _consent_from_claims(claims: dict[str, Any], token: str) -> Consent:
    if set(claims) != _CLAIMS:
        raise VerificationError("claims")
    cid, issuer = claims["cid"], claims["iss"]
    if not isinstance(cid, str) or not cid or not isinstance(issuer, str):
        raise VerificationError("claims")
    if not _well_formed(claims["sub"], claims["aud"], claims["purpose"]):
        raise VerificationError("claims")
    nbf, exp = int_claim(claims, "nbf"), int_claim(claims, "exp")
    if exp <= nbf:
        raise VerificationError("claims:exp")
    return Consent(
        consent_id=cid,
        entity=claims["sub"],
        grantee=claims["aud"],
        purpose=claims["purpose"],
        issuer=issuer,
        issued_at=datetime.fromtimestamp(int_claim(claims, "iat"), UTC),
        not_before=datetime.fromtimestamp(nbf, UTC),
        expires_at=datetime.fromtimestamp(exp, UTC),
        token=token,
    )


def _entities_digest(entities: Iterable[str]) -> str:
    return hashlib.sha256(canonical_json(sorted(set(entities)))).hexdigest()


class ConsentRegistry:
    """Consents held by this node, verified on entry.

    Args:
        operator_id: the operator's participant id (the only non-entity issuer accepted).
        operator_key: the operator's verify key.
    """

    def __init__(self, operator_id: str, operator_key: VerifyKey) -> None:
        self.operator_id = check_participant_id(operator_id)
        self.operator_key = operator_key

    # -- keys ------------------------------------------------------------------------------
    def register_entity_key(
        self, tx: Transaction, entity: str, key: VerifyKey, *, now: datetime
    ) -> None:
        """Record the entity's own verify key (established out of band).

        Ledger ``consent.key_registered``. A new key replaces the old one for future consents only
        (consents already registered were verified when they arrived).
        """
        check_entity_id(entity)
        tx.put(_NS_ENTITY_KEY, entity, {"key": key.to_b64()})
        registration, _ = commit(
            tx, "consent.key_registered", {"entity": entity, "key": key.fingerprint}
        )
        record_event(tx, "consent.key_registered", {"registration": registration}, time=now)

    def entity_key(self, tx: Transaction, entity: str) -> VerifyKey:
        """The registered key of ``entity``.

        Raises:
            NotFoundError: none registered.
        """
        return VerifyKey.from_b64(tx.require(_NS_ENTITY_KEY, entity).body["key"])

    # -- consents --------------------------------------------------------------------------
    def verify(self, tx: Transaction, token: str) -> Consent:
        """Verify a consent token against the entity's registered key or the operator's key.

        Raises:
            VerificationError: for every failure (``reason`` says which).
        """
        jws = CompactJWS.parse(token, typ=CONSENT_TYP, header_keys=_HEADER)
        issuer, entity = jws.payload.get("iss"), jws.payload.get("sub")
        if issuer == self.operator_id:
            key = self.operator_key
        elif isinstance(entity, str) and issuer == entity:
            try:
                key = self.entity_key(tx, entity)
            except NotFoundError as exc:
                raise VerificationError("unknown-entity-key") from exc
        else:
            raise VerificationError("consent-issuer")
        if jws.header["kid"] != key.fingerprint:
            raise VerificationError("consent-kid")
        jws.require_signature(key)
        return _consent_from_claims(jws.payload, token)

    def register(self, tx: Transaction, token: str, *, now: datetime) -> Consent:
        """Verify and store a consent; ledger ``consent.registered``.

        Raises:
            VerificationError: the token does not verify.
            ConflictError: a consent with that id is already registered.
        """
        consent = self.verify(tx, token)
        key = _storage_key(consent)
        tx.insert(_NS_CONSENT_ID, consent.consent_id, {"key": key})
        tx.insert(_NS_CONSENT, key, {"token": token, "revoked_at": None})
        signed_by = "operator" if consent.operator_registered else "entity"
        committed, _ = commit(
            tx,
            "consent.registered",
            {
                "consent_id": consent.consent_id,
                "entity": consent.entity,
                "grantee": consent.grantee,
                "purpose": consent.purpose,
                "signed_by": signed_by,
                "not_before": consent.not_before.isoformat(),
                "expires_at": consent.expires_at.isoformat(),
            },
        )
        # Who consented to whom for what is a data subject's and a grantee's business: the
        # public entry carries only a salted commitment (opened to auditors on request).
        record_event(
            tx, "consent.registered", {"consent": committed, "signed_by": signed_by}, time=now
        )
        return consent

    def get(self, tx: Transaction, consent_id: str) -> Consent:
        """A registered consent by id (revoked or not).

        Raises:
            NotFoundError: unknown id.
        """
        key = tx.require(_NS_CONSENT_ID, consent_id).body["key"]
        return self.verify(tx, tx.require(_NS_CONSENT, key).body["token"])

    def is_revoked(self, tx: Transaction, consent_id: str) -> bool:
        """Whether a registered consent was revoked.

        Raises:
            NotFoundError: unknown id.
        """
        key = tx.require(_NS_CONSENT_ID, consent_id).body["key"]
        return tx.require(_NS_CONSENT, key).body["revoked_at"] is not None

    def revoke(self, tx: Transaction, consent_id: str, *, now: datetime, reason: str) -> Consent:
        """Withdraw a consent for good; ledger ``consent.revoked``.

        Authorising the withdrawal (the entity or the operator asked) is the caller's job.

        Raises:
            NotFoundError: unknown id.
        """
        key = tx.require(_NS_CONSENT_ID, consent_id).body["key"]
        doc = tx.require(_NS_CONSENT, key)
        consent = self.verify(tx, doc.body["token"])
        if doc.body["revoked_at"] is None:
            tx.put(
                _NS_CONSENT,
                key,
                {"token": doc.body["token"], "revoked_at": to_epoch(now)},
                expect_version=doc.version,
            )
            committed, _ = commit(
                tx,
                "consent.revoked",
                {"consent_id": consent_id, "entity": consent.entity, "reason": reason},
            )
            record_event(tx, "consent.revoked", {"consent": committed}, time=now)
        return consent

    def checker(self, tx: Transaction, *, record: bool = True) -> TransactionConsentChecker:
        """A :class:`ConsentChecker` reading (and, if ``record``, logging) within ``tx``."""
        return TransactionConsentChecker(tx, record=record)


def _storage_key(consent: Consent) -> str:
    return f"{consent.grantee}/{consent.purpose}/{consent.entity}/{consent.consent_id}"


class TransactionConsentChecker:
    """Answers consent questions from the store inside one transaction.

    Implements :class:`ConsentChecker`. Tokens were verified at registration and the store is the
    node's own, so the stored claims are read without re-verifying each signature (a 1,000-entity
    query costs one scan, not 1,000 signature checks).
    """

    def __init__(self, tx: Transaction, *, record: bool = True) -> None:
        self._tx = tx
        self._record = record

    def has_consent(self, entity: str, grantee: str, purpose: str, at: datetime) -> bool:
        """Whether a registered, unrevoked consent covers the triple at ``at``.

        A malformed id cannot have a consent (registration refuses it), so it answers ``False``.
        """
        to_epoch(at)
        granted = _well_formed(entity, grantee, purpose) and bool(
            self._granted(f"{grantee}/{purpose}/{entity}/", at)
        )
        self._log(grantee, purpose, at, [entity], missing=0 if granted else 1)
        return granted

    def missing_consents(
        self, entities: Sequence[str], grantee: str, purpose: str, at: datetime
    ) -> list[str]:
        """The entities (input order, each once) lacking a valid consent at ``at``; one scan."""
        to_epoch(at)
        granted: set[str] = set()
        if _well_formed("x", grantee, purpose):
            granted = self._granted(f"{grantee}/{purpose}/", at)
        missing = [e for e in dict.fromkeys(entities) if e not in granted]
        self._log(grantee, purpose, at, entities, missing=len(missing))
        return missing

    def _granted(self, prefix: str, at: datetime) -> set[str]:
        granted: set[str] = set()
        for doc in self._tx.scan(_NS_CONSENT, prefix):
            if doc.body["revoked_at"] is not None:
                continue
            claims = _stored_claims(doc.body["token"])
            nbf = datetime.fromtimestamp(claims["nbf"], UTC)
            exp = datetime.fromtimestamp(claims["exp"], UTC)
            if nbf <= at < exp:
                granted.add(claims["sub"])
        return granted

    def _log(
        self, grantee: str, purpose: str, at: datetime, entities: Iterable[str], *, missing: int
    ) -> None:
        if not self._record:
            return
        unique = set(entities)
        committed, _ = commit(self._tx, "entities", _entities_digest(unique), detail=sorted(unique))
        record_event(
            self._tx,
            "consent.check",
            {
                "grantee": grantee,
                "purpose": purpose,
                "at": at.astimezone(UTC).isoformat(),
                "entities": len(unique),
                "entities_commitment": committed,
                "missing": missing,
            },
        )


def _stored_claims(token: str) -> dict[str, Any]:
    """Claims of a token this node verified at registration (structure re-checked, not the key)."""
    return CompactJWS.parse(token, typ=CONSENT_TYP, header_keys=_HEADER).payload
