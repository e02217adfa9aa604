"""The policy service's errors: one class per failure, each with its gRPC status and reason."""

from __future__ import annotations

from fedcredit.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)


class InvalidPolicy(InvalidArgument):
    """A policy field is missing or out of range (the message names the field)."""

    reason = "INVALID_POLICY"


class RuleInvalid(InvalidArgument):
    """The eligibility rule does not parse or type-check against the catalog; the message
    and the ``line``/``column`` metadata give the position of the first error."""

    reason = "POLICY_RULE_INVALID"


class RuleNotSplittable(InvalidArgument):
    """The rule combines data of different departments with something other than
    ``&&`` / ``||`` (e.g. ``!``, ``==`` or arithmetic across departments), so it cannot be
    evaluated as per-department clauses whose booleans the platform combines."""

    reason = "POLICY_RULE_NOT_SPLITTABLE"


class RuleUnbounded(InvalidArgument):
    """The rule (or formula, or target) holds a comprehension (``all``, ``exists``,
    ``exists_one``, ``map``, ``filter``: its cost per enterprise multiplies with each
    nesting) or a regular expression (``matches``: compiled per evaluation), so neither
    the platform nor a node evaluates it. ``line``/``column`` give its position."""

    reason = "POLICY_RULE_UNBOUNDED"


class ClauseNotComparison(InvalidArgument):
    """A department's clause of an eligibility rule or target is more than comparisons of
    its features with literal constants joined by ``&&``, ``||``, ``!`` (arithmetic,
    conversions, functions or ``?:`` over a feature). The platform and, through the
    ledger's per-enterprise screening entries, everyone learn each clause's boolean, so a
    clause like ``int(tax.revenue_12m) / 1024 % 2 == 1`` would publish a bit of a raw
    value per enterprise. ``line``/``column`` give the position."""

    reason = "POLICY_CLAUSE_NOT_A_COMPARISON"


class ThresholdBudget(FailedPrecondition):
    """Publishing would make one department's policies compare a feature with more than
    ``rules.MAX_THRESHOLDS`` distinct constants. Each published rule's boolean per
    enterprise is disclosed, so many near-duplicate policies with thresholds that bisect a
    value (``> 1e6``, ``> 1.5e6``, ``> 1.25e6``...) would disclose the value; the budget
    bounds what all of a department's policies together say about one feature."""

    reason = "POLICY_THRESHOLD_BUDGET"


class PolicyExists(AlreadyExists):
    reason = "POLICY_EXISTS"


class AlreadyApplied(AlreadyExists):
    """The enterprise already has an application to this policy that is not rejected or
    withdrawn (the message names it): one benefit per enterprise and policy, as for
    automatic awards, whatever application id a second attempt uses."""

    reason = "POLICY_ALREADY_APPLIED"


class PolicyNotOpen(FailedPrecondition):
    """The policy does not take applications today (before ``opens`` or after ``closes``)."""

    reason = "POLICY_NOT_OPEN"


class RunExists(AlreadyExists):
    """A screening run with this id was already started: a retry does not screen, ledger
    or notify a second time (choose a new id for a new run)."""

    reason = "POLICY_RUN_EXISTS"


class RunLimit(FailedPrecondition):
    """A department already ran ``policies.service.DEPARTMENT_RUNS`` screenings in the last 24
    hours: each run screens every registered enterprise inside the nodes and ledgers one
    entry per enterprise, so a department's runs are bounded (the operator's are not)."""

    reason = "POLICY_RUN_LIMIT"


class UnknownPolicy(NotFound):
    reason = "UNKNOWN_POLICY"


class BudgetExhausted(FailedPrecondition):
    """Paying this benefit would take the policy past its budget."""

    reason = "BUDGET_EXHAUSTED"


class IllegalTransition(FailedPrecondition):
    """The step is not allowed from the current state (the message names both). Its own
    reason, not the marketplace's ILLEGAL_TRANSITION: a reason names one class, so a
    process holding both SDKs (the portal, a test run) rebuilds each service's error as
    that service's class."""

    reason = "POLICY_ILLEGAL_TRANSITION"


class AwardDeclined(FailedPrecondition):
    reason = "AWARD_DECLINED"


class DeclineWindowClosed(FailedPrecondition):
    reason = "DECLINE_WINDOW_CLOSED"


class UnknownAward(NotFound):
    reason = "UNKNOWN_AWARD"


class NotFunded(FailedPrecondition):
    """The enterprise was not paid under this policy, so it has no progress to report."""

    reason = "NOT_FUNDED"


class ProgressReported(AlreadyExists):
    """A self-evaluation for this policy and month was already filed (reports are final)."""

    reason = "PROGRESS_REPORTED"


class TrackingRoundRunning(FailedPrecondition):
    """The tracking round is being run by another caller; its result is not stored yet."""

    reason = "TRACKING_ROUND_RUNNING"


class BenefitUndefined(FailedPrecondition):
    """The policy's benefit formula has no value for this enterprise (a value it reads is
    missing at its department, or the amount is 0): there is nothing to apply for."""

    reason = "BENEFIT_UNDEFINED"
