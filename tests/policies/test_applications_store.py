"""Applications stored and ledgered step by step (SQLite and PostgreSQL): the budget is
committed at approval and paid on payment; an illegal or losing step writes nothing."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fedcredit.policies import approval as ap
from fedcredit.policies.errors import BudgetExhausted, IllegalTransition
from fedcredit.policies.store import PolicyStore
from tests.policies.test_approval import POLICY, T, _new

D = ap.DAY


def test_an_application_is_stored_and_ledgered_step_by_step(db_url: str) -> None:
    store = PolicyStore.open(db_url)
    ledger: list[Any] = []
    store.publish(POLICY, T, ledger.extend)
    store.submit(_new(), ledger.extend)
    store.step("a1", lambda a: ap.push(a, POLICY, T + 1), ledger.extend)
    for d in POLICY.reviewers:
        store.step("a1", lambda a, d=d: ap.review(a, POLICY, d, True, T + D), ledger.extend)
    n = len(ledger)
    with pytest.raises(IllegalTransition):
        store.step("a1", lambda a: ap.pay(a, T + 2 * D), ledger.extend)
    assert len(ledger) == n and store.application("a1").state == "notice"
    store.step("a1", lambda a: ap.lodge_objection(a, "x", "why", T + 2 * D), ledger.extend)
    store.step("a1", lambda a: ap.resolve(a, POLICY, False, T + 3 * D), ledger.extend)
    store.step("a1", lambda a: ap.close_notice(a, T + 8 * D), ledger.extend)
    assert store.books(POLICY.id).committed_yuan == POLICY.amount_yuan
    paid = store.step("a1", lambda a: ap.pay(a, T + 9 * D), ledger.extend)
    assert paid.state == "paid" and store.application("a1") == paid
    assert store.books(POLICY.id).paid_yuan == POLICY.amount_yuan
    steps = [e for e in ledger if e[0] == "policy_application"]
    assert [e[2]["state"] for e in steps][-3:] == ["notice", "approved", "paid"]
    assert len(steps) == len(paid.history) and all(e[1] == paid.enterprise for e in steps)
    assert steps[0][2]["attachments"] == {
        "plan.pdf": ap.attachment_digest(b"%PDF-1.7 business plan")
    }
    store.close()


def test_racing_steps_win_once_and_an_empty_budget_refuses_approval(db_url: str) -> None:
    import dataclasses

    store = PolicyStore.open(db_url)
    small = dataclasses.replace(POLICY, budget_yuan=POLICY.amount_yuan)
    store.publish(small, T, lambda e: None)
    # two enterprises (one enterprise has one open application per policy)
    for app_id, ent in (("a1", "91371002MA3C5XYZ1K"), ("a2", "91371002MA3C5XYZ2H")):
        store.submit(dataclasses.replace(_new(), id=app_id, enterprise=ent), lambda e: None)
        store.step(app_id, lambda a: ap.push(a, small, T), lambda e: None)
    wins: list[str] = []
    lost: list[BaseException] = []

    def review(d: str) -> None:
        try:
            store.step("a1", lambda a: ap.review(a, small, "finance", True, T + D), lambda e: None)
            wins.append(d)
        except IllegalTransition as exc:
            lost.append(exc)

    ts = [threading.Thread(target=review, args=(str(i),)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(wins) == 1 and len(lost) == 5
    for app_id in ("a1", "a2"):
        for d in small.reviewers:
            if store.application(app_id).parts[d] == "pending":
                store.step(
                    app_id, lambda a, d=d: ap.review(a, small, d, True, T + D), lambda e: None
                )
    store.step("a1", lambda a: ap.close_notice(a, T + 7 * D), lambda e: None)
    with pytest.raises(BudgetExhausted):
        store.step("a2", lambda a: ap.close_notice(a, T + 7 * D), lambda e: None)
    assert store.application("a2").state == "notice"
    assert store.books(small.id).committed_yuan == small.budget_yuan
    store.close()
