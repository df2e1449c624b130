"""Compact JWS (EdDSA only) and the small helpers every identity token shares.

:class:`CompactJWS` parses strictly (canonical base64url, canonical JSON, ``alg`` pinned to
``EdDSA`` before any key is looked up); :func:`sign_compact` is the one signer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from trusted_space.errors import ValidationError, VerificationError
from trusted_space.events import canonical_json
from trusted_space.keys import ALGORITHM, SigningKey, VerifyKey, b64url_decode, b64url_encode

__all__ = [
    "CLOCK_SKEW",
    "MAX_TOKEN_LENGTH",
    "PARTICIPANT_RE",
    "CompactJWS",
    "body_sha256",
    "check_participant_id",
    "from_epoch",
    "int_claim",
    "participant_claim",
    "sign_compact",
    "str_claim",
    "strict_b64",
    "to_epoch",
]

CLOCK_SKEW = timedelta(seconds=30)
MAX_TOKEN_LENGTH = 16_384
PARTICIPANT_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,62}")


def check_participant_id(value: object) -> str:
    """Return ``value`` if it is a participant id slug, else raise :class:`ValidationError`.

    ``re.fullmatch`` rather than ``$``: ``$`` also matches before a trailing newline.
    """
    if not isinstance(value, str) or PARTICIPANT_RE.fullmatch(value) is None:
        raise ValidationError(f"not a participant id: {value!r}")
    return value


def to_epoch(moment: datetime) -> int:
    """Integer seconds since the epoch of an aware datetime (naive ones are refused)."""
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValidationError("datetimes must be timezone-aware (UTC)")
    return int(moment.timestamp())


def from_epoch(value: int) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def body_sha256(body: bytes) -> str:
    """The ``bsh`` claim: unpadded base64url of SHA-256 over the exact body bytes."""
    return b64url_encode(hashlib.sha256(body).digest())


def strict_b64(segment: str, what: str) -> bytes:
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


def int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims[name]
    if type(value) is not int or value < 0:
        raise VerificationError(f"claims:{name}")
    return value


def str_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or not value:
        raise VerificationError(f"claims:{name}")
    return value


def participant_claim(claims: Mapping[str, Any], name: str) -> str:
    try:
        return check_participant_id(claims[name])
    except ValidationError as exc:
        raise VerificationError(f"claims:{name}") from exc


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
        header = _canonical_object(strict_b64(parts[0], "header"), "header")
        alg = header.get("alg")
        if alg != ALGORITHM:
            if alg is None:
                raise VerificationError("alg-missing")
            raise VerificationError("alg-none" if alg == "none" else "alg-not-eddsa")
        if header.get("typ") != typ:
            raise VerificationError("typ")
        if set(header) != header_keys:
            raise VerificationError("header")
        payload = _canonical_object(strict_b64(parts[1], "payload"), "payload")
        signature = strict_b64(parts[2], "signature")
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
