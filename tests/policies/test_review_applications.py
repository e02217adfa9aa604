"""Review (issue 21): one application per enterprise and policy, only while the policy is
open, and no node asked for a formula's amount for an application that is refused anyway.

Found by review: an enterprise applied twice to the same policy under two application ids
and both were approved and paid (a double payout within the budget); applications were
taken after the policy closed; an application refused for a missing form field had
already made the formula's department evaluate it, unledgered."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common import uscc
from fedcredit.ledger.log import Log
from fedcredit.policies import approval as ap
from fedcredit.policies import rules
from fedcredit.policies.client import PolicyClient
from fedcredit.policies.errors import AlreadyApplied, InvalidPolicy, PolicyExists, PolicyNotOpen
from fedcredit.policies.service import PolicyServicer, build_policy_server
from fedcredit.policies.store import PolicyStore
from tests.conftest import Pki
from tests.policies.test_approval import POLICY, T, _new

D = ap.DAY
OTHER = "91371002MA3C5XYZ2H"


def _through(store: PolicyStore, app_id: str, end: str, log: Any) -> None:
    """Drive ``app_id`` to ``end`` (paid, rejected or withdrawn)."""
    if end == "withdrawn":
        store.step(app_id, lambda a: ap.withdraw(a, T + 1), log)
        return
    store.step(app_id, lambda a: ap.push(a, POLICY, T + 1), log)
    if end == "rejected":
        store.step(app_id, lambda a: ap.review(a, POLICY, POLICY.reviewers[0], False, T + D), log)
        return
    for d in POLICY.reviewers:
        store.step(app_id, lambda a, d=d: ap.review(a, POLICY, d, True, T + D), log)
    store.step(app_id, lambda a: ap.close_notice(a, T + 9 * D), log)
    store.step(app_id, lambda a: ap.pay(a, T + 10 * D), log)


def test_a_second_application_by_the_same_enterprise_is_refused(db_url: str) -> None:
    store = PolicyStore.open(db_url)
    ledger: list[Any] = []
    store.publish(POLICY, T, ledger.extend)
    store.submit(_new(), ledger.extend)
    n = len(ledger)
    with pytest.raises(AlreadyApplied) as ei:
        store.submit(dataclasses.replace(_new(), id="a2"), ledger.extend)
    assert "'a1'" in ei.value.message
    with pytest.raises(PolicyExists):  # the id is taken, by whoever
        store.submit(dataclasses.replace(_new(), enterprise=OTHER), ledger.extend)
    assert len(ledger) == n and [a.id for a in store.applications()] == ["a1"]
    store.submit(dataclasses.replace(_new(), id="b1", enterprise=OTHER), ledger.extend)
    _through(store, "a1", "paid", ledger.extend)
    with pytest.raises(AlreadyApplied):  # paid once: never again
        store.submit(dataclasses.replace(_new(), id="a3"), ledger.extend)
    assert store.books(POLICY.id).paid_yuan == POLICY.amount_yuan
    store.close()


@pytest.mark.parametrize("end", ["rejected", "withdrawn"])
def test_after_a_rejection_or_withdrawal_the_enterprise_may_apply_again(
    db_url: str, end: str
) -> None:
    store = PolicyStore.open(db_url)
    store.publish(POLICY, T, lambda e: None)
    store.submit(_new(), lambda e: None)
    _through(store, "a1", end, lambda e: None)
    again = store.submit(dataclasses.replace(_new(), id="a2"), lambda e: None)
    assert (
        again.state == "submitted" and store.open_application(POLICY.id, again.enterprise) == "a2"
    )
    store.close()


def test_racing_applications_of_one_enterprise_leave_one(db_url: str) -> None:
    store = PolicyStore.open(db_url)
    store.publish(POLICY, T, lambda e: None)
    won: list[str] = []
    refused: list[BaseException] = []

    def submit(i: int) -> None:
        try:
            store.submit(dataclasses.replace(_new(), id=f"r{i}"), lambda e: None)
            won.append(f"r{i}")
        except AlreadyApplied as exc:
            refused.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert [a.id for a in store.applications()] == won
    store.close()


@pytest.mark.parametrize("day", [date(2025, 12, 31), date(2027, 1, 1)])
def test_an_application_outside_the_policy_period_is_refused(day: date) -> None:
    from datetime import UTC, datetime

    at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
    with pytest.raises(PolicyNotOpen) as ei:
        ap.apply(POLICY, "late", OTHER, {"project_name": "x", "planned_investment_yuan": "1"},
                 {}, at)  # fmt: skip
    assert "2026-01-01 to 2026-12-31" in ei.value.message and str(day) in ei.value.message


@dataclass
class _Answer:
    bits: Mapping[str, Any]
    disclosure_index: int


class _TaxNode:
    """A tax node holding late_filings_12m = 3 for everyone (real CEL, counted calls)."""

    def __init__(self) -> None:
        self.calls = 0
        self.asked: list[str] = []

    def screen(self, run_id: str, clauses: Sequence[tuple[str, str]],
               enterprises: Sequence[str], *, legal_basis: str = "") -> _Answer:  # fmt: skip
        self.calls += 1
        self.asked.extend(enterprises)
        got = rules.evaluate_clauses("tax", [t for _, t in clauses],
                                     [{"tax.late_filings_12m": 3}] * len(enterprises))  # fmt: skip
        return _Answer({cid: np.asarray(got[:, j]) for j, (cid, _) in enumerate(clauses)},
                       41 + self.calls)  # fmt: skip


def test_a_formula_application_asks_the_node_only_once_it_is_valid(
    pki: Pki, tmp_path: Path
) -> None:
    pki.issue("policies", "policy")
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    ledger = Log.open(f"sqlite:///{tmp_path / 'l.sqlite'}", Ed25519PrivateKey.generate(), "platform")  # fmt: skip
    node = _TaxNode()
    servicer = PolicyServicer(store=store, ledger=ledger, nodes={"tax": node}, clock=lambda: T)
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=pki.tls("policies"))
    server.start()
    policy = dataclasses.replace(POLICY, id="formula-app", amount_yuan=1_000,
                                 budget_yuan=100_000, amount_cap_yuan=1_000,
                                 benefit_formula="tax.late_filings_12m * 100")  # fmt: skip
    store.publish(policy, T, lambda e: None)
    me = uscc.generate(random.Random(4))
    ent = PolicyClient(f"127.0.0.1:{server.port}", pki.issue(me, "enterprise"), server_org="policies")  # fmt: skip
    try:
        with pytest.raises(InvalidPolicy):  # a form field missing
            ent.apply("f-1", policy.id, {"project_name": "x"}, {})
        assert node.calls == 0
        a = ent.apply("f-1", policy.id, {"project_name": "x", "planned_investment_yuan": "9"}, {})
        assert a.amount_yuan == 300 and node.calls == 1
        with pytest.raises(AlreadyApplied):
            ent.apply("f-2", policy.id, {"project_name": "x", "planned_investment_yuan": "9"}, {})
        assert node.calls == 1
        about = [json.loads(e.data) for e in ledger.entries_by_subject(me, ledger.size)]
        (submit,) = [e["payload"] for e in about if e["kind"] == "policy_application"
                     and e["payload"]["event"] == "submit"]  # fmt: skip
        assert submit["benefit_evaluated_by"] == "tax" and submit["node_disclosures"] == [42]
    finally:
        server.stop(0)
        ledger.close()
        store.close()


# -- screening runs: once per run id, racing runs award each enterprise once ----------------


def _auto(pid: str = "auto-young", budget: int = 1_000_000) -> rules.Policy:
    return rules.Policy(id=pid, title="Young firms", department="finance-bureau",
                        mode="automatic", amount_yuan=1_000, budget_yuan=budget,
                        opens=date(2026, 1, 1), closes=date(2026, 12, 31),
                        rule="registry.founded_year >= 2015")  # fmt: skip


def _registry(n: int) -> tuple[list[str], list[dict[str, Any]]]:
    rng = random.Random(11)
    codes = list(dict.fromkeys(uscc.generate(rng) for _ in range(n)))
    rows = [rules.platform_row(rating="A", industry="C", district="wendeng", size_class="micro",
                               enterprise_type="llc", founded_year=2010 + i % 10)
            for i in range(len(codes))]  # fmt: skip
    return codes, rows


class _Ledger:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.lock = threading.Lock()

    def append_many(self, items: Sequence[Any]) -> None:
        with self.lock:
            self.items.extend(items)

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.items]


def test_a_run_id_is_screened_ledgered_and_notified_once(db_url: str) -> None:
    """A retried run (same id: a client's retry, two operators, a second within the same
    second) used to ledger every enterprise's screening again and then fail INTERNAL."""
    from fedcredit.policies.errors import RunExists
    from fedcredit.policies.runs import run_automatic

    store = PolicyStore.open(db_url)
    store.publish(_auto(), T, lambda e: None)
    codes, rows = _registry(60)
    led = _Ledger()
    s = run_automatic(store, led, {}, codes, rows, run_id="q1", today=date(2026, 3, 1), now=T)
    n, awards = len(led.items), store.award_totals()
    assert s.notified["auto-young"] == s.eligible["auto-young"] > 0
    with pytest.raises(RunExists):
        run_automatic(store, led, {}, codes, rows, run_id="q1", today=date(2026, 3, 1), now=T)
    assert len(led.items) == n and store.award_totals() == awards
    store.close()


def test_a_run_failing_at_a_node_may_be_retried_under_its_id(db_url: str) -> None:
    from fedcredit.common.errors import Unavailable
    from fedcredit.policies.runs import run_automatic

    class Down:
        def screen(self, *a: Any, **k: Any) -> Any:
            raise Unavailable("tax node down")

    store = PolicyStore.open(db_url)
    store.publish(dataclasses.replace(_auto(), rule="tax.late_filings_12m == 3"), T, lambda e: None)
    codes, rows = _registry(12)
    led = _Ledger()
    with pytest.raises(Unavailable):
        run_automatic(store, led, {"tax": Down()}, codes, rows, run_id="q2",  # type: ignore[dict-item]
                      today=date(2026, 3, 1), now=T)  # fmt: skip
    assert led.items == []
    s = run_automatic(store, led, {"tax": _TaxNode()}, codes, rows, run_id="q2",
                      today=date(2026, 3, 1), now=T)  # fmt: skip
    assert s.notified["auto-young"] == len(codes)
    store.close()


def test_racing_runs_award_each_enterprise_once(db_url: str) -> None:
    """Two runs notifying the same policy's newly eligible at once: the loser's insert of
    an award the winner holds used to fail the run INTERNAL (after its screening was
    ledgered); now it drops those and notifies the rest, each enterprise once."""
    store = PolicyStore.open(db_url)
    policy = _auto(budget=1_000_000)  # room for every run to award all 200
    store.publish(policy, T, lambda e: None)
    codes, _ = _registry(200)
    led = _Ledger()
    errors: list[BaseException] = []
    gate = threading.Barrier(4)

    def run(i: int) -> None:
        mine = codes[i * 5 :] + codes[: i * 5]  # overlapping, in different orders
        gate.wait()
        try:
            store.notify(policy, mine, f"race-{i}", T, led.append_many)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    awarded = store.awarded(policy.id)
    assert len(awarded) == 200 and store.books(policy.id).committed_yuan == 200_000
    notices = [s for k, s, _ in led.items if k == "policy_award_notified"]
    assert sorted(notices) == sorted(awarded)  # each ledgered once
    store.close()


# -- the threshold budget: near-duplicate policies cannot bisect a value ---------------------


def test_near_duplicate_policies_cannot_bisect_a_value(tmp_path: Path) -> None:
    """Found by review: a department could publish 40 automatic policies ``tax.revenue_12m
    > c_i`` (1 yuan budgets) and read each enterprise's revenue from which ones it qualified
    for (the per-enterprise policy_screening entries). One department's policies now compare
    a feature with at most rules.MAX_THRESHOLDS distinct constants, rules and targets together."""
    from fedcredit.policies.errors import ThresholdBudget

    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    led: list[Any] = []

    def bisect(i: int, dept: str = "finance-bureau", **kw: Any) -> rules.Policy:
        return dataclasses.replace(_auto(f"probe-{dept[:4]}-{i:02d}", budget=1_000),
                                   department=dept, rule=f"tax.revenue_12m > {1_000_000 + i}.0",
                                   **kw)  # fmt: skip

    for i in range(rules.MAX_THRESHOLDS):
        store.publish(bisect(i), T, led.extend)
    n = len(led)
    with pytest.raises(ThresholdBudget) as ei:
        store.publish(bisect(rules.MAX_THRESHOLDS), T, led.extend)
    assert ei.value.metadata == {"feature": "tax.revenue_12m", "department": "finance-bureau"}
    assert f"{rules.MAX_THRESHOLDS + 1} distinct constants" in ei.value.message
    with pytest.raises(ThresholdBudget):  # nor through the target
        store.publish(bisect(0, target="tax.revenue_12m > 7.0", id="probe-target"), T, led.extend)
    with pytest.raises(ThresholdBudget):  # nor as one list (x in [...] is any set of values)
        store.publish(dataclasses.replace(
            bisect(0, id="probe-list"), department="commerce-bureau",
            rule="tax.late_filings_12m in [" + ", ".join(map(str, range(0, 18, 2))) + "]"),
            T, led.extend)  # fmt: skip
    assert len(led) == n and len(store.policies()) == rules.MAX_THRESHOLDS
    store.publish(bisect(3, id="same-threshold-again"), T, led.extend)  # reuses one: fine
    store.publish(bisect(40, dept="commerce-bureau"), T, led.extend)  # its own budget
    store.close()


def test_the_city_policy_set_fits_the_threshold_budget(tmp_path: Path) -> None:
    from fedcredit.world.policies import policy_set

    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    for p in policy_set():
        store.publish(p, T, lambda e: None)
    assert len(store.policies()) == 129
    store.close()


@pytest.mark.parametrize("app_id", ["", "x" * 65, "a b", "a/../b", "é"])
def test_a_malformed_application_id_is_invalid_argument(app_id: str) -> None:
    """A 65-character id reached PostgreSQL's VARCHAR(64) and failed INTERNAL."""
    with pytest.raises(InvalidPolicy) as ei:
        ap.apply(POLICY, app_id, OTHER, {"project_name": "x", "planned_investment_yuan": "1"},
                 {}, T)  # fmt: skip
    assert ei.value.metadata == {"field": "application_id"}


def test_a_department_screens_only_as_of_today(pki: Pki, tmp_path: Path) -> None:
    """A department chose the run's date and so awarded under its policy after it closed."""
    pki.issue("policies", "policy")
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    codes, rows = _registry(30)
    store.load_registry(list(zip(codes, rows, strict=True)))
    led = _Ledger()
    now = T + 400 * D  # 2027-02-05: the policy closed on 2026-12-31
    servicer = PolicyServicer(store=store, ledger=led, nodes={}, clock=lambda: now)
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=pki.tls("policies"))
    server.start()
    store.publish(_auto(), T, lambda e: None)

    def client(org: str, role: str) -> PolicyClient:
        return PolicyClient(f"127.0.0.1:{server.port}", pki.issue(org, role), server_org="policies")  # fmt: skip

    try:
        dept = client("finance-bureau", "department")
        with pytest.raises(InvalidPolicy) as ei:
            dept.run_screening("2026-06-01", run_id="back-dated")
        assert ei.value.metadata == {"field": "today"} and "2027-02-05" in ei.value.message
        assert led.items == [] and store.award_totals() == {}
        assert dept.run_screening("2027-02-05", run_id="today").policies == 0  # closed
        assert client("operator", "operator").run_screening("2026-06-01").policies == 1
    finally:
        server.stop(0)
        store.close()


def test_formula_amounts_are_asked_only_for_enterprises_the_budget_can_fund(db_url: str) -> None:
    """Found by review: a run asked the formula's department for the amount of every newly
    eligible enterprise, even once the budget was spent, so the platform learned amounts it
    never paid (the README says it learns the amount it pays)."""
    from fedcredit.policies.runs import run_automatic

    store = PolicyStore.open(db_url)
    policy = dataclasses.replace(
        _auto(budget=1_000),
        amount_yuan=1_000,
        amount_cap_yuan=1_000,
        benefit_formula="tax.late_filings_12m * 100",
    )  # 300 each
    store.publish(policy, T, lambda e: None)
    codes, rows = _registry(30)
    node, led = _TaxNode(), _Ledger()
    s = run_automatic(store, led, {"tax": node}, codes, rows, run_id="f1",
                      today=date(2026, 3, 1), now=T)  # fmt: skip
    eligible = s.eligible[policy.id]
    assert s.notified[policy.id] == 3 and s.unfunded[policy.id] == eligible - 3
    assert len(node.asked) == 4  # three paid, the one that did not fit; nobody else
    assert store.books(policy.id).committed_yuan == 900
    notices = [pl for k, _, pl in led.items if k == "policy_award_notified"]
    assert len(notices) == 3 and all(pl["amount_yuan"] == 300 for pl in notices)
    assert all(pl["benefit_evaluated_by"] == "tax" and pl["node_disclosures"] for pl in notices)
    store.close()


def test_runs_over_many_or_long_policies_fit_the_ledger(tmp_path: Path) -> None:
    """Found by review: the run entry held every clause text and each enterprise's entry
    every policy it qualified for; past the ledger's 16 KiB payload (six 3,900-character
    rules, or ~240 policies) every run failed LEDGER_ENTRY_INVALID after the screening."""
    from fedcredit.policies.runs import IDS_PER_ENTRY, run_automatic

    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    log = Log.open(f"sqlite:///{tmp_path / 'l.sqlite'}", Ed25519PrivateKey.generate(), "platform")  # fmt: skip
    long_rule = " || ".join(f"registry.founded_year == {1000 + i}" for i in range(120))
    for k in range(6):  # distinct long clauses (platform attributes: no threshold budget)
        store.publish(dataclasses.replace(_auto(f"long-{k}"), rule=f"{long_rule} || {k} == {k}"),
                      T, lambda e: None)  # fmt: skip
    many = 2 * IDS_PER_ENTRY + 30
    for k in range(many):
        store.publish(_auto(f"auto-young-firms-with-a-long-descriptive-identifier-{k:04d}"), T,
                      lambda e: None)  # fmt: skip
    codes, rows = _registry(10)
    s = run_automatic(store, log, {}, codes, rows, run_id="big", today=date(2026, 3, 1), now=T)
    assert s.policies == many + 6
    entries = [json.loads(e.data) for e in log.get_entries(0, log.size)]
    run = [e["payload"] for e in entries if e["kind"] == "policy_screening_run"]
    assert sum(len(r["policies"]) for r in run) == many + 6 and len(run) == 3
    assert run[0]["clauses"]["platform"]["count"] == 7 and "sha256" in run[0]["clauses"]["platform"]  # fmt: skip
    young = codes[[r["registry.founded_year"] >= 2015 for r in rows].index(True)]
    mine = [e["payload"] for e in entries
            if e["kind"] == "policy_screening" and e["subject"] == young]  # fmt: skip
    assert [m["part"] for m in mine] == [1, 2, 3]
    assert sum(len(m["eligible"]) for m in mine) == many + 6  # the long ones too (k == k)
    log.close()
    store.close()


def test_a_retried_apply_answers_the_application_and_ledgers_nothing_again(
    pki: Pki, tmp_path: Path
) -> None:
    """A client retrying Apply after a lost answer used to get ALREADY_EXISTS; and an
    application whose push was lost (the service stopped between submit and push) stayed
    'submitted' for good. Now the same request answers the application as it stands."""
    pki.issue("policies", "policy")
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    led = _Ledger()
    servicer = PolicyServicer(store=store, ledger=led, nodes={}, clock=lambda: T)
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=pki.tls("policies"))
    server.start()
    store.publish(POLICY, T, lambda e: None)
    rng = random.Random(8)
    me, other = uscc.generate(rng), uscc.generate(rng)

    def client(org: str) -> PolicyClient:
        return PolicyClient(f"127.0.0.1:{server.port}", pki.issue(org, "enterprise"), server_org="policies")  # fmt: skip

    form = {"project_name": "line 2", "planned_investment_yuan": "3000000"}
    try:
        first = client(me).apply("r-1", POLICY.id, form, {"plan.pdf": b"%PDF-1"})
        n = len(led.items)
        again = client(me).apply("r-1", POLICY.id, form, {"plan.pdf": b"%PDF-1"})
        assert again == first and len(led.items) == n
        with pytest.raises(PolicyExists):  # same id, another form
            client(me).apply(
                "r-1", POLICY.id, {**form, "project_name": "x"}, {"plan.pdf": b"%PDF-1"}
            )
        with pytest.raises(PolicyExists):  # same id, another enterprise
            client(other).apply("r-1", POLICY.id, form, {"plan.pdf": b"%PDF-1"})
        lost = ap.apply(POLICY, "r-2", other, form, {}, T)
        store.submit(lost, led.append_many)  # as if the push never ran
        pushed = client(other).apply("r-2", POLICY.id, form, {})
        assert pushed.state == "under_review" and store.application("r-2").state == "under_review"
        with pytest.raises(InvalidPolicy) as ei:
            client(other).apply("r-3", POLICY.id, form, {f"p{i}.pdf": b"x" for i in range(21)})
        assert ei.value.metadata == {"field": "attachments"}
        with pytest.raises(InvalidPolicy):
            client(other).apply("r-3", POLICY.id, form, {"../etc/passwd": b"x"})
        assert len(led.items) == n + 2  # r-2's submit and push, nothing else
    finally:
        server.stop(0)
        store.close()


def test_one_objection_per_objector_so_a_payment_cannot_be_held_for_ever() -> None:
    """Each dismissed objection restarts the public notice in full; one objector lodging
    again after every dismissal held the payment back indefinitely (review)."""
    from fedcredit.policies.errors import IllegalTransition
    from tests.policies.test_approval import in_state

    a = in_state("notice")
    a = ap.lodge_objection(a, "91371002MA3C5XYZ2H", "figures double counted", a.notice_until - 1)
    a = ap.resolve(a, POLICY, False, a.objections[-1][0] + D)
    with pytest.raises(IllegalTransition) as ei:
        ap.lodge_objection(a, "91371002MA3C5XYZ2H", "again", a.notice_until - 1)
    assert "already objected" in ei.value.message
    assert (
        ap.lodge_objection(a, "competitor-2", "other grounds", a.notice_until - 1).state
        == "objected"
    )


def test_a_store_from_before_the_claims_claims_its_open_applications(db_url: str) -> None:
    """Upgrading a deployment: applications stored before pol_application_claims existed
    claim their (policy, enterprise) when the store opens, so the double application stays
    refused there too; rejected ones do not."""
    from fedcredit.policies.store import claims_t

    store = PolicyStore.open(db_url)
    store.publish(POLICY, T, lambda e: None)
    store.submit(_new(), lambda e: None)
    store.submit(dataclasses.replace(_new(), id="b1", enterprise=OTHER), lambda e: None)
    _through(store, "b1", "rejected", lambda e: None)
    with store.engine.begin() as conn:  # as the old schema left it: no claims at all
        conn.execute(claims_t.delete())
    store.close()
    store = PolicyStore.open(db_url)
    with pytest.raises(AlreadyApplied):
        store.submit(dataclasses.replace(_new(), id="a2"), lambda e: None)
    store.submit(dataclasses.replace(_new(), id="b2", enterprise=OTHER), lambda e: None)
    store.close()
    reopened = PolicyStore.open(db_url)  # opening again changes nothing
    assert reopened.open_application(POLICY.id, OTHER) == "b2"
    reopened.close()


def test_a_department_runs_at_most_four_screenings_a_day(pki: Pki, tmp_path: Path) -> None:
    """Each department run screens the whole registry inside the nodes and ledgers one
    entry per enterprise (120,000 for the city); a department could repeat it without end
    (review). Four a day; the operator's runs are not limited."""
    from fedcredit.policies.errors import RunLimit
    from fedcredit.policies.service import DEPARTMENT_RUNS

    pki.issue("policies", "policy")
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    codes, rows = _registry(10)
    store.load_registry(list(zip(codes, rows, strict=True)))
    led = _Ledger()
    clock = [T + 59 * D]  # 2026-03-01
    servicer = PolicyServicer(store=store, ledger=led, nodes={}, clock=lambda: clock[0])
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=pki.tls("policies"))
    server.start()
    store.publish(_auto(), T, lambda e: None)

    def client(org: str, role: str) -> PolicyClient:
        return PolicyClient(f"127.0.0.1:{server.port}", pki.issue(org, role), server_org="policies")  # fmt: skip

    try:
        dept, op = client("finance-bureau", "department"), client("operator", "operator")
        for _ in range(DEPARTMENT_RUNS):
            assert dept.run_screening("2026-03-01").policies == 1
        n = len(led.items)
        with pytest.raises(RunLimit) as ei:
            dept.run_screening("2026-03-01")
        assert ei.value.metadata == {"department": "finance-bureau"} and len(led.items) == n
        assert op.run_screening("2026-03-01").policies == 1  # the operator's are not limited
        clock[0] += D
        assert dept.run_screening("2026-03-02").policies == 1
    finally:
        server.stop(0)
        store.close()


def test_an_objector_or_a_stranger_learns_only_the_public_notice(pki: Pki, tmp_path: Path) -> None:
    """Found by review: Object answered any caller with the whole application (form fields,
    attachment digests, every department's review), and Review/Object told any caller an
    application's state ("application a-1 is under_review: ..."): an existence oracle
    GetApplication had been closed against (issue 14)."""
    from fedcredit.policies.errors import UnknownAward

    pki.issue("policies", "policy")
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    clock = [T]
    servicer = PolicyServicer(store=store, ledger=_Ledger(), nodes={}, clock=lambda: clock[0])
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=pki.tls("policies"))
    server.start()
    store.publish(POLICY, T, lambda e: None)
    rng = random.Random(12)
    me, stranger = uscc.generate(rng), uscc.generate(rng)

    def client(org: str, role: str) -> PolicyClient:
        return PolicyClient(f"127.0.0.1:{server.port}", pki.issue(org, role), server_org="policies")  # fmt: skip

    form = {"project_name": "secret kiln", "planned_investment_yuan": "3000000"}
    try:
        client(me, "enterprise").apply("n-1", POLICY.id, form, {"plan.pdf": b"%PDF"})
        with pytest.raises(UnknownAward) as ei:
            client(stranger, "enterprise").object("n-1", "just looking")
        assert "under_review" not in ei.value.message
        with pytest.raises(UnknownAward):
            client("not-a-reviewer", "department").review("n-1", True)
        for d in POLICY.reviewers:
            client(d, "department").review("n-1", True)
        seen = client(stranger, "enterprise").object("n-1", "the project already ended")
        assert seen.state == "objected" and seen.enterprise == me and seen.amount_yuan > 0
        assert not seen.fields and not seen.attachments and not seen.parts and not seen.history
        full = client(me, "enterprise").application("n-1")
        assert dict(full.fields) == form and full.attachments
    finally:
        server.stop(0)
        store.close()
