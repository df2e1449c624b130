r"""Salted commitments: how a public ledger entry refers to a data subject without naming it.

Why: ledger entries are public (anyone recomputes every leaf), but an entry must never name a
data subject, a consent subject or a member's customers — neither in clear nor as an unsalted
hash: an outsider who hashes every USCC of the open registry confirms a guess in one pass (the
tax ledger's 89 single-enterprise lookups were all de-hashed that way). So an entry carries

    commitment = SHA-256("trusted-space/commitment/v1\\n" || salt || canonical_json(value))

with a fresh 32-byte salt from :mod:`secrets` per commitment. Without the salt the commitment
says nothing about ``value`` (hiding: the salt is uniform and never published); with it, nobody
can claim another value (binding: SHA-256 collision resistance). The node keeps the *opening*
(salt and value) in its own store, namespace :data:`OPENING_NAMESPACE`, written in the same
transaction as the entry, and hands it only to those entitled (``docs/ledger.md``):

- the analyst of a use receives the salt of its ``query.use`` in its receipt and recomputes the
  commitment from the ids it sent itself;
- the provider keeps every opening in its own store;
- an auditor with the node's staff token reads openings on request
  (``GET /management/ledger/openings/{commitment}``).

A fresh salt per commitment also means two entries about the same subject do not look alike.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from trusted_space.errors import ValidationError
from trusted_space.events import canonical_json
from trusted_space.store import Transaction

__all__ = [
    "COMMITMENT_DOMAIN",
    "OPENING_NAMESPACE",
    "SALT_BYTES",
    "commit",
    "commitment",
    "opening",
    "verify_opening",
]

OPENING_NAMESPACE = "ledger_opening"
"""Openings of this node's ledger commitments: key = commitment hex, body = salt, value, what."""

COMMITMENT_DOMAIN = b"trusted-space/commitment/v1\n"
SALT_BYTES = 32


def commitment(salt: bytes, value: Any) -> str:
    """The commitment (SHA-256 hex) to ``value`` under ``salt``."""
    if len(salt) != SALT_BYTES:
        raise ValidationError(f"a commitment salt has {SALT_BYTES} bytes")
    return hashlib.sha256(COMMITMENT_DOMAIN + salt + canonical_json(value)).hexdigest()


def commit(tx: Transaction, what: str, value: Any, *, detail: Any = None) -> tuple[str, str]:
    """Commit to ``value`` and keep the opening in this node's store, within ``tx``.

    Args:
        tx: the transaction that also appends the entry carrying the commitment.
        what: what the value is (``"entities"``, ``"entity"``, …), kept with the opening.
        value: any canonical-JSON value.
        detail: what the value stands for, kept with the opening only (e.g. the id list whose
            digest ``value`` is: the analyst re-checks the cheap digest, an auditor the ids).

    Returns:
        ``(commitment hex, salt base64)``: the first goes into the entry, the second only to
        those entitled to the opening.
    """
    salt = secrets.token_bytes(SALT_BYTES)
    digest = commitment(salt, value)
    salt_b64 = base64.b64encode(salt).decode("ascii")
    body = {"what": what, "salt": salt_b64, "value": value}
    if detail is not None:
        body["detail"] = detail
    tx.put(OPENING_NAMESPACE, digest, body)
    return digest, salt_b64


def opening(tx: Transaction, digest: str) -> dict[str, Any] | None:
    """The stored opening (``what``, ``salt`` base64, ``value``, maybe ``detail``) or ``None``."""
    doc = tx.get(OPENING_NAMESPACE, digest)
    return None if doc is None else dict(doc.body)


def verify_opening(digest: str, salt_b64: str, value: Any) -> bool:
    """Whether ``(salt, value)`` opens ``digest`` (constant-time comparison)."""
    try:
        salt = base64.b64decode(salt_b64.encode("ascii"), validate=True)
        return hmac.compare_digest(commitment(salt, value), digest)
    except (ValueError, ValidationError, AttributeError):
        return False
