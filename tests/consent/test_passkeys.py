"""Passkeys at the consent service: enrolment, sign-in, and consent decisions that only a
fresh assertion over the exact terms can make (the portal's certificate alone cannot)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from fedcredit.common.errors import InvalidArgument, RoleNotAllowed
from fedcredit.common.tls import Identity
from fedcredit.consent import passkey_errors as P
from fedcredit.consent.passkeys import CHALLENGE_TTL_S, PasskeyAuthority
from tests.consent.conftest import BANK, World, make_world
from tests.consent.softkey import SoftKey

ORIGIN = "http://localhost:8443"
PORTAL = Identity("portal", "portal", b"p" * 32)
OPERATOR = Identity("operator", "operator", b"o" * 32)


@pytest.fixture
def pk(tmp_path: object) -> Iterator[tuple[World, PasskeyAuthority]]:
    w = make_world(f"sqlite:///{tmp_path}/consent.sqlite")
    yield w, PasskeyAuthority(w.authority, rp_id="localhost", origins=[ORIGIN])
    w.authority.close()
    w.authority.store.close()


def enrol(pk: PasskeyAuthority, org: str, role: str = "enterprise") -> SoftKey:
    code, _ = pk.issue_enrol_code(OPERATOR, org, role, 3600)
    key = SoftKey(ORIGIN)
    ticket, options = pk.begin_registration(PORTAL, org, code=code)
    pk.finish_registration(PORTAL, ticket, key.create(options))
    return key


def signed(pk: PasskeyAuthority, key: SoftKey, org: str, action: str, **kw: object) -> tuple[str, str]:  # fmt: skip
    st, options = pk.challenge(PORTAL, org, action, **kw)
    return st, key.get(options)


def test_enrol_sign_in_and_session(pk: tuple[World, PasskeyAuthority]) -> None:
    w, p = pk
    key = enrol(p, w.ent)
    v = p.verify(PORTAL, *signed(p, key, w.ent, "sign_in"))
    ticket, _exp = p.sign_in(v)
    assert p.session(PORTAL, ticket) == (w.ent, "enterprise")
    with pytest.raises(P.SessionInvalid):
        p.session(PORTAL, ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB"))
    w.clock.advance(13 * 3600)
    with pytest.raises(P.SessionInvalid):
        p.session(PORTAL, ticket)


def test_enrol_code_is_one_time_bound_and_expiring(pk: tuple[World, PasskeyAuthority]) -> None:
    w, p = pk
    code, _ = p.issue_enrol_code(OPERATOR, w.ent, "enterprise", 120)
    with pytest.raises(P.EnrolCodeInvalid):
        p.begin_registration(PORTAL, w.other_ent, code=code)  # another organisation
    t1, o1 = p.begin_registration(PORTAL, w.ent, code=code)
    t2, o2 = p.begin_registration(PORTAL, w.ent, code=code)
    p.finish_registration(PORTAL, t1, SoftKey(ORIGIN).create(o1))
    with pytest.raises(P.EnrolCodeInvalid):  # the code was spent by the first
        p.finish_registration(PORTAL, t2, SoftKey(ORIGIN).create(o2))
    late, _ = p.issue_enrol_code(OPERATOR, w.ent, "enterprise", 60)
    w.clock.advance(61)
    with pytest.raises(P.EnrolCodeInvalid):
        p.begin_registration(PORTAL, w.ent, code=late)
    with pytest.raises(RoleNotAllowed):
        p.issue_enrol_code(PORTAL, w.ent, "enterprise", 120)
    with pytest.raises(InvalidArgument):
        p.issue_enrol_code(OPERATOR, "bank-nobody", "bank", 120)


def test_registration_from_another_origin_is_refused(pk: tuple[World, PasskeyAuthority]) -> None:
    w, p = pk
    code, _ = p.issue_enrol_code(OPERATOR, w.ent, "enterprise", 120)
    ticket, options = p.begin_registration(PORTAL, w.ent, code=code)
    with pytest.raises(P.RegistrationInvalid):
        p.finish_registration(PORTAL, ticket, SoftKey("https://evil.example").create(options))


def _pending(w: World) -> str:
    return w.authority.request(w.bank, w.terms()).consent_id


def test_approve_with_passkey_records_the_assertion(pk: tuple[World, PasskeyAuthority]) -> None:
    w, p = pk
    key = enrol(p, w.ent)
    cid = _pending(w)
    st, assertion = signed(p, key, w.ent, "approve", consent_id=cid)
    body = json.loads(st)
    assert body["consent"]["bank"] == BANK and body["consent"]["max_uses"] == 3
    view, _ = p.decide(p.verify(PORTAL, st, assertion))
    assert view.state == "ACTIVE"
    ev = next(e for e in w.authority.store.events(consent_id=cid) if e.event == "granted")
    assert ev.actor == w.ent and ev.actor_role == "enterprise"
    assert ev.payload["passkey_assertion_sha256"] == hashlib.sha256(assertion.encode()).hexdigest()
    assert ev.payload["statement_sha256"] == hashlib.sha256(st.encode()).hexdigest()
    assert ev.payload["passkey_credential"] == key.id
    with pytest.raises(P.ChallengeInvalid):  # replay
        p.verify(PORTAL, st, assertion)


def test_the_portal_alone_cannot_approve(pk: tuple[World, PasskeyAuthority]) -> None:
    w, p = pk
    key = enrol(p, w.ent)
    cid = _pending(w)
    with pytest.raises(RoleNotAllowed):
        w.authority.approve(PORTAL, cid)
    st, _options = p.challenge(PORTAL, w.ent, "approve", consent_id=cid)
    with pytest.raises(P.AssertionInvalid):
        p.verify(PORTAL, st, "{}")
    # a statement the portal edits (more uses) is not the one issued
    st2, options2 = p.challenge(PORTAL, w.ent, "approve", consent_id=cid)
    forged = json.loads(st2)
    forged["consent"]["max_uses"] = 99
    from fedcredit.common.canonical import canonical_json

    forged_st = canonical_json(forged).decode()
    with pytest.raises(P.ChallengeInvalid):
        p.verify(PORTAL, forged_st, key.get(options2, challenge=hashlib.sha256(forged_st.encode()).digest()))  # fmt: skip
    # an assertion over another challenge does not verify for this statement
    st3, options3 = p.challenge(PORTAL, w.ent, "approve", consent_id=cid)
    with pytest.raises(P.AssertionInvalid):
        p.verify(PORTAL, st3, key.get(options3, challenge=b"\x00" * 32))
    # another enterprise's passkey cannot sign for this one
    other = enrol(p, w.other_ent)
    st4, options4 = p.challenge(PORTAL, w.ent, "approve", consent_id=cid)
    with pytest.raises(P.AssertionInvalid):
        p.verify(PORTAL, st4, other.get(options4))
    assert w.authority.get(w.enterprise, cid).state == "PENDING"


def test_stale_or_changed_terms_change_nothing(pk: tuple[World, PasskeyAuthority]) -> None:
    w, p = pk
    key = enrol(p, w.ent)
    cid = _pending(w)
    st, assertion = signed(p, key, w.ent, "approve", consent_id=cid)
    w.clock.advance(CHALLENGE_TTL_S + 1)
    with pytest.raises(P.ChallengeInvalid):
        p.verify(PORTAL, st, assertion)
    st, assertion = signed(p, key, w.ent, "approve", consent_id=cid)
    w.authority.reject(w.enterprise, cid)  # decided meanwhile (by the enterprise's own client)
    with pytest.raises(P.TermsChanged):
        p.decide(p.verify(PORTAL, st, assertion))


def test_narrow_and_revoke_with_passkey(pk: tuple[World, PasskeyAuthority]) -> None:
    w, p = pk
    key = enrol(p, w.ent)
    cid = _pending(w)
    p.decide(p.verify(PORTAL, *signed(p, key, w.ent, "approve", consent_id=cid)))
    old, new = p.decide(
        p.verify(
            PORTAL, *signed(p, key, w.ent, "narrow", consent_id=cid, remove_categories=["judicial"])
        )
    )
    assert old.state == "REVOKED" and new is not None and new.scope == ["operations_tax"]
    view, _ = p.decide(
        p.verify(PORTAL, *signed(p, key, w.ent, "revoke", consent_id=new.consent_id, reason="done"))
    )
    assert view.state == "REVOKED"
    evs = w.authority.store.events(subject=w.ent)
    assert all("passkey_assertion_sha256" in e.payload for e in evs if e.actor_role == "enterprise")


def test_add_and_remove_passkeys(pk: tuple[World, PasskeyAuthority]) -> None:
    w, p = pk
    first = enrol(p, w.ent)
    v = p.verify(PORTAL, *signed(p, first, w.ent, "add_passkey"))
    ticket, options = p.begin_registration(PORTAL, w.ent, authorised_by=v, label="phone")
    second = SoftKey(ORIGIN)
    p.finish_registration(PORTAL, ticket, second.create(options))
    assert {k.label for k in p.list_passkeys(w.ent)} == {"passkey 1", "phone"}
    left = p.remove_passkey(
        p.verify(PORTAL, *signed(p, second, w.ent, "remove_passkey", credential_id=first.id))
    )
    assert [k.credential_id for k in left] == [second.id]
    with pytest.raises(P.LastPasskey):
        p.remove_passkey(
            p.verify(PORTAL, *signed(p, second, w.ent, "remove_passkey", credential_id=second.id))
        )
    with pytest.raises(P.AssertionInvalid):  # the removed passkey signs nothing any more
        st, options = p.challenge(PORTAL, w.ent, "sign_in")
        p.verify(PORTAL, st, first.get(options))


def test_bank_requests_from_its_session_bound_to_its_certificate(
    pk: tuple[World, PasskeyAuthority],
) -> None:
    w, p = pk
    key = enrol(p, BANK, "bank")
    ticket, _ = p.sign_in(p.verify(PORTAL, *signed(p, key, BANK, "sign_in")))
    view = p.request_for_bank(PORTAL, ticket, w.terms())
    assert view.state == "PENDING"
    ent_key = enrol(p, w.ent)
    ent_ticket, _ = p.sign_in(p.verify(PORTAL, *signed(p, ent_key, w.ent, "sign_in")))
    with pytest.raises(RoleNotAllowed):
        p.request_for_bank(PORTAL, ent_ticket, w.terms())
    assert [c.consent_id for c in p.list_consents(PORTAL, ent_ticket, ())] == [view.consent_id]


def test_operator_issues_enrol_codes_only_with_its_passkey(
    pk: tuple[World, PasskeyAuthority],
) -> None:
    w, p = pk
    op = enrol(p, "operator", "operator")
    kw = {"enrol_org": w.ent, "enrol_role": "enterprise", "enrol_expires_in_s": 600}
    code, _exp, org, role = p.issue_enrol_code_signed(
        p.verify(PORTAL, *signed(p, op, "operator", "issue_enrol_code", **kw))
    )
    assert (org, role) == (w.ent, "enterprise")
    ticket, options = p.begin_registration(PORTAL, w.ent, code=code)
    p.finish_registration(PORTAL, ticket, SoftKey(ORIGIN).create(options))
    # an enterprise's passkey cannot issue codes, whatever the portal relays
    ent_key = enrol(p, w.other_ent)
    with pytest.raises(RoleNotAllowed):
        p.issue_enrol_code_signed(
            p.verify(PORTAL, *signed(p, ent_key, w.other_ent, "issue_enrol_code", **kw))
        )


def test_sessions_end_here_on_sign_out_idleness_and_another_portal(db_url: str) -> None:
    """The consent service's own record of a session (SQLite and PostgreSQL): a session
    ends at sign-out, after the idle timeout without use, and is no one else's."""
    w = make_world(db_url)
    clock = [1_800_000_000.0]
    p = PasskeyAuthority(w.authority, rp_id="localhost", origins=[ORIGIN], clock=lambda: clock[0], session_idle_s=60)  # fmt: skip
    try:
        key = enrol(p, w.ent)
        ticket, _ = p.sign_in(p.verify(PORTAL, *signed(p, key, w.ent, "sign_in")))
        other = Identity("portal-2", "portal", b"q" * 32)
        with pytest.raises(P.SessionInvalid, match="another portal"):
            p.session(other, ticket)
        for _ in range(3):  # used every 50 s: stays alive past the 60 s idle timeout
            clock[0] += 50
            assert p.session(PORTAL, ticket) == (w.ent, "enterprise")
        clock[0] += 61
        with pytest.raises(P.SessionInvalid, match="idle"):
            p.session(PORTAL, ticket)
        ticket2, _ = p.sign_in(p.verify(PORTAL, *signed(p, key, w.ent, "sign_in")))
        assert not p.sign_out(other, ticket2)  # another portal cannot end it either
        assert p.sign_out(PORTAL, ticket2) and not p.sign_out(PORTAL, ticket2)
        with pytest.raises(P.SessionInvalid, match="signed out"):
            p.delegate(PORTAL, ticket2, "ledger")
    finally:
        w.authority.close()
        w.authority.store.close()
