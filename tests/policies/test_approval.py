"""Joint approval: every legal path works, every illegal transition is refused and changes
nothing, objections during the public notice, cycle time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcredit.policies import approval as ap
from fedcredit.policies.errors import IllegalTransition, InvalidPolicy
from fedcredit.policies.rules import Policy

POLICY = Policy(
    id="app-growth-01", title="Growth reward", department="development-reform-commission",
    mode="application", amount_yuan=100_000, budget_yuan=10_000_000, opens=date(2026, 1, 1),
    closes=date(2026, 12, 31), rule="platform.rating in ['A', 'B']",
    reviewers=("development-reform", "finance", "commerce"), review_days=10, notice_days=5,
    fields=("project_name", "planned_investment_yuan"),
)  # fmt: skip
T = 1_767_225_600.0
D = ap.DAY
DOC = ap.attachment_digest(b"%PDF-1.7 business plan")


def _new() -> ap.Application:
    return ap.apply(POLICY, "a1", "91371002MA3C5XYZ1K", {"project_name": "line 2",
                    "planned_investment_yuan": "3000000"}, {"plan.pdf": DOC}, T)  # fmt: skip


def _approve_all(a: ap.Application, at: float) -> ap.Application:
    for d in POLICY.reviewers:
        a = ap.review(a, POLICY, d, True, at)
    return a


def in_state(state: str) -> ap.Application:
    a = _new()
    if state == "submitted":
        return a
    if state == "withdrawn":
        return ap.withdraw(a, T + 1)
    a = ap.push(a, POLICY, T + 1)
    if state == "under_review":
        return a
    if state == "overdue":
        return ap.deadline(a, T + 11 * D)
    if state == "rejected":
        return ap.review(a, POLICY, "finance", False, T + 2 * D)
    a = _approve_all(a, T + 2 * D)
    if state == "notice":
        return a
    if state == "objected":
        return ap.lodge_objection(a, "competitor-co", "the investment is double counted", T + 3 * D)
    a = ap.close_notice(a, T + 8 * D)
    if state == "approved":
        return a
    return ap.pay(a, T + 9 * D)


EVENTS: dict[str, Callable[[ap.Application, float], ap.Application]] = {
    "push": lambda a, t: ap.push(a, POLICY, t),
    "review": lambda a, t: ap.review(a, POLICY, "finance", True, t),
    "deadline": lambda a, t: ap.deadline(a, t),
    "object": lambda a, t: ap.lodge_objection(a, "x", "reason", t),
    "resolve": lambda a, t: ap.resolve(a, POLICY, False, t),
    "close": lambda a, t: ap.close_notice(a, t),
    "pay": lambda a, t: ap.pay(a, t),
    "withdraw": lambda a, t: ap.withdraw(a, t),
}
ALLOWED = {
    "submitted": {"push", "withdraw"},
    "under_review": {"review", "deadline", "withdraw"},
    "overdue": {"review", "withdraw"},
    "notice": {"object", "close"},
    "objected": {"resolve"},
    "approved": {"pay"},
    "paid": set(),
    "rejected": set(),
    "withdrawn": set(),
}


@pytest.mark.parametrize("state", ap.STATES)
@pytest.mark.parametrize("event", list(EVENTS))
def test_every_transition_is_allowed_or_refused_as_the_table_says(state: str, event: str) -> None:
    a = in_state(state)
    assert a.state == state
    # Times chosen so that only the state decides: inside the notice, past every deadline.
    at = a.notice_until - 1 if event == "object" else T + 400 * D
    if event in ALLOWED[state]:
        b = EVENTS[event](a, at)
        assert b.history[:-1] == a.history and len(b.history) == len(a.history) + 1
    else:
        with pytest.raises(IllegalTransition) as ei:
            EVENTS[event](a, at)
        assert ei.value.metadata == {"state": state, "event": event}
    assert a == in_state(state)  # applications are values: nothing changed


def test_guards_inside_allowed_states() -> None:
    a = ap.push(_new(), POLICY, T)
    with pytest.raises(IllegalTransition, match="not a reviewer"):
        ap.review(a, POLICY, "tax", True, T)
    a = ap.review(a, POLICY, "finance", True, T)
    with pytest.raises(IllegalTransition, match="already reviewed"):
        ap.review(a, POLICY, "finance", True, T)
    with pytest.raises(IllegalTransition, match="past the review deadline"):
        ap.deadline(a, T + 9 * D)
    a = _approve_all(ap.push(_new(), POLICY, T), T + D)
    assert a.state == "notice" and a.notice_until == T + 6 * D
    with pytest.raises(IllegalTransition, match="notice period has passed"):
        ap.close_notice(a, T + 5 * D)
    with pytest.raises(IllegalTransition, match="during the public notice"):
        ap.lodge_objection(a, "x", "late", T + 7 * D)
    with pytest.raises(InvalidPolicy):
        ap.lodge_objection(a, "x", " ", T + 2 * D)


def test_an_objection_restarts_the_notice_or_rejects() -> None:
    a = _approve_all(ap.push(_new(), POLICY, T), T + D)
    o = ap.lodge_objection(a, "competitor-co", "double counted", T + 2 * D)
    back = ap.resolve(o, POLICY, False, T + 4 * D)
    assert back.state == "notice" and back.notice_until == T + 9 * D  # the full period again
    assert ap.resolve(o, POLICY, True, T + 4 * D).state == "rejected"
    paid = ap.pay(ap.close_notice(back, T + 9 * D), T + 10 * D)
    assert ap.cycle_seconds(paid) == 10 * D
    report = ap.cycle_report([paid, ap.pay(in_state("approved"), T + 9 * D), o])
    assert report == {POLICY.id: {"paid": 2.0, "median_days": 10.0, "p90_days": 10.0}}


def test_the_form_and_attachments_are_checked() -> None:
    with pytest.raises(InvalidPolicy, match="missing"):
        ap.apply(POLICY, "a", "e", {"project_name": "x"}, {}, T)
    with pytest.raises(InvalidPolicy, match="unknown"):
        ap.apply(POLICY, "a", "e", {"project_name": "x", "planned_investment_yuan": "1",
                                    "bribe": "y"}, {}, T)  # fmt: skip
    with pytest.raises(InvalidPolicy, match="SHA-256"):
        ap.apply(POLICY, "a", "e", {"project_name": "x", "planned_investment_yuan": "1"},
                 {"plan.pdf": "not-a-digest"}, T)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(EVENTS)), st.integers(0, 30)), max_size=25))
def test_random_event_sequences_only_follow_the_table(steps: list[tuple[str, int]]) -> None:
    a = _new()
    t = T
    for event, days in steps:
        t += days * D / 4
        try:
            b = EVENTS[event](a, t)
        except (IllegalTransition, InvalidPolicy):
            continue
        assert event in ALLOWED[a.state], (a.state, event)
        assert len(b.history) == len(a.history) + 1
        a = b
    if a.state in ap.FINAL:
        for e in EVENTS:
            with pytest.raises(IllegalTransition):
                EVENTS[e](a, t + 400 * D)
