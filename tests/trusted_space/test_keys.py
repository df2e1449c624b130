from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from hypothesis import given
from hypothesis import strategies as st

from trusted_space.errors import ValidationError
from trusted_space.keys import SigningKey, VerifyKey, b64url_decode, b64url_encode

KEY = SigningKey.generate()


@given(st.binary(max_size=256))
def test_sign_verify_roundtrip(message: bytes) -> None:
    assert KEY.verify_key.verify(KEY.sign(message), message)


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=511))
def test_flipped_bit_fails(message: bytes, bit: int) -> None:
    sig = bytearray(KEY.sign(message))
    sig[(bit // 8) % 64] ^= 1 << (bit % 8)
    assert not KEY.verify_key.verify(bytes(sig), message)


def test_other_key_and_bad_lengths_fail() -> None:
    other = SigningKey.generate()
    sig = KEY.sign(b"m")
    assert not other.verify_key.verify(sig, b"m")
    assert not KEY.verify_key.verify(sig[:-1], b"m")
    with pytest.raises(ValidationError):
        VerifyKey(b"\x00" * 31)


@given(st.binary(max_size=100))
def test_b64url_roundtrip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text) == data


def test_b64url_rejects_padding_and_std_alphabet() -> None:
    for bad in ["YQ==", "a+b/", "a b", "ab!cd", "YR", "Y"]:
        with pytest.raises(ValidationError):
            b64url_decode(bad)


def test_save_is_private_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.pem"
    KEY.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.load(path).verify_key == KEY.verify_key
    assert "PRIVATE" not in repr(KEY)


def test_load_refuses_other_algorithms(tmp_path: Path) -> None:
    ec = generate_private_key(SECP256R1())
    pem = ec.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "ec.pem").write_bytes(pem)
    with pytest.raises(ValidationError, match="Ed25519"):
        SigningKey.load(tmp_path / "ec.pem")
    (tmp_path / "junk.pem").write_bytes(b"junk")
    with pytest.raises(ValidationError):
        SigningKey.load(tmp_path / "junk.pem")
