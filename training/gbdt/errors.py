"""Errors of the GBDT core, one class per failure."""

from __future__ import annotations

from fedcredit.common.errors import FailedPrecondition, InvalidArgument


class GbdtError(InvalidArgument):
    reason = "GBDT_INVALID"


class InvalidGbdtParams(InvalidArgument):
    """A training setting is out of range (says which, expected vs got)."""

    reason = "GBDT_PARAMS_INVALID"


class BinSpecMismatch(InvalidArgument):
    """A party's data does not have the features the bin edges were made for."""

    reason = "BIN_SPEC_MISMATCH"


class NoSplitPossible(FailedPrecondition):
    """Not even the first tree can split: too few rows or a constant label."""

    reason = "NO_SPLIT_POSSIBLE"


class ProtocolError(FailedPrecondition):
    """A party received a request out of order (e.g. a tree it has not seen)."""

    reason = "TRAINING_PROTOCOL_ERROR"


class InvalidModelText(InvalidArgument):
    """A LightGBM text model could not be parsed."""

    reason = "MODEL_TEXT_INVALID"
