"""Reservations after a crash (issue 14): a use reserved and never settled, because its
opener (the coordinator, a node, a bank) or the consent service died mid-Score, comes back
after ``use_lease_s`` with a ledgered ``use_released`` event; a commit that still arrives
later counts only while the consent has a use left; the reaper and a settle racing on one
reservation give the use back once. SQLite and PostgreSQL (fixture ``db_url``)."""

from __future__ import annotations

import threading
import time

import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import Identity
from fedcredit.consent.useref import Reservation, UseRef
from tests.consent.conftest import BANK, World, make_world

NODE = Identity("dept-tax", "department", b"\x02" * 32)
COORD = Identity("coordinator", "coordinator", b"\x04" * 32)


def _grant(world: World, max_uses: int) -> tuple[str, UseRef]:
    a = world.authority
    view = a.grant(world.enterprise, world.terms(max_uses=max_uses))
    tok = a.token(world.bank, view.consent_id)
    assert tok.jti is not None
    return view.consent_id, UseRef(tok.jti, world.ent, BANK)


def _uses(world: World, cid: str) -> int:
    return world.authority.get(world.bank, cid).uses


def _restart(world: World, db_url: str) -> World:
    """The consent service comes back on the same store (the old process is gone without
    settling anything), with the same clock."""
    fresh = make_world(db_url)
    fresh.clock = world.clock
    fresh.authority._clock = world.clock
    fresh.authority.uses._clock = world.clock
    fresh.authority.lifecycle._clock = world.clock
    fresh.ent, fresh.other_ent = world.ent, world.other_ent
    return fresh


def test_a_crash_mid_score_burns_no_use(db_url: str) -> None:
    w = make_world(db_url)
    a = w.authority
    lease = a.settings.use_lease_s
    cid, ref = _grant(w, 1)
    assert a.reserve_uses(COORD, "score-1", [ref]) == [Reservation(1, True)]
    assert a.reserve_uses(NODE, "score-1", [ref]) == [Reservation(1, False)]
    # The coordinator dies here; so does the consent service. It restarts on its store.
    w2 = _restart(w, db_url)
    a2 = w2.authority
    try:
        w.clock.advance(lease - 1)
        assert a2.reap_uses() == 0  # still within its lease: the Score may yet answer
        (r,) = a2.reserve_uses(COORD, "score-2", [ref])
        assert isinstance(r, FedcreditError) and r.reason == "CONSENT_USES_EXHAUSTED"
        w.clock.advance(2)
        assert a2.reap_uses() == 1
        assert _uses(w2, cid) == 0
        (ev,) = [e for e in a2.store.events(consent_id=cid) if e.event == "use_released"]
        p = ev.payload
        assert (p["use_id"], p["reserved_by"], p["reason"]) == (
            "score-1",
            "coordinator",
            "lease_expired",
        )
        assert p["lease_s"] == lease and p["jti"] == ref.jti and p["uses"] == 0
        # Ledgered: the event reaches the evidence sink like every lifecycle event.
        a2.deliver_events()
        (ev,) = [e for e in a2.store.events(consent_id=cid) if e.event == "use_released"]
        assert ev.ledger_index is not None
        # The enterprise's use is usable again, and a committed use is never reaped.
        assert a2.reserve_uses(COORD, "score-2", [ref]) == [Reservation(1, True)]
        assert a2.settle_uses(COORD, "score-2", [ref], commit=True) == 1
        w.clock.advance(10 * lease)
        assert a2.reap_uses() == 0 and _uses(w2, cid) == 1
        # The opener coming back to release the reaped use changes nothing.
        assert a2.settle_uses(COORD, "score-1", [ref], commit=False) == 0
        assert _uses(w2, cid) == 1
    finally:
        for x in (w, w2):
            x.authority.close()
            x.authority.store.close()


def test_a_late_commit_counts_only_while_a_use_is_left(world: World) -> None:
    a = world.authority
    lease = a.settings.use_lease_s
    cid, ref = _grant(world, 1)
    a.reserve_uses(COORD, "score-1", [ref])
    world.clock.advance(lease + 1)
    assert a.reap_uses() == 1
    assert a.reserve_uses(COORD, "score-2", [ref]) == [Reservation(1, True)]
    # The stalled Score tries to answer after all: its commit cannot push the count past
    # max_uses, and it is refused, so the stalled Score must not answer.
    with pytest.raises(FedcreditError) as exc:
        a.settle_uses(COORD, "score-1", [ref], commit=True)
    assert exc.value.reason == "CONSENT_USES_EXHAUSTED"
    assert _uses(world, cid) == 1
    (late,) = [e for e in a.store.events(consent_id=cid) if e.event == "use_committed_late"]
    assert late.payload["counted"] is False and late.payload["use_id"] == "score-1"
    assert a.settle_uses(COORD, "score-2", [ref], commit=True) == 1

    cid2, ref2 = _grant(world, 2)
    a.reserve_uses(COORD, "score-3", [ref2])
    world.clock.advance(lease + 1)
    assert a.reap_uses() == 1 and _uses(world, cid2) == 0
    assert a.settle_uses(COORD, "score-3", [ref2], commit=True) == 1
    assert _uses(world, cid2) == 1  # the disclosure did happen: counted again
    (late,) = [e for e in a.store.events(consent_id=cid2) if e.event == "use_committed_late"]
    assert late.payload["counted"] is True
    # Committing it twice, another actor's reaped use, or a use never reserved counts nothing.
    assert a.settle_uses(COORD, "score-3", [ref2], commit=True) == 0
    assert a.settle_uses(NODE, "score-1", [ref2], commit=True) == 0
    assert a.settle_uses(COORD, "never-reserved", [ref2], commit=True) == 0
    assert _uses(world, cid2) == 1


def test_reaper_and_release_racing_give_a_use_back_once(world: World) -> None:
    a = world.authority
    lease = a.settings.use_lease_s
    refs: list[tuple[str, UseRef]] = [_grant(world, 5) for _ in range(10)]
    held: list[tuple[str, UseRef]] = []
    for k, (_, ref) in enumerate(refs):
        a.reserve_uses(COORD, f"done-{k}", [ref])  # a committed use: never given back
        a.settle_uses(COORD, f"done-{k}", [ref], commit=True)
        for j in range(4):
            a.reserve_uses(COORD, f"held-{k}-{j}", [ref])
            held.append((f"held-{k}-{j}", ref))
    assert all(_uses(world, cid) == 5 for cid, _ in refs)
    world.clock.advance(lease + 1)
    go = threading.Barrier(3)
    reaped: list[int] = []
    released: list[int] = []

    def reap() -> None:
        go.wait()
        while (n := a.reap_uses(limit=7)) > 0:
            reaped.append(n)

    def release(part: list[tuple[str, UseRef]]) -> None:
        go.wait()
        for use_id, ref in part:
            released.append(a.settle_uses(COORD, use_id, [ref], commit=False))

    threads = [
        threading.Thread(target=reap),
        threading.Thread(target=release, args=(held[0::2],)),
        threading.Thread(target=release, args=(held[1::2],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(reaped) + sum(released) == 40
    assert [_uses(world, cid) for cid, _ in refs] == [1] * 10
    n_events = sum(
        1 for cid, _ in refs for e in a.store.events(consent_id=cid) if e.event == "use_released"
    )
    assert n_events == sum(reaped)


def test_the_background_worker_reaps(db_url: str) -> None:
    w = make_world(db_url, expiry_sweep_s=0.1)
    a = w.authority
    try:
        cid, ref = _grant(w, 1)
        a.reserve_uses(COORD, "score-1", [ref])
        w.clock.advance(a.settings.use_lease_s + 1)
        a.start()
        deadline = time.monotonic() + 20  # a loaded 2-core machine: generous, polled
        while _uses(w, cid) != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _uses(w, cid) == 0
    finally:
        a.close()
        a.store.close()
