"""Every way a consent operation or a consent token can fail, one class per reason.

Token failures a caller cannot fix by asking differently (bad signature,
wrong algorithm, expired...) are UNAUTHENTICATED; a valid token that does not
grant what is asked (revoked, another bank, purpose not covered...) is
PERMISSION_DENIED; an exhausted use budget is RESOURCE_EXHAUSTED; a verifier
that cannot get fresh keys or status fails closed with UNAVAILABLE.
"""

from __future__ import annotations

from fedcredit.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

# --- the token itself ------------------------------------------------------


class TokenMalformed(Unauthenticated):
    """Not a compact JWS with a JSON header and payload."""

    reason = "CONSENT_TOKEN_MALFORMED"


class TokenUnsigned(Unauthenticated):
    """``alg: none``: an unsigned token is never a consent."""

    reason = "CONSENT_TOKEN_UNSIGNED"


class AlgorithmNotAllowed(Unauthenticated):
    """An algorithm outside the allow-list (e.g. HS256 with the public key as secret)."""

    reason = "CONSENT_ALG_NOT_ALLOWED"


class WrongTokenType(Unauthenticated):
    reason = "CONSENT_WRONG_TYP"


class UnknownCritical(Unauthenticated):
    """A ``crit`` header parameter this verifier does not understand (RFC 7515 §4.1.11)."""

    reason = "CONSENT_UNKNOWN_CRIT"


class InvalidKeyId(Unauthenticated):
    """``kid`` missing or not a plain key id (paths, SQL, control characters...)."""

    reason = "CONSENT_KID_INVALID"


class UnknownSigningKey(Unauthenticated):
    reason = "CONSENT_KEY_UNKNOWN"


class SigningKeyRetired(Unauthenticated):
    """Signed by a retired key after it was retired: only a stolen key would do that."""

    reason = "CONSENT_KEY_RETIRED"


class SigningKeyExpired(Unauthenticated):
    """Signed by a key that was retired and whose retention period is over."""

    reason = "CONSENT_KEY_EXPIRED"


class SigningKeyCompromised(Unauthenticated):
    """Signed by a key the authority declared compromised: refused whatever the token's
    ``iat`` claims (a thief can back-date it)."""

    reason = "CONSENT_KEY_COMPROMISED"


class LifetimeExceedsCap(Unauthenticated):
    """``exp - iat`` longer than the purpose's cap allows: no genuine token is."""

    reason = "CONSENT_LIFETIME_EXCEEDS_CAP"


class BadSignature(Unauthenticated):
    reason = "CONSENT_BAD_SIGNATURE"


class ClaimMissing(Unauthenticated):
    """A required claim is absent; metadata ``claim`` names it."""

    reason = "CONSENT_CLAIM_MISSING"


class ClaimInvalid(Unauthenticated):
    """A claim is present but has the wrong type or form; metadata ``claim`` names it."""

    reason = "CONSENT_CLAIM_INVALID"


class TokenExpired(Unauthenticated):
    reason = "CONSENT_EXPIRED"


class TokenNotYetValid(Unauthenticated):
    reason = "CONSENT_NOT_YET_VALID"


class WrongIssuer(Unauthenticated):
    reason = "CONSENT_WRONG_ISSUER"


class UnknownStatusList(Unauthenticated):
    """The token points at a status list this verifier does not trust, or past its end."""

    reason = "CONSENT_STATUS_LIST_UNKNOWN"


# --- the token does not grant what is asked ---------------------------------


class WrongAudience(PermissionDenied):
    """Issued to another bank."""

    reason = "CONSENT_WRONG_AUDIENCE"


class HolderMismatch(PermissionDenied):
    """Presented over a connection whose certificate is not the one the token is bound to."""

    reason = "CONSENT_HOLDER_MISMATCH"


class EnterpriseMismatch(PermissionDenied):
    """A token of enterprise X used for enterprise Y."""

    reason = "CONSENT_ENTERPRISE_MISMATCH"


class ConsentRevoked(PermissionDenied):
    reason = "CONSENT_REVOKED"


class ConsentSuspended(PermissionDenied):
    reason = "CONSENT_SUSPENDED"


class PurposeNotCovered(PermissionDenied):
    reason = "CONSENT_PURPOSE_NOT_COVERED"


class CategoryNotCovered(PermissionDenied):
    reason = "CONSENT_CATEGORY_NOT_COVERED"


class NodeNotCovered(PermissionDenied):
    reason = "CONSENT_NODE_NOT_COVERED"


class ScoreOnly(PermissionDenied):
    """A score-only consent: features may feed a score but are never released."""

    reason = "CONSENT_SCORE_ONLY"


class UsesExhausted(ResourceExhausted):
    reason = "CONSENT_USES_EXHAUSTED"


# --- the verifier cannot decide ---------------------------------------------


class KeysUnavailable(Unavailable):
    reason = "CONSENT_KEYS_UNAVAILABLE"


class StatusUnavailable(Unavailable):
    reason = "CONSENT_STATUS_UNAVAILABLE"


# --- lifecycle and issuance --------------------------------------------------


class ConsentNotFound(NotFound):
    reason = "CONSENT_NOT_FOUND"


class TransitionNotAllowed(FailedPrecondition):
    """E.g. resuming a revoked consent; metadata ``state`` and ``action``."""

    reason = "CONSENT_TRANSITION_NOT_ALLOWED"


class NotYourConsent(PermissionDenied):
    """An enterprise or bank acting on a consent, or for a party, that is not its own."""

    reason = "CONSENT_NOT_YOURS"


class InvalidPurpose(InvalidArgument):
    reason = "CONSENT_PURPOSE_INVALID"


class InvalidStateFilter(InvalidArgument):
    reason = "CONSENT_STATE_INVALID"


class InvalidScope(InvalidArgument):
    reason = "CONSENT_SCOPE_INVALID"


class InvalidNodes(InvalidArgument):
    reason = "CONSENT_NODES_INVALID"


class InvalidBank(InvalidArgument):
    reason = "CONSENT_BANK_INVALID"


class InvalidValidity(InvalidArgument):
    """Validity, uses or retention not a positive number."""

    reason = "CONSENT_VALIDITY_INVALID"


class ValidityCapExceeded(InvalidArgument):
    """Longer than the purpose's fair-use cap allows."""

    reason = "CONSENT_VALIDITY_CAP_EXCEEDED"


class UsesCapExceeded(InvalidArgument):
    reason = "CONSENT_USES_CAP_EXCEEDED"


class RetentionCapExceeded(InvalidArgument):
    reason = "CONSENT_RETENTION_CAP_EXCEEDED"


class LoanTermRequired(InvalidArgument):
    """Post-loan monitoring is capped by the loan term, so the term must be given."""

    reason = "CONSENT_LOAN_TERM_REQUIRED"


class NarrowingInvalid(InvalidArgument):
    """Narrowing must remove something that is covered and leave something covered."""

    reason = "CONSENT_NARROWING_INVALID"


class TokenNotIssued(FailedPrecondition):
    """The consent is not active, so it has no token to hand out."""

    reason = "CONSENT_TOKEN_NOT_ISSUED"


class NoSigningKey(FailedPrecondition):
    """No key is active yet: run `fedcredit consent rotate-keys`."""

    reason = "CONSENT_NO_SIGNING_KEY"


class TooManyWatchers(ResourceExhausted):
    """A WatchStatus stream past the per-caller or the service-wide cap."""

    reason = "TOO_MANY_WATCHERS"
