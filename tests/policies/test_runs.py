"""免申即享 runs end to end on live nodes; budgets under concurrency (SQLite and PostgreSQL);
the decline path; payments after the window; every step in the ledger."""

from __future__ import annotations

import json
import threading
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.ledger.log import Log
from fedcredit.policies import rules
from fedcredit.policies.errors import (
    AwardDeclined,
    DeclineWindowClosed,
    IllegalTransition,
    PolicyExists,
    RuleInvalid,
)
from fedcredit.policies.runs import run_automatic
from fedcredit.policies.store import DAY, PolicyStore
from tests.policies.conftest import City

T0 = 1_767_225_600.0  # 2026-01-01
TODAY = date(2026, 3, 1)


def _policy(pid: str, rule: str, amount: int, budget: int, **kw: Any) -> rules.Policy:
    return rules.Policy(
        id=pid, title=pid.replace("-", " "), department="finance-bureau", mode="automatic",
        amount_yuan=amount, budget_yuan=budget, opens=date(2026, 1, 1),
        closes=date(2026, 12, 31), rule=rule, **kw,
    )  # fmt: skip


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    log = Log.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}", Ed25519PrivateKey.generate(),
                   "platform/ledger")  # fmt: skip
    yield log
    log.close()


def _entries(log: Log, start: int = 0) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in log.get_entries(start, log.size)]


def test_a_run_screens_budgets_notifies_and_pays(city: City, tmp_path: Path, ledger: Log) -> None:
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    store.publish(_policy("young-firms", "registry.founded_year >= 2015"
                          " && courts.open_cases_as_defendant == 0", 20_000, 200_000), T0, ledger.append_many)  # fmt: skip
    store.publish(_policy("exporters", "customs.export_value_12m > 0.0 && tax.late_filings_12m == 0",
                          50_000, 10_000_000), T0, ledger.append_many)  # fmt: skip
    with pytest.raises(PolicyExists):
        store.publish(_policy("exporters", "true", 1, 1), T0, ledger.append_many)
    with pytest.raises(RuleInvalid):
        store.publish(_policy("bad-rule", "tax.revenue_12m > 'x'", 1, 1), T0, ledger.append_many)
    clients = {d: n.client() for d, n in city.nodes.items()}
    before = ledger.size
    s = run_automatic(store, ledger, clients, city.codes, city.platform_rows, run_id="run-1",
                      today=TODAY, now=T0, chunk=100)  # fmt: skip
    # Budget: 200,000 / 20,000 = 10 awards at most; the rest of the eligible are unfunded.
    assert s.eligible["young-firms"] > 10
    assert (
        s.notified["young-firms"] == 10
        and s.unfunded["young-firms"] == s.eligible["young-firms"] - 10
    )
    assert s.notified["exporters"] == s.eligible["exporters"] > 0
    assert store.books("young-firms").committed_yuan == 200_000
    kinds = [e["kind"] for e in _entries(ledger, before)]
    assert kinds.count("policy_screening_run") == 1
    assert kinds.count("policy_screening") == len(city.codes)  # each enterprise's audit view
    assert kinds.count("policy_award_notified") == 10 + s.notified["exporters"]
    run_entry = next(e for e in _entries(ledger, before) if e["kind"] == "policy_screening_run")
    assert set(run_entry["payload"]["node_disclosures"]) == {"courts", "customs", "tax"}

    # The decline path: within the window; twice; after the window; a paid award.
    first, second, third = [a.enterprise for a in _awards(store, "young-firms")][:3]
    d = store.decline("young-firms", first, T0 + DAY, ledger.append_many)
    assert d.state == "declined" and store.books("young-firms").committed_yuan == 180_000
    with pytest.raises(AwardDeclined):
        store.decline("young-firms", first, T0 + DAY, ledger.append_many)
    with pytest.raises(DeclineWindowClosed):
        store.decline("young-firms", second, T0 + 8 * DAY, ledger.append_many)
    paid = store.pay_due(T0 + 8 * DAY, ledger.append_many)
    assert len(paid) == 9 + s.notified["exporters"]
    assert store.books("young-firms") == rules_books(200_000, 180_000, 180_000)
    with pytest.raises(IllegalTransition):
        store.decline("young-firms", third, T0 + 8 * DAY, ledger.append_many)
    assert store.pay_due(T0 + 9 * DAY, ledger.append_many) == []  # each payment once

    # A second run: nobody is awarded twice; the declined amount goes to the next in line.
    s2 = run_automatic(store, ledger, clients, city.codes, city.platform_rows, run_id="run-2",
                       today=TODAY, now=T0 + 10 * DAY, chunk=100)  # fmt: skip
    assert s2.notified["young-firms"] == 1 and s2.notified["exporters"] == 0
    assert store.books("young-firms").committed_yuan == 200_000
    for c in clients.values():
        c.close()
    store.close()


def _awards(store: PolicyStore, pid: str) -> list[Any]:
    from sqlalchemy import select

    from fedcredit.policies.store import Award, awards_t

    with store.engine.connect() as conn:
        rows = conn.execute(
            select(awards_t).where(awards_t.c.policy_id == pid).order_by(awards_t.c.id)
        )
        return [Award(**r._asdict()) for r in rows]


def rules_books(budget: int, committed: int, paid: int) -> Any:
    from fedcredit.policies.store import Books

    return Books(budget, committed, paid)


def test_budget_is_never_exceeded_under_concurrent_awards(db_url: str) -> None:
    store = PolicyStore.open(db_url)
    sink: list[Any] = []
    lock = threading.Lock()

    def append(items: Any) -> None:
        with lock:
            sink.extend(items)

    store.publish(_policy("scarce", "true", 30_000, 1_000_000), T0, append)
    barrier = threading.Barrier(8)
    results: list[tuple[list[str], list[str]]] = []

    def worker(k: int) -> None:
        p = store.policy("scarce")
        barrier.wait()
        for j in range(10):
            codes = [f"E{k:02d}{j:02d}{i:02d}" for i in range(3)]
            got = store.notify(p, codes, "run-c", T0, append)
            with lock:
                results.append(got)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    notified = [c for n, _ in results for c in n]
    books = store.books("scarce")
    assert len(notified) == 1_000_000 // 30_000 == 33
    assert books.committed_yuan == 33 * 30_000 <= books.budget_yuan
    assert len({e[1] for e in sink if e[0] == "policy_award_notified"}) == 33

    # Paying and declining the same award at once: exactly one of them happens.
    victim = notified[0]
    errors: list[BaseException] = []

    def decline() -> None:
        try:
            store.decline("scarce", victim, T0 + 7 * DAY - 1, append)
        except (IllegalTransition, DeclineWindowClosed) as exc:
            errors.append(exc)

    def pay() -> None:
        store.pay_due(T0 + 7 * DAY + 1, append)

    ts = [threading.Thread(target=decline), threading.Thread(target=pay)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    a = store.award("scarce", victim)
    b = store.books("scarce")
    assert a.state in ("declined", "paid")
    assert b.paid_yuan <= b.committed_yuan <= b.budget_yuan
    assert b.paid_yuan == 32 * 30_000 + (30_000 if a.state == "paid" else 0)
    store.close()


def test_the_database_itself_refuses_an_overdrawn_budget(db_url: str) -> None:
    from sqlalchemy import update
    from sqlalchemy.exc import IntegrityError

    from fedcredit.policies.store import policies_t

    store = PolicyStore.open(db_url)
    store.publish(_policy("guarded", "true", 10, 100), T0, lambda items: None)
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(update(policies_t).values(committed_yuan=101))
    assert store.books("guarded").committed_yuan == 0
    store.close()
