"""Writing consents and signing their tokens.

A consent's token is signed when it becomes ACTIVE with a known bank certificate (a
direct grant to a bank whose certificate the deployment knows, an approval), else at
the bank's first fetch, bound to the certificate it connects with (:meth:`Issuer.mint`).
Many consents are inserted and signed with a fixed number of statements.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection

from fedcredit.common.tls import Identity
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.signing import Signer
from fedcredit.consent.states import State
from fedcredit.consent.statuslist import b64url
from fedcredit.consent.store import ConsentRow, ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.consent.token import SCORE_ONLY, Grant, build_claims

DAY = 86400


class Issuer:
    """Inserts consents and signs their tokens with the key of the moment.

    ``bank_certs``: the SHA-256 of a bank's certificate, when the deployment knows it,
    so a direct grant can be bound and signed at once.
    """

    def __init__(
        self,
        store: ConsentStore,
        settings: ConsentSettings,
        signer: Callable[[], Signer],
        bank_certs: Callable[[str], bytes | None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._signer = signer
        self.bank_certs = bank_certs

    def bank_x5t(self, bank: str) -> str | None:
        """The certificate thumbprint a grant to ``bank`` is bound to, if known now."""
        if self.bank_certs is None:
            return None
        digest = self.bank_certs(bank)
        return b64url(digest) if digest is not None else None

    def values(
        self,
        t: ConsentTerms,
        scope: list[str],
        nodes: list[str],
        state: State,
        actor: Identity,
        now: int,
        *,
        x5t: str | None,
        replaces: str | None = None,
        expires_at: int | None = None,
        not_before: int | None = None,
    ) -> dict[str, Any]:
        """The row of a new consent on checked terms (``scope``/``nodes`` resolved)."""
        if expires_at is None:
            expires_at = (
                now + self.settings.pending_ttl_days * DAY
                if state == State.PENDING
                else now + t.validity_days * DAY
            )
        if not_before is None and state != State.PENDING:
            not_before = now
        return {
            "consent_id": "c_" + secrets.token_urlsafe(12),
            "enterprise": t.enterprise,
            "bank": t.bank,
            "purpose": t.purpose,
            "scope": scope,
            "nodes": nodes,
            "max_uses": t.max_uses,
            "retention_days": t.retention_days,
            "validity_days": t.validity_days,
            "loan_term_days": t.loan_term_days,
            "state": state.value,
            "created_at": now,
            "updated_at": now,
            "not_before": not_before,
            "expires_at": expires_at,
            "bank_x5t": x5t,
            "replaces": replaces,
            "requested_by": actor.org_id,
        }

    def insert(
        self, conn: Connection, values: Sequence[dict[str, Any]], state: State
    ) -> list[ConsentRow]:
        """Insert consents, and sign the tokens of those not PENDING with a known
        certificate: a fixed number of statements however many there are."""
        pks = self.store.insert_consents(conn, values)
        rows = [
            ConsentRow(id=pk, uses=0, jti=None, token=None, replaced_by=None, **v)
            for pk, v in zip(pks, values, strict=True)
        ]
        if state == State.PENDING:
            return rows
        signed = [
            self.sign(r, r.bank_x5t, r.created_at) if r.bank_x5t is not None else r for r in rows
        ]
        self.store.set_tokens(
            conn,
            [
                (r.consent_id, r.bank_x5t, r.jti, r.token, r.created_at)
                for r in signed
                if r.bank_x5t is not None and r.jti is not None and r.token is not None
            ],
        )
        return signed

    def mint(self, conn: Connection, row: ConsentRow, x5t: str, now: int) -> ConsentRow:
        """Sign the consent's token, bound to certificate thumbprint ``x5t``, and store it."""
        row = self.sign(row, x5t, now)
        assert row.jti is not None and row.token is not None
        self.store.set_token(conn, row.consent_id, x5t=x5t, jti=row.jti, token=row.token, now=now)
        return row

    def sign(self, row: ConsentRow, x5t: str, now: int, *, jti: str | None = None) -> ConsentRow:
        """The row with its token signed (not yet stored); ``jti`` given: re-issued under
        the same id, so its use count and status entry carry over."""
        assert row.not_before is not None
        jti = jti or secrets.token_urlsafe(16)
        grant = Grant(
            purpose=row.purpose,
            categories=frozenset() if row.scope == [SCORE_ONLY] else frozenset(row.scope),
            score_only=row.scope == [SCORE_ONLY],
            nodes=frozenset(row.nodes),
            max_uses=row.max_uses,
            retention_days=row.retention_days,
        )
        claims = build_claims(
            issuer=self.settings.issuer,
            enterprise=row.enterprise,
            bank=row.bank,
            jti=jti,
            consent_id=row.consent_id,
            grant=grant,
            issued_at=now,
            not_before=row.not_before,
            expires_at=row.expires_at,
            bank_x5t=x5t,
            status_idx=row.id,
            status_uri=self.settings.status_uri,
        )
        token = self._signer().consent_token(claims)
        return replace(row, bank_x5t=x5t, jti=jti, token=token, updated_at=now)
