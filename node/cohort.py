"""Tracking aggregates at the node (资金跟踪问效): counts and sums over a cohort, never a firm.

The policy service tracks what subsidies did by asking each node, once a month, for the
totals of a few indicators over the cohort of enterprises funded under one policy. The
node:

1. admits only the policy service's role (``policy``) and only under the
   ``subsidy_tracking`` legal basis;
2. admits only its own *tracking indicators* (``INDICATORS``: revenue and tax paid at the
   tax node, insured headcount at social security, patent applications at the IP office
   — the catalog has no R&D spending, so patent filings stand in for R&D output);
3. refuses a cohort under ``MIN_COHORT`` enterprises (``COHORT_TOO_SMALL``), and a cohort
   whose symmetric difference with one it already answered for the same caller and data
   version is between 1 and ``MIN_COHORT - 1`` enterprises (``COHORT_OVERLAP``: the
   difference of the two sums would be those few firms' values — the classic differencing
   attack);
4. per indicator returns only the number of enterprises with a value and their sum, and
   suppresses the sum (``suppressed``: why) when fewer than ``MIN_COHORT`` have a value or
   when one enterprise holds more than ``DOMINANCE`` of it (a sum dominated by one firm
   is that firm's value within a margin: the (1, k)-dominance rule of statistical
   disclosure control). No minimum, maximum, mean per firm, list or bit per enterprise;
5. appends one ``policy_tracking_aggregate`` entry to its disclosure log (caller, basis,
   round, indicators, cohort size and SHA-256, data version, and what it released) and
   only then answers.

The overlap memory holds the last ``OVERLAP_MEMORY`` cohorts per caller in the node's
process; a restart forgets it (the disclosure log keeps every cohort's digest for an
auditor). Several overlapping queries can still be combined in ways no pairwise check
catches; the minimum cohort and the dominance rule bound what any one answer says.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcredit.common import uscc
from fedcredit.common.errors import BatchTooLarge, RoleNotAllowed
from fedcredit.common.tls import Identity
from fedcredit.node.engine import FeatureEngine
from fedcredit.node.errors import (
    CohortOverlap,
    CohortTooSmall,
    DuplicateEnterprise,
    EmptyBatch,
    LegalBasisRequired,
    ScreeningTooLarge,
    UnknownFeature,
)
from fedcredit.node.screening import SCREENING_ROLES, enterprises_digest
from fedcredit.node.store import StoreState

LEGAL_BASIS = "subsidy_tracking"
KIND = "policy_tracking_aggregate"
INDICATORS: dict[str, tuple[str, ...]] = {
    "tax": ("revenue_12m", "tax_paid_12m"),
    "social_security": ("headcount",),
    "ip": ("patent_applications_24m",),
}
MIN_COHORT = 10
DOMINANCE = 0.5  # one enterprise above half of a sum suppresses it
MAX_ENTERPRISES = 50_000
OVERLAP_MEMORY = 1024


@dataclass(frozen=True, slots=True)
class Released:
    name: str
    present: int  # enterprises of the cohort with a value
    total: float  # their sum (0 when suppressed)
    suppressed: str  # "" | "too_few_values" | "dominance"


class Aggregator:
    """Admits and answers tracking-aggregate requests for one node."""

    def __init__(self, engine: FeatureEngine, *, min_cohort: int = MIN_COHORT) -> None:
        self.engine = engine
        self.min_cohort = min_cohort
        self.indicators = INDICATORS.get(engine.department, ())
        self._seen: defaultdict[str, OrderedDict[tuple[int, frozenset[str]], None]] = defaultdict(
            OrderedDict
        )
        self._lock = threading.Lock()

    def admit(self, caller: Identity, request: Any) -> tuple[list[str], list[str]]:
        """Steps 1-2 and the cohort's own checks; returns (codes, indicators)."""
        if caller.role not in SCREENING_ROLES:
            raise RoleNotAllowed(
                f"{caller.org_id} has role {caller.role!r}; tracking aggregates are answered "
                f"only to {', '.join(sorted(SCREENING_ROLES))}",
                role=caller.role,
            )
        if request.legal_basis != LEGAL_BASIS:
            raise LegalBasisRequired(
                f"tracking aggregates need legal_basis {LEGAL_BASIS!r}; got {request.legal_basis!r}"
            )
        if not 1 <= len(request.round_id) <= 64 or not request.round_id.isprintable():
            raise ScreeningTooLarge("round_id must be 1-64 printable characters")
        names = list(request.indicators)
        if not names or len(set(names)) != len(names):
            raise UnknownFeature("expected one or more distinct indicators")
        for n in names:
            if n not in self.indicators:
                raise UnknownFeature(
                    f"{n!r} is not a tracking indicator of the {self.engine.department} node; "
                    f"expected one of {', '.join(self.indicators) or '(none here)'}",
                    feature=n,
                )
        codes = list(request.enterprises)
        if not codes:
            raise EmptyBatch("the cohort lists no enterprise")
        if len(codes) > MAX_ENTERPRISES:
            raise BatchTooLarge(f"the cohort lists {len(codes)} enterprises; at most "
                                f"{MAX_ENTERPRISES}", max_batch=MAX_ENTERPRISES, got=len(codes))  # fmt: skip
        if len(set(codes)) != len(codes):
            raise DuplicateEnterprise("an enterprise is listed twice in the cohort")
        for c in codes:
            uscc.validate(c)
        if len(codes) < self.min_cohort:
            raise CohortTooSmall(
                f"the cohort has {len(codes)} enterprises; at least {self.min_cohort} are "
                f"needed so that no aggregate is one firm's value",
                min_cohort=self.min_cohort, got=len(codes),
            )  # fmt: skip
        return codes, names

    def remember(self, caller: Identity, codes: Sequence[str], st: StoreState) -> None:
        """Step 3's differencing check, then remember the cohort (under one lock)."""
        cohort = frozenset(codes)
        with self._lock:
            seen = self._seen[caller.org_id]
            for version, before in seen:
                if version != st.data_version:
                    continue
                diff = len(cohort ^ before)
                if 0 < diff < self.min_cohort:
                    raise CohortOverlap(
                        f"this cohort differs from one already aggregated by {diff} "
                        f"enterprises; at least {self.min_cohort} (or none) are needed",
                        min_cohort=self.min_cohort,
                    )  # fmt: skip
            seen[(st.data_version, cohort)] = None
            seen.move_to_end((st.data_version, cohort))
            while len(seen) > OVERLAP_MEMORY:
                seen.popitem(last=False)

    def aggregate(
        self, codes: Sequence[str], names: Sequence[str], st: StoreState
    ) -> list[Released]:
        values, _ = self.engine.vectors(codes, st)
        out: list[Released] = []
        for n in names:
            col = values[:, self.engine.names.index(n)]
            col = col[~np.isnan(col)]
            out.append(release(n, col, self.min_cohort))
        return out


def release(name: str, col: np.ndarray, min_cohort: int) -> Released:
    """Step 4 for one indicator's present values (pure)."""
    n = int(col.size)
    if n < min_cohort:
        return Released(name, n, 0.0, "too_few_values")
    mass = float(np.abs(col).sum())
    if mass > 0 and float(np.abs(col).max()) > DOMINANCE * mass:
        return Released(name, n, 0.0, "dominance")
    return Released(name, n, float(col.sum()), "")


def log_payload(
    request: Any, codes: Sequence[str], released: Sequence[Released], *, node: str,
    caller: Identity, st: StoreState,
) -> dict[str, Any]:  # fmt: skip
    return {
        "node": node, "caller": caller.org_id, "caller_role": caller.role,
        "legal_basis": request.legal_basis, "round_id": request.round_id,
        "enterprises": len(codes), "enterprises_sha256": enterprises_digest(codes),
        "released": [{"name": r.name, "present": r.present, "sum": r.total,
                      "suppressed": r.suppressed} for r in released],
        "data_version": st.data_version, "as_of": st.as_of_text,
    }  # fmt: skip
