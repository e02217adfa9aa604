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


def own_enterprise(actor: Identity, row: ConsentRow) -> None:
    require(actor, "enterprise")
    if row.enterprise != actor.org_id:
        raise E.NotYourConsent(
            f"consent {row.consent_id} belongs to enterprise {row.enterprise}; you are {actor.org_id}"
        )


def own_bank(actor: Identity, row: ConsentRow) -> None:
    require(actor, "bank")
    if row.bank != actor.org_id:
        raise E.NotYourConsent(
            f"consent {row.consent_id} is addressed to {row.bank}; you are {actor.org_id}"
        )
