"""Tracking what the money did (资金跟踪问效): pledged targets checked inside the nodes.

A policy may carry a ``target``: a CEL rule over the same variables as eligibility (e.g.
``tax.revenue_growth_yoy >= 0.1 && social_security.headcount_trend_12m >= 0.0``), the
performance an enterprise pledges when it takes the money. A tracking round evaluates each
policy's target for its funded enterprises (awards paid, applications paid) exactly as
screening does — split into per-department clauses, evaluated in the nodes under the
``subsidy_tracking`` legal basis, only booleans out — ledgers one ``policy_tracking``
entry per enterprise (target met or not), and analyses per policy: the share that met
its target, the under-performers flagged, and a proposed adjustment for each (withhold
``WITHHOLD_SHARE`` of the benefit from the next tranche, for the department to decide).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedcredit.policies import rules, screening
from fedcredit.policies.errors import TrackingRoundRunning
from fedcredit.policies.runs import Ledger, batched
from fedcredit.policies.store import PolicyStore

LEGAL_BASIS = "subsidy_tracking"
WITHHOLD_SHARE = (1, 2)  # withhold half of a tranche from an enterprise below target


@dataclass
class PolicyTracking:
    policy: str
    funded: int
    met: int
    flagged: list[str] = field(default_factory=list)
    proposals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def met_share(self) -> float:
        return self.met / self.funded if self.funded else 0.0


def funded(store: PolicyStore, policy_id: str) -> list[str]:
    """Enterprises paid under ``policy_id`` (awards and applications), sorted."""
    return store.funded(policy_id)


def track(
    store: PolicyStore,
    ledger: Ledger,
    nodes: Mapping[str, screening.NodeScreener],
    platform: Mapping[str, Mapping[str, Any]],
    *,
    round_id: str,
) -> list[PolicyTracking]:
    """One tracking round over every policy with a target (``platform``: credit code ->
    platform/registry variables)."""
    append = batched(ledger.append_many)
    out: list[PolicyTracking] = []
    for p in store.policies():
        codes = funded(store, p.id) if p.target else []
        if not codes:
            continue
        plan = screening.plan({p.id: rules.check_rule(p.target)})
        rows: Sequence[Mapping[str, Any]] = [platform.get(c, {}) for c in codes]
        met = screening.screen(f"{round_id}:{p.id}"[:64], plan, codes, nodes, rows,
                               legal_basis=LEGAL_BASIS).eligible[p.id]  # fmt: skip
        t = PolicyTracking(p.id, len(codes), int(met.sum()))
        for code, ok in zip(codes, met.tolist(), strict=True):
            if not ok:
                t.flagged.append(code)
                t.proposals.append({
                    "enterprise": code, "action": "withhold_next_tranche",
                    "amount_yuan": p.amount_yuan * WITHHOLD_SHARE[0] // WITHHOLD_SHARE[1],
                })  # fmt: skip
        append([("policy_tracking", c, {"round": round_id, "policy": p.id,
                 "legal_basis": LEGAL_BASIS, "target_met": bool(ok)})
                for c, ok in zip(codes, met.tolist(), strict=True)])  # fmt: skip
        out.append(t)
    return out


# -- a whole round, once per round id (the monthly schedule and the RPC share it) ---------


def summaries(targets: Sequence[PolicyTracking], cohorts: Sequence[Any]) -> list[dict[str, Any]]:
    """Per policy (sorted): the round's figures as plain data (what the store keeps and
    the wire carries, ``PolicyTrackingSummary``)."""
    by_t = {t.policy: t for t in targets}
    by_c = {c.policy: c for c in cohorts}
    out = []
    for pid in sorted(set(by_t) | set(by_c)):
        t, c = by_t.get(pid), by_c.get(pid)
        out.append({
            "policy_id": pid, "funded": t.funded if t else c.cohort if c else 0,
            "has_target": t is not None, "target_met": t.met if t else 0,
            "flagged": list(t.flagged) if t else [],
            "proposals": list(t.proposals) if t else [],
            "cohort_status": c.status if c else "not_asked",
            "cohort": [{"name": k, "present": int(v["present"]), "sum": float(v["sum"]),
                        "suppressed": str(v["suppressed"] or "")}
                       for k, v in sorted((c.indicators if c else {}).items())],
        })  # fmt: skip
    return out


@dataclass(frozen=True)
class Round:
    round_id: str
    policies: list[dict[str, Any]]
    finished_at: float
    replayed: bool


def run_round(
    store: PolicyStore,
    ledger: Ledger,
    nodes: Mapping[str, Any],
    *,
    round_id: str,
    now: float,
) -> Round:
    """Track every funded policy (targets as booleans, cohort aggregates) once per
    ``round_id``: a round that ran already is answered from the store (``replayed``), so
    nothing is asked of the nodes or ledgered twice, whoever asks and however often."""
    from fedcredit.policies import cohort

    if not store.claim_round(round_id, now):
        return _stored(store, round_id)
    try:
        codes, rows = store.registry()
        platform = dict(zip(codes, rows, strict=True))
        targets = track(store, ledger, nodes, platform, round_id=round_id)
        cohorts = cohort.aggregate_round(store, ledger, nodes, round_id=round_id)
    except BaseException:
        store.release_round(round_id)
        raise
    result = summaries(targets, cohorts)
    store.finish_round(round_id, now, result)
    return Round(round_id, result, now, False)


def _stored(store: PolicyStore, round_id: str) -> Round:
    got = store.tracking_round(round_id)
    if got is None or got[0] != "done":
        raise TrackingRoundRunning(
            f"tracking round {round_id} is running; ask again when it is done"
        )
    return Round(round_id, list(got[2] or []), float(got[1] or 0.0), True)
