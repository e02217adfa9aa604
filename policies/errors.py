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


class PolicyExists(AlreadyExists):
    reason = "POLICY_EXISTS"


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
