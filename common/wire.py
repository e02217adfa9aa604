"""The one place where domain values meet the generated ``fedcredit.v1`` contracts.

Every service and every client converts enums and errors through this module, so a
new purpose or a new error field is written once. Two directions, two strictnesses:

- *to the wire* (``purpose_to_pb`` ...) refuses an unknown domain value with
  ``InvalidArgument``: a caller's typo must not travel as ``UNSPECIFIED``;
- *from the wire* has a strict form (``purpose_from_pb``: a servicer validating a
  request) and a lenient form for logs and ledger entries (``purpose_label``).

Message-level mappings that belong to one service's contract (consent terms and
views, say) live next to that service's client, built on these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import grpc

from fedcredit.common.errors import FedcreditError, InvalidArgument, error_class_for
from fedcredit.v1 import common_pb2, feature_pb2

# -- purpose (fedcredit.v1.Purpose) ------------------------------------------------

PURPOSE_TO_PB: Final[Mapping[str, int]] = {
    "credit_assessment": common_pb2.PURPOSE_CREDIT_ASSESSMENT,
    "guarantee": common_pb2.PURPOSE_GUARANTEE,
    "post_loan_monitoring": common_pb2.PURPOSE_POST_LOAN_MONITORING,
    "model_training": common_pb2.PURPOSE_MODEL_TRAINING,
}
PURPOSE_FROM_PB: Final[Mapping[int, str]] = {v: k for k, v in PURPOSE_TO_PB.items()}


def purpose_to_pb(purpose: str) -> int:
    """``"credit_assessment"`` -> ``PURPOSE_CREDIT_ASSESSMENT``; unknown -> InvalidArgument."""
    try:
        return PURPOSE_TO_PB[purpose]
    except KeyError:
        raise InvalidArgument(
            f"purpose must be one of {', '.join(PURPOSE_TO_PB)}, got {purpose!r}",
            reason="INVALID_PURPOSE",
        ) from None


def purpose_from_pb(value: int) -> str:
    """The purpose a request names; UNSPECIFIED or unknown -> InvalidArgument."""
    try:
        return PURPOSE_FROM_PB[value]
    except KeyError:
        raise InvalidArgument(
            f"purpose must be one of {', '.join(PURPOSE_TO_PB)}, got enum value {value}",
            reason="INVALID_PURPOSE",
        ) from None


def purpose_label(value: int) -> str:
    """The purpose for logs and ledger entries: ``""`` when unspecified,
    ``"unknown(N)"`` for a value this build does not know (never raises)."""
    if value == common_pb2.PURPOSE_UNSPECIFIED:
        return ""
    return PURPOSE_FROM_PB.get(value, f"unknown({value})")


# -- provenance (GetFeaturesRequest.via; every ledger entry's "via") -----------------

# How an act reached a service: "" its caller's own certificate, "portal" a person's
# delegated session at the portal (consent/delegation.py). Provenance only: no service
# grants or refuses anything by it.
VIA_VALUES: Final[tuple[str, ...]] = ("", "portal")


def via_field(via: str) -> dict[str, str]:
    """An entry's ``via`` field: ``{"via": via}``, or nothing for the caller's own act."""
    return {"via": via} if via else {}


# -- feature catalog enums (fedcredit.v1.FeatureType, Sensitivity, Missing) --------

FEATURE_TYPE_TO_PB: Final[Mapping[str, int]] = {
    "int": feature_pb2.FEATURE_TYPE_INT,
    "float": feature_pb2.FEATURE_TYPE_FLOAT,
    "bool": feature_pb2.FEATURE_TYPE_BOOL,
    "ordinal": feature_pb2.FEATURE_TYPE_ORDINAL,
}
SENSITIVITY_TO_PB: Final[Mapping[str, int]] = {
    "public": feature_pb2.SENSITIVITY_PUBLIC,
    "restricted": feature_pb2.SENSITIVITY_RESTRICTED,
    "confidential": feature_pb2.SENSITIVITY_CONFIDENTIAL,
}
MISSING_NAMES: Final[Mapping[int, str]] = {
    feature_pb2.MISSING_PRESENT: "present",
    feature_pb2.MISSING_NO_RECORDS: "no_records",
    feature_pb2.MISSING_NOT_COVERED: "not_covered",
}


def missing_name(value: int) -> str:
    """``MISSING_NO_RECORDS`` -> ``"no_records"`` (an unknown value is kept as its number)."""
    return MISSING_NAMES.get(value, str(value))


def feature_value(value: float, missing: int) -> float | None:
    """A wire value as the domain sees it: None unless present (NaN is never a value)."""
    if missing != feature_pb2.MISSING_PRESENT or math.isnan(value):
        return None
    return value


# -- errors (fedcredit.v1.ItemError; google.rpc.ErrorInfo is in common.rpc) ---------


def item_error(err: FedcreditError) -> common_pb2.ItemError:
    """One item's failure inside a batch answer, as ``fedcredit.v1.ItemError``."""
    return common_pb2.ItemError(
        code=err.code.name,
        reason=err.reason,
        message=err.message,
        metadata={k: str(v) for k, v in err.metadata.items()},
    )


def item_exception(err: Any) -> FedcreditError:
    """The typed exception of a ``fedcredit.v1.ItemError`` (the inverse of :func:`item_error`).

    A status code this build does not know becomes INTERNAL; the reason string is kept
    for the caller either way.
    """
    code = grpc.StatusCode.__members__.get(err.code, grpc.StatusCode.INTERNAL)
    return error_class_for(err.reason, code)(err.message, reason=err.reason, **dict(err.metadata))
