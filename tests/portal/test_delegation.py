"""Delegated sessions (consent/delegation.py) at the real services over mTLS: the portal's
certificate acts for a bank at the coordinator, for an enterprise at the ledger, only with
a ticket the consent service signed after a passkey sign-in; every bad ticket is refused
with its own reason, and the portal's certificate alone acts for no one."""

from __future__ import annotations

import base64
import json
import random
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common import uscc
from fedcredit.common.errors import RoleNotAllowed
from fedcredit.common.tls import Identity
from fedcredit.consent import passkey_errors as P
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.delegation import DELEGATION_TYP, ticket_claims, unverified_claims
from fedcredit.consent.passkey_client import PasskeyClient
from fedcredit.coordinator.client import CoordinatorClient
from fedcredit.ledger.client import LedgerClient
from fedcredit.ledger.errors import SubjectNotAllowed
from tests.portal.conftest import BANK, Federation, Scoring
from tests.portal.test_portal_http import terms

_rng = random.Random(1919)


def _active_consent(fed: Federation) -> tuple[str, str]:
    """(enterprise, consent id) of a consent the bank asked for and the enterprise approved."""
    ent = uscc.generate(_rng)
    with ConsentClient(fed.consent_address, fed.pki.tls(BANK), server_org="consent-service") as c:  # fmt: skip
        cid = c.request(terms(ent, scope=["score_only"])).consent_id
    fed.authority.approve(Identity(ent, "enterprise", b""), cid)
    return ent, cid


def _portal(fed: Federation, scoring: Scoring, org: str = "portal") -> CoordinatorClient:
    return CoordinatorClient(scoring.target, fed.pki.tls(org), timeout=60)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _minted(fed: Federation, session: Any, **over: Any) -> str:
    """A ticket signed with the consent service's real key, claims changed by ``over``."""
    claims = ticket_claims(
        issuer=fed.authority.settings.issuer, org=session.org, role=session.role,
        audience="coordinator", passkey=session.credential_id,
        portal_cert_sha256=fed.pki.tls("portal").identity().cert_sha256,
        org_cert_sha256=fed.pki.tls(BANK).identity().cert_sha256, now=int(time.time()),
    )  # fmt: skip
    claims.update(over)
    return fed.authority.keyring.signer().sign(claims, typ=DELEGATION_TYP)


def _forged(ticket: str) -> str:
    """The same header and claims, signed by a key the consent service never published."""
    h, p, _ = ticket.split(".")
    sig = Ed25519PrivateKey.generate().sign(f"{h}.{p}".encode())
    return f"{h}.{p}.{_b64(sig)}"


@pytest.fixture(scope="module")
def bank_session(federation: Federation) -> Any:
    return federation.signed_in(BANK, "bank")[0]


def test_a_bank_scores_through_the_portal_only_with_its_ticket(
    federation: Federation, scoring: Scoring, bank_session: Any
) -> None:
    ent, cid = _active_consent(federation)
    with PasskeyClient(federation.consent_address, federation.pki.tls("portal"), server_org="consent-service") as pk:  # fmt: skip
        token = pk.bank_token(bank_session.ticket, cid).token or ""
        ticket, exp = pk.delegate(bank_session.ticket, "coordinator")
    claims = unverified_claims(ticket)
    assert claims["sub"] == BANK and claims["role"] == "bank" and claims["aud"] == "coordinator"
    assert claims["passkey"] == bank_session.credential_id and exp - time.time() <= 300
    assert claims["cnf"]["x5t#S256"] == federation.pki.tls("portal").identity().x5t_s256
    with _portal(federation, scoring) as c:
        with pytest.raises(P.DelegationMissing) as no_ticket:
            c.score(ent, token)  # the portal's certificate alone is no bank
        assert "certificate alone" in no_ticket.value.message
        r = c.delegated(ticket).score(ent, token)
    assert r.rating
    entries = _entries(federation, ent)
    access = [e["payload"] for e in entries if e["kind"] == "score_access"]
    assert access and access[-1]["bank"] == BANK and access[-1]["via"] == "portal"


def test_the_enterprise_sees_that_a_score_came_through_the_portal(
    federation: Federation, scoring: Scoring, bank_session: Any
) -> None:
    """The access page names how each act reached the service: a bank's Score through the
    portal is shown ``via the portal`` (from the ledgered entry the page verifies)."""
    import httpx

    from tests.portal.test_portal_http import enrolled
    from tests.portal.webclient import Visitor

    ent, cid = _active_consent(federation)
    with PasskeyClient(federation.consent_address, federation.pki.tls("portal"), server_org="consent-service") as pk:  # fmt: skip
        token = pk.bank_token(bank_session.ticket, cid).token or ""
        ticket, _ = pk.delegate(bank_session.ticket, "coordinator")
    with _portal(federation, scoring) as c:
        r = c.delegated(ticket).score(ent, token)
    federation.settle()
    with httpx.Client(base_url=federation.url.replace("localhost", "127.0.0.1"), timeout=30) as h:
        v = Visitor(h)
        enrolled(federation, v, ent)
        page = v.get("/enterprise/access").text
    row = page[page.index(f'<tr data-index="{r.ledger_index}"') :]
    row = row[: row.index("</tr>")]
    assert "score_access" in row and 'data-via="portal"' in row and "经门户" in row
    consent_rows = [x for x in page.split("<tr ")[1:] if "consent_event" in x]
    assert consent_rows and not any(
        "data-via" in x for x in consent_rows[:1]
    )  # the bank's own request


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("forged", P.DelegationSignatureInvalid),
        ("altered", P.DelegationSignatureInvalid),
        ("expired", P.DelegationExpired),
        ("not_yet", P.DelegationExpired),
        ("wrong_audience", P.DelegationWrongAudience),
        ("other_portal_cert", P.DelegationWrongHolder),
        ("consent_token", P.DelegationMalformed),
        ("garbage", P.DelegationMalformed),
        ("wrong_issuer", P.DelegationSignatureInvalid),
    ],
)
def test_bad_tickets_are_refused_with_their_reason(
    federation: Federation, scoring: Scoring, bank_session: Any, case: str, error: type
) -> None:
    ent, cid = _active_consent(federation)
    with ConsentClient(federation.consent_address, federation.pki.tls(BANK), server_org="consent-service") as cc:  # fmt: skip
        token = cc.token(cid).token or ""
    now = int(time.time())
    tickets = {
        "forged": lambda: _forged(_minted(federation, bank_session)),
        "altered": lambda: _altered(_minted(federation, bank_session), sub="bank-someone-else"),
        "expired": lambda: _minted(
            federation, bank_session, iat=now - 900, nbf=now - 900, exp=now - 600
        ),
        "not_yet": lambda: _minted(
            federation, bank_session, iat=now + 900, nbf=now + 900, exp=now + 1200
        ),
        "wrong_audience": lambda: federation.delegate(bank_session.ticket, "market"),
        "other_portal_cert": lambda: federation.delegate(bank_session.ticket, "coordinator"),
        "consent_token": lambda: token,
        "garbage": lambda: "not.a.ticket",
        "wrong_issuer": lambda: _minted(federation, bank_session, iss="https://evil.invalid"),
    }
    caller = "portal"
    if case == "other_portal_cert":  # a ticket stolen by another holder of a portal certificate
        federation.pki.issue("portal-2", "portal")
        caller = "portal-2"
    with _portal(federation, scoring, caller) as c, pytest.raises(error) as got:
        c.delegated(tickets[case]()).score(ent, token)
    assert got.value.reason.startswith("DELEGATION_")
    # nothing was scored, nothing ledgered for this enterprise
    entries = _entries(federation, ent)
    assert not [e for e in entries if e["kind"] == "score_access"]


def _entries(fed: Federation, ent: str) -> list[dict[str, Any]]:
    """The ledger's entries about ``ent``, read by an auditor (after a fresh checkpoint)."""
    fed.ledger.checkpoint()
    with LedgerClient(fed.ledger_address, fed.pki.tls("auditor-pboc-weihai"), server_org="ledger") as lc:  # fmt: skip
        return [json.loads(bytes(pe.entry.data)) for page in lc.list_by_subject(ent) for pe in page.entries]  # fmt: skip


def _altered(ticket: str, **over: Any) -> str:
    h, p, s = ticket.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims.update(over)
    return f"{h}.{_b64(json.dumps(claims).encode())}.{s}"


def test_an_enterprise_ticket_is_no_bank_and_a_removed_passkey_stops_acting(
    federation: Federation, scoring: Scoring
) -> None:
    ent, _cid = _active_consent(federation)
    ent_session, _ = federation.signed_in(ent, "enterprise")
    with _portal(federation, scoring) as c, pytest.raises(RoleNotAllowed):
        c.delegated(federation.delegate(ent_session.ticket, "coordinator")).score(ent, "x")
    # a bank with a second passkey removes the first: a ticket naming it is refused
    bank2 = "bank-weihai-rural"
    s1, _ = federation.signed_in(bank2, "bank")
    ticket = federation.delegate(s1.ticket, "coordinator")
    federation.signed_in(bank2, "bank")  # a second passkey
    from sqlalchemy import update

    from fedcredit.consent.passkeys import credentials

    with federation.authority.store.begin() as conn:  # removal as RemovePasskey does it
        conn.execute(update(credentials).where(credentials.c.credential_id == s1.credential_id).values(removed_at=int(time.time())))  # fmt: skip
    with _portal(federation, scoring) as c, pytest.raises(P.DelegationPasskeyRemoved):
        c.delegated(ticket).score(ent, "x")
    with pytest.raises(P.SessionInvalid):  # and no new ticket is issued for that session
        federation.delegate(s1.ticket, "coordinator")


def test_the_ledger_reads_for_the_portal_only_the_ticket_holders_entries(
    federation: Federation,
) -> None:
    ent = uscc.generate(_rng)
    other = uscc.generate(_rng)
    session, _ = federation.signed_in(ent, "enterprise")
    with LedgerClient(federation.ledger_address, federation.pki.tls("portal"), server_org="ledger") as lc:  # fmt: skip
        with pytest.raises(P.DelegationMissing):
            list(lc.list_by_subject(ent))
        mine = lc.delegated(federation.delegate(session.ticket, "ledger"))
        assert list(mine.list_by_subject(ent))  # a page (maybe empty) with a checkpoint
        with pytest.raises(SubjectNotAllowed):
            list(mine.list_by_subject(other))
        with pytest.raises(P.DelegationWrongAudience):
            list(lc.delegated(federation.delegate(session.ticket, "coordinator")).list_by_subject(ent))  # fmt: skip


def test_only_the_services_ask_about_passkeys_and_only_the_portal_delegates(
    federation: Federation, bank_session: Any
) -> None:
    with PasskeyClient(federation.consent_address, federation.pki.tls("portal"), server_org="consent-service") as pk:  # fmt: skip
        with pytest.raises(RoleNotAllowed):
            pk.passkey_active(BANK, bank_session.credential_id)
        with pytest.raises(P.SessionInvalid):
            pk.delegate(bank_session.ticket[:-4] + "AAAA", "coordinator")
    with PasskeyClient(federation.consent_address, federation.pki.tls("coordinator"), server_org="consent-service") as pk:  # fmt: skip
        assert pk.passkey_active(BANK, bank_session.credential_id)
        assert not pk.passkey_active(BANK, "no-such-credential")
        with pytest.raises(RoleNotAllowed):
            pk.delegate(bank_session.ticket, "coordinator")


def test_what_a_ticket_tells_a_service(federation: Federation, bank_session: Any) -> None:
    """Privacy on the wire: a ticket carries who (organisation, role, passkey id), for which
    service, bound to which certificate, until when — nothing of what the person does."""
    ticket = federation.delegate(bank_session.ticket, "coordinator")
    header = json.loads(base64.urlsafe_b64decode(ticket.split(".")[0] + "=="))
    assert set(header) == {"alg", "kid", "typ"} and header["typ"] == DELEGATION_TYP
    assert header["alg"] == "EdDSA"
    claims = unverified_claims(ticket)
    common = {"iss", "sub", "role", "aud", "passkey", "cnf", "iat", "nbf", "exp", "jti"}
    assert set(claims) == common | {"org_x5t#S256"}
    assert claims["org_x5t#S256"] == federation.pki.tls(BANK).identity().x5t_s256
    assert claims["exp"] - claims["iat"] == 300
    ent = uscc.generate(_rng)
    ent_session, _ = federation.signed_in(ent, "enterprise")
    assert set(unverified_claims(federation.delegate(ent_session.ticket, "ledger"))) == common


def test_the_portal_renews_a_ticket_near_its_end(federation: Federation, scoring: Scoring) -> None:
    """A session outlives its tickets (300 s): the portal asks the consent service for a
    new one before the old one ends, so a page keeps working; an expired one it holds is
    never sent."""
    import httpx

    from tests.portal.test_portal_http import enrolled
    from tests.portal.webclient import Visitor

    ent = uscc.generate(_rng)
    with httpx.Client(base_url=federation.url.replace("localhost", "127.0.0.1"), timeout=60) as c:
        v = Visitor(c)
        enrolled(federation, v, ent, "enterprise")
        assert v.get("/enterprise/access").status_code == 200
        portal = federation.app.state.portal
        s, _ = portal.sessions.get(v.sid)
        old, _exp = s.delegations["ledger"]
        s.delegations["ledger"] = (old, int(time.time()) + 30)  # within RENEW_BEFORE_S of its end
        assert v.get("/enterprise/access").status_code == 200
        new, exp = s.delegations["ledger"]
        assert new != old and exp - time.time() > 200
        s.delegations["ledger"] = (_minted(federation, _Session(ent), aud="ledger", exp=int(time.time()) - 120), int(time.time()) + 999)  # fmt: skip
        page = v.get("/enterprise/access")  # a stale ticket the portal believed good: refused
        assert page.status_code == 403 and "DELEGATION_EXPIRED" in page.text


class _Session:
    def __init__(self, org: str) -> None:
        self.org, self.role, self.credential_id = org, "enterprise", "x"
