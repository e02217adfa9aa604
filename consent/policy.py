"""Fair-use caps per purpose: data plus one pure check, applied when a consent is issued.

Defaults follow the purpose: a credit assessment is a one-off look (30 days,
a few uses); a guarantee spans the application and the decision; post-loan
monitoring lasts at most the loan term (plus a short grace period for the
final review); model training at most 12 months. Every value can be
overridden in the deployment file::

    [consent.caps.credit_assessment]
    max_validity_days = 15
    max_uses = 3
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fedcredit.common.departments import PURPOSES
from fedcredit.common.errors import ConfigError
from fedcredit.consent.errors import (
    InvalidPurpose,
    InvalidValidity,
    LoanTermRequired,
    RetentionCapExceeded,
    UsesCapExceeded,
    ValidityCapExceeded,
)


@dataclass(frozen=True, slots=True)
class PurposeCap:
    max_validity_days: int  # hard ceiling on the consent's lifetime
    max_uses: int
    max_retention_days: int  # how long the bank may keep results
    capped_by_loan_term: bool = False  # validity also <= loan term + grace
    loan_term_grace_days: int = 0


DEFAULT_CAPS: Mapping[str, PurposeCap] = {
    "credit_assessment": PurposeCap(max_validity_days=30, max_uses=5, max_retention_days=30),
    "guarantee": PurposeCap(max_validity_days=90, max_uses=10, max_retention_days=365),
    # Monthly rescoring over at most a 5-year loan: 60 looks plus reviews.
    "post_loan_monitoring": PurposeCap(
        max_validity_days=5 * 366,
        max_uses=100,
        max_retention_days=5 * 366,
        capped_by_loan_term=True,
        loan_term_grace_days=30,
    ),
    "model_training": PurposeCap(max_validity_days=365, max_uses=50, max_retention_days=365),
    # The marketplace: identity and score to the bank that claimed a need, while it makes
    # and the enterprise weighs an offer (offers stand 3 days; a claim lasts 1 h).
    "marketplace": PurposeCap(max_validity_days=30, max_uses=5, max_retention_days=30),
    # An investment fund's review of an application and its milestones.
    "investment_review": PurposeCap(max_validity_days=180, max_uses=20, max_retention_days=365),
}


def caps_from_config(
    overrides: Mapping[str, Any], where: str = "consent.caps"
) -> dict[str, PurposeCap]:
    """DEFAULT_CAPS with the ``[consent.caps.<purpose>]`` tables applied."""
    caps = dict(DEFAULT_CAPS)
    fields = {"max_validity_days", "max_uses", "max_retention_days", "loan_term_grace_days"}
    for purpose, table in overrides.items():
        if purpose not in PURPOSES:
            raise ConfigError(
                f"{where}.{purpose}: unknown purpose; expected one of {', '.join(PURPOSES)}"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}.{purpose}: expected a table, got {type(table).__name__}")
        changes: dict[str, Any] = {}
        for key, value in table.items():
            if key == "capped_by_loan_term":
                if not isinstance(value, bool):
                    raise ConfigError(
                        f"{where}.{purpose}.{key}: expected true/false, got {value!r}"
                    )
            elif key not in fields:
                raise ConfigError(
                    f"{where}.{purpose}.{key}: unknown setting; expected one of {', '.join(sorted(fields))}"
                )
            elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"{where}.{purpose}.{key}: expected a positive integer, got {value!r}"
                )
            changes[key] = value
        caps[purpose] = replace(caps[purpose], **changes)
    return caps


def longest_validity_days(caps: Mapping[str, PurposeCap]) -> int:
    return max(c.max_validity_days for c in caps.values())


def check_request(
    caps: Mapping[str, PurposeCap],
    *,
    purpose: str,
    validity_days: int,
    max_uses: int,
    retention_days: int,
    loan_term_days: int | None = None,
) -> None:
    """Refuse a consent outside its purpose's fair-use caps, naming the cap."""
    if purpose not in caps:
        raise InvalidPurpose(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    cap = caps[purpose]
    for name, value, minimum in (
        ("validity_days", validity_days, 1),
        ("max_uses", max_uses, 1),
        ("retention_days", retention_days, 0),
    ):
        if value < minimum:
            raise InvalidValidity(f"{name} must be at least {minimum}, got {value}", field=name)
    limit = cap.max_validity_days
    why = f"{purpose} consents last at most {limit} days"
    if cap.capped_by_loan_term:
        if loan_term_days is None or loan_term_days < 1:
            raise LoanTermRequired(
                f"{purpose} consents last at most the loan term; give the loan term in days (got {loan_term_days})"
            )
        term_limit = loan_term_days + cap.loan_term_grace_days
        if term_limit < limit:
            limit = term_limit
            why = (
                f"{purpose} consents last at most the loan term ({loan_term_days} days) "
                f"plus {cap.loan_term_grace_days} days"
            )
    if validity_days > limit:
        raise ValidityCapExceeded(
            f"{why}; asked for {validity_days}", limit=limit, asked=validity_days
        )
    if max_uses > cap.max_uses:
        raise UsesCapExceeded(
            f"{purpose} consents allow at most {cap.max_uses} uses; asked for {max_uses}",
            limit=cap.max_uses,
            asked=max_uses,
        )
    if retention_days > cap.max_retention_days:
        raise RetentionCapExceeded(
            f"results of {purpose} may be kept at most {cap.max_retention_days} days; asked for {retention_days}",
            limit=cap.max_retention_days,
            asked=retention_days,
        )
