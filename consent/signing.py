"""Signing consent tokens and status lists (JWS compact, EdDSA, RFC 8037), and the
authority's key ring (:class:`KeyRing`: the stored keys, rotation, the JWKS).

The compact serialisation is assembled here rather than by PyJWT's encoder: the
protected header of a key and type never changes, so it is encoded once, and a
token costs one JSON dump, one base64url and one Ed25519 signature. The output
is byte-for-byte what ``jwt.encode`` produces (tested), and every verifier still
parses it with the ordinary JWS rules.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from fedcredit.consent import errors as E
from fedcredit.consent import keys as K
from fedcredit.consent.keys import ALG, KeyRecord
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.statuslist import STATUSLIST_TYP
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.token import CONSENT_TYP


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class Signer:
    """Signs with one key record; the private key object is loaded once."""

    def __init__(self, key: KeyRecord) -> None:
        self.record = key
        self.kid = key.kid
        self._key = key.private_key
        self._headers: dict[str, bytes] = {}

    def _header(self, typ: str) -> bytes:
        h = self._headers.get(typ)
        if h is None:
            # Sorted keys and no whitespace, as PyJWT writes it.
            header = {"alg": ALG, "kid": self.kid, "typ": typ}
            h = _b64(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
            self._headers[typ] = h
        return h

    def sign(self, claims: Mapping[str, Any], *, typ: str) -> str:
        payload = json.dumps(dict(claims), separators=(",", ":")).encode()
        signing_input = self._header(typ) + b"." + _b64(payload)
        return (signing_input + b"." + _b64(self._key.sign(signing_input))).decode("ascii")

    def consent_token(self, claims: Mapping[str, Any]) -> str:
        return self.sign(claims, typ=CONSENT_TYP)

    def status_list_token(self, claims: Mapping[str, Any]) -> str:
        return self.sign(claims, typ=STATUSLIST_TYP)


class KeyRing:
    """The authority's signing keys: loaded from its store, rotated by the rules of
    :mod:`consent.keys`, published as a JWKS; :meth:`signer` signs with the key of the moment.

    On a first start (no key that signs now or is about to) a key that signs at once is
    made: nobody can have cached a JWKS yet.
    """

    def __init__(
        self, store: ConsentStore, settings: ConsentSettings, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock
        self._keys: list[KeyRecord] = []
        self._signers: dict[str, Signer] = {}
        self._lock = threading.Lock()
        self.reload()
        if K.signing_key(self._keys, self.now()) is None and not any(
            k.state(self.now()) == "next" for k in self._keys
        ):
            self.rotate(immediate=True)

    def now(self) -> int:
        return int(self._clock())

    def reload(self) -> None:
        """Pick up the keys in the store (rotated by another process, say)."""
        records = self.store.load_keys()
        with self._lock:
            self._keys = records

    def keys(self) -> list[KeyRecord]:
        with self._lock:
            return list(self._keys)

    def signer(self) -> Signer:
        with self._lock:
            rec = K.signing_key(self._keys, self.now())
            if rec is None:
                raise E.NoSigningKey(
                    "no signing key is active; run `fedcredit consent rotate-keys` (or wait for the "
                    "published next key to activate)"
                )
            signer = self._signers.get(rec.kid)
            if signer is None:
                signer = self._signers[rec.kid] = Signer(rec)
            return signer

    def rotate(
        self, *, immediate: bool = False, compromised: bool = False
    ) -> tuple[KeyRecord, list[KeyRecord]]:
        """Publish a new key; it signs after ``key_publish_lead_s`` (at once if ``immediate``);
        ``compromised``: the other keys are withdrawn at once (:func:`consent.keys.rotate`)."""
        now = self.now()
        lead = 0 if immediate or compromised else self.settings.key_publish_lead_s
        new, changed = K.rotate(
            self.keys(),
            now=now,
            publish_lead=lead,
            retention=self.settings.key_retention_s,
            immediate=immediate,
            compromised=compromised,
        )
        with self.store.begin() as conn:
            self.store.save_keys(conn, [new], changed)
        self.reload()
        return new, changed

    def jwks(self) -> dict[str, Any]:
        return K.jwks(self.keys(), self.now())

    def epoch(self) -> str:
        """:func:`consent.keys.jwks_epoch` of the JWKS published now."""
        return K.jwks_epoch(self.jwks())
