"""The attack matrix: every forged, stolen or misused token is refused with its own reason."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.errors import FedcreditError
from fedcredit.consent.authority import ConsentAuthority, local_verifier
from fedcredit.consent.keys import thumbprint
from fedcredit.consent.statuslist import b64url, b64url_decode
from fedcredit.consent.verify import ConsentVerifier, UseRef
from tests.consent.conftest import BANK, OTHER_BANK, World, bank_identity


def jws(header: dict[str, Any], claims: dict[str, Any], key: Ed25519PrivateKey) -> str:
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(claims).encode())
    return f"{h}.{p}.{b64url(key.sign(f'{h}.{p}'.encode()))}"


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p))


class Matrix:
    """A valid token plus the means to forge variants of it."""

    def __init__(self, world: World) -> None:
        self.w = world
        a: ConsentAuthority = world.authority
        self.view = a.grant(world.enterprise, world.terms(scope=["judicial"], max_uses=2))
        self.token = a.token(world.bank, self.view.consent_id).token or ""
        self.verifier: ConsentVerifier = local_verifier(a)
        self.key = a.signer().record.private_key
        self.kid = a.signer().kid
        self.header, self.claims = parts(self.token)

    def forge(
        self,
        *,
        header: Callable[[dict[str, Any]], None] | None = None,
        claims: Callable[[dict[str, Any]], None] | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> str:
        h, c = dict(self.header), json.loads(json.dumps(self.claims))
        if header:
            header(h)
        if claims:
            claims(c)
        return jws(h, c, key or self.key)

    def verify(self, token: str, **kw: Any) -> Any:
        bank = bank_identity(kw.pop("bank", BANK))
        args: dict[str, Any] = {
            "bank_org": bank.org_id,
            "bank_cert_sha256": bank.cert_sha256,
            "enterprise": self.w.ent,
            "purposes": ["credit_assessment"],
            "category": "judicial",
            "node": "dept-courts",
        }
        args.update(kw)
        return self.verifier.verify(token, **args)


def refused(m: Matrix, token: str, reason: str, **kw: Any) -> FedcreditError:
    with pytest.raises(FedcreditError) as info:
        m.verify(token, **kw)
    assert info.value.reason == reason, (
        f"expected {reason}, got {info.value.reason}: {info.value.message}"
    )
    assert info.value.message  # a sentence a person can read
    return info.value


@pytest.fixture
def m(sqlite_world: World) -> Matrix:
    return Matrix(sqlite_world)


def test_the_genuine_token_is_accepted(m: Matrix) -> None:
    got = m.verify(m.token)
    assert got.enterprise == m.w.ent and got.bank == BANK and got.categories == {"judicial"}


def test_alg_none(m: Matrix) -> None:
    h = b64url(json.dumps({"alg": "none", "typ": "consent+jwt", "kid": m.kid}).encode())
    p = m.token.split(".")[1]
    refused(m, f"{h}.{p}.", "CONSENT_TOKEN_UNSIGNED")


def test_hs256_with_the_public_key_as_secret(m: Matrix) -> None:
    pub = m.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    h = b64url(json.dumps({"alg": "HS256", "typ": "consent+jwt", "kid": m.kid}).encode())
    p = m.token.split(".")[1]
    sig = b64url(hmac.new(pub, f"{h}.{p}".encode(), hashlib.sha256).digest())
    refused(m, f"{h}.{p}.{sig}", "CONSENT_ALG_NOT_ALLOWED")


def test_key_not_in_the_jwks(m: Matrix) -> None:
    rogue = Ed25519PrivateKey.generate()
    tok = m.forge(header=lambda h: h.update(kid=thumbprint(rogue.public_key())), key=rogue)
    refused(m, tok, "CONSENT_KEY_UNKNOWN")


@pytest.mark.parametrize(
    "kid", ["../../../etc/passwd", "x' OR '1'='1", "k; DROP TABLE consent_keys;--", "", 42]
)
def test_kid_that_is_a_path_or_sql(m: Matrix, kid: Any) -> None:
    refused(m, m.forge(header=lambda h: h.update(kid=kid)), "CONSENT_KID_INVALID")


def test_unknown_crit(m: Matrix) -> None:
    tok = m.forge(
        header=lambda h: h.update(
            crit=["urn:example:must-understand"], **{"urn:example:must-understand": 1}
        )
    )
    refused(m, tok, "CONSENT_UNKNOWN_CRIT")


@pytest.mark.parametrize("claim", ["exp", "jti", "aud", "sub"])
def test_missing_claim(m: Matrix, claim: str) -> None:
    err = refused(m, m.forge(claims=lambda c: c.pop(claim)), "CONSENT_CLAIM_MISSING")
    assert err.metadata["claim"] == claim


def test_expired(m: Matrix) -> None:
    m.w.clock.advance(31 * 86400)
    refused(m, m.token, "CONSENT_EXPIRED")


def test_not_yet_valid(m: Matrix) -> None:
    tok = m.forge(claims=lambda c: c.update(nbf=c["nbf"] + 3600))
    refused(m, tok, "CONSENT_NOT_YET_VALID")


def test_leeway_is_bounded(m: Matrix) -> None:
    # Within the 30 s leeway: accepted; beyond: refused.
    m.w.clock.advance(30 * 86400 + 20)
    m.verify(m.token)
    m.w.clock.advance(20)
    refused(m, m.token, "CONSENT_EXPIRED")
    with pytest.raises(ValueError):
        ConsentVerifier(issuer="x", keys=m.verifier.keys, status=m.verifier.status, leeway=61)


def test_wrong_aud(m: Matrix) -> None:
    # Bound to this bank's certificate but addressed to another bank.
    refused(m, m.forge(claims=lambda c: c.update(aud=OTHER_BANK)), "CONSENT_WRONG_AUDIENCE")


def test_wrong_iss(m: Matrix) -> None:
    refused(
        m, m.forge(claims=lambda c: c.update(iss="https://evil.example")), "CONSENT_WRONG_ISSUER"
    )


@pytest.mark.parametrize("typ", ["JWT", "statuslist+jwt", None])
def test_wrong_typ(m: Matrix, typ: str | None) -> None:
    refused(m, m.forge(header=lambda h: h.update(typ=typ)), "CONSENT_WRONG_TYP")


def test_payload_changed_after_signing(m: Matrix) -> None:
    h, _, s = m.token.split(".")
    claims = dict(m.claims)
    claims["authorization_details"] = [
        dict(claims["authorization_details"][0], max_uses=1000, scope=["score_only"])
    ]
    p = b64url(json.dumps(claims).encode())
    refused(m, f"{h}.{p}.{s}", "CONSENT_BAD_SIGNATURE")


def test_token_of_one_enterprise_used_for_another(m: Matrix) -> None:
    refused(m, m.token, "CONSENT_ENTERPRISE_MISMATCH", enterprise=m.w.other_ent)


def test_revoked(m: Matrix) -> None:
    m.w.authority.revoke(m.w.enterprise, m.view.consent_id)
    refused(m, m.token, "CONSENT_REVOKED")


def test_suspended(m: Matrix) -> None:
    m.w.authority.pause(m.w.enterprise, m.view.consent_id)
    refused(m, m.token, "CONSENT_SUSPENDED")


def test_used_past_its_maximum_uses(m: Matrix) -> None:
    m.verify(m.token, count_use=True)
    m.verify(m.token, count_use=True)
    refused(m, m.token, "CONSENT_USES_EXHAUSTED", count_use=True)
    # A verifier that does not count reserves the use before disclosing: a new use id is
    # refused by the stored count, whatever node asks.
    vc = m.verify(m.token)
    (res,) = m.verifier.counter.reserve("another-use", [UseRef.of(vc)])
    assert isinstance(res, FedcreditError) and res.reason == "CONSENT_USES_EXHAUSTED"


def test_presented_by_another_banks_certificate(m: Matrix) -> None:
    refused(m, m.token, "CONSENT_HOLDER_MISMATCH", bank=OTHER_BANK)
    # Even claiming to be the right bank, the certificate gives it away.
    other = bank_identity(OTHER_BANK)
    refused(
        m, m.token, "CONSENT_HOLDER_MISMATCH", bank_org=BANK, bank_cert_sha256=other.cert_sha256
    )


def test_purpose_not_covering_the_request(m: Matrix) -> None:
    refused(m, m.token, "CONSENT_PURPOSE_NOT_COVERED", purposes=["guarantee", "model_training"])


def test_scope_not_covering_the_request(m: Matrix) -> None:
    refused(m, m.token, "CONSENT_CATEGORY_NOT_COVERED", category="trade", node=None)
    refused(m, m.token, "CONSENT_NODE_NOT_COVERED", category=None, node="dept-customs")


def test_score_only_is_never_released(sqlite_world: World) -> None:
    m = Matrix(sqlite_world)
    a = sqlite_world.authority
    v = a.grant(sqlite_world.enterprise, sqlite_world.terms(scope=["score_only"]))
    tok = a.token(sqlite_world.bank, v.consent_id).token or ""
    assert m.verify(tok, category="trade", node="dept-customs").score_only  # may feed a score
    refused(m, tok, "CONSENT_SCORE_ONLY", category="trade", node="dept-customs", release=True)


def test_signed_by_a_retired_key_after_its_retirement(m: Matrix) -> None:
    a = m.w.authority
    a.rotate_keys(immediate=True)
    m.w.clock.advance(120)
    # The old key still verifies tokens issued before it retired...
    m.verify(m.token)
    # ...but a token it signs now (a stolen retired key) is refused.
    tok = m.forge(claims=lambda c: c.update(iat=int(m.w.clock()), nbf=int(m.w.clock())))
    refused(m, tok, "CONSENT_KEY_RETIRED")


def test_signed_by_a_retired_and_expired_key(m: Matrix) -> None:
    a = m.w.authority
    a.rotate_keys(immediate=True)
    m.w.clock.advance(a.settings.key_retention_s + 1)
    m.verifier.keys.refresh(force=True)
    refused(m, m.token, "CONSENT_KEY_EXPIRED")
    # And a fresh-looking token signed by it now is refused for the same reason.
    now = int(m.w.clock())
    tok = m.forge(claims=lambda c: c.update(iat=now, nbf=now, exp=now + 3600))
    refused(m, tok, "CONSENT_KEY_EXPIRED")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.###.$$$",
        b64url(b"[1]") + ".e30.",
        b64url(b'{"alg":"EdDSA","alg":"none"}') + ".e30.",
    ],
)
def test_malformed(m: Matrix, token: str) -> None:
    refused(m, token, "CONSENT_TOKEN_MALFORMED")


def test_duplicate_claims_are_refused(m: Matrix) -> None:
    h = m.token.split(".")[0]
    body = json.dumps(m.claims)[:-1] + ', "sub": "' + m.w.other_ent + '"}'
    p = b64url(body.encode())
    tok = f"{h}.{p}.{b64url(m.key.sign(f'{h}.{p}'.encode()))}"
    refused(m, tok, "CONSENT_TOKEN_MALFORMED")


def test_every_case_has_its_own_reason() -> None:
    """The matrix above names distinct reasons (missing claims are told apart by metadata)."""
    reasons = [
        "CONSENT_TOKEN_UNSIGNED",
        "CONSENT_ALG_NOT_ALLOWED",
        "CONSENT_KEY_UNKNOWN",
        "CONSENT_KID_INVALID",
        "CONSENT_UNKNOWN_CRIT",
        "CONSENT_CLAIM_MISSING",
        "CONSENT_EXPIRED",
        "CONSENT_NOT_YET_VALID",
        "CONSENT_WRONG_AUDIENCE",
        "CONSENT_WRONG_ISSUER",
        "CONSENT_WRONG_TYP",
        "CONSENT_BAD_SIGNATURE",
        "CONSENT_ENTERPRISE_MISMATCH",
        "CONSENT_REVOKED",
        "CONSENT_SUSPENDED",
        "CONSENT_USES_EXHAUSTED",
        "CONSENT_HOLDER_MISMATCH",
        "CONSENT_PURPOSE_NOT_COVERED",
        "CONSENT_CATEGORY_NOT_COVERED",
        "CONSENT_NODE_NOT_COVERED",
        "CONSENT_KEY_RETIRED",
        "CONSENT_KEY_EXPIRED",
        "CONSENT_SCORE_ONLY",
        "CONSENT_TOKEN_MALFORMED",
    ]
    from fedcredit.common.errors import _REGISTRY

    assert len(set(reasons)) == len(reasons)
    assert all(r in _REGISTRY for r in reasons)
