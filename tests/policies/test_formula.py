"""Benefit formulas: type-checked at publish (refusals with their position), evaluated
exactly inside the department node as booleans (equal to a central evaluation, clamped to
the cap), and the budget never exceeded by formula amounts, however the payouts race."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.ledger.log import Log
from fedcredit.policies import rules
from fedcredit.policies.errors import InvalidPolicy, RuleInvalid, RuleNotSplittable
from fedcredit.policies.runs import run_automatic
from fedcredit.policies.store import PolicyStore
from tests.policies.conftest import City
from tests.policies.test_runs import T0, TODAY, _policy

FORMULA = "int(tax.revenue_12m) / 200"  # half a percent of the declared revenue
CAP = 30_000


@pytest.mark.parametrize(
    ("formula", "error", "line", "column", "words"),
    [
        ("tax.revenue_12m / 200.0", RuleInvalid, 1, 1, "expected the benefit formula to be an int"),
        ("int(tax.revenue_12m) > 5", RuleInvalid, 1, 1, "got BOOL"),
        ("int(tax.nope) / 2", RuleInvalid, 1, 8, "undeclared reference"),
        ("int(tax.revenue_12m) +\n 'x'", RuleInvalid, 1, 22, "no matching overload"),
        ("int(tax.revenue_12m) +\n int(tax.bogus)", RuleInvalid, 2, 9, "undeclared reference"),
        ("int(tax.revenue_12m) / 100 + social_security.headcount * 500", RuleNotSplittable, 1, 1,
         "social_security, tax"),
        ("", RuleInvalid, 1, 1, "empty"),
        ("1" * 600, RuleInvalid, 1, 1, "at most 512"),
    ],
)  # fmt: skip
def test_a_formula_is_type_checked_with_its_position(
    formula: str, error: type[Exception], line: int, column: int, words: str
) -> None:
    with pytest.raises(error) as ei:
        rules.check_formula(formula, CAP)
    assert words in str(ei.value)
    meta = getattr(ei.value, "metadata", {})
    assert (meta["line"], meta["column"]) == (str(line), str(column)), str(ei.value)
    assert meta["field"] == "benefit_formula"  # the portal points into the formula's text


def test_publishing_checks_the_formula_and_its_cap(tmp_path: Path) -> None:
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'p.sqlite'}")
    seen: list[Any] = []
    bad = _policy("f-bad", "true", CAP, 10 * CAP, benefit_formula="tax.revenue_12m",
                  amount_cap_yuan=CAP)  # fmt: skip
    with pytest.raises(RuleInvalid):
        store.publish(bad, T0, seen.extend)
    uncapped = _policy("f-uncapped", "true", CAP, 10 * CAP, benefit_formula=FORMULA)
    with pytest.raises(InvalidPolicy) as ei:
        store.publish(uncapped, T0, seen.extend)
    assert ei.value.metadata["field"] == "amount_cap_yuan"
    assert store.policies() == [] and seen == []  # nothing published, nothing ledgered
    ok = _policy("f-ok", "true", CAP, 10 * CAP, benefit_formula=FORMULA, amount_cap_yuan=CAP)
    store.publish(ok, T0, seen.extend)
    assert store.policy("f-ok").benefit_formula == FORMULA
    store.close()


def test_central_formula_is_exact_and_clamped() -> None:
    f = rules.check_formula("int(tax.revenue_12m) / 100 - 10", 1_000)
    got = rules.evaluate_formula_central(
        f,
        [{"tax.revenue_12m": 12_345.9}, {"tax.revenue_12m": 1e9}, {"tax.revenue_12m": 5.0}, {}],
    )
    assert got == [113, 1_000, 0, None]
    big = rules.check_formula("9223372036854775807 + int(tax.revenue_12m)", 10**12)
    assert rules.evaluate_formula_central(big, [{"tax.revenue_12m": 1.0}]) == [None]  # overflow


def test_a_run_pays_formula_amounts_within_budget(city: City, tmp_path: Path) -> None:
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    ledger = Log.open(f"sqlite:///{tmp_path / 'l.sqlite'}", Ed25519PrivateKey.generate(), "p")
    rule = "courts.open_cases_as_defendant == 0 && registry.founded_year >= 1990"
    budget = 400_000
    store.publish(_policy("by-revenue", rule, CAP, budget, benefit_formula=FORMULA,
                          amount_cap_yuan=CAP), T0, ledger.append_many)  # fmt: skip
    clients = {d: n.client() for d, n in city.nodes.items()}
    sizes = {d: n.log.size for d, n in city.nodes.items()}
    s = run_automatic(store, ledger, clients, city.codes, city.platform_rows, run_id="f1",
                      today=TODAY, now=T0)  # fmt: skip
    central = city.central_rows()
    eligible = [c for c, ok in zip(city.codes, rules.evaluate_central(rule, central).tolist(),
                                   strict=True) if ok]  # fmt: skip
    index = {c: i for i, c in enumerate(city.codes)}
    want = dict(zip(eligible, rules.evaluate_formula_central(
        rules.check_formula(FORMULA, CAP), [central[index[c]] for c in eligible]), strict=True))  # fmt: skip
    awards = {a.enterprise: a.amount_yuan for c in eligible for a in store.awards_of(c)}
    assert awards, "some enterprise must be funded"
    # each amount exactly the formula's (clamped), in the registry's order until the
    # budget would be exceeded; nothing over the budget, nothing for an undefined amount
    assert all(want[c] == a and 0 < a <= CAP for c, a in awards.items())
    books = store.books("by-revenue")
    assert books.committed_yuan == sum(awards.values()) <= budget
    payable = [c for c in eligible if want[c]]
    assert s.notified["by-revenue"] == len(awards)
    assert s.unfunded["by-revenue"] == len(eligible) - len(awards)
    assert payable[: len(awards)] == [c for c in eligible if c in awards]
    if len(awards) < len(payable):  # the next one would not have fitted
        assert books.committed_yuan + want[payable[len(awards)]] > budget
    # the tax node was asked the amount only for the eligible enterprises, and answered
    # booleans under the screening basis
    tax = city.nodes["tax"].log
    asked = [json.loads(e.data)["payload"] for e in tax.get_entries(sizes["tax"], tax.size)]
    bit_requests = [p for p in asked if "by-revenue" in json.dumps(p)]
    assert bit_requests and all(p["legal_basis"] == "policy_screening" for p in bit_requests)
    for c in clients.values():
        c.close()
    ledger.close()
    store.close()


def test_formula_amounts_never_exceed_the_budget_concurrently(tmp_path: Path) -> None:
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'c.sqlite'}")
    p = _policy("racy", "true", 9_000, 100_000, benefit_formula="registry.founded_year",
                amount_cap_yuan=9_000)  # fmt: skip
    store.publish(p, T0, lambda items: None)
    won: list[int] = []
    lock = threading.Lock()

    def payout(n: int) -> None:
        codes = [f"91370000{n:02d}{i:08d}" for i in range(20)]
        amounts = [1_000 + 397 * ((n * 20 + i) % 20) for i in range(20)]
        got, _ = store.notify(p, codes, f"r{n}", T0, lambda items: None, amounts)
        with lock:
            won.extend(a for c, a in zip(codes, amounts, strict=True) if c in got)

    threads = [threading.Thread(target=payout, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    books = store.books("racy")
    assert books.committed_yuan == sum(won) <= 100_000
    with pytest.raises(ValueError):  # an amount above the cap is never committed
        store.notify(p, ["x"], "r9", T0, lambda items: None, [9_001])
    store.close()
