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

Layout: :mod:`.jws` (compact JWS and the helpers every token shares), :mod:`.credentials`,
:mod:`.revocation`, :mod:`.directory` (the member directory and the operator authority),
:mod:`.request_tokens` (request tokens, the verifier, the replay cache).
"""

from __future__ import annotations

from trusted_space.identity.credentials import (
    CREDENTIAL_TYP,
    ROLES,
    MembershipCredential,
    issue_credential,
    verify_credential,
)
from trusted_space.identity.directory import MemberDirectory, OperatorAuthority
from trusted_space.identity.jws import (
    CLOCK_SKEW,
    MAX_TOKEN_LENGTH,
    CompactJWS,
    body_sha256,
    check_participant_id,
    sign_compact,
    to_epoch,
)
from trusted_space.identity.request_tokens import (
    DEFAULT_REQUEST_LIFETIME,
    MAX_REQUEST_LIFETIME,
    REQUEST_TYP,
    VerifiedRequest,
    Verifier,
    issue_request_token,
    purge_replay_cache,
    record_refusal,
)
from trusted_space.identity.revocation import REVOCATION_TYP, Revocation, RevocationList

__all__ = [
    "CLOCK_SKEW",
    "CREDENTIAL_TYP",
    "DEFAULT_REQUEST_LIFETIME",
    "MAX_REQUEST_LIFETIME",
    "MAX_TOKEN_LENGTH",
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
