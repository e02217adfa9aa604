"""The node's errors: one class per failure, each with its gRPC status and reason."""

from __future__ import annotations

from fedcredit.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)


class UnknownFeature(InvalidArgument):
    """A requested feature is not in this node's catalog."""

    reason = "UNKNOWN_FEATURE"


class EmptyBatch(InvalidArgument):
    reason = "EMPTY_BATCH"


class DuplicateEnterprise(InvalidArgument):
    """The same enterprise appears twice in one batch."""

    reason = "DUPLICATE_ENTERPRISE"


class PurposeRequired(InvalidArgument):
    reason = "PURPOSE_REQUIRED"


class InvalidMaxBins(InvalidArgument):
    reason = "INVALID_MAX_BINS"


class InvalidChunkSize(InvalidArgument):
    reason = "INVALID_CHUNK_SIZE"


class PurposeNotAllowed(PermissionDenied):
    """The caller's role may not ask this node for this purpose (access policy)."""

    reason = "PURPOSE_NOT_ALLOWED"


class OnBehalfOfRequired(InvalidArgument):
    """A coordinator must name the bank it acts for, with its certificate hash."""

    reason = "ON_BEHALF_OF_REQUIRED"


class OnBehalfOfMismatch(PermissionDenied):
    """A bank may act only for itself."""

    reason = "ON_BEHALF_OF_MISMATCH"


class ViaNotAllowed(InvalidArgument):
    """``via`` set by a caller that is not the coordinator, or to an unknown value."""

    reason = "VIA_NOT_ALLOWED"


class UnknownBank(PermissionDenied):
    """The bank named in on_behalf_of is not a bank of this deployment."""

    reason = "UNKNOWN_BANK"


class DisclosureLogUnavailable(Unavailable):
    """The disclosure log did not durably record the answer, so there is no answer."""

    reason = "DISCLOSURE_LOG_UNAVAILABLE"


class UsesUnavailable(Unavailable):
    """The consent service could not reserve the uses (down, or no counter): the node
    fails closed and discloses nothing."""

    reason = "CONSENT_USES_UNAVAILABLE"


class NoDataLoaded(FailedPrecondition):
    """The node's store holds no data for its department yet (run `node load`)."""

    reason = "NO_DATA_LOADED"


class WrongDepartment(FailedPrecondition):
    """Data or a store belongs to another department."""

    reason = "WRONG_DEPARTMENT"


class RawDataInvalid(InvalidArgument):
    """A raw data file does not match its table's columns or types."""

    reason = "RAW_DATA_INVALID"


class RawDataNotFound(NotFound):
    """The directory given to `node load` holds no data for this department."""

    reason = "RAW_DATA_NOT_FOUND"


class DuplicateRecord(InvalidArgument):
    """An appended monthly record already exists (same enterprise and period)."""

    reason = "DUPLICATE_RECORD"


class UnknownDepartment(InvalidArgument):
    reason = "UNKNOWN_DEPARTMENT"


class LegalBasisRequired(InvalidArgument):
    """Policy screening runs only under the ``policy_screening`` legal basis."""

    reason = "LEGAL_BASIS_REQUIRED"


class ScreeningClauseInvalid(InvalidArgument):
    """A screening clause does not compile over this node's features or is not a bool
    (the message names the clause id and the position)."""

    reason = "SCREENING_CLAUSE_INVALID"


class ScreeningTooLarge(InvalidArgument):
    """Too many clauses or enterprises, or clause text too long, for one request."""

    reason = "SCREENING_TOO_LARGE"


class CohortTooSmall(FailedPrecondition):
    """A tracking aggregate was asked over fewer enterprises than the node's minimum cohort
    (an aggregate of a handful of firms is close to one firm's value)."""

    reason = "COHORT_TOO_SMALL"


class CohortOverlap(FailedPrecondition):
    """The cohort differs from one already aggregated for this caller (same data version)
    by fewer enterprises than the minimum cohort: the difference of the two answers would
    be a few firms' values."""

    reason = "COHORT_OVERLAP"
