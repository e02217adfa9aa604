"""The coordinator's typed errors: one class per failure reason (see common.errors)."""

from __future__ import annotations

from fedcredit.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

# What another service's failure without a typed refusal arrives as (the generic class of
# its status code, common.errors.from_rpc_error): the service failing, not refusing.
UNTYPED_FAILURES = (Unavailable, DeadlineExceeded, Internal, ResourceExhausted)


class NoActiveModel(FailedPrecondition):
    """Scoring asked for before any model version was activated."""

    reason = "NO_ACTIVE_MODEL"


class ModelVersionNotFound(NotFound):
    reason = "MODEL_VERSION_NOT_FOUND"


class ModelVersionExists(AlreadyExists):
    reason = "MODEL_VERSION_EXISTS"


class InvalidModel(InvalidArgument):
    """The model text is not a LightGBM model, or its hash or features do not match."""

    reason = "INVALID_MODEL"


class CalibrationTooSmall(InvalidArgument):
    reason = "CALIBRATION_TOO_SMALL"


class InvalidPolicy(InvalidArgument):
    """The fund's rules (configuration) are inconsistent, e.g. a fund share above the cap."""

    reason = "INVALID_FUND_POLICY"


class InvalidLoan(InvalidArgument):
    """Loan amount, term or collateral out of range."""

    reason = "INVALID_LOAN"


class NodeUnavailable(Unavailable):
    """A department node needed for the score did not answer (down or past its deadline)."""

    reason = "NODE_UNAVAILABLE"


class ConsentServiceUnavailable(Unavailable):
    """The consent service did not answer (down, frozen, past its deadline): no token can be
    checked or use reserved, so nothing is scored (fail closed) and no use is counted."""

    reason = "CONSENT_SERVICE_UNAVAILABLE"


class NodeDeadlineExceeded(DeadlineExceeded):
    reason = "NODE_DEADLINE_EXCEEDED"


class NodeRefused(PermissionDenied):
    """A node refused the features for this enterprise (its own consent check failed)."""

    reason = "NODE_REFUSED"


class LedgerUnavailable(Unavailable):
    """The central ledger did not take the entry: no ledger entry, no answer."""

    reason = "LEDGER_UNAVAILABLE"


class ModelChanged(FailedPrecondition):
    """The active model is not the one the activation was confirmed (and signed) against:
    another activation came in between; nothing changes (review it again)."""

    reason = "MODEL_CHANGED"


class ApplicationNotFound(NotFound):
    reason = "GUARANTEE_NOT_FOUND"


class ApplicationConflict(AlreadyExists):
    """The same application id was used before with different loan terms."""

    reason = "APPLICATION_ID_REUSED"


class ApplicationInProgress(FailedPrecondition):
    reason = "APPLICATION_IN_PROGRESS"


class GuaranteeNotActive(FailedPrecondition):
    """An outcome was reported for a guarantee that is refused, released or already paid."""

    reason = "GUARANTEE_NOT_ACTIVE"


class FundCapacityExceeded(ResourceExhausted):
    reason = "FUND_CAPACITY_EXCEEDED"


class WrongPurpose(PermissionDenied):
    """The consent's purpose does not cover this operation (checked again by the verifier)."""

    reason = "CONSENT_PURPOSE_MISMATCH"


class InvalidBatchId(InvalidArgument):
    """A ScoreBatch batch id is 1-128 characters of [A-Za-z0-9._:-], the same in every request."""

    reason = "INVALID_BATCH_ID"


class InvalidBatchItem(InvalidArgument):
    """An item of a batch with an id has no request id, a too long one, or one used twice."""

    reason = "INVALID_BATCH_ITEM"


class BatchItemConflict(AlreadyExists):
    """A request id of a batch was sent before with another enterprise or consent token."""

    reason = "BATCH_ITEM_CONFLICT"
