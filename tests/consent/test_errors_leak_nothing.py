"""Errors and indexes that leak nothing (issue 14, finding 7): another party's consent is
answered exactly as a consent that does not exist, and status-list indexes are random."""

from __future__ import annotations

from sqlalchemy import select, update

from fedcredit.common.errors import FedcreditError
from fedcredit.consent import errors as E
from fedcredit.consent import statusidx
from fedcredit.consent.authority import local_verifier
from fedcredit.consent.store import consents_t
from tests.consent.conftest import BANK, OTHER_BANK, World, bank_identity, enterprise_identity


def _answer(fn: object, *args: object) -> tuple[str, str, dict[str, str]]:
    try:
        fn(*args)  # type: ignore[operator]
    except FedcreditError as exc:
        return exc.reason, exc.message, dict(exc.metadata)
    raise AssertionError("expected a refusal")


def test_another_partys_consent_is_indistinguishable_from_none(world: World) -> None:
    a = world.authority
    g = a.grant(world.enterprise, world.terms())
    intruder, other_bank = enterprise_identity(world.other_ent), bank_identity(OTHER_BANK)
    missing = "c_" + "0" * 16
    for actor, fn in (
        (intruder, a.revoke),
        (intruder, a.pause),
        (other_bank, a.token),
        (other_bank, a.get),
    ):
        theirs = _answer(fn, actor, g.consent_id)
        none = _answer(fn, actor, missing)
        assert theirs[0] == none[0] == "CONSENT_NOT_FOUND"
        assert theirs[1] == none[1].replace(missing, g.consent_id)
        assert theirs[2] == {"consent_id": g.consent_id} and none[2] == {"consent_id": missing}
        for secret in (world.ent, BANK):
            assert secret not in theirs[1] and secret not in str(theirs[2])


def test_a_wrong_role_is_refused_before_any_lookup(world: World) -> None:
    a = world.authority
    g = a.grant(world.enterprise, world.terms())
    # A bank revoking: the same ROLE_NOT_ALLOWED whether the id exists or not.
    assert (
        _answer(a.revoke, world.bank, g.consent_id)[0]
        == _answer(a.revoke, world.bank, "c_" + "1" * 16)[0]
        == "ROLE_NOT_ALLOWED"
    )


def test_status_indexes_are_random_and_distinct(world: World) -> None:
    a = world.authority
    views = [a.grant(world.enterprise, world.terms()) for _ in range(40)]
    idx = [v.status_idx for v in views]
    assert len(set(idx)) == len(idx)
    assert idx != sorted(idx)  # not in issue order (probability 1/40! otherwise)
    assert max(idx) >= 1000  # drawn from the whole space, not counted up from 1
    assert all(0 <= i < statusidx.MIN_CAPACITY for i in idx)
    # Each token names its row's index, and still verifies through the status list.
    v = local_verifier(a)
    for view in views[:3]:
        tok = a.token(world.bank, view.consent_id).token or ""
        got = v.verify(
            tok,
            bank_org=BANK,
            bank_cert_sha256=world.bank.cert_sha256,
            enterprise=world.ent,
            purposes=["credit_assessment"],
        )
        assert got.status_idx == view.status_idx
    tok = a.token(world.bank, views[1].consent_id).token or ""
    a.revoke(world.enterprise, views[1].consent_id)
    try:
        v.verify(
            tok,
            bank_org=BANK,
            bank_cert_sha256=world.bank.cert_sha256,
            enterprise=world.ent,
            purposes=["credit_assessment"],
        )
        raise AssertionError("a revoked consent verified")
    except E.ConsentRevoked:
        pass


def test_migration_redraws_only_indexes_not_yet_in_a_token(world: World) -> None:
    a = world.authority
    issued = a.grant(world.enterprise, world.terms())
    pending = [a.request(world.bank, world.terms()) for _ in range(5)]
    store = a.store
    # A store from before random indexes: sequential ids 1..5 for the pending rows.
    with store.begin() as conn:
        for n, p in enumerate(pending, start=1):
            conn.execute(
                update(consents_t).where(consents_t.c.consent_id == p.consent_id).values(id=n)
            )
    store.create_schema()  # runs the migration
    with store.begin() as conn:
        rows = dict(conn.execute(select(consents_t.c.consent_id, consents_t.c.id)).all())
    assert rows[issued.consent_id] == issued.status_idx  # its token carries it: unchanged
    moved = [rows[p.consent_id] for p in pending]
    assert len(set(moved)) == 5 and sorted(moved) != [1, 2, 3, 4, 5]
    # An approved request gets a token naming its (new) index.
    view = a.approve(world.enterprise, pending[0].consent_id)
    assert view.status_idx == rows[pending[0].consent_id]
