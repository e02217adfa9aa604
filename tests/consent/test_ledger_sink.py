"""Consent events go to the central ledger (LedgerService over mTLS) when one is configured."""

from __future__ import annotations

from pathlib import Path

from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.store import ConsentStore
from fedcredit.ledger.entry import Entry
from tests.consent.conftest import (
    BANK,
    FakeClock,
    bank_identity,
    enterprise_code,
    enterprise_identity,
)
from tests.consent.test_service import terms
from tests.ledger.conftest import LedgerEnv, ledger_env  # noqa: F401  (fixture)


def test_every_state_change_is_a_ledger_entry(ledger_env: LedgerEnv, tmp_path: Path) -> None:  # noqa: F811
    sink = ledger_env.client("consent-service")
    store = ConsentStore(f"sqlite:///{tmp_path}/consent.sqlite")
    a = ConsentAuthority(
        store, sink=sink, bank_certs={BANK: bank_identity(BANK).cert_sha256}.get, clock=FakeClock()
    )
    ent = enterprise_code(31)
    me = enterprise_identity(ent)
    g = a.grant(me, terms(ent))
    a.pause(me, g.consent_id)
    a.resume(me, g.consent_id)
    a.revoke(me, g.consent_id)
    r = a.request(bank_identity(BANK), terms(ent))
    a.reject(me, r.consent_id)
    assert a.deliver_events() == 0  # already delivered after each commit
    events = store.events()
    assert all(e.ledger_index is not None for e in events)
    entries = [Entry.parse(d.data) for d in ledger_env.log.get_entries(0, len(events))]
    assert [e.kind for e in entries] == ["consent_event"] * 6
    assert {e.actor for e in entries} == {"consent-service"}  # from the certificate
    assert {e.subject for e in entries} == {ent}
    assert [e.payload["event"] for e in entries] == [
        "granted",
        "paused",
        "resumed",
        "revoked",
        "requested",
        "rejected",
    ]
    assert [e.payload["actor"] for e in entries] == [ent] * 4 + [BANK, ent]
    assert [ev.ledger_index for ev in events] == [e.index for e in entries]
    a.close()
    sink.close()
    store.close()
