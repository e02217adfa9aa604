"""Who may act on a consent: an enterprise only on its own consents (its certificate's
org id is its credit code), a bank only on consents addressed to it. The caller is
always an :class:`~common.tls.Identity` from the verified certificate, never a field
of the request."""

from __future__ import annotations

from fedcredit.common.errors import RoleNotAllowed
from fedcredit.common.tls import Identity
from fedcredit.consent import errors as E
from fedcredit.consent.store import ConsentRow


def require(actor: Identity, *roles: str) -> None:
    if actor.role not in roles:
        raise RoleNotAllowed(
            f"role {actor.role!r} ({actor.org_id}) may not do this; allowed: {', '.join(roles)}",
            role=actor.role,
        )


def not_found(consent_id: str) -> E.ConsentNotFound:
    """The one answer for a consent id that does not exist *or* is not the caller's: the
    same reason, message and metadata, so the answer tells nothing about other parties'
    consents (no owner named, no exists/not-exists oracle)."""
    return E.ConsentNotFound(f"no consent {consent_id!r} of yours", consent_id=consent_id)


def own_enterprise(actor: Identity, row: ConsentRow) -> None:
    # The role is checked before any lookup (see consent.lifecycle): here it is known.
    require(actor, "enterprise")
    if row.enterprise != actor.org_id:
        raise not_found(row.consent_id)


def own_bank(actor: Identity, row: ConsentRow) -> None:
    require(actor, "bank")
    if row.bank != actor.org_id:
        raise not_found(row.consent_id)
