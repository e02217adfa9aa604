"""Pushes: after a rating run the platform pushes each bank pseudonymous leads — enterprises
its products may serve — and a bank may make an offer on a lead, which the enterprise
accepts or declines like any offer (channel ``push``).

A lead carries the same bands as a need (grade band, industry, region, size band) and a
random id; an enterprise that opted out gets none. Each bank gets at most
``max_per_bank`` leads a run (best grade first, then a per-run hash order, so no bank can
learn the population's full shape from one run). One ``market_push`` ledger entry per bank
and run records the count and a SHA-256 commitment over the enterprises pushed, so an
enterprise can check whether it was among them (``leads_about``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import Connection, insert, select, update

from fedcredit.common.tls import Identity
from fedcredit.coordinator.rating import GRADES
from fedcredit.market import rules
from fedcredit.market.errors import IllegalTransition, InvalidMarketRequest, NotYourNeed
from fedcredit.market.service import Marketplace, new_id
from fedcredit.market.store import Event, leads, needs, profiles

MAX_LEADS_PER_BANK = 500  # per bank per run; documented in the module docstring


def population(market: Marketplace) -> tuple[list[str], rules.Population, list[tuple[str, int]]]:
    """The rated enterprises that did not opt out, as columns (with industry/headcount)."""
    q = select(profiles.c.enterprise, profiles.c.grade, profiles.c.industry, profiles.c.region,
               profiles.c.headcount).where(profiles.c.grade.is_not(None),
                                           profiles.c.push_opt_out.is_(False))  # fmt: skip
    with market.store.tx() as c:
        rows = c.execute(q.order_by(profiles.c.enterprise)).all()
    regions = sorted({r.region for r in rows})
    ri = {r: i for i, r in enumerate(regions)}
    pop = rules.Population(
        grade_rank=np.array([GRADES.index(r.grade) for r in rows], dtype=np.int8),
        industry=np.array([rules.INDUSTRIES.index(r.industry) for r in rows], dtype=np.int8),
        region=np.array([ri[r.region] for r in rows], dtype=np.int16),
        amount=np.zeros(len(rows), dtype=np.int64),
        regions=tuple(regions),
    )
    return [r.enterprise for r in rows], pop, [(r.industry, r.headcount) for r in rows]


def run_order(run_id: str, codes: Sequence[str]) -> np.ndarray:
    """A per-run pseudo-random order key for every enterprise (ties within a grade)."""
    return np.array(
        [
            int.from_bytes(hashlib.sha256(f"{run_id}:{c}".encode()).digest()[:8], "big") >> 1
            for c in codes
        ],
        dtype=np.int64,
    )


def select_leads(
    order: np.ndarray, pop: rules.Population, mine: Sequence[rules.Product], cap: int
) -> list[tuple[int, str]]:
    """(row, product id) of the leads for one bank: best grade first, then ``order``."""
    best = np.full(order.shape[0], -1, dtype=np.int32)
    for i, prod in enumerate(mine):
        best = np.where((best < 0) & rules.eligible(prod, pop), i, best)
    rows = np.nonzero(best >= 0)[0]
    ranked = rows[np.lexsort((order[rows], pop.grade_rank[rows]))][:cap]
    return [(int(r), mine[int(best[r])].product_id) for r in ranked]


def push_leads(
    market: Marketplace, run_id: str, max_per_bank: int = MAX_LEADS_PER_BANK
) -> dict[str, int]:
    """Push every bank its leads for ``run_id`` (idempotent per run and bank)."""
    codes, pop, _ = population(market)
    by_bank: dict[str, list[rules.Product]] = {}
    for p in market.products():
        by_bank.setdefault(p.bank, []).append(p)
    out: dict[str, int] = {}
    order = run_order(run_id, codes)
    for bank, mine in sorted(by_bank.items()):
        chosen = select_leads(order, pop, mine, max_per_bank)
        ents = sorted(codes[r] for r, _ in chosen)
        commit = hashlib.sha256("\n".join(ents).encode()).hexdigest()

        def apply(c: Connection, chosen: list[tuple[int, str]] = chosen, bank: str = bank,
                  commit: str = commit) -> Event:  # fmt: skip
            if chosen:
                c.execute(insert(leads), [
                    {"lead_id": new_id("lead"), "run_id": run_id, "bank": bank,
                     "enterprise": codes[r], "product_id": pid, "state": "PUSHED"}
                    for r, pid in chosen])  # fmt: skip
            payload = {"event": "leads_pushed", "run_id": run_id, "bank": bank,
                       "count": len(chosen), "commitment_sha256": commit}  # fmt: skip
            return Event("market_push", None, payload, {"bank": bank, "count": len(chosen)})

        r = market._change("platform", f"push:{run_id}:{bank}", {"run": run_id, "c": commit}, apply)
        out[bank] = int(r["count"])
    return out


def leads_for(market: Marketplace, bank: Identity, limit: int = 500) -> list[dict[str, Any]]:
    """A bank's pushed leads, in bands only."""
    q = (
        select(leads.c.lead_id, leads.c.product_id, leads.c.run_id, profiles)
        .join(profiles, profiles.c.enterprise == leads.c.enterprise)
        .where(leads.c.bank == bank.org_id, leads.c.state == "PUSHED")
        .order_by(leads.c.lead_id).limit(limit)
    )  # fmt: skip
    with market.store.tx() as c:
        rows = c.execute(q).mappings().all()
    return [
        {"lead_id": r["lead_id"], "product_id": r["product_id"], "run_id": r["run_id"],
         **rules.pseudonymous(rules.Profile("", r["industry"], r["region"], r["headcount"], r["grade"]))}
        for r in rows
    ]  # fmt: skip


def leads_about(market: Marketplace, enterprise: Identity) -> list[dict[str, Any]]:
    """Which banks the platform pushed this enterprise to (its own view)."""
    q = select(leads.c.run_id, leads.c.bank, leads.c.product_id, leads.c.state).where(
        leads.c.enterprise == enterprise.org_id
    )
    with market.store.tx() as c:
        return [dict(r) for r in c.execute(q.order_by(leads.c.run_id)).mappings()]


def offer_on_lead(
    market: Marketplace, bank: Identity, request_id: str, lead_id: str,
    amount: int, term_months: int, rate_bp: int,
) -> dict[str, Any]:  # fmt: skip
    """A bank's offer on a pushed lead: a need in OFFERED, held by this bank, for the
    enterprise to accept or decline (``Marketplace.answer``)."""
    rules.Need(amount, term_months, "working_capital").check()

    def apply(c: Connection) -> Event:
        lead = (
            c.execute(market.store.for_update(c, select(leads).where(leads.c.lead_id == lead_id)))
            .mappings()
            .first()
        )
        if lead is None or lead["bank"] != bank.org_id:
            raise NotYourNeed(f"no lead {lead_id!r} was pushed to {bank.org_id}")
        if lead["state"] != "PUSHED":
            raise IllegalTransition(f"the lead is {lead['state']}; an offer was already made",
                                    state=lead["state"], event="offer")  # fmt: skip
        prod = market._product(c, bank.org_id, lead["product_id"])
        prof = market.profile(c, lead["enterprise"])
        if prof is None or not rules.matches(prod, prof, amount, term_months):
            raise InvalidMarketRequest("the offer's amount or term is outside the product's ranges")
        if not prod.rate_min_bp <= rate_bp <= prod.rate_max_bp:
            raise InvalidMarketRequest(
                f"rate must be within {prod.rate_min_bp}-{prod.rate_max_bp} bp"
            )
        now = market.now()
        until = now + market.settings.offer_validity_s
        need_id = new_id("need")
        offer = {"product_id": prod.product_id, "rate_bp": rate_bp, "amount": amount,
                 "term_months": term_months, "fund_guaranteed": prod.fund_guaranteed, "valid_until": until}  # fmt: skip
        c.execute(insert(needs).values(
            need_id=need_id, enterprise=lead["enterprise"], amount=amount, term_months=term_months,
            purpose="working_capital", state="OFFERED", bank=bank.org_id, claim_until=until,
            claimed_at=now, offer=offer, offered_at=now, declined_by=[], channel="push", created_at=now))  # fmt: skip
        c.execute(
            update(leads).where(leads.c.lead_id == lead_id).values(state="OFFERED", need_id=need_id)
        )
        payload = {
            "event": "lead_offer",
            "lead_id": lead_id,
            "need_id": need_id,
            "bank": bank.org_id,
            **offer,
        }
        return Event(
            "market_need", lead["enterprise"], payload, {"need_id": need_id, "state": "OFFERED"}
        )

    params = {"lead": lead_id, "a": amount, "t": term_months, "r": rate_bp}
    return market._change(bank, request_id, params, apply)
