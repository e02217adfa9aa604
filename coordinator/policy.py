"""The credit-guarantee fund's rules, as data, and the pure decision function.

Defaults follow the case study (reference/weihai-platform-case.zh.txt): the
fund starts with 200 million yuan and backs every grade except D; an A-rated
enterprise borrowing up to 5 million yuan needs no collateral and a loss is
shared fund : bank = 80 : 20; B shares 60 : 40 and C 40 : 60; the fund never
covers more than 80 % of a loss. The case study does not say what collateral
B, C or an A loan above 5 million must bring, so those rules are configurable
and the defaults below are illustrative. The fund's capacity is its balance
times its maximum leverage; outstanding guaranteed shares (exposure) may not
exceed it.

Money is in whole yuan (int) and shares in basis points (int), so every
computation is exact and reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedcredit.coordinator.errors import InvalidLoan, InvalidPolicy

BP = 10_000  # basis points in 100 %
MAX_FUND_SHARE_BP = 8_000  # the fund never covers more than 80 % of a loss


@dataclass(frozen=True, slots=True)
class GradeRule:
    """What the fund does for one grade."""

    eligible: bool
    fund_share_bp: int = 0  # fund's share of a loss, basis points
    no_collateral_limit: int = 0  # loans up to this amount (yuan) need no collateral
    collateral_ratio_bp: int = 0  # above the limit: required collateral as a share of the amount

    def validate(self, grade: str) -> None:
        if not self.eligible:
            return
        if not 0 < self.fund_share_bp <= MAX_FUND_SHARE_BP:
            raise InvalidPolicy(
                f"fund share for grade {grade} must be in (0, {MAX_FUND_SHARE_BP}] basis points "
                f"(the fund never covers more than 80 %), got {self.fund_share_bp}"
            )
        if self.no_collateral_limit < 0 or not 0 <= self.collateral_ratio_bp <= 10 * BP:
            raise InvalidPolicy(
                f"grade {grade}: no_collateral_limit must be >= 0 and collateral_ratio_bp in "
                f"[0, {10 * BP}], got {self.no_collateral_limit} and {self.collateral_ratio_bp}"
            )


def _default_rules() -> dict[str, GradeRule]:
    return {
        "A": GradeRule(True, 8_000, no_collateral_limit=5_000_000, collateral_ratio_bp=3_000),
        "B": GradeRule(True, 6_000, no_collateral_limit=1_000_000, collateral_ratio_bp=5_000),
        "C": GradeRule(True, 4_000, no_collateral_limit=0, collateral_ratio_bp=7_000),
        "D": GradeRule(False),
    }


@dataclass(frozen=True, slots=True)
class FundPolicy:
    """The fund's published rules."""

    fund_size: int = 200_000_000
    max_leverage: int = 10
    rules: Mapping[str, GradeRule] = field(default_factory=_default_rules)
    min_amount: int = 10_000
    max_amount: int = 30_000_000
    min_term_months: int = 1
    max_term_months: int = 60

    def __post_init__(self) -> None:
        if self.fund_size <= 0 or self.max_leverage <= 0:
            raise InvalidPolicy(
                f"fund size and maximum leverage must be positive, got {self.fund_size} and {self.max_leverage}"
            )
        missing = {"A", "B", "C", "D"} - set(self.rules)
        if missing:
            raise InvalidPolicy(f"fund rules lack grade(s) {', '.join(sorted(missing))}")
        for grade, rule in self.rules.items():
            rule.validate(grade)
        if not (
            0 < self.min_amount <= self.max_amount
            and 0 < self.min_term_months <= self.max_term_months
        ):
            raise InvalidPolicy(
                "loan amount and term ranges must be positive and ordered (min <= max)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fund_size": self.fund_size,
            "max_leverage": self.max_leverage,
            "min_amount": self.min_amount,
            "max_amount": self.max_amount,
            "min_term_months": self.min_term_months,
            "max_term_months": self.max_term_months,
            "rules": {
                g: {
                    "eligible": r.eligible,
                    "fund_share_bp": r.fund_share_bp,
                    "no_collateral_limit": r.no_collateral_limit,
                    "collateral_ratio_bp": r.collateral_ratio_bp,
                }
                for g, r in sorted(self.rules.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FundPolicy:
        base = cls()
        rules = dict(base.rules)
        for grade, raw in (data.get("rules") or {}).items():
            if grade not in rules:
                raise InvalidPolicy(f"unknown grade {grade!r} in fund rules: expected A, B, C or D")
            old = rules[grade]
            rules[grade] = GradeRule(
                eligible=bool(raw.get("eligible", old.eligible)),
                fund_share_bp=int(raw.get("fund_share_bp", old.fund_share_bp)),
                no_collateral_limit=int(raw.get("no_collateral_limit", old.no_collateral_limit)),
                collateral_ratio_bp=int(raw.get("collateral_ratio_bp", old.collateral_ratio_bp)),
            )
        return cls(
            fund_size=int(data.get("fund_size", base.fund_size)),
            max_leverage=int(data.get("max_leverage", base.max_leverage)),
            rules=rules,
            min_amount=int(data.get("min_amount", base.min_amount)),
            max_amount=int(data.get("max_amount", base.max_amount)),
            min_term_months=int(data.get("min_term_months", base.min_term_months)),
            max_term_months=int(data.get("max_term_months", base.max_term_months)),
        )


@dataclass(frozen=True, slots=True)
class FundState:
    """The fund's books at decision time (yuan)."""

    balance: int  # fund size minus payouts
    exposure: int  # sum of the fund's shares of outstanding guaranteed loans

    def capacity(self, policy: FundPolicy) -> int:
        return max(0, self.balance * policy.max_leverage - self.exposure)


@dataclass(frozen=True, slots=True)
class Decision:
    approved: bool
    reason: str  # APPROVED or the machine-readable refusal reason
    explanation: str  # a sentence for the loan officer
    grade: str
    fund_share_bp: int = 0
    bank_share_bp: int = 0
    fund_amount: int = 0  # the fund's share of the loan amount: what it may pay on default
    collateral_required: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "approved": self.approved,
            "reason": self.reason,
            "explanation": self.explanation,
            "grade": self.grade,
            "fund_share_bp": self.fund_share_bp,
            "bank_share_bp": self.bank_share_bp,
            "fund_amount": self.fund_amount,
            "collateral_required": self.collateral_required,
        }


def check_loan(policy: FundPolicy, amount: int, term_months: int, collateral_offered: int) -> None:
    """Refuse loan terms outside the policy's ranges (raises :class:`InvalidLoan`)."""
    if not policy.min_amount <= amount <= policy.max_amount:
        raise InvalidLoan(
            f"loan amount must be between {policy.min_amount:,} and {policy.max_amount:,} yuan, got {amount:,}"
        )
    if not policy.min_term_months <= term_months <= policy.max_term_months:
        raise InvalidLoan(
            f"loan term must be between {policy.min_term_months} and {policy.max_term_months} months, "
            f"got {term_months}"
        )
    if collateral_offered < 0:
        raise InvalidLoan(f"collateral offered must be >= 0 yuan, got {collateral_offered:,}")


def collateral_required(rule: GradeRule, amount: int) -> int:
    """Collateral (yuan) the rule requires for a loan of ``amount``: none up to the limit."""
    if amount <= rule.no_collateral_limit:
        return 0
    return -(-amount * rule.collateral_ratio_bp // BP)  # ceiling division


def decide(
    policy: FundPolicy,
    *,
    grade: str,
    amount: int,
    term_months: int,
    collateral_offered: int,
    state: FundState,
) -> Decision:
    """The fund's decision on one guarantee application (pure)."""
    check_loan(policy, amount, term_months, collateral_offered)
    rule = policy.rules[grade]
    if not rule.eligible:
        return Decision(
            False,
            "GRADE_NOT_ELIGIBLE",
            f"the fund does not back grade {grade} enterprises",
            grade,
        )
    needed = collateral_required(rule, amount)
    if collateral_offered < needed:
        return Decision(
            False,
            "COLLATERAL_REQUIRED",
            f"grade {grade} loans above {rule.no_collateral_limit:,} yuan need collateral of "
            f"{needed:,} yuan; {collateral_offered:,} offered",
            grade,
            collateral_required=needed,
        )
    fund_amount = amount * rule.fund_share_bp // BP
    capacity = state.capacity(policy)
    if fund_amount > capacity:
        return Decision(
            False,
            "FUND_CAPACITY_EXCEEDED",
            f"the fund's share of this loan ({fund_amount:,} yuan) exceeds its remaining capacity "
            f"({capacity:,} yuan)",
            grade,
            collateral_required=needed,
        )
    return Decision(
        True,
        "APPROVED",
        f"approved: grade {grade}, loss shared fund : bank = "
        f"{rule.fund_share_bp // 100} : {(BP - rule.fund_share_bp) // 100}",
        grade,
        fund_share_bp=rule.fund_share_bp,
        bank_share_bp=BP - rule.fund_share_bp,
        fund_amount=fund_amount,
        collateral_required=needed,
    )


def payout(fund_share_bp: int, loss: int) -> int:
    """What the fund pays on a reported loss (its share, never above 80 %)."""
    share = min(fund_share_bp, MAX_FUND_SHARE_BP)
    return loss * share // BP
