"""The one exception tree of the ``crypto`` package.

Every error raised by our primitives is a :class:`CryptoError`. Errors from third-party libraries
(``phe``, ``tenseal``, ``cryptography``, ``numpy``) are converted where they enter our code with
``raise OurError(...) from exc`` so that callers catch one family::

    CryptoError
     ├── ParameterError          insecure or inconsistent parameters (key too short, bad preset)
     ├── EncodingError           a value cannot be represented
     │    └── FixedPointOverflowError   outside the fixed-point range; never wrapped silently
     ├── PackingError            a packed slot would overflow, or the packing layout is violated
     ├── SerializationError      malformed, truncated or oversized bytes / JSON from outside
     ├── KeyMismatchError        a ciphertext, share or context belongs to another key or session
     ├── DecryptionError         decryption impossible (no secret key, corrupted ciphertext)
     └── TripleReuseError        a Beaver triple was requested or consumed a second time
"""

from __future__ import annotations

__all__ = [
    "CryptoError",
    "DecryptionError",
    "EncodingError",
    "FixedPointOverflowError",
    "KeyMismatchError",
    "PackingError",
    "ParameterError",
    "SerializationError",
    "TripleReuseError",
]


class CryptoError(Exception):
    """Base class of every error raised by the ``crypto`` package."""


class ParameterError(CryptoError, ValueError):
    """Parameters are insecure or inconsistent (for example a Paillier key under 2048 bits)."""


class EncodingError(CryptoError, ValueError):
    """A value cannot be represented in the requested encoding."""


class FixedPointOverflowError(EncodingError):
    """A value or result lies outside the fixed-point range; we refuse rather than wrap."""


class PackingError(CryptoError, ValueError):
    """A packed plaintext would overflow a slot, or a packed layout is used inconsistently."""


class SerializationError(CryptoError, ValueError):
    """Bytes or JSON from outside are malformed, truncated, oversized or of a wrong type."""


class KeyMismatchError(CryptoError, ValueError):
    """An object belongs to another key, context or session than the one it is used with."""


class DecryptionError(CryptoError):
    """Decryption is impossible: no secret key is held, or the ciphertext is corrupted."""


class TripleReuseError(CryptoError):
    """A Beaver triple was requested or consumed a second time; each triple is single-use."""
