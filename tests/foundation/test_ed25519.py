"""common.ed25519 (libsodium) agrees with cryptography (OpenSSL) and refuses what it must."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcredit.common.ed25519 import Ed25519Key

KEY = Ed25519PrivateKey.generate()
FAST = Ed25519Key(KEY.public_key().public_bytes_raw())


@settings(max_examples=60, deadline=None)
@given(msg=st.binary(max_size=2048), flip=st.integers(min_value=0, max_value=63 * 8 + 7))
def test_agrees_with_openssl(msg: bytes, flip: int) -> None:
    sig = KEY.sign(msg)
    assert FAST.verify(sig, msg)
    bad = bytearray(sig)
    bad[flip // 8] ^= 1 << (flip % 8)
    assert not FAST.verify(bytes(bad), msg)
    assert not FAST.verify(sig, msg + b"\x00")


def test_signature_of_another_key_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    assert not FAST.verify(other.sign(b"m"), b"m")


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_wrong_signature_length_is_refused(length: int) -> None:
    assert not FAST.verify(b"\x01" * length, b"m")


@pytest.mark.parametrize("length", [0, 31, 33])
def test_key_length_is_checked(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes, got"):
        Ed25519Key(b"\x00" * length)


def test_small_order_key_is_refused() -> None:
    # The identity point (y = 1): every "signature" with R = identity and S = 0 would
    # satisfy the bare equation; libsodium refuses such keys outright.
    identity = b"\x01" + b"\x00" * 31
    assert not Ed25519Key(identity).verify(identity + b"\x00" * 32, b"anything")
