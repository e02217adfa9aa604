"""Uses counted a whole batch at a time (SQLite and PostgreSQL): a batch larger than any
chunk is counted exactly (the STORED max_uses, jti+sub+aud binding, duplicates, joins,
pins, releases), concurrent openers of big overlapping batches never over-count, and the
statements that count a batch are the same SQL whatever its size (compiled once: the list
of jtis is one bound value, not one parameter per jti -- issue 14's CPU profile)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import event

from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import Identity
from fedcredit.consent.useref import Reservation, UseRef
from tests.consent.conftest import BANK, OTHER_BANK, World

NODE = Identity("dept-tax", "department", b"\x02" * 32)
COORD = Identity("coordinator", "coordinator", b"\x04" * 32)


def _grant(world: World, n: int, max_uses: int) -> list[UseRef]:
    a = world.authority
    refs = []
    for start in range(0, n, 100):
        batch = [world.terms(max_uses=max_uses)] * min(100, n - start)
        for view in a.grant_many(world.enterprise, batch):
            tok = a.token(world.bank, view.consent_id)
            assert tok.jti is not None
            refs.append(UseRef(tok.jti, world.ent, BANK))
    return refs


def _counts(world: World, refs: list[UseRef]) -> list[int]:
    store = world.authority.store
    with store.begin() as conn:
        rows = store.use_states(conn, [r.jti for r in refs])
    return [rows[r.jti].uses for r in refs]


def _reasons(results: list[Reservation | FedcreditError]) -> set[str]:
    return {r.reason for r in results if isinstance(r, FedcreditError)}


def test_a_batch_of_1000_is_counted_exactly(world: World) -> None:
    a = world.authority
    one, two = _grant(world, 300, 1), _grant(world, 700, 2)
    a.reserve_uses(COORD, "a", one)
    assert a.settle_uses(COORD, "a", one, commit=True) == 300
    # Other banks' and other enterprises' refs to the same jtis match nothing.
    foreign = [one[0]._replace(bank=OTHER_BANK), two[0]._replace(enterprise=world.other_ent)]
    batch = one[3:] + two + foreign + [two[5]]  # two[5] listed twice: one use
    assert len(batch) == world.authority.settings.max_uses_batch == 1000
    res = a.reserve_uses(COORD, "b", batch)
    assert _reasons(res[:297]) == {"CONSENT_USES_EXHAUSTED"}
    assert res[297:997] == [Reservation(1, True)] * 700
    assert _reasons(res[997:999]) == {"CONSENT_NOT_FOUND"}
    assert res[999] == Reservation(1, True)
    assert _counts(world, one) == [1] * 300 and _counts(world, two) == [1] * 700
    # A node joins the coordinator's 700 uses and pins them: no release gives them back.
    joined = a.reserve_uses(NODE, "b", two, pin=True)
    assert joined == [Reservation(1, False)] * 700
    assert a.settle_uses(COORD, "b", two, commit=False) == 0
    assert _counts(world, two) == [1] * 700
    # Opened, then released: every count goes back, once.
    res = a.reserve_uses(COORD, "c", two)
    assert res == [Reservation(2, True)] * 700 and _counts(world, two) == [2] * 700
    assert a.settle_uses(COORD, "c", two + two[:10], commit=False) == 700
    assert a.settle_uses(COORD, "c", two, commit=False) == 0
    assert _counts(world, two) == [1] * 700


def test_concurrent_big_batches_never_over_count(world: World) -> None:
    """Four openers race over the same 600 single-use consents, each in its own order,
    under different use ids (each one wants a use) and the same one (one use between them)."""
    refs = _grant(world, 600, 1)
    results: dict[str, list[Reservation | FedcreditError]] = {}

    def run(use_id: str, order: list[UseRef]) -> None:
        results[use_id] = world.authority.reserve_uses(COORD, use_id, order)

    orders = [refs, refs[::-1], refs[300:] + refs[:300], refs[::2] + refs[1::2]]
    threads = [threading.Thread(target=run, args=(f"u{k}", o)) for k, o in enumerate(orders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ref in enumerate(refs):
        won = [u for u, res in results.items() if isinstance(_of(res, orders, u, ref), Reservation)]
        assert len(won) == 1, f"consent {i} opened by {won}"
    assert _counts(world, refs) == [1] * 600


def _of(
    res: list[Reservation | FedcreditError], orders: list[list[UseRef]], use_id: str, ref: UseRef
) -> Reservation | FedcreditError:
    return res[orders[int(use_id[1:])].index(ref)]


@pytest.fixture
def statements(world: World) -> Iterator[list[tuple[str, int]]]:
    """(SQL text, number of bound values) of every statement the store runs."""
    seen: list[tuple[str, int]] = []
    engine = world.authority.store.engine

    def record(conn: object, cur: object, sql: str, params: object, *_: object) -> None:
        seen.append((sql, len(params) if isinstance(params, (tuple, list, dict)) else 0))

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_counting_runs_the_same_statements_whatever_the_batch_size(
    world: World, statements: list[tuple[str, int]]
) -> None:
    refs = _grant(world, 600, 3)
    texts: list[set[str]] = []
    for use_id, batch in (("small", refs[:2]), ("big", refs[2:])):
        statements.clear()
        world.authority.reserve_uses(COORD, use_id, batch)
        world.authority.reserve_uses(NODE, use_id, batch, pin=True)
        world.authority.settle_uses(COORD, use_id, batch, commit=False)
        texts.append({sql for sql, _ in statements})
        # One bound value carries the whole list: a few parameters per statement.
        assert max(n for _, n in statements) <= 6, statements
    assert texts[0] == texts[1]
