"""Self-evaluations (动态自评): what a funded enterprise reports about its own progress.

An enterprise paid under a policy files, once per month, the indicators it pledged to move
(``INDICATORS``: revenue, employees, tax paid, R&D spending) and a short account in its own
words. The report is the enterprise's own statement, shown to the policy's department and
the operator beside the node-side tracking (``policies.tracking``, ``policies.cohort``);
the ledger holds its SHA-256, not its values, so an auditor can prove what was filed
without the public log carrying a firm's figures.

Pure: validation and the canonical digest; the store keeps reports, the servicer decides who.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fedcredit.policies.errors import InvalidPolicy

# name -> what it means (unit); a report may hold any subset, at least one.
INDICATORS: dict[str, str] = {
    "revenue_yuan": "operating revenue in the month, yuan",
    "employees": "employees on the payroll at the month's end",
    "tax_yuan": "tax paid in the month, yuan",
    "rnd_yuan": "R&D spending in the month, yuan",
}
COUNTS = frozenset({"employees"})  # whole numbers
MAX_VALUE = 1e13  # 10 trillion yuan: anything larger is a typo, not a small firm
MAX_NARRATIVE = 1000  # under the wire limit on one string field (common.limits)
PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, slots=True)
class SelfEvaluation:
    policy: str
    enterprise: str
    period: str
    indicators: Mapping[str, float] = field(default_factory=dict)
    narrative: str = ""
    submitted_at: float = 0.0

    def canonical(self) -> bytes:
        return json.dumps(
            {"policy": self.policy, "enterprise": self.enterprise, "period": self.period,
             "indicators": dict(sorted(self.indicators.items())), "narrative": self.narrative},
            sort_keys=True, ensure_ascii=False, separators=(",", ":"),
        ).encode()  # fmt: skip

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


def check_period(period: str, now: float) -> str:
    """``YYYY-MM``, a real month, not after the month of ``now`` (UTC)."""
    m = PERIOD.match(period)
    if m is None or not 1 <= int(m.group(2)) <= 12:
        raise InvalidPolicy(f"period: expected YYYY-MM, got {period!r}", field="period")
    current = datetime.fromtimestamp(now, UTC).strftime("%Y-%m")
    if period > current:
        raise InvalidPolicy(f"period: {period} is in the future (now {current})", field="period")
    return period


def check_indicators(values: Mapping[str, float]) -> dict[str, float]:
    if not values:
        raise InvalidPolicy(
            f"indicators: expected at least one of {', '.join(INDICATORS)}, got none",
            field="indicators",
        )
    out: dict[str, float] = {}
    for name, value in sorted(values.items()):
        if name not in INDICATORS:
            raise InvalidPolicy(
                f"indicators: expected one of {', '.join(INDICATORS)}, got {name!r}",
                field="indicators",
            )
        if not math.isfinite(value) or not 0 <= value <= MAX_VALUE:
            raise InvalidPolicy(
                f"indicators.{name}: expected a finite number in [0, {MAX_VALUE:.0e}], got {value!r}",
                field="indicators",
            )
        if name in COUNTS and value != int(value):
            raise InvalidPolicy(f"indicators.{name}: expected a whole number, got {value!r}",
                                field="indicators")  # fmt: skip
        out[name] = float(value)
    return out


def evaluation(
    policy: str, enterprise: str, period: str, indicators: Mapping[str, float],
    narrative: str, now: float,
) -> SelfEvaluation:  # fmt: skip
    """A validated self-evaluation (``InvalidPolicy`` naming the field otherwise)."""
    if len(narrative) > MAX_NARRATIVE:
        raise InvalidPolicy(
            f"narrative: expected at most {MAX_NARRATIVE} characters, got {len(narrative)}",
            field="narrative",
        )
    if "\x00" in narrative:
        raise InvalidPolicy("narrative: NUL characters are not allowed", field="narrative")
    return SelfEvaluation(policy, enterprise, check_period(period, now),
                          check_indicators(indicators), narrative, now)  # fmt: skip
