"""Lifecycle of a consent on both engines: every transition, events, caps, who may act."""

from __future__ import annotations

import threading

import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.consent import errors as E
from fedcredit.consent.authority import (
    AuthorityUseCounter,
    ConsentAuthority,
    local_verifier,
)
from fedcredit.consent.store import ConsentStore, verify_evidence_chain
from fedcredit.consent.terms import ConsentTerms
from tests.consent.conftest import (
    BANK,
    COORDINATOR,
    OTHER_BANK,
    World,
    bank_identity,
    enterprise_identity,
)


def verify(w: World, token: str, **kw: object) -> object:
    v = local_verifier(w.authority)
    args: dict[str, object] = {
        "bank_org": BANK,
        "bank_cert_sha256": w.bank.cert_sha256,
        "enterprise": w.ent,
        "purposes": ["credit_assessment"],
    }
    args.update(kw)
    return v.verify(token, **args)  # type: ignore[arg-type]


def events(w: World, consent_id: str) -> list[str]:
    return [e.event for e in w.authority.store.events(consent_id=consent_id)]


def test_request_approve_token(world: World) -> None:
    a = world.authority
    req = a.request(world.bank, world.terms())
    assert req.state == "PENDING" and req.jti is None and req.not_before is None
    with pytest.raises(E.TokenNotIssued):
        a.token(world.bank, req.consent_id)
    world.clock.advance(60)
    ok = a.approve(world.enterprise, req.consent_id)
    assert ok.state == "ACTIVE" and ok.jti and ok.not_before == int(world.clock())
    assert ok.expires_at == int(world.clock()) + 30 * 86400
    tok = a.token(world.bank, req.consent_id).token
    assert tok
    got = verify(world, tok, category="judicial", node="dept-courts")
    assert got.consent_id == req.consent_id  # type: ignore[attr-defined]
    assert events(world, req.consent_id) == ["requested", "granted"]


def test_reject_is_final(world: World) -> None:
    a = world.authority
    req = a.request(world.bank, world.terms())
    assert a.reject(world.enterprise, req.consent_id, "not now").state == "REJECTED"
    for action in (a.approve, a.reject, a.pause, a.resume, a.revoke):
        with pytest.raises(E.TransitionNotAllowed) as info:
            action(world.enterprise, req.consent_id)
        assert info.value.metadata["state"] == "REJECTED"
    assert events(world, req.consent_id) == ["requested", "rejected"]


def test_grant_pause_resume_revoke(world: World) -> None:
    a = world.authority
    g = a.grant(world.enterprise, world.terms())
    assert g.state == "ACTIVE" and g.jti  # the bank's certificate is known: signed at once
    tok = a.token(world.bank, g.consent_id).token or ""
    verify(world, tok)
    a.pause(world.enterprise, g.consent_id)
    with pytest.raises(E.ConsentSuspended):
        verify(world, tok)
    with pytest.raises(E.TransitionNotAllowed):
        a.pause(world.enterprise, g.consent_id)
    a.resume(world.enterprise, g.consent_id)
    verify(world, tok)
    a.revoke(world.enterprise, g.consent_id, "changed my mind")
    with pytest.raises(E.ConsentRevoked):
        verify(world, tok)
    with pytest.raises(E.TransitionNotAllowed):
        a.resume(world.enterprise, g.consent_id)
    with pytest.raises(E.TokenNotIssued):
        a.token(world.bank, g.consent_id)
    assert events(world, g.consent_id) == ["granted", "paused", "resumed", "revoked"]


def test_direct_grant_without_known_certificate_binds_at_first_fetch(tmp_path: object) -> None:
    store = ConsentStore(f"sqlite:///{tmp_path}/c.sqlite")
    from tests.consent.conftest import FakeClock, enterprise_code

    a = ConsentAuthority(store, clock=FakeClock())
    ent = enterprise_code(7)
    g = a.grant(
        enterprise_identity(ent),
        ConsentTerms(enterprise=ent, bank=BANK, purpose="guarantee", scope=["score_only"]),
    )
    assert g.jti is None
    first = a.token(bank_identity(BANK), g.consent_id)
    assert first.token and first.jti
    assert a.token(bank_identity(BANK), g.consent_id).token == first.token
    # The same bank with another certificate cannot take it over.
    from fedcredit.common.tls import Identity

    other_cert = Identity(BANK, "bank", b"\x01" * 32)
    with pytest.raises(E.HolderMismatch):
        a.token(other_cert, g.consent_id)
    a.close()
    store.close()


def test_narrow_by_category_and_by_node(world: World) -> None:
    a = world.authority
    g = a.grant(
        world.enterprise, world.terms(scope=["judicial", "operations_tax", "trade"], max_uses=5)
    )
    old_tok = a.token(world.bank, g.consent_id).token or ""
    revoked, new = a.narrow(world.enterprise, g.consent_id, remove_categories=["trade"])
    assert revoked.state == "REVOKED" and revoked.replaced_by == new.consent_id
    assert new.replaces == g.consent_id and new.scope == ["judicial", "operations_tax"]
    assert "dept-customs" not in new.nodes and new.expires_at == g.expires_at
    with pytest.raises(E.ConsentRevoked):
        verify(world, old_tok)
    new_tok = a.token(world.bank, new.consent_id).token or ""
    verify(world, new_tok, category="judicial")
    with pytest.raises(E.CategoryNotCovered):
        verify(world, new_tok, category="trade")
    # Now one node (the tax bureau) without touching the rest.
    _, newer = a.narrow(world.enterprise, new.consent_id, remove_nodes=["dept-tax"])
    assert newer.nodes == ["dept-courts"] and newer.scope == ["judicial"]
    newer_tok = a.token(world.bank, newer.consent_id).token or ""
    with pytest.raises(E.NodeNotCovered):
        verify(world, newer_tok, node="dept-tax")
    verify(world, newer_tok, node="dept-courts", category="judicial")
    # Removing what is not covered, or everything, is refused.
    with pytest.raises(E.NarrowingInvalid):
        a.narrow(world.enterprise, newer.consent_id, remove_categories=["trade"])
    with pytest.raises(E.NarrowingInvalid):
        a.narrow(world.enterprise, newer.consent_id, remove_nodes=["dept-courts"])
    assert events(world, g.consent_id) == ["granted", "revoked"]
    assert events(world, new.consent_id) == ["granted", "revoked"]


def test_narrow_keeps_the_uses_left(world: World) -> None:
    a = world.authority
    g = a.grant(world.enterprise, world.terms(max_uses=3))
    a.record_use(COORDINATOR, g.jti or "")
    _, new = a.narrow(world.enterprise, g.consent_id, remove_categories=["judicial"])
    assert new.max_uses == 2


def test_expiry_and_expiring_soon(world: World) -> None:
    a = world.authority
    short = a.grant(world.enterprise, world.terms(validity_days=3))
    long = a.grant(world.enterprise, world.terms(validity_days=30))
    pending = a.request(world.bank, world.terms())
    soon = a.list_consents(world.enterprise, expiring_within_days=7)
    assert [c.consent_id for c in soon] == [short.consent_id]
    assert [c.consent_id for c in a.list_consents(world.bank, expiring_within_days=7)] == [
        short.consent_id
    ]
    world.clock.advance(3 * 86400 + 1)
    assert a.expire_due() == 1
    assert a.get(world.enterprise, short.consent_id).state == "EXPIRED"
    assert events(world, short.consent_id) == ["granted", "expired"]
    world.clock.advance(30 * 86400)  # the pending request lapses after 14 days, the long one ends
    assert a.expire_due() == 2
    assert a.get(world.enterprise, pending.consent_id).state == "EXPIRED"
    assert a.get(world.enterprise, long.consent_id).state == "EXPIRED"
    with pytest.raises(E.TransitionNotAllowed):
        a.approve(world.enterprise, pending.consent_id)


@pytest.mark.parametrize(
    ("terms", "error"),
    [
        ({"validity_days": 31}, E.ValidityCapExceeded),
        ({"max_uses": 6}, E.UsesCapExceeded),
        ({"retention_days": 31}, E.RetentionCapExceeded),
        ({"purpose": "model_training", "validity_days": 366}, E.ValidityCapExceeded),
        ({"purpose": "post_loan_monitoring", "validity_days": 100}, E.LoanTermRequired),
        (
            {"purpose": "post_loan_monitoring", "validity_days": 400, "loan_term_days": 365},
            E.ValidityCapExceeded,
        ),
        ({"validity_days": 0}, E.InvalidValidity),
        ({"scope": []}, E.InvalidScope),
        ({"scope": ["judicial", "bogus"]}, E.InvalidScope),
        ({"scope": ["score_only", "judicial"]}, E.InvalidScope),
        ({"nodes": ["dept-customs"]}, E.InvalidNodes),
        ({"nodes": ["dept-nowhere"]}, E.InvalidNodes),
        ({"bank": "bank-unknown"}, E.InvalidBank),
        ({"purpose": "marketing"}, E.InvalidPurpose),
    ],
)
def test_fair_use_caps_and_bad_terms_are_refused(
    world: World, terms: dict[str, object], error: type[FedcreditError]
) -> None:
    with pytest.raises(error) as info:
        world.authority.grant(world.enterprise, world.terms(**terms))
    assert info.value.message
    assert world.authority.list_consents(world.enterprise) == []  # nothing changed


def test_post_loan_monitoring_within_the_loan_term(world: World) -> None:
    g = world.authority.grant(
        world.enterprise,
        world.terms(
            purpose="post_loan_monitoring",
            validity_days=395,
            loan_term_days=365,
            max_uses=12,
            retention_days=365,
        ),
    )
    assert g.state == "ACTIVE"


def test_invalid_credit_code_is_refused(world: World) -> None:
    from fedcredit.common.uscc import InvalidUSCC

    with pytest.raises(InvalidUSCC):
        world.authority.request(world.bank, world.terms(enterprise="91370000XXXXXXXXX0"))


def test_nobody_acts_for_another(world: World) -> None:
    a = world.authority
    g = a.grant(world.enterprise, world.terms())
    intruder = enterprise_identity(world.other_ent)
    # Another party's consent: NOT_FOUND, worded as for an id that does not exist (finding 7).
    for action in (a.pause, a.revoke, a.resume, a.approve, a.reject):
        with pytest.raises(E.ConsentNotFound) as info:
            action(intruder, g.consent_id)
        with pytest.raises(E.ConsentNotFound) as missing:
            action(intruder, "c_nosuchconsent000")
        assert info.value.message == missing.value.message.replace(
            "c_nosuchconsent000", g.consent_id
        )
        assert world.ent not in info.value.message and BANK not in info.value.message
    with pytest.raises(E.ConsentNotFound):
        a.narrow(intruder, g.consent_id, remove_categories=["judicial"])
    with pytest.raises(E.NotYourConsent):
        a.grant(intruder, world.terms())  # granting in world.ent's name
    with pytest.raises(E.ConsentNotFound):
        a.token(bank_identity(OTHER_BANK), g.consent_id)
    with pytest.raises(E.NotYourConsent):
        a.request(bank_identity(OTHER_BANK), world.terms())  # requesting for another bank
    with pytest.raises(E.ConsentNotFound) as info:
        a.get(bank_identity(OTHER_BANK), g.consent_id)
    assert world.ent not in info.value.message and BANK not in info.value.message
    with pytest.raises(E.ConsentNotFound) as info:
        a.record_use(bank_identity(OTHER_BANK), g.jti or "")
    assert BANK not in info.value.message  # the owning bank is not named
    # Roles: a bank cannot approve, an enterprise cannot request or fetch tokens.
    from fedcredit.common.errors import RoleNotAllowed

    with pytest.raises(RoleNotAllowed):
        a.approve(world.bank, g.consent_id)
    with pytest.raises(RoleNotAllowed):
        a.request(world.enterprise, world.terms())
    with pytest.raises(RoleNotAllowed):
        a.token(world.enterprise, g.consent_id)
    assert a.list_consents(intruder) == []
    assert a.list_consents(bank_identity(OTHER_BANK)) == []
    assert a.get(world.enterprise, g.consent_id).state == "ACTIVE"  # untouched


def test_events_reach_the_evidence_sink_in_a_verifiable_chain(world: World) -> None:
    a = world.authority
    g = a.grant(world.enterprise, world.terms())
    a.pause(world.enterprise, g.consent_id)
    a.resume(world.enterprise, g.consent_id)
    a.revoke(world.enterprise, g.consent_id)
    a.deliver_events()
    evs = a.store.events(consent_id=g.consent_id)
    assert all(e.ledger_index is not None for e in evs)
    assert [e.actor for e in evs] == [world.ent] * 4
    assert all(e.at == int(world.clock()) for e in evs)
    chain = a.store.evidence()
    assert len(chain) == 4 and verify_evidence_chain(chain) is None
    # Tampering with any stored entry is detected.
    idx, entry, leaf = chain[1]
    assert (
        verify_evidence_chain(
            [chain[0], (idx, entry.replace(b"paused", b"resumed"), leaf), *chain[2:]]
        )
        == 1
    )


def test_a_failing_sink_keeps_events_pending_until_it_recovers(world: World) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.up = False
            self.got: list[str] = []

        def append(self, kind: str, subject: str | None, payload: dict) -> object:
            if not self.up:
                raise ConnectionError("ledger down")
            self.got.append(payload["event"])
            from fedcredit.common.evidence import Receipt

            return Receipt(index=len(self.got) - 1, leaf_hash=b"\x00" * 32)

    sink = Flaky()
    world.authority.sink = sink  # type: ignore[assignment]
    g = world.authority.grant(world.enterprise, world.terms())
    world.authority.revoke(world.enterprise, g.consent_id)
    assert len(world.authority.store.pending_events()) == 2
    sink.up = True
    assert world.authority.deliver_events() == 2
    assert sink.got == ["granted", "revoked"]


def test_status_survives_a_restart(world: World) -> None:
    a = world.authority
    g1 = a.grant(world.enterprise, world.terms())
    g2 = a.grant(world.enterprise, world.terms())
    a.revoke(world.enterprise, g1.consent_id)
    a.pause(world.enterprise, g2.consent_id)
    restarted = ConsentAuthority(a.store, a.settings, bank_certs=a.bank_certs, clock=world.clock)
    v = local_verifier(restarted)
    args = {
        "bank_org": BANK,
        "bank_cert_sha256": world.bank.cert_sha256,
        "enterprise": world.ent,
        "purposes": ["credit_assessment"],
    }
    with pytest.raises(E.ConsentRevoked):
        v.verify(_tok(restarted, world, g1.consent_id), **args)  # type: ignore[arg-type]
    with pytest.raises(E.ConsentSuspended):
        v.verify(_tok(restarted, world, g2.consent_id), **args)  # type: ignore[arg-type]
    restarted.close()


def _tok(a: ConsentAuthority, w: World, consent_id: str) -> str:
    with a.store.begin() as conn:
        row = a.store.get(conn, consent_id)
    assert row is not None and row.token
    return row.token


def test_record_use_counts_and_refuses(world: World) -> None:
    a = world.authority
    g = a.grant(world.enterprise, world.terms(max_uses=2))
    assert a.record_use(COORDINATOR, g.jti or "") == 1
    assert a.record_use(world.bank, g.jti or "") == 2
    with pytest.raises(E.UsesExhausted):
        a.record_use(COORDINATOR, g.jti or "")
    p = a.grant(world.enterprise, world.terms())
    a.pause(world.enterprise, p.consent_id)
    with pytest.raises(E.ConsentSuspended):
        a.record_use(COORDINATOR, p.jti or "")
    with pytest.raises(E.ConsentNotFound):
        a.record_use(COORDINATOR, "no-such-jti")
    world.clock.advance(31 * 86400)
    q = a.grant(world.enterprise, world.terms(validity_days=1))
    world.clock.advance(2 * 86400)
    with pytest.raises(E.TokenExpired):
        a.record_use(COORDINATOR, q.jti or "")


def test_record_uses_counts_each_token_or_names_why_not(world: World) -> None:
    a = world.authority
    ok = a.grant(world.enterprise, world.terms(max_uses=3))
    once = a.grant(world.enterprise, world.terms(max_uses=1))
    paused = a.grant(world.enterprise, world.terms())
    a.pause(world.enterprise, paused.consent_id)
    revoked = a.grant(world.enterprise, world.terms())
    a.revoke(world.enterprise, revoked.consent_id)
    jtis = [ok.jti, once.jti, once.jti, paused.jti, revoked.jti, "no-such-jti", ok.jti]
    res = a.record_uses(COORDINATOR, [j or "" for j in jtis])
    assert res[0] == 1 and res[1] == 1 and res[6] == 2
    kinds = [type(r) for r in res[2:6]]
    assert kinds == [E.UsesExhausted, E.ConsentSuspended, E.ConsentRevoked, E.ConsentNotFound]
    # The refusals counted nothing; the counts are as if each use came alone.
    assert a.get(world.enterprise, ok.consent_id).uses == 2
    assert a.get(world.enterprise, once.consent_id).uses == 1
    assert a.get(world.enterprise, paused.consent_id).uses == 0
    # Another bank's tokens are refused one by one, never counted.
    other = bank_identity(OTHER_BANK)
    theirs, missing = a.record_uses(other, [ok.jti or "", "no-such-jti"])
    assert isinstance(theirs, E.ConsentNotFound) and isinstance(missing, E.ConsentNotFound)
    assert theirs.message == missing.message.replace("no-such-jti", ok.jti or "")
    assert a.get(world.enterprise, ok.consent_id).uses == 2
    # Nobody else may count; too many in one call is refused whole.
    with pytest.raises(FedcreditError) as exc:
        a.record_uses(world.enterprise, [ok.jti or ""])
    assert exc.value.reason == "ROLE_NOT_ALLOWED"
    too_many = [ok.jti or ""] * (a.settings.max_uses_batch + 1)
    with pytest.raises(FedcreditError) as exc:
        a.record_uses(COORDINATOR, too_many)
    assert exc.value.reason == "BATCH_TOO_LARGE"
    assert a.get(world.enterprise, ok.consent_id).uses == 2


@pytest.mark.parametrize("group_commit", [False, True], ids=["own-tx", "group-commit"])
def test_concurrent_revoke_and_use(world: World, group_commit: bool) -> None:
    """Uses race a revocation: every use that succeeded happened before the revoke committed,
    and once the revoke has returned, no use succeeds."""
    a = world.authority
    if group_commit:
        a.store.start_group_commit()
    g = a.grant(
        world.enterprise,
        world.terms(purpose="model_training", validity_days=300, max_uses=50, retention_days=300),
    )
    tok = a.token(world.bank, g.consent_id).token or ""
    verifier = local_verifier(a, counter=AuthorityUseCounter(a, COORDINATOR))
    args = {
        "bank_org": BANK,
        "bank_cert_sha256": world.bank.cert_sha256,
        "enterprise": world.ent,
        "purposes": ["model_training"],
        "count_use": True,
    }
    revoked = threading.Event()
    ok_after_revoke: list[int] = []
    successes: list[int] = []
    errors: list[str] = []
    start = threading.Barrier(5)

    def user() -> None:
        start.wait()
        for _ in range(20):
            was_revoked = revoked.is_set()
            try:
                got = verifier.verify(tok, **args)  # type: ignore[arg-type]
            except FedcreditError as exc:
                errors.append(exc.reason)
                continue
            successes.append(got.uses or 0)
            if was_revoked:
                ok_after_revoke.append(got.uses or 0)

    def revoker() -> None:
        start.wait()
        a.revoke(world.enterprise, g.consent_id)
        revoked.set()

    threads = [threading.Thread(target=user) for _ in range(4)] + [threading.Thread(target=revoker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ok_after_revoke == []
    assert set(errors) <= {"CONSENT_REVOKED", "CONSENT_USES_EXHAUSTED"}
    assert "CONSENT_REVOKED" in errors
    with a.store.begin() as conn:
        row = a.store.get(conn, g.consent_id)
    assert row is not None and row.state == "REVOKED"
    # Every counted use is a success the caller saw, and none was counted twice.
    assert row.uses == len(successes) == len(set(successes))
    with pytest.raises(E.ConsentRevoked):
        verifier.verify(tok, **args)  # type: ignore[arg-type]


def test_listing_filters(world: World) -> None:
    a = world.authority
    g = a.grant(world.enterprise, world.terms())
    r = a.request(world.bank, world.terms())
    a.pause(world.enterprise, g.consent_id)
    assert [c.consent_id for c in a.list_consents(world.enterprise, states=["PAUSED"])] == [
        g.consent_id
    ]
    assert [c.consent_id for c in a.list_consents(world.bank, states=["PENDING"])] == [r.consent_id]
    assert len(a.list_consents(world.bank)) == 2
    with pytest.raises(E.InvalidStateFilter):
        a.list_consents(world.bank, states=["BOGUS"])


def test_group_commit_isolates_a_failing_call(world: World) -> None:
    """Calls sharing a transaction: one refused call does not undo or fail the others."""
    a = world.authority
    a.store.start_group_commit()
    g = a.grant(world.enterprise, world.terms())
    results: list[str] = []

    def ok() -> None:
        results.append(a.grant(world.enterprise, world.terms()).state)

    def bad() -> None:
        try:
            a.resume(world.enterprise, g.consent_id)  # ACTIVE cannot be resumed
        except E.TransitionNotAllowed:
            results.append("refused")

    threads = [threading.Thread(target=ok if i % 3 else bad) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ACTIVE"] * 20 + ["refused"] * 10
    assert len(a.list_consents(world.enterprise)) == 21
    assert all(e.event == "granted" for e in a.store.events())
