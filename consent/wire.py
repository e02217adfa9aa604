"""Conversions between the consent service's protobuf messages and :mod:`consent.terms`.

Purposes go through :mod:`common.wire` (the one purpose mapping); an unknown one is
refused as ``CONSENT_PURPOSE_INVALID``, the consent service's reason for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedcredit.common.errors import InvalidArgument
from fedcredit.common.wire import purpose_from_pb, purpose_to_pb
from fedcredit.consent.errors import InvalidPurpose
from fedcredit.consent.terms import ConsentTerms, ConsentView
from fedcredit.v1 import common_pb2, consent_pb2


def _purpose_to_pb(purpose: str) -> common_pb2.Purpose.ValueType:
    """:func:`common.wire.purpose_to_pb`, refusing with the consent service's own reason."""
    try:
        return common_pb2.Purpose.ValueType(purpose_to_pb(purpose))
    except InvalidArgument as exc:
        raise InvalidPurpose(exc.message) from None


def _purpose_from_pb(value: int) -> str:
    """:func:`common.wire.purpose_from_pb`, refusing with the consent service's own reason."""
    try:
        return purpose_from_pb(value)
    except InvalidArgument as exc:
        raise InvalidPurpose(exc.message) from None


def terms_to_pb(t: ConsentTerms) -> consent_pb2.ConsentTerms:
    return consent_pb2.ConsentTerms(
        enterprise=t.enterprise,
        bank=t.bank,
        purpose=_purpose_to_pb(t.purpose),
        scope=list(t.scope),
        nodes=list(t.nodes),
        validity_days=t.validity_days,
        max_uses=t.max_uses,
        retention_days=t.retention_days,
        loan_term_days=t.loan_term_days or 0,
    )


def terms_from_pb(m: consent_pb2.ConsentTerms) -> ConsentTerms:
    return ConsentTerms(
        enterprise=m.enterprise,
        bank=m.bank,
        purpose=_purpose_from_pb(m.purpose),
        scope=list(m.scope),
        nodes=list(m.nodes),
        validity_days=m.validity_days,
        max_uses=m.max_uses,
        retention_days=m.retention_days,
        loan_term_days=m.loan_term_days or None,
    )


def consent_to_pb(v: ConsentView) -> consent_pb2.Consent:
    return consent_pb2.Consent(
        consent_id=v.consent_id,
        terms=terms_to_pb(
            ConsentTerms(
                enterprise=v.enterprise,
                bank=v.bank,
                purpose=v.purpose,
                scope=v.scope,
                nodes=v.nodes,
                validity_days=v.validity_days,
                max_uses=v.max_uses,
                retention_days=v.retention_days,
                loan_term_days=v.loan_term_days,
            )
        ),
        state=consent_pb2.ConsentState.Value(v.state),
        uses=v.uses,
        created_at=v.created_at,
        not_before=v.not_before or 0,
        expires_at=v.expires_at,
        jti=v.jti or "",
        status_idx=v.status_idx,
        replaces=v.replaces or "",
        replaced_by=v.replaced_by or "",
    )


def consent_from_pb(m: consent_pb2.Consent, token: str | None = None) -> ConsentView:
    t = terms_from_pb(m.terms)
    return ConsentView(
        consent_id=m.consent_id,
        enterprise=t.enterprise,
        bank=t.bank,
        purpose=t.purpose,
        scope=list(t.scope),
        nodes=list(t.nodes),
        max_uses=t.max_uses,
        uses=m.uses,
        retention_days=t.retention_days,
        validity_days=t.validity_days,
        loan_term_days=t.loan_term_days,
        state=consent_pb2.ConsentState.Name(m.state),
        created_at=m.created_at,
        not_before=m.not_before or None,
        expires_at=m.expires_at,
        jti=m.jti or None,
        status_idx=m.status_idx,
        replaces=m.replaces or None,
        replaced_by=m.replaced_by or None,
        token=token,
    )


def states_to_pb(states: Sequence[str]) -> list[consent_pb2.ConsentState.ValueType]:
    """Consent state names (as a person types them) as the wire's enum values."""
    known = consent_pb2.ConsentState.keys()
    out: list[consent_pb2.ConsentState.ValueType] = []
    for s in states:
        if s not in known:
            shown = s[:40] + ("..." if len(s) > 40 else "")
            raise InvalidArgument(
                f"expected a consent state among {', '.join(k for k in known if k != known[0])}, "
                f"got {shown!r}",
                reason="UNKNOWN_STATE",
            )
        out.append(consent_pb2.ConsentState.Value(s))
    return out
