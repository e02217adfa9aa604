"""The passkey failures, one exception each (reason ``PASSKEY_*``); each says what was
expected and what was got, and names no other organisation's passkeys."""

from __future__ import annotations

from fedcredit.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)


class EnrolCodeInvalid(Unauthenticated):
    """Unknown, used, expired, or for another organisation (one answer for all four)."""

    reason = "PASSKEY_ENROL_CODE_INVALID"


class ChallengeInvalid(Unauthenticated):
    """The statement was not issued here, was used already, or has expired."""

    reason = "PASSKEY_CHALLENGE_INVALID"


class AssertionInvalid(Unauthenticated):
    """The WebAuthn assertion does not verify against the organisation's passkeys."""

    reason = "PASSKEY_ASSERTION_INVALID"


class RegistrationInvalid(InvalidArgument):
    reason = "PASSKEY_REGISTRATION_INVALID"


class StatementInvalid(InvalidArgument):
    """The statement is not the canonical JSON issued, or asks for something unknown."""

    reason = "PASSKEY_STATEMENT_INVALID"


class TermsChanged(FailedPrecondition):
    """The consent's terms or state changed after the statement was issued: sign anew."""

    reason = "PASSKEY_TERMS_CHANGED"


class SessionInvalid(Unauthenticated):
    reason = "PASSKEY_SESSION_INVALID"


class NoPasskey(NotFound):
    reason = "PASSKEY_NONE_REGISTERED"


class LastPasskey(FailedPrecondition):
    reason = "PASSKEY_LAST_ONE"


class WrongOrganisation(PermissionDenied):
    reason = "PASSKEY_WRONG_ORGANISATION"


# --- delegated sessions (consent/delegation.py): the services' refusals of a portal call ---


class DelegationMissing(PermissionDenied):
    """The portal's certificate called without a delegated session: it acts for no one."""

    reason = "DELEGATION_MISSING"


class DelegationMalformed(Unauthenticated):
    """Not a compact EdDSA JWS of type ``delegation+jwt`` with the required claims."""

    reason = "DELEGATION_MALFORMED"


class DelegationSignatureInvalid(Unauthenticated):
    """Not signed by a key the consent service publishes (forged or altered)."""

    reason = "DELEGATION_SIGNATURE_INVALID"


class DelegationExpired(Unauthenticated):
    """Past ``exp`` (or before ``nbf``/``iat``) beyond the clock leeway."""

    reason = "DELEGATION_EXPIRED"


class DelegationWrongAudience(PermissionDenied):
    """Issued for another service (``aud``)."""

    reason = "DELEGATION_WRONG_AUDIENCE"


class DelegationWrongHolder(PermissionDenied):
    """``cnf.x5t#S256`` names another certificate than the caller's (a stolen ticket)."""

    reason = "DELEGATION_WRONG_HOLDER"


class DelegationPasskeyRemoved(PermissionDenied):
    """The passkey the session was signed in with has been removed."""

    reason = "DELEGATION_PASSKEY_REMOVED"


class DelegationUnverifiable(FailedPrecondition):
    """The consent service could not be asked whether the passkey is still registered."""

    reason = "DELEGATION_UNVERIFIABLE"


# --- step-up: an act that needs a fresh assertion of its own (an operator's model activation) ---


class StepUpRequired(PermissionDenied):
    """The act needs a fresh passkey assertion over a statement naming it; the ticket
    carries none (a sign-in is not enough)."""

    reason = "STEP_UP_REQUIRED"


class StepUpMismatch(PermissionDenied):
    """The ticket's signed act is another act, or names other terms (another model version)."""

    reason = "STEP_UP_MISMATCH"


class StepUpReplayed(PermissionDenied):
    """The ticket's signed act was carried out already: one assertion, one act."""

    reason = "STEP_UP_REPLAYED"
