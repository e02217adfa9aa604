"""An independent review of delegated sessions (consent/delegation.py) against the real
services, from a compromised portal's point of view: it holds the portal's key and
certificate and every session ticket people signed in with.

Each test names the promise it checks; each failed on main before its fix."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from fedcredit.common import uscc
from fedcredit.common.tls import Identity
from fedcredit.consent import passkey_errors as P
from fedcredit.consent.passkey_client import PasskeyClient
from tests.portal.conftest import Federation, Scoring
from tests.portal.test_portal_http import enrolled
from tests.portal.webclient import Visitor

_rng = random.Random(1907)


def _visitor_signed_in(federation: Federation, c: httpx.Client) -> tuple[Visitor, str]:
    """A person signed in through the portal's web pages; (visitor, the consent service's
    session ticket the portal holds for them)."""
    ent = uscc.generate(_rng)
    v = Visitor(c)
    enrolled(federation, v, ent, "enterprise")
    s, _ = federation.app.state.portal.sessions.get(v.sid)
    assert s is not None and s.ticket
    return v, s.ticket


def _client(federation: Federation) -> httpx.Client:
    return httpx.Client(base_url=federation.url.replace("localhost", "127.0.0.1"), timeout=60)


def test_a_signed_out_session_gets_no_new_ticket(federation: Federation) -> None:
    """README: "a compromised portal can act only for people while they are signed in to
    it". Once the person signs out, the session ticket the portal kept (in memory, a dump,
    a log) no longer buys a delegation ticket, a consent list or a bank token."""
    with _client(federation) as c:
        v, ticket = _visitor_signed_in(federation, c)
        assert federation.delegate(ticket, "ledger")  # while signed in: yes
        r = v.post_form("/signout", {"csrf": v.csrf})
        assert r.status_code == 303
    with pytest.raises(P.SessionInvalid) as got:
        federation.delegate(ticket, "ledger")
    assert "signed out" in got.value.message
    pk = PasskeyClient(federation.consent_address, federation.pki.tls("portal"), server_org="consent-service")  # fmt: skip
    with pk, pytest.raises(P.SessionInvalid):
        pk.list_consents(ticket)


def test_an_idle_session_gets_no_new_ticket(federation: Federation) -> None:
    """The consent service ends a session nobody used for the portal's idle timeout, on
    its own: a session the portal forgot (idle) cannot be revived by whoever holds its
    ticket."""
    from fedcredit.consent.passkeys import sessions

    with _client(federation) as c:
        _v, ticket = _visitor_signed_in(federation, c)
    assert federation.delegate(ticket, "ledger")
    idle = federation.passkeys.session_idle_s
    with federation.passkeys.store.begin() as conn:  # as if nothing happened for that long
        conn.execute(update(sessions).values(last_seen=sessions.c.last_seen - int(idle) - 5))
    with pytest.raises(P.SessionInvalid) as got:
        federation.delegate(ticket, "ledger")
    assert "idle" in got.value.message


def test_a_session_ticket_works_only_for_the_portal_it_was_issued_to(
    federation: Federation,
) -> None:
    """A session ticket is no bearer token among portal certificates: another holder of a
    ``portal`` certificate (a second portal, a test one) cannot turn it into tickets."""
    with _client(federation) as c:
        _v, ticket = _visitor_signed_in(federation, c)
    federation.pki.issue("portal-other", "portal")
    pk = PasskeyClient(federation.consent_address, federation.pki.tls("portal-other"), server_org="consent-service")  # fmt: skip
    with pk, pytest.raises(P.SessionInvalid) as got:
        pk.delegate(ticket, "ledger")
    assert "another portal" in got.value.message
    assert federation.delegate(ticket, "ledger")  # the portal it was issued to: still yes


def test_signing_out_twice_or_with_garbage_changes_nothing(federation: Federation) -> None:
    with _client(federation) as c:
        _v, ticket = _visitor_signed_in(federation, c)
    with PasskeyClient(federation.consent_address, federation.pki.tls("portal"), server_org="consent-service") as pk:  # fmt: skip
        assert pk.sign_out(ticket) is True
        assert pk.sign_out(ticket) is False  # already ended: nothing to do, no error
        with pytest.raises(P.SessionInvalid):
            pk.sign_out("not-a-ticket")
    t0 = time.time()
    with pytest.raises(P.SessionInvalid):
        federation.delegate(ticket, "coordinator")
    assert time.time() - t0 < 10


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_body_is_refused_unread(federation: Federation, chunked: bool) -> None:
    """Every POST parsed its whole body (a form, JSON, a multipart upload spooled to disk)
    before its CSRF check: anyone could make the portal read and store any amount. Now a
    body over the limit is refused with 413 and its reason, declared or chunked."""
    body = b'{"org": "' + b"a" * (8 * 1024 * 1024) + b'"}'

    def chunks() -> Any:
        for i in range(0, len(body), 256 * 1024):
            yield body[i : i + 256 * 1024]

    with _client(federation) as c:
        v = Visitor(c)
        v.get("/signin")
        headers = {"cookie": f"fc_session={v.sid}", "content-type": "application/json",
                   "accept": "application/json"}  # fmt: skip
        r = c.post("/signin/begin", content=chunks() if chunked else body, headers=headers)
        assert r.status_code == 413, r.text[:200]
        assert r.json()["error"] == "PORTAL_REQUEST_TOO_LARGE"
        assert "expected a request body of at most" in r.json()["message"]
        assert r.headers["content-security-policy"]
        # a body within the limit still gets its ordinary answer (here: no CSRF token)
        ok = c.post("/signin/begin", content=b'{"org": "x"}', headers=headers)
        assert ok.status_code == 403


def test_a_watch_stream_ends_with_its_delegation_ticket(
    federation: Federation, scoring: Scoring
) -> None:
    """WatchRatings rescored every interval for as long as the stream stayed open, with
    the ticket checked only when it opened: a compromised portal could keep acting for a
    bank (consent uses, score_access entries) for days after the ticket's end and the
    person's sign-out. Each round now re-checks the ticket."""
    from fedcredit.consent.client import ConsentClient
    from fedcredit.coordinator.client import CoordinatorClient
    from tests.portal.conftest import BANK
    from tests.portal.test_delegation import _minted
    from tests.portal.test_portal_http import terms

    ent = uscc.generate(_rng)
    cc = ConsentClient(federation.consent_address, federation.pki.tls(BANK), server_org="consent-service")  # fmt: skip
    with cc:
        cid = cc.request(terms(ent, purpose="post_loan_monitoring", scope=["score_only"], max_uses=30, loan_term_days=365)).consent_id  # fmt: skip
        federation.authority.approve(Identity(ent, "enterprise", b""), cid)
        token = cc.token(cid).token or ""
    session, _ = federation.signed_in(BANK, "bank")
    now = int(time.time())  # valid for ~4 s more (the services allow 60 s of clock skew)
    ticket = _minted(federation, session, iat=now - 356, nbf=now - 356, exp=now - 56)
    rounds = 0
    with CoordinatorClient(scoring.target, federation.pki.tls("portal"), timeout=60) as c:
        stream = c.delegated(ticket).watch([(ent, token)], interval_seconds=1, timeout=40)
        with pytest.raises(P.DelegationExpired):
            for ev in stream:
                assert not ev.HasField("error") or not ev.error.reason, ev
                rounds += 1
    assert 1 <= rounds <= 8


def test_a_spray_of_cookieless_requests_keeps_sessions_bounded(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cookie-less request made a session (for the sign-in form's CSRF token), kept
    for the idle timeout and swept only now and then: a spray of requests grew the portal's
    memory without bound. Anonymous sessions are now capped (oldest forgotten first) and a
    signed-in person is never evicted by them."""
    from fedcredit.portal import security

    cap = 50
    monkeypatch.setattr(security, "MAX_ANONYMOUS_SESSIONS", cap, raising=False)
    sessions = federation.app.state.portal.sessions
    with _client(federation) as c:
        v, _ticket = _visitor_signed_in(federation, c)
        before = len(sessions._by_id)
        for _ in range(3 * cap):
            assert c.get("/signin").status_code == 200  # no cookie: a new session each
        assert len(sessions._by_id) <= before + cap
        assert v.get("/enterprise").status_code == 200  # still signed in


def test_a_session_in_use_stays_alive_at_the_consent_service_and_ends_with_it(
    federation: Federation,
) -> None:
    """The consent service ends idle sessions on its own; a person busy on pages that ask
    it nothing (batch progress, the auditor's) is shown to it now and then, so it does not
    end their session under them. A session it ended ends in the portal at the next
    request (page or form): back to sign-in, nothing done."""
    from sqlalchemy import select

    from fedcredit.consent.passkeys import sessions

    portal = federation.app.state.portal
    with _client(federation) as c:
        v, ticket = _visitor_signed_in(federation, c)
        s, _ = portal.sessions.get(v.sid)
        assert s is not None
        old = int(time.time()) - int(federation.passkeys.session_idle_s) + 30
        with federation.passkeys.store.begin() as conn:
            conn.execute(update(sessions).values(last_seen=old))
        s.consent_seen = 0.0  # as if the last call there was long ago
        assert v.get("/home").status_code == 200  # a page that asks the consent service nothing
        with federation.passkeys.store.begin() as conn:
            seen = max(r.last_seen for r in conn.execute(select(sessions.c.last_seen)))
        assert seen >= int(time.time()) - 5
        with PasskeyClient(federation.consent_address, federation.pki.tls("portal"), server_org="consent-service") as pk:  # fmt: skip
            assert pk.sign_out(ticket)  # ended there (say, by another tab's sign-out)
        s.consent_seen = 0.0
        sid = v.sid
        r = v.post_form("/bank/request", {"csrf": v.csrf, "enterprise": "x"})
        assert r.status_code == 303 and r.headers["location"] == "/signin"
        assert portal.sessions.get(sid)[0] is None  # ended here too
        assert not portal.sessions.get(v.sid)[0].signed_in


def test_a_consent_request_through_the_portal_is_ledgered_via_the_portal(
    federation: Federation,
) -> None:
    """A bank's consent request made from its portal session was ledgered exactly like one
    over the bank's own certificate; the enterprise's decisions through the portal already
    said ``via: portal``. Now the request does too (a direct one does not)."""
    import json

    from fedcredit.consent.client import ConsentClient
    from fedcredit.ledger.client import LedgerClient
    from tests.portal.conftest import BANK
    from tests.portal.test_portal_http import terms

    ent = uscc.generate(_rng)
    session, _ = federation.signed_in(BANK, "bank")
    pk = PasskeyClient(federation.consent_address, federation.pki.tls("portal"), server_org="consent-service")  # fmt: skip
    with pk:
        via_portal = pk.request_consent(session.ticket, terms(ent)).consent_id
    cc = ConsentClient(federation.consent_address, federation.pki.tls(BANK), server_org="consent-service")  # fmt: skip
    with cc:
        direct = cc.request(terms(ent)).consent_id
    federation.settle()
    lc = LedgerClient(federation.ledger_address, federation.pki.tls("auditor-pboc-weihai"), server_org="ledger")  # fmt: skip
    with lc:
        entries = [json.loads(bytes(pe.entry.data)) for page in lc.list_by_subject(ent) for pe in page.entries]  # fmt: skip
    requested = {e["payload"]["consent_id"]: e["payload"] for e in entries
                 if e["kind"] == "consent_event" and e["payload"]["event"] == "requested"}  # fmt: skip
    assert requested[via_portal].get("via") == "portal"
    assert requested[via_portal]["actor"] == BANK
    assert "via" not in requested[direct]
