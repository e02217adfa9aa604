"""The marketplace's failures: one class per reason, each with its gRPC status (common.errors)."""

from __future__ import annotations

from fedcredit.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)


class InvalidProduct(InvalidArgument):
    reason = "INVALID_PRODUCT"


class InvalidNeed(InvalidArgument):
    reason = "INVALID_NEED"


class InvalidMarketRequest(InvalidArgument):
    reason = "INVALID_MARKET_REQUEST"


class ProductNotFound(NotFound):
    reason = "PRODUCT_NOT_FOUND"


class NeedNotFound(NotFound):
    reason = "NEED_NOT_FOUND"


class LoanNotFound(NotFound):
    reason = "LOAN_NOT_FOUND"


class NotYourNeed(PermissionDenied):
    reason = "NOT_YOUR_NEED"


class NotYourLoan(PermissionDenied):
    reason = "NOT_YOUR_LOAN"


class IllegalTransition(FailedPrecondition):
    """A need or loan was asked to move along an edge its state machine does not have."""

    reason = "ILLEGAL_TRANSITION"


class NeedAlreadyClaimed(FailedPrecondition):
    reason = "NEED_ALREADY_CLAIMED"


class ClaimWindowLapsed(FailedPrecondition):
    reason = "CLAIM_WINDOW_LAPSED"


class GradeBelowFloor(FailedPrecondition):
    reason = "GRADE_BELOW_PRODUCT_FLOOR"


class NoMatchingProduct(FailedPrecondition):
    reason = "NO_MATCHING_PRODUCT"


class ConsentNotReleased(FailedPrecondition):
    reason = "CONSENT_NOT_RELEASED"


class GuaranteeMismatch(FailedPrecondition):
    reason = "GUARANTEE_MISMATCH"


class RequestIdReused(AlreadyExists):
    reason = "REQUEST_ID_REUSED"


class LedgerUnavailable(Unavailable):
    reason = "MARKET_LEDGER_UNAVAILABLE"


class GuaranteeServiceUnavailable(Unavailable):
    reason = "GUARANTEE_SERVICE_UNAVAILABLE"
