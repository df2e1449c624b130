"""Cryptographic primitives of trusted-space; imports nothing of ours and nothing web.

Submodules: :mod:`crypto.fixedpoint` (fixed point over Z_2^64), :mod:`crypto.paillier` (phe with
packing and a fixed exponent), :mod:`crypto.ckks` (TenSEAL with public evaluation contexts),
:mod:`crypto.sharing` (additive secret sharing with Beaver triples), :mod:`crypto.psi` (ECDH PSI on
X25519). Every error is a :class:`CryptoError` (see :mod:`crypto.errors`).
"""

from crypto import ckks, errors, fixedpoint, paillier, psi, sharing
from crypto.errors import (
    CryptoError,
    DecryptionError,
    EncodingError,
    FixedPointOverflowError,
    KeyMismatchError,
    PackingError,
    ParameterError,
    SerializationError,
    TripleReuseError,
)

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
    "ckks",
    "errors",
    "fixedpoint",
    "paillier",
    "psi",
    "sharing",
]
