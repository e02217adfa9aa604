"""Signing keys: Ed25519 key records, JWK/JWKS form, and the rotation rules.

Key ids are RFC 7638 JWK thumbprints. A key's life, all timestamps in epoch
seconds:

* ``created_at``  it is generated and published in the JWKS at once;
* ``activate_at`` it starts signing (publish-before-use: at least one JWKS TTL
  after creation, so every verifier's cache already holds it);
* ``retired_at``  a newer key took over; it signs nothing more but still
  verifies the tokens it signed before (JWK member ``exp``);
* ``expires_at``  no token it signed can still be valid (the latest ``exp`` of
  the tokens then issued, bounded by ``retired_at`` + the longest token lifetime,
  plus leeway), so it leaves the JWKS and remains only as a tombstone
  (``expired_kids``) so verifiers can name the reason precisely;
* ``compromised_at`` the key leaked (``fedcredit consent rotate-keys --compromised``):
  it leaves the JWKS at once, whatever it signed and whatever ``iat`` a token
  claims, and its tombstone says so.

The JWK members ``iat``/``nbf`` keep their JWT meanings (issued, not before);
retirement is ``retired_at``, a member of our own: a JWK ``exp`` would read as
"expires" to a generic RFC 7517 client, and a key that must no longer verify is
simply absent. RFC 7517 §4/§5 let a JWK and a JWK Set carry extra members
(``retired_at``, ``expired_kids``) that other implementations ignore.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcredit.common.ed25519 import Ed25519Key
from fedcredit.consent.statuslist import b64url, b64url_decode

ALG = "EdDSA"
# What a key id may look like on the wire: base64url only. Anything else
# (paths, SQL, quotes, control characters) is refused before any lookup.
KID_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}\Z")  # \Z: "$" would let a trailing newline in


def thumbprint(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an Ed25519 public key."""
    x = b64url(public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    # Required members only, lexicographic order, no whitespace (RFC 7638 §3.2).
    canon = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canon.encode()).digest())


@dataclass(frozen=True, slots=True)
class KeyRecord:
    kid: str
    private_pem: bytes  # PKCS#8 PEM; the service's own store only
    created_at: int
    activate_at: int
    retired_at: int | None = None
    expires_at: int | None = None
    compromised_at: int | None = None

    @property
    def private_key(self) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key

    def public_jwk(self) -> dict[str, Any]:
        pub = self.private_key.public_key()
        x = b64url(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        jwk: dict[str, Any] = {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": x,
            "kid": self.kid,
            "alg": ALG,
            "use": "sig",
            "iat": self.created_at,
            "nbf": self.activate_at,
        }
        if self.retired_at is not None:
            jwk["retired_at"] = self.retired_at
        return jwk

    def state(self, now: int) -> str:
        if self.compromised_at is not None and now >= self.compromised_at:
            return "compromised"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        if self.retired_at is not None and now >= self.retired_at:
            return "retired"
        if now < self.activate_at:
            return "next"
        return "active"


def new_key(*, now: int, activate_at: int) -> KeyRecord:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyRecord(
        kid=thumbprint(key.public_key()), private_pem=pem, created_at=now, activate_at=activate_at
    )


def signing_key(keys: Iterable[KeyRecord], now: int) -> KeyRecord | None:
    """The key that signs at ``now``: the most recently activated active key."""
    active = [k for k in keys if k.state(now) == "active"]
    return max(active, key=lambda k: (k.activate_at, k.created_at), default=None)


def rotate(
    keys: Iterable[KeyRecord],
    *,
    now: int,
    publish_lead: int,
    retention: int,
    immediate: bool = False,
    compromised: bool = False,
) -> tuple[KeyRecord, list[KeyRecord]]:
    """Plan a rotation: a new key published now that signs from ``now + publish_lead``.

    Returns the new key and the existing keys whose times changed: every key
    that is active or waiting retires when the new one activates, and expires
    ``retention`` seconds after (the longest token lifetime plus leeway).

    ``immediate`` is the key-compromise path: the new key signs at once and
    every other key still in the JWKS retires *now*, even one that had been
    scheduled to retire later, so nothing the old keys sign from this second
    on verifies and the new key is the only one that signs. (Times are whole
    seconds; without this, a key activated in the same second could tie with
    the new one.)

    ``compromised`` (implies ``immediate``): every other key is also marked
    compromised now and leaves the JWKS at once; every token it signed is refused
    from this second, whatever its ``iat`` says.
    """
    immediate = immediate or compromised
    new = new_key(now=now, activate_at=now if immediate else now + publish_lead)
    changed = []
    for k in keys:
        if k.state(now) in ("expired", "compromised"):
            continue
        if compromised:
            retire = now if k.retired_at is None else min(k.retired_at, now)
            changed.append(replace(k, retired_at=retire, expires_at=now, compromised_at=now))
            continue
        if immediate:
            retire = now if k.retired_at is None else min(k.retired_at, now)
        elif k.retired_at is None:
            retire = max(new.activate_at, k.activate_at)
        else:
            continue
        if retire != k.retired_at:
            changed.append(replace(k, retired_at=retire, expires_at=retire + retention))
    return new, changed


def jwks(keys: Iterable[KeyRecord], now: int) -> dict[str, Any]:
    """The public JWK Set at ``now``: next, active and retired keys; expired and compromised
    ones only as tombstones (they verify nothing)."""
    published, tombstones = [], []
    for k in sorted(keys, key=lambda k: (k.created_at, k.kid)):
        state = k.state(now)
        if state == "compromised":
            tombstones.append(
                {"kid": k.kid, "retired_at": k.retired_at, "compromised_at": k.compromised_at}
            )
        elif state == "expired":
            tombstones.append(
                {"kid": k.kid, "retired_at": k.retired_at, "expired_at": k.expires_at}
            )
        else:
            published.append(k.public_jwk())
    return {"keys": published, "expired_kids": tombstones}


def jwks_epoch(doc: Mapping[str, Any]) -> str:
    """A short digest of which keys a JWK Set publishes and which it has withdrawn: the
    authority names it in every signed status list, and a verifier holding another epoch
    refetches the JWKS at once (key changes are pushed with status changes)."""
    kids = sorted(str(k.get("kid")) for k in doc.get("keys") or [] if isinstance(k, dict))
    gone = sorted(str(t.get("kid")) for t in doc.get("expired_kids") or [] if isinstance(t, dict))
    canon = json.dumps([kids, gone], separators=(",", ":"))
    return b64url(hashlib.sha256(canon.encode()).digest()[:12])


# --- the verifier's view -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicKey:
    kid: str
    # Verified with libsodium, about twice as fast as OpenSSL here (common.ed25519).
    verifier: Ed25519Key
    not_before: int | None  # activate_at
    retired_at: int | None


@dataclass(frozen=True, slots=True)
class Tombstone:
    kid: str
    retired_at: int | None
    expired_at: int | None
    compromised_at: int | None = None


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: Mapping[str, PublicKey]
    tombstones: Mapping[str, Tombstone]
    epoch: str = ""  # jwks_epoch of the document it was parsed from


def parse_jwks(doc: Mapping[str, Any]) -> KeySet:
    """Parse a JWK Set, keeping only Ed25519 signing keys with a well-formed kid.

    Raises ValueError when the document is not a JWK Set at all.
    """
    raw = doc.get("keys")
    if not isinstance(raw, list):
        raise ValueError("a JWK Set needs a 'keys' list")
    keys: dict[str, PublicKey] = {}
    for jwk in raw:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if (
            jwk.get("kty") != "OKP"
            or jwk.get("crv") != "Ed25519"
            or jwk.get("alg", ALG) != ALG
            or jwk.get("use", "sig") != "sig"
            or not isinstance(kid, str)
            or not KID_RE.match(kid)
            or not isinstance(jwk.get("x"), str)
        ):
            continue
        try:
            raw = b64url_decode(jwk["x"])
            Ed25519PublicKey.from_public_bytes(raw)  # refuses what is not a curve point
        except ValueError:
            continue
        nbf, retired = jwk.get("nbf"), jwk.get("retired_at")
        keys[kid] = PublicKey(
            kid=kid,
            verifier=Ed25519Key(raw),
            not_before=nbf if isinstance(nbf, int) else None,
            retired_at=retired if isinstance(retired, int) else None,
        )
    tombstones: dict[str, Tombstone] = {}
    for t in doc.get("expired_kids") or []:
        if isinstance(t, dict) and isinstance(t.get("kid"), str):
            comp = t.get("compromised_at")
            tombstones[t["kid"]] = Tombstone(
                t["kid"],
                t.get("retired_at"),
                t.get("expired_at"),
                comp if isinstance(comp, int) else None,
            )
            keys.pop(t["kid"], None)  # withdrawn wins over published
    return KeySet(keys=keys, tombstones=tombstones, epoch=jwks_epoch(doc))
