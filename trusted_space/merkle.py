"""RFC 6962 / RFC 9162 Merkle tree hashing (SHA-256 with domain separation)."""

from __future__ import annotations

import hashlib

__all__ = ["leaf_hash", "node_hash"]


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``; the prefix keeps a leaf from passing for an interior node."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()
