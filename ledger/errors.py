"""Ledger failures: one class per reason (see common.errors for the mapping to gRPC)."""

from __future__ import annotations

import grpc

from fedcredit.common.errors import (
    FailedPrecondition,
    FedcreditError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from fedcredit.common.errors import (
    Internal as _Internal,
)

# --- writing and reading the log -------------------------------------------------


class InvalidEntry(InvalidArgument):
    """An append request whose kind, subject or payload is not acceptable."""

    reason = "LEDGER_ENTRY_INVALID"


class KindNotAllowed(PermissionDenied):
    """The caller's role may not append entries of this kind."""

    reason = "LEDGER_KIND_NOT_ALLOWED"


class SubjectNotAllowed(PermissionDenied):
    """The caller may not read entries about this subject."""

    reason = "LEDGER_SUBJECT_NOT_ALLOWED"


class ReadNotAllowed(PermissionDenied):
    """The caller's role may not use this read operation."""

    reason = "LEDGER_READ_NOT_ALLOWED"


class IndexOutOfRange(InvalidArgument):
    """An entry index or tree size beyond what the log holds."""

    reason = "LEDGER_INDEX_OUT_OF_RANGE"


class EntryNotFound(IndexOutOfRange):
    """An entry index at or beyond the log's size: no such entry (yet)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "LEDGER_ENTRY_NOT_FOUND"


class OutputNotWritable(FailedPrecondition):
    """The file a command was asked to write cannot be written (nothing was left there)."""

    reason = "OUTPUT_NOT_WRITABLE"


class NoCheckpoint(NotFound):
    """The log has not signed any checkpoint yet."""

    reason = "LEDGER_NO_CHECKPOINT"


class LogClosed(Unavailable):
    """The log was closed; nothing more can be appended."""

    reason = "LEDGER_CLOSED"


class DataLoss(FedcreditError):
    """Stored data that is lost or corrupted (gRPC DATA_LOSS)."""

    code = grpc.StatusCode.DATA_LOSS
    reason = "DATA_LOSS"


class StoreCorrupt(DataLoss):
    """The stored log contradicts itself or its signed checkpoints (a changed or missing
    entry, a broken chain, a root that does not match, a size behind a witness).

    Metadata ``index`` names the first bad entry when there is one.
    """

    reason = "LEDGER_STORE_CORRUPT"


class TriggerMissing(FailedPrecondition):
    """An append-only trigger of an existing store is gone (or replaced by other SQL)."""

    reason = "LEDGER_TRIGGER_MISSING"


class TriggerDisabled(FailedPrecondition):
    """An append-only trigger is disabled or fires only in some replication roles."""

    reason = "LEDGER_TRIGGER_DISABLED"


class InconsistentCheckpoint(_Internal):
    """The log refused to sign a checkpoint inconsistent with one it signed before."""

    reason = "LEDGER_CHECKPOINT_INCONSISTENT"


# --- verification (auditors, witnesses, clients) ---------------------------------


class VerificationError(FailedPrecondition):
    """Base of every failed offline verification."""

    reason = "LEDGER_VERIFICATION_FAILED"


class ProofIndexOutOfRange(VerificationError):
    reason = "PROOF_INDEX_OUT_OF_RANGE"


class ProofSizesInvalid(VerificationError):
    """A consistency proof from a larger tree to a smaller one, or similar."""

    reason = "PROOF_SIZES_INVALID"


class ProofLengthMismatch(VerificationError):
    reason = "PROOF_LENGTH_MISMATCH"


class ProofMalformed(VerificationError):
    """A proof element that is not a 32-byte hash."""

    reason = "PROOF_MALFORMED"


class RootMismatch(VerificationError):
    reason = "ROOT_MISMATCH"


class NoteMalformed(VerificationError):
    reason = "CHECKPOINT_MALFORMED"


class SignatureInvalid(VerificationError):
    reason = "CHECKPOINT_SIGNATURE_INVALID"


class UnknownKey(VerificationError):
    """No signature on the note from a key the verifier trusts."""

    reason = "CHECKPOINT_UNKNOWN_KEY"


class OriginMismatch(VerificationError):
    reason = "CHECKPOINT_ORIGIN_MISMATCH"


class CheckpointRollback(VerificationError):
    """A checkpoint smaller than one already seen, or a different root at the same size."""

    reason = "CHECKPOINT_ROLLBACK"


class CheckpointStale(VerificationError):
    """The newest checkpoint with enough cosignatures is older than allowed, or behind
    a newer checkpoint the ledger or a witness reports (witnesses not cosigning)."""

    reason = "CHECKPOINT_STALE"


class CosignatureFromFuture(VerificationError):
    """A cosignature timestamp later than now (beyond the allowed clock skew)."""

    reason = "COSIGNATURE_FROM_FUTURE"


class CosignatureQuorum(VerificationError):
    reason = "COSIGNATURE_QUORUM_NOT_MET"


class EntryMalformed(VerificationError):
    reason = "LEDGER_ENTRY_MALFORMED"


class EntryOutOfSequence(VerificationError):
    reason = "LEDGER_ENTRY_OUT_OF_SEQUENCE"


class ChainBroken(VerificationError):
    reason = "LEDGER_CHAIN_BROKEN"


class ExportMalformed(VerificationError):
    reason = "LEDGER_EXPORT_MALFORMED"


class ExportIncomplete(VerificationError):
    """An export that holds fewer entries than its checkpoints cover."""

    reason = "LEDGER_EXPORT_INCOMPLETE"


class BundleMalformed(VerificationError):
    reason = "LEDGER_BUNDLE_MALFORMED"


# --- witnesses -------------------------------------------------------------------


class WitnessConflict(FailedPrecondition):
    """The witness's last cosigned size differs from the old size the log claimed.

    Metadata ``size`` carries the witness's size (as tlog-witness's 409 Conflict).
    """

    reason = "WITNESS_SIZE_CONFLICT"


class WitnessUnknownLog(NotFound):
    reason = "WITNESS_UNKNOWN_LOG"


class EntriesNotCovered(VerificationError):
    """Entries in an export that no signed checkpoint vouches for."""

    reason = "LEDGER_ENTRIES_NOT_COVERED"


class SubjectMismatch(VerificationError):
    """An entry listed for one enterprise is about another (or about none)."""

    reason = "LEDGER_SUBJECT_MISMATCH"
