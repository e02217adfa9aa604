"""Key compromise (issue 14, finding 2): ``rotate --compromised`` withdraws the old key at
once; the change is pushed to every subscribed verifier with the status list, so each
refuses every token the key signed — back-dated ``iat`` or not — within a second; live
tokens are re-issued under the new key (same jti and status entry, ledgered); the JWKS
drops the key and gives no member a non-standard meaning; exp - iat is capped."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.errors import FedcreditError
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.service import stop
from fedcredit.consent.statuslist import b64url, b64url_decode
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.verify import RemoteVerifier
from tests.conftest import Pki
from tests.consent.conftest import BANK, OTHER_BANK, enterprise_code
from tests.consent.test_service import Service, bank_args, start, terms


@pytest.fixture
def svc(pki: Pki, tmp_path: Path) -> Iterator[Service]:
    service, server = start(pki, tmp_path)
    yield service
    stop(server, service.authority)  # type: ignore[arg-type]


def forge(token: str, key: Ed25519PrivateKey, **claims: Any) -> str:
    h, p, _ = token.split(".")
    c = json.loads(b64url_decode(p))
    c.update(claims)
    p = b64url(json.dumps(c).encode())
    return f"{h}.{p}.{b64url(key.sign(f'{h}.{p}'.encode()))}"


def args_for(svc: Service, ent: str) -> dict[str, Any]:
    return dict(bank_args(svc.pki, ent))


def refusal(v: RemoteVerifier, token: str, args: dict[str, Any]) -> str | None:
    try:
        v.verify(token, **args)
        return None
    except FedcreditError as exc:
        return exc.reason


def wait_refused(v: RemoteVerifier, token: str, args: dict[str, Any], limit: float) -> float:
    t0 = time.perf_counter()
    while refusal(v, token, args) is None:
        assert time.perf_counter() - t0 < limit, "still accepted"
        time.sleep(0.005)
    return time.perf_counter() - t0


def _grant(svc: Service, n: int) -> tuple[str, str]:
    ent = enterprise_code(n)
    g = svc.client(ent, "enterprise").grant(terms(ent))
    tok = svc.client(BANK).token(g.consent_id).token
    assert tok
    return ent, tok


def test_compromise_over_the_rpc_is_pushed_and_refuses_everything_the_key_signed(
    svc: Service,
) -> None:
    ent, token = _grant(svc, 31)
    leaked = svc.authority.signer().record.private_key
    old_kid = svc.authority.signer().kid
    verifiers = [svc.verifier(org) for org in ("dept-courts", "dept-tax", "coordinator")]
    try:
        for v in verifiers:
            assert v.wait_connected()
            v.verify(token, **args_for(svc, ent))
        now = int(time.time())
        claims = json.loads(b64url_decode(token.split(".")[1]))
        backdated = forge(token, leaked, iat=now - 3600, nbf=now - 3600, exp=claims["exp"] - 3600)
        for v in verifiers:
            v.verify(backdated, **args_for(svc, ent))  # before: a valid signature
        op = svc.client("operator-1", "operator")
        r = op.rotate_keys(compromised=True)
        assert old_kid in r.retired_kids
        for v in verifiers:
            took = wait_refused(v, token, bank_args(svc.pki, ent), limit=1.0)
            assert took < 1.0
            assert refusal(v, token, bank_args(svc.pki, ent)) == "CONSENT_KEY_COMPROMISED"
            # Back-dated or fresh, anything the leaked key signs is refused.
            for t in (backdated, forge(token, leaked, iat=now, jti="forged-now")):
                assert refusal(v, t, bank_args(svc.pki, ent)) == "CONSENT_KEY_COMPROMISED"
        # The bank's consent lives on: its token was re-issued under the new key, same jti.
        again = svc.client(BANK).token(svc.client(ent, "enterprise").list()[0].consent_id)
        assert (
            again.token
            and again.token != token
            and again.jti == json.loads(b64url_decode(token.split(".")[1]))["jti"]
        )
        for v in verifiers:
            v.verify(again.token, **args_for(svc, ent))
        events = svc.authority.store.events(consent_id=again.consent_id)
        reissued = [e for e in events if e.event == "reissued"]
        assert len(reissued) == 1 and reissued[0].payload["old_kid"] == old_kid
        # The published JWKS: the key is gone, and no JWK has an `exp`.
        jwks = svc.client(BANK).jwks()
        assert old_kid not in [k["kid"] for k in jwks["keys"]]
        assert all("exp" not in k for k in jwks["keys"])
        assert any(t["kid"] == old_kid and t.get("compromised_at") for t in jwks["expired_kids"])
    finally:
        for v in verifiers:
            v.close()


def test_compromise_declared_by_the_cli_on_the_store_reaches_running_verifiers(
    svc: Service, tmp_path: Path
) -> None:
    ent, token = _grant(svc, 32)
    v = svc.verifier()
    try:
        assert v.wait_connected()
        v.verify(token, **args_for(svc, ent))
        # What `fedcredit consent rotate --compromised` does: another process, same store.
        store = ConsentStore(svc.authority.store.url)
        other = ConsentAuthority(store, svc.authority.settings, banks=[BANK, OTHER_BANK])
        try:
            other.rotate_keys(compromised=True)
        finally:
            other.close()
            store.close()
        wait_refused(v, token, bank_args(svc.pki, ent), limit=1.5)
        assert refusal(v, token, bank_args(svc.pki, ent)) == "CONSENT_KEY_COMPROMISED"
    finally:
        v.close()


def test_lifetime_is_capped_by_purpose_and_iat_may_not_be_in_the_future(svc: Service) -> None:
    ent, token = _grant(svc, 33)
    key = svc.authority.signer().record.private_key
    v = svc.verifier(subscribe=False)
    now = int(time.time())
    try:
        assert refusal(v, forge(token, key, exp=10**30), bank_args(svc.pki, ent)) == (
            "CONSENT_LIFETIME_EXCEEDS_CAP"
        )
        # credit_assessment: 30 days (+ leeway) at most, whatever the signature says
        long = forge(token, key, iat=now, nbf=now, exp=now + 31 * 86400)
        assert refusal(v, long, bank_args(svc.pki, ent)) == "CONSENT_LIFETIME_EXCEEDS_CAP"
        future = forge(token, key, iat=now + 3600, jti="future")
        assert refusal(v, future, bank_args(svc.pki, ent)) == "CONSENT_NOT_YET_VALID"
        assert refusal(v, token, bank_args(svc.pki, ent)) is None
    finally:
        v.close()


def test_a_verifier_applies_the_deployments_caps(svc: Service) -> None:
    from dataclasses import replace

    from fedcredit.consent.policy import DEFAULT_CAPS

    ent, token = _grant(svc, 34)  # a genuine 30-day credit_assessment token
    caps = dict(DEFAULT_CAPS)
    caps["credit_assessment"] = replace(caps["credit_assessment"], max_validity_days=10)
    strict, default = svc.verifier(subscribe=False, caps=caps), svc.verifier(subscribe=False)
    try:
        assert refusal(strict, token, bank_args(svc.pki, ent)) == "CONSENT_LIFETIME_EXCEEDS_CAP"
        assert refusal(default, token, bank_args(svc.pki, ent)) is None
    finally:
        strict.close()
        default.close()
