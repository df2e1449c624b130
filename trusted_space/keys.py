"""Ed25519 keys: the one signature algorithm of the space, pinned.

Every node has one Ed25519 key pair. It signs membership credentials (operator), request tokens,
ledger checkpoints, witness cosignatures, contract agreements and consents. Ed25519 is pinned: there
is no algorithm negotiation anywhere, so ``alg: none`` or HMAC-with-the-public-key confusions have
nothing to attach to. The private key never leaves :class:`SigningKey`: it has no accessor that
returns the secret except :meth:`SigningKey.save`, which writes a file with mode 0600.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from trusted_space.errors import ValidationError

__all__ = ["ALGORITHM", "SigningKey", "VerifyKey", "b64url_decode", "b64url_encode"]

ALGORITHM = "EdDSA"  # JOSE name; the curve is always Ed25519


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly; :class:`ValidationError` on anything else.

    Strict means: only the base64url alphabet, no padding, and the text must be the one canonical
    encoding of its bytes (no stray bits in the last character). A lenient decoder maps several
    strings to the same bytes, so a modified token could still verify.
    """
    if not isinstance(text, str) or not text.isascii():
        raise ValidationError("not unpadded base64url")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (ValueError, TypeError) as exc:
        raise ValidationError("not unpadded base64url") from exc
    if b64url_encode(data) != text:
        raise ValidationError("not the canonical unpadded base64url encoding")
    return data


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key (32 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            raise ValidationError("an Ed25519 public key is exactly 32 bytes")

    @classmethod
    def from_b64(cls, text: str) -> VerifyKey:
        """Load from unpadded base64url (the form used in credentials and JSON documents)."""
        return cls(b64url_decode(text))

    def to_b64(self) -> str:
        return b64url_encode(self.raw)

    @property
    def fingerprint(self) -> str:
        """``sha256:`` + hex of SHA-256 over the raw key: a stable key id for documents."""
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Return whether ``signature`` is a valid Ed25519 signature of ``message``."""
        if not isinstance(signature, bytes) or len(signature) != 64:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """An Ed25519 private key. ``repr`` and ``str`` never show the secret."""

    __slots__ = ("_key", "verify_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.verify_key = VerifyKey(
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature."""
        return self._key.sign(message)

    def save(self, path: str | Path) -> None:
        """Write the key as PKCS#8 PEM, created with mode 0600 (never world- or group-readable)."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
        finally:
            os.close(fd)
        os.chmod(target, 0o600)

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        """Load a PKCS#8 PEM Ed25519 key; :class:`ValidationError` if it is anything else."""
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"{path} is not a PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ValidationError(f"{path} is not an Ed25519 key (the only algorithm accepted)")
        return cls(key)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.verify_key.to_b64()})"
