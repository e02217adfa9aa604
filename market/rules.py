"""The financing marketplace's rules, pure: what a bank may see, what matches, what may follow what.

* **Pseudonymous display.** Before the enterprise consents, a bank sees a need only as
  coarse bands: grade band (A-B / C / D / unrated), industry section, region, size band
  (by headcount) and amount band, plus the term and the purpose category. No identity, no
  score, no exact amount; the need's public id is random, so two needs of one enterprise
  cannot be linked by their ids.
* **Matching.** A product matches an enterprise when the grade is at or above the
  product's floor, the industry and region are among the product's (empty = all), the
  amount and term are in range, and a fund-guaranteed product is never offered to a grade
  the guarantee fund does not back (D, coordinator.policy).
* **State machines.** A need: OPEN -> CLAIMED (one bank, exclusive window) -> OFFERED ->
  ACCEPTED, with the window lapsing and a decline reopening it. A loan: ACCEPTED ->
  GUARANTEED -> ACTIVE (repayments) -> CLOSED, or ACTIVE -> DEFAULTED -> CLAIMED (fund pays
  its share) -> recoveries -> WRITTEN_OFF. Every other move is refused with the reason.
* **Fund sharing.** The fund pays its share of a loss by grade (8:2 A, 6:4 B, 4:6 C,
  never above 80 %: coordinator.policy.payout) and takes the same share of recoveries,
  never more than it paid. Money is integer yuan throughout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedcredit.coordinator.policy import BP, FundPolicy, payout
from fedcredit.coordinator.rating import GRADES, grade_rank
from fedcredit.market.errors import IllegalTransition, InvalidNeed, InvalidProduct

# ---------------------------------------------------------------- pseudonymous bands

GRADE_BANDS: Mapping[str, str] = {"A": "A-B", "B": "A-B", "C": "C", "D": "D"}
UNRATED = "unrated"
# Headcount upper bounds (exclusive) of the size bands (after the SME size classes).
SIZE_BANDS: tuple[tuple[int, str], ...] = (
    (10, "micro"),
    (100, "small"),
    (300, "medium"),
)
LARGE = "large"
# Amount band edges in yuan: a bank sees "1M-3M", never the exact amount.
AMOUNT_EDGES: tuple[int, ...] = (500_000, 1_000_000, 3_000_000, 5_000_000, 10_000_000, 30_000_000)
PURPOSES: tuple[str, ...] = ("working_capital", "equipment", "expansion", "trade", "refinancing")
INDUSTRIES: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRST")  # GB/T 4754 sections


def grade_band(grade: str | None) -> str:
    return GRADE_BANDS.get(grade or "", UNRATED)


def size_band(headcount: int) -> str:
    for upper, name in SIZE_BANDS:
        if headcount < upper:
            return name
    return LARGE


def _money(v: int) -> str:
    return f"{v // 1_000_000}M" if v % 1_000_000 == 0 else f"{v // 1000}k"


def amount_band(amount: int) -> str:
    lower = 0
    for edge in AMOUNT_EDGES:
        if amount < edge:
            return f"{_money(lower)}-{_money(edge)}" if lower else f"<{_money(edge)}"
        lower = edge
    return f">={_money(lower)}"


@dataclass(frozen=True, slots=True)
class Profile:
    """What the platform knows of an enterprise for the marketplace (never sent to a bank
    as is: :func:`pseudonymous` turns it into bands)."""

    enterprise: str
    industry: str
    region: str
    headcount: int
    grade: str | None = None
    pd_ppm: int | None = None  # probability of default, parts per million


def pseudonymous(p: Profile) -> dict[str, str]:
    """The bands a bank may see before consent."""
    return {
        "grade_band": grade_band(p.grade),
        "industry": p.industry,
        "region": p.region,
        "size_band": size_band(p.headcount),
    }


# ---------------------------------------------------------------- products and needs


@dataclass(frozen=True, slots=True)
class Product:
    """A bank's published credit product. Rates in basis points a year."""

    bank: str
    product_id: str
    name: str
    grade_floor: str
    amount_min: int
    amount_max: int
    term_min: int
    term_max: int
    rate_min_bp: int
    rate_max_bp: int
    industries: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    fund_guaranteed: bool = False

    def check(self, fund: FundPolicy) -> None:
        """Refuse a product that could never be offered as published."""
        if not self.name.strip() or len(self.name) > 200:
            raise InvalidProduct(f"product name must be 1-200 characters, got {len(self.name)}")
        if self.grade_floor not in GRADES:
            raise InvalidProduct(f"grade floor must be A, B, C or D, got {self.grade_floor!r}")
        if not 0 < self.amount_min <= self.amount_max:
            raise InvalidProduct(
                f"amount range must be positive and ordered, got {self.amount_min:,}-{self.amount_max:,} yuan"
            )
        if not 0 < self.term_min <= self.term_max <= 360:
            raise InvalidProduct(
                f"term range must be in 1..360 months and ordered, got {self.term_min}-{self.term_max}"
            )
        if not 0 <= self.rate_min_bp <= self.rate_max_bp <= 10 * BP:
            raise InvalidProduct(
                f"rate range must be in 0..{10 * BP} bp and ordered, got {self.rate_min_bp}-{self.rate_max_bp}"
            )
        bad = [i for i in self.industries if i not in INDUSTRIES]
        if bad:
            raise InvalidProduct(f"unknown industry section(s) {bad}: expected letters A-T")
        if self.fund_guaranteed and not fund.rules[self.grade_floor].eligible:
            raise InvalidProduct(
                f"a fund-guaranteed product cannot reach grade {self.grade_floor}: the fund does not back it"
            )


@dataclass(frozen=True, slots=True)
class Need:
    """An enterprise's posted financing need."""

    amount: int
    term_months: int
    purpose: str

    def check(self) -> None:
        if not 10_000 <= self.amount <= 100_000_000:
            raise InvalidNeed(
                f"amount must be between 10,000 and 100,000,000 yuan, got {self.amount:,}"
            )
        if not 1 <= self.term_months <= 360:
            raise InvalidNeed(f"term must be 1-360 months, got {self.term_months}")
        if self.purpose not in PURPOSES:
            raise InvalidNeed(f"purpose must be one of {', '.join(PURPOSES)}, got {self.purpose!r}")


def matches(product: Product, p: Profile, amount: int, term: int) -> bool:
    """Whether ``product`` may be offered to ``p`` for ``amount`` over ``term`` months."""
    if p.grade is None or grade_rank(p.grade) > grade_rank(product.grade_floor):
        return False
    if product.fund_guaranteed and p.grade == "D":
        return False
    if product.industries and p.industry not in product.industries:
        return False
    if product.regions and p.region not in product.regions:
        return False
    return (
        product.amount_min <= amount <= product.amount_max
        and product.term_min <= term <= product.term_max
    )


@dataclass(frozen=True)
class Population:
    """A rated population as columns, for matching a whole city at once."""

    grade_rank: np.ndarray  # int8, 0=A .. 3=D
    industry: np.ndarray  # int8 index into INDUSTRIES
    region: np.ndarray  # int16 index into ``regions``
    amount: np.ndarray  # int64 yuan the enterprise is likely to need
    regions: Sequence[str] = field(default_factory=tuple)


def eligible(prod: Product, pop: Population) -> np.ndarray:
    """Which enterprises ``prod`` may be pushed to: grade, fund backing, industry, region
    (the amount and term come with a need or an offer)."""
    ok = pop.grade_rank <= grade_rank(prod.grade_floor)
    if prod.fund_guaranteed:
        ok &= pop.grade_rank < GRADES.index("D")
    if prod.industries:
        ok &= np.isin(pop.industry, [INDUSTRIES.index(i) for i in prod.industries])
    if prod.regions:
        region_index = {r: i for i, r in enumerate(pop.regions)}
        ok &= np.isin(pop.region, [region_index.get(r, -1) for r in prod.regions])
    return np.asarray(ok, dtype=bool)


def match_population(products: Sequence[Product], pop: Population, term: int = 12) -> np.ndarray:
    """For every enterprise, how many products match it (vectorised :func:`matches`, term
    fixed); the same rule as :func:`matches`, checked against it in the tests."""
    counts = np.zeros(pop.grade_rank.shape[0], dtype=np.int32)
    for prod in products:
        if not prod.term_min <= term <= prod.term_max:
            continue
        ok = eligible(prod, pop) & (pop.amount >= prod.amount_min) & (pop.amount <= prod.amount_max)
        counts += ok
    return counts


# ---------------------------------------------------------------- state machines

# need: event -> (states it may come from, state it leads to)
NEED_MACHINE: Mapping[str, tuple[frozenset[str], str]] = {
    "claim": (frozenset({"OPEN"}), "CLAIMED"),
    "offer": (frozenset({"CLAIMED"}), "OFFERED"),
    "accept": (frozenset({"OFFERED"}), "ACCEPTED"),
    "decline": (frozenset({"OFFERED"}), "OPEN"),
    "lapse": (frozenset({"CLAIMED", "OFFERED"}), "OPEN"),
    "withdraw": (frozenset({"OPEN", "CLAIMED", "OFFERED"}), "WITHDRAWN"),
}
NEED_STATES = ("OPEN", "CLAIMED", "OFFERED", "ACCEPTED", "WITHDRAWN")

LOAN_MACHINE: Mapping[str, tuple[frozenset[str], str]] = {
    "guarantee": (frozenset({"ACCEPTED"}), "GUARANTEED"),
    "disburse": (frozenset({"ACCEPTED", "GUARANTEED"}), "ACTIVE"),
    "cancel": (frozenset({"ACCEPTED", "GUARANTEED"}), "CANCELLED"),
    "repay": (
        frozenset({"ACTIVE"}),
        "ACTIVE",
    ),  # the last instalment closes it (see next_loan_state)
    "default": (frozenset({"ACTIVE"}), "DEFAULTED"),
    "claim": (frozenset({"DEFAULTED"}), "CLAIMED"),
    "recover": (frozenset({"DEFAULTED", "CLAIMED"}), "="),  # "=": stays where it is
    "write_off": (frozenset({"DEFAULTED", "CLAIMED"}), "WRITTEN_OFF"),
}
LOAN_STATES = (
    "ACCEPTED",
    "GUARANTEED",
    "ACTIVE",
    "CLOSED",
    "DEFAULTED",
    "CLAIMED",
    "WRITTEN_OFF",
    "CANCELLED",
)


def _step(
    machine: Mapping[str, tuple[frozenset[str], str]], what: str, state: str, event: str
) -> str:
    if event not in machine:
        raise IllegalTransition(f"{what}: unknown event {event!r}", state=state, event=event)
    sources, target = machine[event]
    if state not in sources:
        raise IllegalTransition(
            f"{what} is {state}; {event!r} is allowed only from {', '.join(sorted(sources))}",
            state=state,
            event=event,
        )
    return state if target == "=" else target


def next_need_state(state: str, event: str) -> str:
    """The need's state after ``event``; :class:`IllegalTransition` names why not."""
    return _step(NEED_MACHINE, "the need", state, event)


@dataclass(frozen=True, slots=True)
class LoanFacts:
    """What the loan rules look at beyond the state."""

    guaranteed_product: bool
    guaranteed: bool
    principal: int
    repaid: int


def next_loan_state(state: str, event: str, facts: LoanFacts, amount: int = 0) -> str:
    """The loan's state after ``event`` (``amount``: a repayment or a recovery)."""
    target = _step(LOAN_MACHINE, "the loan", state, event)
    if event == "disburse" and facts.guaranteed_product and not facts.guaranteed:
        raise IllegalTransition(
            "the loan is on a fund-guaranteed product; it can be disbursed only once the fund "
            "has approved the guarantee",
            state=state,
            event=event,
        )
    if event == "claim" and not facts.guaranteed:
        raise IllegalTransition(
            "the loan has no fund guarantee; there is nothing to claim", state=state, event=event
        )
    if event in ("repay", "recover") and amount <= 0:
        raise IllegalTransition(
            f"a {event} needs a positive amount, got {amount:,}", state=state, event=event
        )
    if event == "repay":
        outstanding = facts.principal - facts.repaid
        if amount > outstanding:
            raise IllegalTransition(
                f"the repayment ({amount:,} yuan) exceeds the outstanding principal ({outstanding:,})",
                state=state,
                event=event,
            )
        if amount == outstanding:
            return "CLOSED"
    return target


# ---------------------------------------------------------------- the coordinator's guarantee


@dataclass(frozen=True, slots=True)
class GuaranteeView:
    """A coordinator guarantee decision as the marketplace checks it against a loan."""

    application_id: str
    bank: str
    enterprise: str
    amount: int
    term_months: int
    approved: bool
    reason: str
    rating: str
    fund_share_bp: int
    fund_amount: int
    status: str  # REFUSED, ACTIVE, RELEASED, DEFAULTED


class GuaranteeLookup(Protocol):
    """The coordinator's guarantee decisions (``market.client.CoordinatorGuarantees``)."""

    def get(self, enterprise: str, application_id: str, bank: str) -> GuaranteeView | None:
        """``bank``'s guarantee ``application_id`` for ``enterprise`` (application ids are
        per bank at the coordinator: another bank's same id is another guarantee)."""
        ...


# ---------------------------------------------------------------- fund sharing


def claim_payout(fund_share_bp: int, loss: int) -> int:
    """The fund's payment on a defaulted guaranteed loan's loss (its grade's share, <= 80 %)."""
    return payout(fund_share_bp, loss)


def recovery_share(fund_share_bp: int, recovered: int, paid: int, fund_recovered: int) -> int:
    """The fund's part of a recovery: the same share as the loss, never more than it has
    still to get back (``paid - fund_recovered``)."""
    return max(0, min(payout(fund_share_bp, recovered), paid - fund_recovered))


def loss_of(principal: int, repaid: int, recovered: int = 0) -> int:
    """The loss on default: the outstanding principal (interest is the bank's own risk)."""
    return max(0, principal - repaid - recovered)


# ---------------------------------------------------------------- investment funds (政府性基金超市)

FUND_APP_MACHINE: Mapping[str, tuple[frozenset[str], str]] = {
    "review": (frozenset({"SUBMITTED", "UNDER_REVIEW"}), "UNDER_REVIEW"),
    "accept": (frozenset({"UNDER_REVIEW"}), "ACCEPTED"),
    "decline": (frozenset({"SUBMITTED", "UNDER_REVIEW"}), "DECLINED"),
    "withdraw": (frozenset({"SUBMITTED", "UNDER_REVIEW"}), "WITHDRAWN"),
    "invest": (frozenset({"ACCEPTED"}), "INVESTED"),
    "milestone": (frozenset({"INVESTED"}), "="),
    "complete": (frozenset({"INVESTED"}), "COMPLETED"),
}
FUND_APP_STATES = (
    "SUBMITTED",
    "UNDER_REVIEW",
    "ACCEPTED",
    "DECLINED",
    "WITHDRAWN",
    "INVESTED",
    "COMPLETED",
)
# A manager's decline names one of these (and may add a sentence).
DECLINE_REASONS = (
    "OUTSIDE_MANDATE",
    "GRADE_BELOW_CRITERIA",
    "TICKET_SIZE",
    "BUSINESS_PLAN",
    "DUE_DILIGENCE",
    "FUND_CAPACITY",
)


def next_app_state(state: str, event: str) -> str:
    """An investment application's state after ``event`` (IllegalTransition names why not)."""
    return _step(FUND_APP_MACHINE, "the application", state, event)


@dataclass(frozen=True, slots=True)
class InvestmentFund:
    """A government-guided industry fund's published criteria (money in yuan)."""

    fund_id: str
    manager: str  # the institution managing it (its organisation id)
    name: str
    industries: tuple[str, ...]
    min_grade: str
    size_bands: tuple[str, ...]
    ticket_min: int
    ticket_max: int
    capacity: int

    def check(self) -> None:
        from fedcredit.market.errors import InvalidProduct

        if self.min_grade not in GRADES:
            raise InvalidProduct(f"min_grade must be A, B, C or D, got {self.min_grade!r}")
        if not 0 < self.ticket_min <= self.ticket_max <= self.capacity:
            raise InvalidProduct(
                f"tickets must satisfy 0 < min <= max <= capacity, got {self.ticket_min:,}, "
                f"{self.ticket_max:,}, {self.capacity:,}"
            )
        bad = [i for i in self.industries if i not in INDUSTRIES] + [
            b for b in self.size_bands if b not in {n for _, n in SIZE_BANDS} | {LARGE}
        ]
        if bad:
            raise InvalidProduct(f"unknown industry section(s) or size band(s): {bad}")


def fund_misfits(fund: InvestmentFund, p: Profile, amount: int) -> list[str]:
    """The fund's criteria ``p`` asking ``amount`` does not meet (empty: it fits)."""
    out = []
    if fund.industries and p.industry not in fund.industries:
        out.append("OUTSIDE_MANDATE")
    if p.grade is None or grade_rank(p.grade) > grade_rank(fund.min_grade):
        out.append("GRADE_BELOW_CRITERIA")
    if fund.size_bands and size_band(p.headcount) not in fund.size_bands:
        out.append("OUTSIDE_MANDATE")
    if not fund.ticket_min <= amount <= fund.ticket_max:
        out.append("TICKET_SIZE")
    return sorted(set(out))
