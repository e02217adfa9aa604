"""A software WebAuthn authenticator (ES256, "none" attestation) for tests that run no
browser: it answers the options the relying party sends exactly as a platform passkey
would (W3C WebAuthn Level 3 §6.1, §6.3.3), with a counter, user presence and verification."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url, encode_cbor


@dataclass
class SoftKey:
    origin: str
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))  # fmt: skip
    credential_id: bytes = field(default_factory=lambda: os.urandom(16))
    count: int = 0

    @property
    def id(self) -> str:
        return bytes_to_base64url(self.credential_id)

    def _client_data(self, kind: str, challenge: str) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": False}
        ).encode()

    def _auth_data(self, rp_id: str, flags: int, attested: bytes = b"") -> bytes:
        self.count += 1
        return (
            hashlib.sha256(rp_id.encode()).digest()
            + bytes([flags])
            + self.count.to_bytes(4, "big")
            + attested
        )

    def create(self, options_json: str) -> str:
        """navigator.credentials.create(): the RegistrationResponseJSON."""
        o = json.loads(options_json)
        nums = self.key.public_key().public_numbers()
        cose = encode_cbor(
            {1: 2, 3: -7, -1: 1, -2: nums.x.to_bytes(32, "big"), -3: nums.y.to_bytes(32, "big")}
        )
        attested = (
            bytes(16) + len(self.credential_id).to_bytes(2, "big") + self.credential_id + cose
        )
        auth = self._auth_data(o["rp"]["id"], 0x45, attested)  # UP | UV | AT
        cd = self._client_data("webauthn.create", o["challenge"])
        att = encode_cbor({"fmt": "none", "attStmt": {}, "authData": auth})
        return json.dumps(
            {
                "id": self.id,
                "rawId": self.id,
                "type": "public-key",
                "response": {
                    "clientDataJSON": bytes_to_base64url(cd),
                    "attestationObject": bytes_to_base64url(att),
                },
                "clientExtensionResults": {},
            }
        )

    def get(self, options_json: str, *, challenge: bytes | None = None) -> str:
        """navigator.credentials.get(): the AuthenticationResponseJSON (``challenge``:
        sign this one instead of the options', as a tampering relay would)."""
        o = json.loads(options_json)
        ch = bytes_to_base64url(challenge) if challenge is not None else o["challenge"]
        auth = self._auth_data(o["rpId"], 0x05)  # UP | UV
        cd = self._client_data("webauthn.get", ch)
        sig = self.key.sign(auth + hashlib.sha256(cd).digest(), ec.ECDSA(hashes.SHA256()))
        return json.dumps(
            {
                "id": self.id,
                "rawId": self.id,
                "type": "public-key",
                "response": {
                    "clientDataJSON": bytes_to_base64url(cd),
                    "authenticatorData": bytes_to_base64url(auth),
                    "signature": bytes_to_base64url(sig),
                },
                "clientExtensionResults": {},
            }
        )


def challenge_of(options_json: str) -> bytes:
    return base64url_to_bytes(json.loads(options_json)["challenge"])
