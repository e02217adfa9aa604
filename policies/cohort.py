"""Tracking by cohort aggregates: what the funded enterprises of a policy did, in totals.

Once a month (a *round*), for each policy with at least ``MIN_COHORT`` funded enterprises,
the policy service asks each node that holds tracking indicators (``node.cohort``) for
counts and sums over that cohort, under the ``subsidy_tracking`` legal basis. A smaller
cohort is not asked at all (the node would refuse it too): its row says so, as it says
when a node refuses a cohort that differs from one it answered by only a few firms. The node may
suppress a sum (too few values, or one firm dominating it); the row keeps the reason.

Each policy's round is ledgered as one ``policy_tracking_aggregate`` entry (no subject:
it is about no single enterprise) with what the nodes released and their disclosure-log
indexes. Per-firm means are derived here from the released totals, never asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedcredit.node.errors import CohortOverlap, CohortTooSmall
from fedcredit.policies.runs import Ledger, batched
from fedcredit.policies.store import PolicyStore

LEGAL_BASIS = "subsidy_tracking"
MIN_COHORT = 10  # the nodes' default; a cohort below it is not asked
# department -> its tracking indicators (mirrors node.cohort.INDICATORS; the node decides)
INDICATORS: dict[str, tuple[str, ...]] = {
    "tax": ("revenue_12m", "tax_paid_12m"),
    "social_security": ("headcount",),
    "ip": ("patent_applications_24m",),
}


class NodeAggregator(Protocol):
    def aggregate(
        self, round_id: str, indicators: Any, enterprises: Any, *, legal_basis: str = ...
    ) -> Any: ...


@dataclass
class CohortRow:
    policy: str
    cohort: int
    status: str  # "ok" | "cohort_too_small" | "refused_overlap" (a node's differencing guard)
    # "<department>.<indicator>" -> {"present", "sum", "mean", "suppressed"}
    indicators: dict[str, dict[str, Any]] = field(default_factory=dict)


def aggregate_round(
    store: PolicyStore,
    ledger: Ledger,
    nodes: Mapping[str, NodeAggregator],
    *,
    round_id: str,
    min_cohort: int = MIN_COHORT,
) -> list[CohortRow]:
    """One round over every published policy with funded enterprises."""
    append = batched(ledger.append_many)
    out: list[CohortRow] = []
    for p in store.policies():
        codes = store.funded(p.id)
        if not codes:
            continue
        row = CohortRow(p.id, len(codes), "ok" if len(codes) >= min_cohort else "cohort_too_small")
        indexes: dict[str, int] = {}
        if row.status == "ok":
            for dep, names in INDICATORS.items():
                if dep not in nodes:
                    continue
                try:
                    resp = nodes[dep].aggregate(f"{round_id}:{p.id}"[:64], list(names), codes,
                                                legal_basis=LEGAL_BASIS)  # fmt: skip
                except (CohortOverlap, CohortTooSmall) as exc:
                    # e.g. one enterprise was paid since the last round of the same data
                    # month: the node will not answer until the cohort or its data moves
                    row.status = "refused_overlap" if isinstance(exc, CohortOverlap) else (
                        "cohort_too_small")  # fmt: skip
                    continue
                indexes[dep] = int(resp.disclosure_index)
                for a in resp.indicators:
                    row.indicators[f"{dep}.{a.name}"] = {
                        "present": int(a.present), "sum": float(a.sum),
                        "mean": float(a.sum) / a.present if a.present and not a.suppressed else None,
                        "suppressed": a.suppressed,
                    }  # fmt: skip
        append([("policy_tracking_aggregate", None, {
            "round": round_id, "policy": p.id, "legal_basis": LEGAL_BASIS, "cohort": row.cohort,
            "status": row.status, "indicators": row.indicators, "node_disclosures": indexes,
        })])  # fmt: skip
        out.append(row)
    return out
