"""The marketplace's pure rules: bands, matching (scalar = vectorised), state machines, sharing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcredit.coordinator.policy import FundPolicy
from fedcredit.market import rules
from fedcredit.market.errors import IllegalTransition, InvalidNeed, InvalidProduct


def test_bands_hide_the_exact_values() -> None:
    assert rules.grade_band("A") == rules.grade_band("B") == "A-B"
    assert rules.grade_band(None) == "unrated"
    assert [rules.size_band(h) for h in (0, 9, 10, 99, 100, 299, 300)] == [
        "micro", "micro", "small", "small", "medium", "medium", "large"]  # fmt: skip
    assert rules.amount_band(1_500_000) == "1M-3M"
    assert rules.amount_band(100_000) == "<500k"
    assert rules.amount_band(50_000_000) == ">=30M"
    p = rules.Profile("91370000MA3C1234X5", "C", "huancui", 42, "A", 1234)
    assert set(rules.pseudonymous(p).values()) == {"A-B", "C", "huancui", "small"}


def _prod(**kw: object) -> rules.Product:
    base = dict(bank="b", product_id="p", name="n", grade_floor="B", amount_min=100_000,
                amount_max=3_000_000, term_min=6, term_max=36, rate_min_bp=300, rate_max_bp=500)  # fmt: skip
    base.update(kw)
    return rules.Product(**base)  # type: ignore[arg-type]


def test_product_checks_name_the_field() -> None:
    with pytest.raises(InvalidProduct, match="grade floor"):
        _prod(grade_floor="E").check(FundPolicy())
    with pytest.raises(InvalidProduct, match="does not back"):
        _prod(grade_floor="D", fund_guaranteed=True).check(FundPolicy())
    with pytest.raises(InvalidProduct, match="amount range"):
        _prod(amount_min=5, amount_max=1).check(FundPolicy())
    with pytest.raises(InvalidNeed, match="purpose"):
        rules.Need(1_000_000, 12, "gambling").check()


@given(
    grade=st.sampled_from("ABCD"), floor=st.sampled_from("ABCD"), guaranteed=st.booleans(),
    amount=st.integers(10_000, 40_000_000), ind=st.sampled_from("ACF"), inds=st.sets(st.sampled_from("ACF")),
)  # fmt: skip
def test_vectorised_matching_is_the_scalar_rule(
    grade: str, floor: str, guaranteed: bool, amount: int, ind: str, inds: set[str]
) -> None:
    prod = _prod(grade_floor=floor, fund_guaranteed=guaranteed, industries=tuple(sorted(inds)))
    prof = rules.Profile("x", ind, "r1", 5, grade)
    pop = rules.Population(
        grade_rank=np.array(["ABCD".index(grade)], dtype=np.int8),
        industry=np.array([rules.INDUSTRIES.index(ind)], dtype=np.int8),
        region=np.array([0], dtype=np.int16), amount=np.array([amount], dtype=np.int64), regions=("r1",),
    )  # fmt: skip
    assert int(rules.match_population([prod], pop, term=12)[0]) == int(
        rules.matches(prod, prof, amount, 12)
    )


def test_every_illegal_need_transition_is_refused_with_a_reason() -> None:
    for state, event in itertools.product(rules.NEED_STATES, rules.NEED_MACHINE):
        sources, target = rules.NEED_MACHINE[event]
        if state in sources:
            assert rules.next_need_state(state, event) == target
        else:
            with pytest.raises(IllegalTransition) as e:
                rules.next_need_state(state, event)
            assert e.value.reason == "ILLEGAL_TRANSITION" and state in e.value.message
            assert e.value.metadata == {"state": state, "event": event}


def test_every_illegal_loan_transition_is_refused_with_a_reason() -> None:
    facts = rules.LoanFacts(guaranteed_product=False, guaranteed=True, principal=1000, repaid=0)
    for state, event in itertools.product(rules.LOAN_STATES, rules.LOAN_MACHINE):
        sources, _ = rules.LOAN_MACHINE[event]
        if state in sources:
            rules.next_loan_state(state, event, facts, 10)
        else:
            with pytest.raises(IllegalTransition, match=f"the loan is {state}"):
                rules.next_loan_state(state, event, facts, 10)
    with pytest.raises(IllegalTransition, match="unknown event"):
        rules.next_loan_state("ACTIVE", "teleport", facts)


def test_loan_rules_beyond_the_state() -> None:
    unguaranteed = rules.LoanFacts(True, False, 1000, 0)
    with pytest.raises(IllegalTransition, match="only once the fund"):
        rules.next_loan_state("ACCEPTED", "disburse", unguaranteed)
    with pytest.raises(IllegalTransition, match="nothing to claim"):
        rules.next_loan_state("DEFAULTED", "claim", unguaranteed)
    f = rules.LoanFacts(False, False, 1000, 400)
    assert rules.next_loan_state("ACTIVE", "repay", f, 599) == "ACTIVE"
    assert rules.next_loan_state("ACTIVE", "repay", f, 600) == "CLOSED"
    with pytest.raises(IllegalTransition, match="exceeds the outstanding"):
        rules.next_loan_state("ACTIVE", "repay", f, 601)
    with pytest.raises(IllegalTransition, match="positive amount"):
        rules.next_loan_state("ACTIVE", "repay", f, 0)


def test_fund_shares_by_grade_in_integer_yuan() -> None:
    policy = FundPolicy()
    shares = {g: policy.rules[g].fund_share_bp for g in "ABC"}
    assert [rules.claim_payout(shares[g], 1_000_001) for g in "ABC"] == [800_000, 600_000, 400_000]
    assert rules.claim_payout(9_000, 100) == 80  # never above 80 %
    # recoveries: the same share, never more than the fund still has to get back
    assert rules.recovery_share(8_000, 100_000, paid=800_000, fund_recovered=0) == 80_000
    assert rules.recovery_share(8_000, 100_000, paid=800_000, fund_recovered=750_000) == 50_000


def test_the_coordinator_adapter_reads_its_guarantee_decisions() -> None:
    from fedcredit.market.client import CoordinatorGuarantees
    from fedcredit.v1 import coordinator_pb2 as cpb

    class Coordinator:
        def list_guarantees(
            self, *, enterprise: str = "", limit: int = 100
        ) -> list[cpb.GuaranteeDecision]:
            assert enterprise == "E1"
            return [
                cpb.GuaranteeDecision(application_id="other", enterprise="E1"),
                # the same id of another bank (ids are per bank at the coordinator)
                cpb.GuaranteeDecision(application_id="app-9", enterprise="E1", bank="bank-y", status="ACTIVE"),
                cpb.GuaranteeDecision(
                    application_id="app-9", approved=True, reason="APPROVED", rating="A",
                    fund_share_bp=8000, fund_amount_yuan=800_000, status="ACTIVE",
                    enterprise="E1", amount_yuan=1_000_000, term_months=12, bank="bank-x",
                ),
            ]  # fmt: skip

    g = CoordinatorGuarantees(Coordinator()).get("E1", "app-9", "bank-x")
    assert g == rules.GuaranteeView("app-9", "bank-x", "E1", 1_000_000, 12, True, "APPROVED", "A",
                                    8000, 800_000, "ACTIVE")  # fmt: skip
    assert CoordinatorGuarantees(Coordinator()).get("E1", "missing", "bank-x") is None
    assert CoordinatorGuarantees(Coordinator()).get("E1", "app-9", "bank-z") is None
