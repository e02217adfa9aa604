"""The marketplace on SQLite and PostgreSQL: one winner among 23 claimants, the lifecycle,
idempotent ledgered changes, and the fund's book under concurrent claims and recoveries."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcredit.market.errors import (
    ClaimWindowLapsed,
    GradeBelowFloor,
    GuaranteeMismatch,
    IllegalTransition,
    NeedAlreadyClaimed,
    NoMatchingProduct,
    NotYourNeed,
    RequestIdReused,
)
from fedcredit.market.loans import LoanBook, check_books
from fedcredit.market.ratings import rate_city, warnings_for
from fedcredit.market.rules import GuaranteeView, Profile
from tests.market.conftest import Env, bank, ent, make_env, product, seed

N_BANKS = 23


def _banks(env: Env, n: int = N_BANKS) -> list[str]:
    orgs = [f"bank-{i:02d}" for i in range(n)]
    for o in orgs:
        env.market.publish_product(bank(o), "p", product(f"p-{o}"))
    return orgs


def test_exactly_one_of_23_concurrent_claimants_wins(env: Env) -> None:
    (c,) = seed(env, 1)
    orgs = _banks(env)
    need = env.market.post_need(ent(c), "n1", 1_000_000, 12, "working_capital")["need_id"]
    barrier = threading.Barrier(N_BANKS)

    def claim(o: str) -> str:
        barrier.wait()
        try:
            env.market.claim(bank(o), f"claim-{o}", need)
            return "won"
        except NeedAlreadyClaimed:
            return "lost"

    with ThreadPoolExecutor(N_BANKS) as pool:
        outcomes = list(pool.map(claim, orgs))
    assert outcomes.count("won") == 1, outcomes
    winner = orgs[outcomes.index("won")]
    assert env.market.need_for(ent(c), need)["bank"] == winner
    # the winner's retry is answered from the store, no second entry; a loser's retry still loses
    again = env.market.claim(bank(winner), f"claim-{winner}", need)
    assert again["replayed"] is True
    loser = orgs[outcomes.index("lost")]
    with pytest.raises(NeedAlreadyClaimed):
        env.market.claim(bank(loser), f"claim-{loser}", need)


def test_exclusivity_window_lapses_and_the_need_reopens(env: Env) -> None:
    (c,) = seed(env, 1)
    a, b = _banks(env, 2)
    need = env.market.post_need(ent(c), "n1", 1_000_000, 12, "working_capital")["need_id"]
    env.market.claim(bank(a), "c1", need)
    assert env.market.open_needs(bank(b)) == []
    env.clock.t += 3601
    with pytest.raises(ClaimWindowLapsed):
        env.market.offer(bank(a), "o1", need, f"p-{a}", 400)
    assert [n["need_id"] for n in env.market.open_needs(bank(b))] == [need]
    assert env.market.sweep() == 1
    env.market.claim(bank(b), "c2", need)
    assert env.market.need_for(ent(c), need)["bank"] == b


def test_claim_needs_a_matching_product_and_decline_excludes_the_bank(env: Env) -> None:
    (c,) = seed(env, 1, grade="D")
    a, _b = _banks(env, 2)
    need = env.market.post_need(ent(c), "n1", 1_000_000, 12, "working_capital")["need_id"]
    with pytest.raises(GradeBelowFloor):  # grade D: no fund-guaranteed product reaches it
        env.market.claim(bank(a), "c1", need)
    with pytest.raises(NoMatchingProduct):  # out of every product's amount range
        big = env.market.post_need(ent(c), "big", 90_000_000, 12, "expansion")["need_id"]
        env.market.claim(bank(a), "c0", big)
    env.market.publish_product(bank(a), "p2", product("pd", grade_floor="D", fund_guaranteed=False))
    env.market.claim(bank(a), "c2", need)
    env.market.offer(bank(a), "o", need, "pd", 500)
    env.market.answer(ent(c), "no", need, accept=False, why="rate too high")
    with pytest.raises(NeedAlreadyClaimed, match="declined"):
        env.market.claim(bank(a), "c3", need)
    with pytest.raises(NotYourNeed):
        env.market.answer(ent(seed(env, 2, run="run-9")[1]), "x", need, accept=True)


def _loan(env: Env, c: str, o: str, amount: int = 1_000_000) -> tuple[str, str]:
    need = env.market.post_need(ent(c), f"n-{c}", amount, 12, "working_capital")["need_id"]
    env.market.claim(bank(o), f"c-{need}", need)
    env.market.offer(bank(o), f"o-{need}", need, f"p-{o}", 450)
    loan = env.market.answer(ent(c), f"a-{need}", need, accept=True)["loan_id"]
    return need, loan


def _guarantee(env: Env, c: str, o: str, app: str, amount: int = 1_000_000) -> None:
    env.guarantees.views[app] = GuaranteeView(app, o, c, amount, 12, True, "APPROVED", "B", 6000,
                                              amount * 6000 // 10_000, "ACTIVE")  # fmt: skip


def test_lifecycle_through_default_claim_and_recovery(env: Env) -> None:
    (c,) = seed(env, 1)
    (o,) = _banks(env, 1)
    _, loan = _loan(env, c, o)
    book = LoanBook(env.market)
    with pytest.raises(IllegalTransition, match="only once the fund"):
        book.step(bank(o), "d0", loan, "disburse")
    with pytest.raises(GuaranteeMismatch):
        book.guarantee(bank(o), "g0", loan, "app-1")
    _guarantee(env, c, o, "app-1")
    book.guarantee(bank(o), "g1", loan, "app-1")
    assert env.market.store.book()["exposure"] == 600_000
    book.step(bank(o), "d1", loan, "disburse")
    book.step(bank(o), "r1", loan, "repay", 200_000)
    book.step(bank(o), "df", loan, "default")
    with pytest.raises(GuaranteeMismatch, match="report the default"):
        book.claim(bank(o), "cl", loan)
    # the bank reports the default to the coordinator (its guarantee path books the payout)
    env.guarantees.views["app-1"] = replace(env.guarantees.views["app-1"], status="DEFAULTED")
    r = book.claim(bank(o), "cl", loan)
    assert r["paid_out"] == 480_000  # 60 % of the 800,000 loss (grade B, 6:4)
    book.step(bank(o), "rc", loan, "recover", 100_000)
    assert env.market.store.book() == {**check_books(env.market), "claims": 1}
    assert book.get(bank(o), loan)["fund_recovered"] == 60_000
    with pytest.raises(IllegalTransition, match="the loan is CLAIMED"):
        book.step(bank(o), "x", loan, "disburse")
    # idempotent: the same request id gets the same answer, a reused id with other terms is refused
    assert book.step(bank(o), "rc", loan, "recover", 100_000)["replayed"] is True
    with pytest.raises(RequestIdReused):
        book.step(bank(o), "rc", loan, "recover", 5)
    kinds = [e["payload"]["event"] for e in env.market.store.events_of(c)]
    assert kinds[-6:] == [
        "loan_guarantee",
        "loan_disburse",
        "loan_repay",
        "loan_default",
        "loan_claim",
        "loan_recover",
    ]
    assert all(e["ledger_index"] is not None for e in env.market.store.events_of(c))


def test_rating_fall_warns_bank_and_fund_within_the_run(env: Env) -> None:
    (c,) = seed(env, 1)
    (o,) = _banks(env, 1)
    _, loan = _loan(env, c, o)
    _guarantee(env, c, o, "app-w")
    LoanBook(env.market).guarantee(bank(o), "g", loan, "app-w")
    r = rate_city(env.market, "run-1", [Profile(c, "C", "huancui", 40, "C", 90_000)])
    assert {w["recipient"] for w in r.warnings} == {o, "guarantee-fund"}
    assert warnings_for(env.market, o)[0]["to_grade"] == "C"
    assert (
        rate_city(env.market, "run-2", [Profile(c, "C", "huancui", 40, "C", 90_000)]).warnings == []
    )


ops = st.lists(st.tuples(st.sampled_from(["repay", "default", "claim", "recover", "write_off"]),
                         st.integers(0, 5), st.integers(1, 400_000)), max_size=40)  # fmt: skip


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=ops)
def test_fund_books_hold_under_concurrent_claims_and_payouts(
    tmp_path_factory: pytest.TempPathFactory, db_url: str, script: list[tuple[str, int, int]]
) -> None:
    tmp = tmp_path_factory.mktemp("books")
    env = make_env(db_url if "sqlite" not in db_url else f"sqlite:///{tmp}/m.sqlite", tmp)
    try:
        codes = seed(env, 6)
        (o,) = _banks(env, 1)
        book = LoanBook(env.market)
        loans = []
        for c in codes:
            _, loan = _loan(env, c, o)
            _guarantee(env, c, o, f"app-{c}")
            book.guarantee(bank(o), f"g-{c}", loan, f"app-{c}")
            book.step(bank(o), f"d-{c}", loan, "disburse")
            loans.append((c, loan))
        env.market.guarantees = None  # the coordinator's side is checked in the lifecycle test

        def run(i_op: tuple[int, tuple[str, int, int]]) -> None:
            i, (op, k, amount) = i_op
            with contextlib.suppress(IllegalTransition):
                book.step(
                    bank(o), f"s{i}", loans[k][1], op, amount if op in ("repay", "recover") else 0
                )

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(run, enumerate(script)))
        stored = env.market.store.book()
        assert {
            k: stored[k] for k in ("exposure", "guaranteed", "paid_out", "recovered")
        } == check_books(env.market)
        assert stored["recovered"] <= stored["paid_out"]
    finally:
        env.market.store.engine.dispose()
        env.log.close()
        if "postgresql" in db_url:
            from sqlalchemy import text

            with env.market.store.engine.begin() as conn:
                for t in ("market_events", "market_loans", "market_needs", "market_products",
                          "market_profiles", "market_fund_book", "market_warnings"):  # fmt: skip
                    conn.execute(text(f"DELETE FROM {t}"))
            env.market.store.engine.dispose()


def test_pushes_respect_opt_out_caps_and_lead_to_offers(env: Env) -> None:
    from fedcredit.market.pushes import leads_about, leads_for, offer_on_lead, push_leads
    from fedcredit.market.ratings import set_opt_out

    codes = seed(env, 5)
    a, b = _banks(env, 2)
    env.market.publish_product(bank(b), "p2", product("pc", industries=["F"]))  # nobody is in F
    set_opt_out(env.market, codes[0], True)
    counts = push_leads(env.market, "run-0", max_per_bank=3)
    assert counts == {a: 3, b: 3}
    assert push_leads(env.market, "run-0", max_per_bank=3) == counts  # idempotent per run
    got = leads_for(env.market, bank(a))
    assert len(got) == 3 and all(set(g) == {"lead_id", "product_id", "run_id", "grade_band",
                                            "industry", "region", "size_band"} for g in got)  # fmt: skip
    assert leads_about(env.market, ent(codes[0])) == []  # opted out: pushed to nobody
    lead = got[0]["lead_id"]
    need = offer_on_lead(env.market, bank(a), "lo", lead, 800_000, 12, 400)["need_id"]
    with pytest.raises(IllegalTransition, match="already made"):
        offer_on_lead(env.market, bank(a), "lo2", lead, 800_000, 12, 400)
    owner = next(
        c for c in codes if any(x["state"] == "OFFERED" for x in leads_about(env.market, ent(c)))
    )
    loan = env.market.answer(ent(owner), "yes", need, accept=True)["loan_id"]
    assert LoanBook(env.market).get(bank(a), loan)["principal"] == 800_000


def test_sla_timers_are_measured(env: Env) -> None:
    from fedcredit.market.loans import sla_report

    (c,) = seed(env, 1)
    (o,) = _banks(env, 1)
    need = env.market.post_need(ent(c), "n", 1_000_000, 12, "working_capital")["need_id"]
    env.market.claim(bank(o), "c", need)
    env.clock.t += 1200  # 20 minutes to review
    env.market.offer(bank(o), "o", need, f"p-{o}", 450)
    loan = env.market.answer(ent(c), "a", need, accept=True)["loan_id"]
    env.market.publish_product(bank(o), "p-ng", product("ng", fund_guaranteed=False))
    _guarantee(env, c, o, "app-s")
    LoanBook(env.market).guarantee(bank(o), "g", loan, "app-s")
    env.clock.t += 2 * 86400  # disbursed after two days: a breach
    LoanBook(env.market).step(bank(o), "d", loan, "disburse")
    r = sla_report(env.market)
    assert r["review"] == {
        "n": 1,
        "p50_s": 1200,
        "p95_s": 1200,
        "max_s": 1200,
        "limit_s": 3600,
        "breaches": 0,
    }
    assert r["disbursement"]["breaches"] == 1 and r["disbursement"]["max_s"] == 2 * 86400


def test_a_deferring_driver_publishes_every_event_at_flush(env: Env) -> None:
    env.market.defer_publish = True
    (c,) = seed(env, 1, run="run-d")
    (o,) = _banks(env, 1)
    _loan(env, c, o)
    assert env.market.store.unpublished()  # waiting in the outbox, not lost
    n = env.market.flush(batch=2)
    assert n > 0 and env.market.store.unpublished() == []
    assert all(e["ledger_index"] is not None for e in env.market.store.events_of(c))
