"""What a consent asks for and how its parties see it: the consent service's published types.

Plain dataclasses, nothing else: the bank and enterprise SDK (:mod:`consent.client`),
the wire mapping (:mod:`consent.wire`) and the authority all speak them, and importing
them loads neither the database nor the authority.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConsentView:
    """A consent as its parties see it."""

    consent_id: str
    enterprise: str
    bank: str
    purpose: str
    scope: list[str]
    nodes: list[str]
    max_uses: int
    uses: int
    retention_days: int
    validity_days: int
    loan_term_days: int | None
    state: str
    created_at: int
    not_before: int | None
    expires_at: int
    jti: str | None
    status_idx: int
    replaces: str | None
    replaced_by: str | None
    token: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["token"] is None:
            del d["token"]  # shown only when the view carries it
        return d


@dataclass(frozen=True)
class ConsentTerms:
    """What is asked for (a request by a bank, or a direct grant by an enterprise)."""

    enterprise: str
    bank: str
    purpose: str
    scope: Sequence[str]  # category ids, or ["score_only"]
    nodes: Sequence[str] = ()  # empty: the nodes serving the scope (all, for score_only)
    validity_days: int = 30
    max_uses: int = 1
    retention_days: int = 30
    loan_term_days: int | None = None
