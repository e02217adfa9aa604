"""The portal over HTTP against the real consent service and ledger: sessions, CSRF,
security headers, rate limits, languages, and consent decisions that need a passkey."""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from fedcredit.common import uscc
from fedcredit.common.errors import RoleNotAllowed
from fedcredit.consent import passkey_errors as P
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.passkey_client import PasskeyClient
from fedcredit.consent.terms import ConsentTerms
from fedcredit.portal import i18n
from fedcredit.portal.app import build_app
from fedcredit.portal.routes import ROUTES
from fedcredit.portal.security import CSP
from fedcredit.portal.settings import PortalSettings
from tests.consent.softkey import SoftKey
from tests.portal.conftest import BANK, Federation
from tests.portal.webclient import Visitor

_rng = random.Random(4242)


def new_enterprise() -> str:
    return uscc.generate(_rng)


@pytest.fixture
def visitor(federation: Federation) -> Iterator[Visitor]:
    base = federation.url.replace("localhost", "127.0.0.1")
    with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as c:
        yield Visitor(c)


def enrolled(federation: Federation, visitor: Visitor, org: str, role: str = "enterprise") -> SoftKey:  # fmt: skip
    key = SoftKey(federation.url)
    visitor.enrol(key, org, federation.enrol_code(org, role))
    visitor.sign_in(key, org)
    return key


def terms(ent: str, **kw: object) -> ConsentTerms:
    base: dict[str, object] = {
        "enterprise": ent, "bank": BANK, "purpose": "credit_assessment",
        "scope": ["judicial", "operations_tax"], "validity_days": 30, "max_uses": 3,
        "retention_days": 30,
    }  # fmt: skip
    base.update(kw)
    return ConsentTerms(**base)  # type: ignore[arg-type]


def bank_requests(federation: Federation, ent: str) -> str:
    with ConsentClient(federation.consent_address, federation.pki.tls(BANK), server_org="consent-service") as c:  # fmt: skip
        return c.request(terms(ent)).consent_id


def test_headers_and_cookie(visitor: Visitor) -> None:
    r = visitor.get("/signin")
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    assert r.headers["x-frame-options"] == "DENY"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    assert "<script>" not in r.text and " on" + "click=" not in r.text  # no inline script


def test_every_post_route_refuses_without_csrf(federation: Federation, visitor: Visitor) -> None:
    ent = new_enterprise()
    enrolled(federation, visitor, ent)
    cid = bank_requests(federation, ent)
    posts = [r.path for r in ROUTES if isinstance(r, Route) and "POST" in (r.methods or ())]
    assert len(posts) >= 10
    for path in posts:
        for bad in ("", "x" * 43):
            r = visitor.post_json(path, {"action": "approve", "consent_id": cid, "org": ent}, csrf=bad)  # fmt: skip
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"] == "CSRF_FAILED"
    r = visitor.post_form("/signout", {"csrf": "nope"})
    assert r.status_code == 403
    assert federation.authority.get(_ent_identity(ent), cid).state == "PENDING"
    assert visitor.get("/enterprise").status_code == 200  # still signed in


def _ent_identity(ent: str) -> object:
    from fedcredit.common.tls import Identity

    return Identity(ent, "enterprise", b"")


def test_enterprise_approves_with_its_passkey(federation: Federation, visitor: Visitor) -> None:
    ent = new_enterprise()
    key = enrolled(federation, visitor, ent)
    cid = bank_requests(federation, ent)
    page = visitor.get("/enterprise").text
    assert cid in page and BANK in page and "授信评估" in page  # Chinese by default
    assert "司法诉讼" in page and "税务局" in page  # categories and nodes in plain words
    got = visitor.decide(key, "approve", cid)
    assert got["state"] == "ACTIVE"
    ev = [e for e in federation.authority.store.events(consent_id=cid) if e.event == "granted"]
    assert ev[0].payload["passkey_assertion_sha256"] == got["assertion_sha256"]
    assert ev[0].actor == ent and ev[0].payload["via"] == "portal"
    narrowed = visitor.decide(key, "narrow", cid, remove_categories=["judicial"])
    assert narrowed["state"] == "REVOKED" and narrowed["replacement"]
    revoked = visitor.decide(key, "revoke", narrowed["replacement"], reason="loan repaid")
    assert revoked["state"] == "REVOKED"


def test_the_portal_certificate_alone_approves_nothing(federation: Federation) -> None:
    ent = new_enterprise()
    cid = bank_requests(federation, ent)
    tls = federation.pki.tls("portal")
    with ConsentClient(federation.consent_address, tls, server_org="consent-service") as c:
        with pytest.raises(RoleNotAllowed):
            c.approve(cid)
        with pytest.raises(RoleNotAllowed):
            c.grant(terms(ent))
    key = SoftKey(federation.url)
    with PasskeyClient(federation.consent_address, tls, server_org="consent-service") as pk:
        ticket, options = pk.begin_registration(ent, enrol_code=federation.enrol_code(ent))
        pk.finish_registration(ticket, key.create(options))
        st, _options = pk.challenge(ent, "approve", consent_id=cid)
        with pytest.raises(P.AssertionInvalid):  # no assertion
            pk.decide(st, "")
        st, options = pk.challenge(ent, "approve", consent_id=cid)
        # the portal's own "authenticator" signing another challenge
        with pytest.raises(P.AssertionInvalid):
            pk.decide(st, SoftKey(federation.url).get(options))
    with ConsentClient(federation.consent_address, federation.pki.tls(BANK), server_org="consent-service") as b:  # fmt: skip
        assert b.get(cid).state == "PENDING"


def test_session_expires_when_idle(federation: Federation, visitor: Visitor) -> None:
    ent = new_enterprise()
    enrolled(federation, visitor, ent)
    assert visitor.get("/enterprise").status_code == 200
    federation.clock.offset += federation.settings.idle_timeout_s + 1
    try:
        r = visitor.get("/enterprise")
        assert r.status_code == 303 and r.headers["location"] == "/signin"
        page = visitor.get("/signin").text
        assert i18n.tr("session_expired", "zh") in page
        r = visitor.post_json("/challenge", {"action": "sign_in"})
        assert r.status_code in (400, 403)  # a fresh anonymous session: nothing to act on
    finally:
        federation.clock.offset = 0


def test_sign_in_is_rate_limited(federation: Federation) -> None:
    settings = PortalSettings(address=federation.settings.address, signin_burst=3, signin_per_minute=1)  # fmt: skip
    app = build_app(settings, federation.backend)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        v = Visitor(c)  # type: ignore[arg-type]
        v.get("/signin")
        codes = [v.post_json("/signin/begin", {"org": f"bank-nobody-{i}"}).status_code for i in range(5)]  # fmt: skip
    assert codes[3:] == [429, 429], codes
    assert all(c != 429 for c in codes[:3])


def test_languages_are_complete_and_switch(visitor: Visitor) -> None:
    for key, (zh, en) in i18n.T.items():
        assert zh and en, key
    assert "用通行密钥登录" in visitor.get("/signin").text
    assert "Sign in with a passkey" in visitor.get("/signin?lang=en").text
    assert "Sign in with a passkey" in visitor.get("/signin").text  # kept in the session


def test_bank_requests_from_the_portal(federation: Federation, visitor: Visitor) -> None:
    enrolled(federation, visitor, BANK, "bank")
    ent = new_enterprise()
    r = visitor.post_form("/bank/request", {"csrf": visitor.csrf, "enterprise": ent, "purpose": "credit_assessment", "scope": "score_only", "validity_days": "30", "max_uses": "2", "retention_days": "30"})  # fmt: skip
    assert r.status_code == 303, r.text
    page = visitor.get("/bank").text
    assert ent in page and 'data-state="PENDING"' in page
    bank = federation.pki.tls(BANK).identity()
    mine = [c for c in federation.authority.list_consents(bank) if c.enterprise == ent]
    assert len(mine) == 1 and mine[0].max_uses == 2
    # bound to the bank's own certificate, not the portal's
    row = federation.authority.store
    with row.begin() as conn:
        got = row.get(conn, mine[0].consent_id)
    assert got is not None and got.bank_x5t == bank.x5t_s256


def test_auditor_consistency_refuses_bad_sizes(federation: Federation, visitor: Visitor) -> None:
    enrolled(federation, visitor, "auditor-pboc-weihai", "auditor")
    for query in ("old=5&new=2", "old=0&new=3", "old=x&new=1", ""):
        r = visitor.get(f"/audit/consistency?{query}")
        assert r.status_code == 400 and 'data-reason="INVALID_ARGUMENT"' in r.text, query
    assert visitor.get("/enterprise").status_code == 303  # not an enterprise: sent home


def test_categories_and_nodes_in_plain_language() -> None:
    from fedcredit.common.departments import DEPARTMENTS

    for d in DEPARTMENTS:
        assert d.category in i18n.CATEGORIES and d.org_id in i18n.NODES, d
    assert "score_only" in i18n.CATEGORIES


def test_server_timing_splits_service_calls_from_the_page(
    federation: Federation, visitor: Visitor
) -> None:
    """A page's Server-Timing (read by bench/bench_portal.py) names all its server time and
    the part spent waiting for service calls: a page without one waited 0 ms."""
    import re

    ent = new_enterprise()
    enrolled(federation, visitor, ent)
    bank_requests(federation, ent)
    timing = visitor.get("/enterprise").headers["server-timing"]
    m = re.fullmatch(r"app;dur=([0-9.]+), svc;dur=([0-9.]+)", timing)
    assert m, timing
    app_ms, svc_ms = float(m.group(1)), float(m.group(2))
    assert 0 < svc_ms <= app_ms  # one ListConsents call, inside the page's time
    # a page that asks no service (anonymous: no session to keep alive either)
    with httpx.Client(base_url=federation.url.replace("localhost", "127.0.0.1")) as anon:
        timing = anon.get("/signin").headers["server-timing"]
    assert re.fullmatch(r"app;dur=[0-9.]+, svc;dur=0\.00", timing), timing
