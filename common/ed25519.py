"""Ed25519 signature verification (RFC 8032) on libsodium, through PyNaCl.

Why not ``cryptography`` (OpenSSL), which signs everything here: a first-sight
consent token is checked by the coordinator and again by every node, so the
verification rate is the floor of a cold batch (issue 5) and of ``ScoreBatch``
(issue 6). libsodium verifies about twice as fast as OpenSSL on this machine
(``bench/bench_node.py`` measures both in the same run). Both implement
RFC 8032 §5.1.7; libsodium is the stricter: it also refuses small-order public
keys and a non-canonical R, neither of which an honest signer produces.

Signing stays with ``cryptography`` and PyJWT: one signature per token issued is
not the hot path.
"""

from __future__ import annotations

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class Ed25519Key:
    """A raw 32-byte Ed25519 public key, ready to verify."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != PUBLIC_KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
        self.raw = bytes(raw)
        self._key = VerifyKey(self.raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True only when ``signature`` is this key's signature over ``message``."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(message, signature)
        except (BadSignatureError, CryptoError):
            return False
        return True
