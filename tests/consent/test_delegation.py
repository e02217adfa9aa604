"""The delegation-ticket checker alone (consent/delegation.py): real Ed25519 signatures,
a key set as the consent service publishes it, a passkey oracle the test controls."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from fedcredit.common.errors import Unavailable
from fedcredit.common.tls import Identity
from fedcredit.consent import errors as E
from fedcredit.consent import passkey_errors as P
from fedcredit.consent.delegation import (
    DELEGATION_TYP,
    DelegationVerifier,
    acting,
    ticket_claims,
)
from fedcredit.consent.keys import new_key, parse_jwks
from fedcredit.consent.signing import Signer

NOW = 1_800_000_000
PORTAL = Identity("portal", "portal", hashlib.sha256(b"portal cert").digest())
BANK_CERT = hashlib.sha256(b"bank cert").digest()


class Oracle:
    """The consent service's answer whether a passkey stands (and how often it was asked)."""

    def __init__(self) -> None:
        self.active, self.down, self.asked = True, False, 0

    def __call__(self, org: str, cred: str) -> bool:
        self.asked += 1
        if self.down:
            raise Unavailable("consent service unreachable")
        return self.active


@pytest.fixture
def setup() -> tuple[Signer, DelegationVerifier, Oracle, list[float]]:
    rec = new_key(now=NOW - 10, activate_at=NOW - 10)
    keys = parse_jwks({"keys": [rec.public_jwk()]})
    oracle, mono = Oracle(), [0.0]
    v = DelegationVerifier(
        issuer="https://consent.test", audience="coordinator", lookup=lambda kid: keys.keys[kid],
        passkey_active=oracle, clock=lambda: NOW, monotonic=lambda: mono[0],
    )  # fmt: skip
    return Signer(rec), v, oracle, mono


def ticket(signer: Signer, **over: Any) -> str:
    claims = ticket_claims(
        issuer="https://consent.test", org="bank-a", role="bank", audience="coordinator",
        passkey="cred-1", portal_cert_sha256=PORTAL.cert_sha256, org_cert_sha256=BANK_CERT, now=NOW,
    )  # fmt: skip
    claims.update(over)
    return signer.sign(claims, typ=DELEGATION_TYP)


def test_a_good_ticket_names_the_bank_with_its_own_certificate(setup: Any) -> None:
    signer, v, _, _ = setup
    who = acting(PORTAL, [("x-fedcredit-delegation", ticket(signer))], v, ("bank",), "Score")
    assert (who.org_id, who.role, who.cert_sha256, who.via) == ("bank-a", "bank", BANK_CERT, "portal")  # fmt: skip


def test_a_direct_caller_is_itself_and_the_portal_alone_is_no_one(setup: Any) -> None:
    _, v, _, _ = setup
    bank = Identity("bank-a", "bank", BANK_CERT)
    assert acting(bank, [], v, ("bank",), "Score") is bank
    with pytest.raises(P.DelegationMissing):
        acting(PORTAL, [], v, ("bank",), "Score")
    with pytest.raises(P.DelegationMissing):  # a service without a checker accepts none
        acting(PORTAL, [("x-fedcredit-delegation", "t")], None, ("bank",), "Score")


def test_the_passkey_answer_is_cached_briefly_and_fails_closed(setup: Any) -> None:
    signer, v, oracle, mono = setup
    t = ticket(signer)
    v.verify(t, PORTAL)
    v.verify(t, PORTAL)
    assert oracle.asked == 1  # cached
    oracle.active = False
    mono[0] += v.check_ttl_s - 1
    v.verify(t, PORTAL)  # still within the cache: the documented bound
    mono[0] += 2
    with pytest.raises(P.DelegationPasskeyRemoved):
        v.verify(t, PORTAL)
    oracle.active, oracle.down = True, True
    with pytest.raises(P.DelegationUnverifiable):
        v.verify(t, PORTAL)


def test_unreachable_keys_fail_closed() -> None:
    def no_keys(kid: str) -> Any:
        raise E.KeysUnavailable("no JWKS")

    rec = new_key(now=NOW - 10, activate_at=NOW - 10)
    v = DelegationVerifier(issuer="https://consent.test", audience="coordinator", lookup=no_keys,
                           passkey_active=lambda o, c: True, clock=lambda: NOW)  # fmt: skip
    with pytest.raises(P.DelegationUnverifiable):
        v.verify(ticket(Signer(rec)), PORTAL)


@pytest.mark.parametrize(
    ("over", "error"),
    [
        ({"exp": NOW - 61}, P.DelegationExpired),
        ({"nbf": NOW + 61}, P.DelegationExpired),
        ({"aud": "market"}, P.DelegationWrongAudience),
        ({"aud": ["coordinator"]}, P.DelegationWrongAudience),
        ({"cnf": {"x5t#S256": "AAAA"}}, P.DelegationWrongHolder),
        ({"cnf": "x"}, P.DelegationWrongHolder),
        ({"iss": "https://other.test"}, P.DelegationSignatureInvalid),
        ({"sub": 7}, P.DelegationMalformed),
        ({"exp": "soon"}, P.DelegationMalformed),
        ({"org_x5t#S256": "short"}, P.DelegationMalformed),
        # a life longer than the issuer's own (a signing bug, a key used by someone else)
        ({"exp": NOW + 10**9}, P.DelegationMalformed),
        ({"iat": NOW - 250, "nbf": NOW - 250, "exp": NOW + 100}, P.DelegationMalformed),
        ({"iat": NOW + 30, "exp": NOW + 20}, P.DelegationMalformed),
    ],
)
def test_each_bad_claim_has_its_reason(setup: Any, over: dict[str, Any], error: type) -> None:
    signer, v, _, _ = setup
    with pytest.raises(error):
        v.verify(ticket(signer, **over), PORTAL)


def test_a_foreign_signature_or_type_is_refused(setup: Any) -> None:
    signer, v, _, _ = setup
    forged = Signer(new_key(now=NOW, activate_at=NOW))
    forged.kid = signer.kid  # claims the published key's id, signs with another key
    forged._headers.clear()
    with pytest.raises(P.DelegationSignatureInvalid):
        v.verify(ticket(forged), PORTAL)
    with pytest.raises(P.DelegationMalformed):  # a consent token's type is not a ticket's
        v.verify(signer.sign({"sub": "bank-a"}, typ="consent+jwt"), PORTAL)
    with pytest.raises(P.DelegationMalformed):
        v.verify(ticket(signer).replace(".", "", 1), PORTAL)
