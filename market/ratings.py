"""The platform's city-wide rating run, its pushes and post-loan warnings.

Legal basis: the platform rates every registered enterprise on a schedule as the city's
designated public credit-service body (the case study: "results are published by one
designated body"), not under any bank's consent. The run is recorded as such in the
ledger (``market_rating_run``: run id, legal basis, population, grade counts and a
SHA-256 commitment over every (enterprise, grade) pair, so an enterprise holding its own
pair can check it was in the run), the ratings stay inside the platform, and an enterprise
may opt out of pushes (never of the rating itself, which the legal basis covers).

A rating fall on an outstanding loan (GUARANTEED or ACTIVE) raises a warning to the
lending bank — and to the guarantee fund when the loan is guaranteed — within the run
that saw the fall (``market_warning`` entries, one per recipient).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from fedcredit.coordinator.rating import GRADES, grade_rank
from fedcredit.market.rules import Profile
from fedcredit.market.service import Marketplace
from fedcredit.market.store import Event, loans, profiles, warnings_t

LEGAL_BASIS = (
    "public credit service by the city's designated body (platform rating of registered "
    "enterprises from government records; no disclosure to any bank without the enterprise's consent)"
)
OUTSTANDING = ("GUARANTEED", "ACTIVE")
CHUNK = 5000


@dataclass
class RunReport:
    run_id: str
    rated: int
    grades: dict[str, int]
    commitment: str
    warnings: list[dict[str, Any]] = field(default_factory=list)
    ledger_index: int = 0


def commitment(rows: Sequence[Profile]) -> str:
    h = hashlib.sha256()
    for p in sorted(rows, key=lambda p: p.enterprise):
        h.update(f"{p.enterprise}:{p.grade}\n".encode())
    return h.hexdigest()


def _upsert(market: Marketplace, rows: Sequence[Profile], run_id: str) -> None:
    """One executemany of ``INSERT … ON CONFLICT DO UPDATE`` (both dialects), in one transaction."""
    ins_mod = postgresql if market.store.engine.dialect.name == "postgresql" else sqlite
    stmt = ins_mod.insert(profiles)
    ex = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[profiles.c.enterprise],
        set_={"industry": ex.industry, "region": ex.region, "headcount": ex.headcount,
              "prev_grade": profiles.c.grade, "grade": ex.grade, "pd_ppm": ex.pd_ppm,
              "run_id": ex.run_id},
    )  # fmt: skip
    with market.store.tx() as c:
        for i in range(0, len(rows), CHUNK):
            c.execute(stmt, [
                {"enterprise": p.enterprise, "industry": p.industry, "region": p.region,
                 "headcount": p.headcount, "grade": p.grade, "pd_ppm": p.pd_ppm,
                 "run_id": run_id, "push_opt_out": False}
                for p in rows[i : i + CHUNK]
            ])  # fmt: skip


def rate_city(market: Marketplace, run_id: str, rows: Sequence[Profile]) -> RunReport:
    """Store a rating run, ledger it under the platform's legal basis, warn on falls."""
    with market.store.tx() as c:
        before = {
            r.loan_id: (r.enterprise, r.bank, r.grade_now, r.application_id)
            for r in c.execute(
                select(loans.c.loan_id, loans.c.enterprise, loans.c.bank,
                       profiles.c.grade.label("grade_now"), loans.c.application_id)
                .join(profiles, profiles.c.enterprise == loans.c.enterprise)
                .where(loans.c.state.in_(OUTSTANDING))
            )
        }  # fmt: skip
    _upsert(market, rows, run_id)
    new = {p.enterprise: p.grade for p in rows}
    counts: dict[str, int] = dict.fromkeys(GRADES, 0)
    for p in rows:
        if p.grade in counts:
            counts[p.grade] += 1
    report = RunReport(run_id, len(rows), counts, commitment(rows))
    payload = {"event": "rating_run", "run_id": run_id, "legal_basis": LEGAL_BASIS,
               "rated": len(rows), "grades": counts, "commitment_sha256": report.commitment}  # fmt: skip
    report.ledger_index = market._change(
        "platform", f"rating-run:{run_id}", {"run": run_id, "c": report.commitment},
        lambda c: Event("market_rating_run", None, payload, {"run_id": run_id}),
    )["ledger_index"]  # fmt: skip
    for loan_id, (ent, bank, old, app) in sorted(before.items()):
        g = new.get(ent)
        if old and g and grade_rank(g) > grade_rank(old):
            report.warnings += _warn(market, run_id, loan_id, ent, bank, old, g, app is not None)
    return report


def _warn(market: Marketplace, run_id: str, loan_id: str, ent: str, bank: str,
          old: str, new: str, guaranteed: bool) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for recipient in [bank, *(["guarantee-fund"] if guaranteed else [])]:
        w = {"loan_id": loan_id, "recipient": recipient, "run_id": run_id,
             "from_grade": old, "to_grade": new}  # fmt: skip

        def apply(c: Any, w: dict[str, Any] = w) -> Event:
            c.execute(warnings_t.insert().values(**w))
            return Event("market_warning", ent, {"event": "rating_fall", **w}, w)

        out.append(market._change("platform", f"warn:{run_id}:{loan_id}:{recipient}", w, apply))
    return out


def warnings_for(market: Marketplace, recipient: str) -> list[dict[str, Any]]:
    with market.store.tx() as c:
        q = select(warnings_t).where(warnings_t.c.recipient == recipient).order_by(warnings_t.c.seq)
        return [dict(r) for r in c.execute(q).mappings()]


def set_opt_out(market: Marketplace, enterprise: str, opt_out: bool) -> None:
    with market.store.tx() as c:
        c.execute(
            update(profiles).where(profiles.c.enterprise == enterprise).values(push_opt_out=opt_out)
        )


def rating_of(market: Marketplace, enterprise: str) -> dict[str, Any]:
    """An enterprise's own platform rating, the run that made it and that run's ledger entry
    (legal basis, commitment): what the platform holds about it and why."""
    from fedcredit.market.errors import NeedNotFound
    from fedcredit.market.store import events

    with market.store.tx() as c:
        p = (
            c.execute(select(profiles).where(profiles.c.enterprise == enterprise))
            .mappings()
            .first()
        )
        if p is None:
            raise NeedNotFound("the platform has not rated this enterprise")
        run = c.execute(
            select(events.c.payload, events.c.ledger_index).where(
                events.c.event_key == f"platform:rating-run:{p['run_id']}"
            )
        ).first()
    return {
        "enterprise": enterprise, "grade": p["grade"], "previous_grade": p["prev_grade"],
        "pd_ppm": p["pd_ppm"], "run_id": p["run_id"], "push_opt_out": p["push_opt_out"],
        "legal_basis": LEGAL_BASIS, "run_ledger_index": run.ledger_index if run else None,
        "run_commitment_sha256": run.payload.get("commitment_sha256") if run else None,
    }  # fmt: skip
