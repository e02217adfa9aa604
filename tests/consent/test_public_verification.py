"""Public verification (issue 14): a third party checks a consent token's signature and
status with PyJWT and zlib alone — no fedcredit code — fetching the JWKS and the status
list over HTTPS, without a client certificate, from the URIs the token itself names,
trusting only the deployment CA."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from fedcredit.consent.service import stop
from tests.conftest import Pki
from tests.consent.conftest import BANK, enterprise_code
from tests.consent.test_service import Service, start, terms


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def public_svc(pki: Pki, tmp_path: Path) -> Iterator[Service]:
    port = _free_port()
    service, server = start(
        pki, tmp_path, issuer=f"https://localhost:{port}", public_address=f"127.0.0.1:{port}"
    )
    yield service
    stop(server, service.authority)  # type: ignore[arg-type]


# --- what a third party runs: PyJWT, zlib and the standard library ------------------------


def fetch(url: str, ca: Path) -> tuple[bytes, dict[str, str]]:
    ctx = ssl.create_default_context(cafile=str(ca))  # the deployment CA; no client cert
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return r.read(), dict(r.headers)


def third_party_check(token: str, ca: Path, audience: str) -> dict[str, Any]:
    iss = jwt.decode(token, options={"verify_signature": False})["iss"]
    jwks = jwt.PyJWKClient(
        f"{iss}/.well-known/jwks.json", cache_jwk_set=False, ssl_context=ssl.create_default_context(cafile=str(ca))
    )  # fmt: skip
    key = jwks.get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key, algorithms=["EdDSA"], audience=audience, issuer=iss)
    ref = claims["status"]["status_list"]
    body, headers = fetch(ref["uri"], ca)
    st = body.decode()
    st_key = jwks.get_signing_key_from_jwt(st)
    sl = jwt.decode(st, st_key, algorithms=["EdDSA"], issuer=iss, options={"verify_aud": False})
    assert sl["sub"] == ref["uri"]  # the list is the one the token names
    lst = sl["status_list"]["lst"]
    raw = zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))
    bits, idx = sl["status_list"]["bits"], ref["idx"]
    status = (raw[idx * bits // 8] >> (idx * bits % 8)) & ((1 << bits) - 1)
    return {"claims": claims, "status": status, "status_headers": headers}


# ------------------------------------------------------------------------------------------


def test_a_third_party_verifies_signature_and_status_with_pyjwt_and_zlib(
    public_svc: Service,
) -> None:
    svc, ca = public_svc, public_svc.pki.tls(BANK).ca
    ent = enterprise_code(41)
    g = svc.client(ent, "enterprise").grant(terms(ent))
    token = svc.client(BANK).token(g.consent_id).token or ""
    got = third_party_check(token, ca, BANK)
    assert got["claims"]["sub"] == ent and got["status"] == 0  # VALID
    assert got["status_headers"]["Content-Type"] == "application/statuslist+jwt"
    assert got["status_headers"]["Cache-Control"].startswith("public, max-age=")
    body, headers = fetch(f"{svc.issuer}/.well-known/jwks.json", ca)
    assert headers["Content-Type"] == "application/jwk-set+json"
    assert headers["Cache-Control"] == "public, max-age=60"
    assert all("exp" not in k and "d" not in k for k in json.loads(body)["keys"])

    # Revoked: the public list says so (0x01 INVALID) on the next fetch.
    svc.client(ent, "enterprise").revoke(g.consent_id)
    deadline = time.time() + 3
    while third_party_check(token, ca, BANK)["status"] != 1:
        assert time.time() < deadline, "the public status list never showed the revocation"
        time.sleep(0.05)


def test_a_compromised_key_is_gone_from_the_public_jwks(public_svc: Service) -> None:
    svc, ca = public_svc, public_svc.pki.tls(BANK).ca
    ent = enterprise_code(42)
    g = svc.client(ent, "enterprise").grant(terms(ent))
    token = svc.client(BANK).token(g.consent_id).token or ""
    third_party_check(token, ca, BANK)
    svc.client("operator-2", "operator").rotate_keys(compromised=True)
    with pytest.raises(jwt.PyJWKClientError):
        third_party_check(token, ca, BANK)
    # The re-issued token verifies publicly under the new key.
    again = svc.client(BANK).token(g.consent_id).token or ""
    assert third_party_check(again, ca, BANK)["status"] == 0


def test_the_public_server_is_read_only_and_serves_nothing_else(public_svc: Service) -> None:
    ca = public_svc.pki.tls(BANK).ca
    ctx = ssl.create_default_context(cafile=str(ca))
    for method, path, code in (
        ("POST", "/.well-known/jwks.json", 405),
        ("GET", "/consents", 404),
        ("GET", "/statuslists/2", 404),
    ):
        req = urllib.request.Request(
            f"{public_svc.issuer}{path}", method=method, data=b"" if method == "POST" else None
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, context=ctx, timeout=5)
        assert info.value.code == code
