"""Reserve, then commit or release, at the consent store (SQLite and PostgreSQL): a use id
counts once per token whoever reserves it, the STORED max_uses holds, a release gives
the use back, only the opener settles it, and concurrent openers of one use count once."""

from __future__ import annotations

import threading

from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import Identity
from fedcredit.consent.useref import Reservation, UseRef
from fedcredit.consent.uses import USE_WINDOW_S
from tests.consent.conftest import BANK, World

NODE = Identity("dept-tax", "department", b"\x02" * 32)
OTHER_NODE = Identity("dept-courts", "department", b"\x03" * 32)
COORD = Identity("coordinator", "coordinator", b"\x04" * 32)


def _grant(world: World, max_uses: int) -> tuple[str, UseRef]:
    a = world.authority
    view = a.grant(world.enterprise, world.terms(max_uses=max_uses))
    tok = a.token(world.bank, view.consent_id)
    assert tok.jti is not None
    return view.consent_id, UseRef(tok.jti, world.ent, BANK)


def _uses(world: World, cid: str) -> int:
    return world.authority.get(world.bank, cid).uses


def test_one_use_id_counts_once_and_the_stored_max_holds(world: World) -> None:
    a = world.authority
    cid, ref = _grant(world, 2)
    (r1,) = a.reserve_uses(COORD, "score-1", [ref])
    (r2,) = a.reserve_uses(NODE, "score-1", [ref])  # a node joins the coordinator's use
    assert r1 == Reservation(1, True) and r2 == Reservation(1, False)
    (r3,) = a.reserve_uses(NODE, "round-2", [ref._replace(max_uses=99)])
    assert r3 == Reservation(2, True)
    (r4,) = a.reserve_uses(NODE, "round-3", [ref._replace(max_uses=99)])
    assert isinstance(r4, FedcreditError) and r4.reason == "CONSENT_USES_EXHAUSTED"
    assert r4.metadata["max_uses"] == "2" and "allows 2 uses" in r4.message
    # Joining an open use is still fine with every use taken.
    (r5,) = a.reserve_uses(OTHER_NODE, "score-1", [ref])
    assert r5 == Reservation(2, False) and _uses(world, cid) == 2


def test_release_gives_the_use_back_and_only_the_opener_settles(world: World) -> None:
    a = world.authority
    cid, ref = _grant(world, 1)
    a.reserve_uses(COORD, "score-1", [ref])
    a.reserve_uses(NODE, "score-1", [ref])
    assert a.settle_uses(NODE, "score-1", [ref], commit=False) == 0  # not the node's use
    assert _uses(world, cid) == 1
    assert a.settle_uses(COORD, "score-1", [ref], commit=False) == 1
    assert _uses(world, cid) == 0
    assert a.settle_uses(COORD, "score-1", [ref], commit=False) == 0  # never twice
    assert _uses(world, cid) == 0
    (r,) = a.reserve_uses(COORD, "score-2", [ref])
    assert r == Reservation(1, True)
    assert a.settle_uses(COORD, "score-2", [ref], commit=True) == 1
    assert a.settle_uses(COORD, "score-2", [ref], commit=False) == 0  # committed stays
    assert _uses(world, cid) == 1


def test_a_use_id_closes_after_its_window(world: World) -> None:
    a = world.authority
    _, ref = _grant(world, 3)
    a.reserve_uses(COORD, "score-1", [ref])
    world.clock.advance(USE_WINDOW_S + 1)
    (r,) = a.reserve_uses(NODE, "score-1", [ref])
    assert isinstance(r, FedcreditError) and r.reason == "CONSENT_USES_EXHAUSTED"
    assert "new use id" in r.message


def test_matching_needs_jti_sub_and_aud(world: World) -> None:
    a = world.authority
    cid, ref = _grant(world, 3)
    got = a.reserve_uses(
        COORD,
        "u",
        [
            ref._replace(enterprise=world.other_ent),
            ref._replace(bank="bank-x"),
            ref._replace(jti="nope"),
        ],
    )
    assert [getattr(r, "reason", None) for r in got] == ["CONSENT_NOT_FOUND"] * 3
    # The same sentence whether the jti exists or not.
    assert got[0].message.replace(ref.jti, "X") == got[2].message.replace("nope", "X")  # type: ignore[union-attr]
    assert _uses(world, cid) == 0


def test_concurrent_openers_of_one_use_count_it_once(world: World) -> None:
    a = world.authority
    cid, ref = _grant(world, 5)
    results: list[object] = []
    go = threading.Barrier(8)

    def run(k: int) -> None:
        go.wait()
        who = Identity(f"dept-{k}", "department", bytes([k]) * 32)
        results.extend(a.reserve_uses(who, "score-x", [ref]))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, Reservation) for r in results), results
    assert sum(r.opened for r in results if isinstance(r, Reservation)) == 1
    assert _uses(world, cid) == 1


def test_a_bank_cannot_hold_a_use_that_nodes_join_and_then_give_it_back(world: World) -> None:
    """The party that receives a disclosure must never decide to give its use back: a bank
    that opened use ``round-1`` itself, fetched its features from a node under that id (the
    node only joins the bank's use) and released it would get the features with nothing
    counted, as often as it liked. Only the services that disclose open, settle uses."""
    a = world.authority
    cid, ref = _grant(world, 1)
    bank = world.bank
    try:
        a.reserve_uses(bank, "round-1", [ref])
    except FedcreditError as err:
        assert err.reason == "ROLE_NOT_ALLOWED"
    (r,) = a.reserve_uses(NODE, "round-1", [ref])  # the node's fetch: the features go out
    assert r == Reservation(1, r.opened)
    try:
        a.settle_uses(bank, "round-1", [ref], commit=False)
    except FedcreditError as err:
        assert err.reason == "ROLE_NOT_ALLOWED"
    assert _uses(world, cid) == 1  # the disclosure stays counted
    (again,) = a.reserve_uses(NODE, "round-2", [ref])
    assert isinstance(again, FedcreditError) and again.reason == "CONSENT_USES_EXHAUSTED"


def test_a_use_joined_by_a_node_that_disclosed_to_the_bank_is_never_given_back(
    world: World,
) -> None:
    """A bank's training round asks two nodes under one use id: one opens the use, the
    other joins it and hands its features to the bank. If the opener's own part then
    fails (its disclosure log down), its release must not give the use back: the joiner's
    features did reach the bank. The joiner pins the use (ReserveUses pin=true)."""
    a = world.authority
    cid, ref = _grant(world, 1)
    (opened,) = a.reserve_uses(NODE, "round-1", [ref])
    (joined,) = a.reserve_uses(OTHER_NODE, "round-1", [ref], pin=True)
    assert opened == Reservation(1, True) and joined == Reservation(1, False)
    a.settle_uses(NODE, "round-1", [ref], commit=False)  # the opener's part failed
    assert _uses(world, cid) == 1
    world.clock.advance(10_000)  # nor does the lease reaper give it back
    a.uses.reap()
    assert _uses(world, cid) == 1
    # A coordinator's Score does not pin: its nodes disclose to the coordinator only.
    cid2, ref2 = _grant(world, 1)
    a.reserve_uses(COORD, "score-1", [ref2])
    a.reserve_uses(NODE, "score-1", [ref2])
    a.settle_uses(COORD, "score-1", [ref2], commit=False)
    assert _uses(world, cid2) == 0
