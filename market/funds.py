"""The government investment-fund market (政府性基金超市): funds publish criteria, enterprises
apply online, managers review the consented profile, decide with reasons and track
milestones; each fund's pipeline and performance are reported.

Who manages a fund is published with the fund (an operator publishes it). Managers are
financial institutions: their certificates carry the consent system's audience role
(``bank``), and the marketplace lets only the registered manager of a fund act on its
applications. The platform pre-screens an application against the fund's criteria with
the profile it holds (the enterprise alone learns which criterion it misses); the manager
sees the enterprise's identity, grade, PD and profile only by :func:`review`, under the
``investment_review`` consent the enterprise named in its application, verified against the
manager's own certificate and ledgered before it is answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, insert, select, update

from fedcredit.common.tls import Identity
from fedcredit.market import rules
from fedcredit.market.errors import (
    ConsentNotReleased,
    InvalidMarketRequest,
    InvalidProduct,
    NeedNotFound,
    NotYourNeed,
    ProductNotFound,
)
from fedcredit.market.service import Marketplace, new_id
from fedcredit.market.store import Event, inv_apps, inv_funds

INVESTMENT_PURPOSE = "investment_review"


def fund_from(spec: Mapping[str, Any]) -> rules.InvestmentFund:
    try:
        return rules.InvestmentFund(
            fund_id=str(spec["fund_id"]), manager=str(spec["manager"]), name=str(spec["name"]),
            industries=tuple(spec.get("industries") or ()), min_grade=str(spec["min_grade"]),
            size_bands=tuple(spec.get("size_bands") or ()), ticket_min=int(spec["ticket_min"]),
            ticket_max=int(spec["ticket_max"]), capacity=int(spec["capacity"]),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidProduct(f"fund spec is malformed: {type(exc).__name__}: {exc}") from None


def publish_fund(
    m: Marketplace, operator: Identity, request_id: str, spec: Mapping[str, Any]
) -> dict[str, Any]:
    fund = fund_from(spec)
    fund.check()

    def apply(c: Connection) -> Event:
        c.execute(
            insert(inv_funds).values(fund_id=fund.fund_id, manager=fund.manager, spec=dict(spec))
        )
        return Event(
            "market_fund",
            None,
            {"event": "fund_published", **dict(spec)},
            {"fund_id": fund.fund_id},
        )

    return m._change(operator, request_id, {"fund": dict(spec)}, apply)


def funds(m: Marketplace) -> list[dict[str, Any]]:
    with m.store.tx() as c:
        return [
            dict(s) for (s,) in c.execute(select(inv_funds.c.spec).order_by(inv_funds.c.fund_id))
        ]


def _fund(c: Connection, fund_id: str) -> rules.InvestmentFund:
    spec = c.execute(select(inv_funds.c.spec).where(inv_funds.c.fund_id == fund_id)).scalar()
    if spec is None:
        raise ProductNotFound(f"no investment fund {fund_id!r}")
    return fund_from(spec)


def apply_to_fund(
    m: Marketplace,
    ent: Identity,
    request_id: str,
    fund_id: str,
    amount: int,
    plan: str,
    consent_id: str,
) -> dict[str, Any]:
    """An enterprise applies, naming the ``investment_review`` consent it granted the manager."""
    if not consent_id or not plan.strip() or len(plan) > 2000:
        raise InvalidMarketRequest(
            "an application needs a consent id and a plan of 1-2,000 characters"
        )
    app_id = new_id("inv")

    def apply(c: Connection) -> Event:
        fund = _fund(c, fund_id)
        prof = m.profile(c, ent.org_id)
        if prof is None:
            raise InvalidMarketRequest("the platform holds no profile of this enterprise yet")
        misfits = rules.fund_misfits(fund, prof, amount)
        if misfits:
            raise InvalidMarketRequest(
                f"the application does not meet the fund's criteria: {', '.join(misfits)}",
                misfits=misfits,
            )
        now = m.now()
        c.execute(insert(inv_apps).values(
            app_id=app_id, fund_id=fund_id, enterprise=ent.org_id, amount=amount, plan=plan,
            consent_id=consent_id, state="SUBMITTED", milestones=[], times={"SUBMITTED": now}))  # fmt: skip
        payload = {"event": "fund_application", "app_id": app_id, "fund_id": fund_id, "amount": amount,
                   "consent_id": consent_id}  # fmt: skip
        return Event("market_fund", ent.org_id, payload, {"app_id": app_id, "state": "SUBMITTED"})

    return m._change(ent, request_id, {"fund": fund_id, "a": amount, "c": consent_id}, apply)


def _app(c: Connection, m: Marketplace, app_id: str, lock: bool = False) -> dict[str, Any]:
    q = select(inv_apps).where(inv_apps.c.app_id == app_id)
    row = c.execute(m.store.for_update(c, q) if lock else q).mappings().first()
    if row is None:
        raise NeedNotFound(f"no application {app_id!r}")
    return dict(row)


def _manager(c: Connection, manager: Identity, row: Mapping[str, Any]) -> rules.InvestmentFund:
    fund = _fund(c, row["fund_id"])
    if fund.manager != manager.org_id:
        raise NotYourNeed(
            f"application {row['app_id']} is for a fund {manager.org_id} does not manage"
        )
    return fund


def review(m: Marketplace, manager: Identity, app_id: str, token: str) -> dict[str, Any]:
    """The consented profile, to the fund's manager (the first review opens UNDER_REVIEW)."""
    with m.store.tx() as c:
        row = _app(c, m, app_id)
        _manager(c, manager, row)
        prof = m.profile(c, row["enterprise"])
    if m.verifier is None:
        raise ConsentNotReleased("this marketplace has no consent verifier configured")
    v = m.verifier.verify(token, bank_org=manager.org_id, bank_cert_sha256=manager.cert_sha256,
                          enterprise=row["enterprise"], purposes=[INVESTMENT_PURPOSE], count_use=True)  # fmt: skip
    if v.consent_id != row["consent_id"]:
        raise ConsentNotReleased(
            f"the token is for consent {v.consent_id}; the application names {row['consent_id']}"
        )
    assert prof is not None
    profile = {"app_id": app_id, "enterprise": prof.enterprise, "grade": prof.grade or "",
               "pd_ppm": prof.pd_ppm or 0, "industry": prof.industry, "region": prof.region,
               "headcount": prof.headcount, "amount": row["amount"], "plan": row["plan"]}  # fmt: skip

    def apply(c: Connection) -> Event:
        r = _app(c, m, app_id, lock=True)
        nxt = rules.next_app_state(r["state"], "review")
        c.execute(update(inv_apps).where(inv_apps.c.app_id == app_id).values(
            state=nxt, times={**r["times"], "UNDER_REVIEW": r["times"].get("UNDER_REVIEW", m.now())}))  # fmt: skip
        return Event("market_reveal", row["enterprise"], {"event": "fund_review", "app_id": app_id,
                     "manager": manager.org_id, "jti": v.jti}, profile)  # fmt: skip

    m._change(manager, f"review:{app_id}:{v.jti}:{v.uses}", {"review": app_id}, apply)
    return profile


def track(
    m: Marketplace, manager: Identity, request_id: str, app_id: str, event: str,
    reason: str = "", note: str = "", amount: int = 0, milestone: str = "",
) -> dict[str, Any]:  # fmt: skip
    """A manager's decision (accept / decline with a reason) or a tracked step (invest,
    milestone, complete)."""
    if event == "decline" and reason not in rules.DECLINE_REASONS:
        raise InvalidMarketRequest(
            f"a decline names one of {', '.join(rules.DECLINE_REASONS)}, got {reason!r}"
        )
    if event == "invest" and amount <= 0:
        raise InvalidMarketRequest(f"an investment needs a positive amount, got {amount}")

    def apply(c: Connection) -> Event:
        row = _app(c, m, app_id, lock=True)
        _manager(c, manager, row)
        nxt = rules.next_app_state(row["state"], event)
        values: dict[str, Any] = {
            "state": nxt,
            "times": {**row["times"], nxt: row["times"].get(nxt, m.now())},
        }
        if event == "decline":
            values.update(reason=reason, note=note[:500])
        if event == "invest":
            values["invested"] = amount
        if event in ("milestone", "complete"):
            values["milestones"] = [*row["milestones"], {"name": milestone or event, "at": m.now()}]
        c.execute(update(inv_apps).where(inv_apps.c.app_id == app_id).values(**values))
        payload = {"event": f"fund_{event}", "app_id": app_id, "fund_id": row["fund_id"],
                   "manager": manager.org_id, "reason": reason, "amount": amount, "milestone": milestone}  # fmt: skip
        return Event("market_fund", row["enterprise"], payload, {"app_id": app_id, "state": nxt})

    params = {"app": app_id, "e": event, "r": reason, "a": amount, "m": milestone}
    return m._change(manager, request_id, params, apply)


def withdraw(m: Marketplace, ent: Identity, request_id: str, app_id: str) -> dict[str, Any]:
    """The enterprise withdraws its application (before a decision)."""

    def apply(c: Connection) -> Event:
        row = _app(c, m, app_id, lock=True)
        if row["enterprise"] != ent.org_id:
            raise NotYourNeed(f"application {app_id} is not yours")
        nxt = rules.next_app_state(row["state"], "withdraw")
        c.execute(update(inv_apps).where(inv_apps.c.app_id == app_id).values(
            state=nxt, times={**row["times"], nxt: m.now()}))  # fmt: skip
        return Event("market_fund", ent.org_id, {"event": "fund_withdraw", "app_id": app_id},
                     {"app_id": app_id, "state": nxt})  # fmt: skip

    return m._change(ent, request_id, {"withdraw": app_id}, apply)


def require_manager(m: Marketplace, who: Identity, fund_id: str) -> None:
    with m.store.tx() as c:
        if _fund(c, fund_id).manager != who.org_id:
            raise NotYourNeed(f"{who.org_id} does not manage fund {fund_id}")


def pipeline(m: Marketplace, fund_id: str) -> dict[str, Any]:
    """A fund's pipeline and performance: applications by state, success rate (accepted of
    decided), decision cycle (submitted -> accept/decline) and the amount invested."""
    with m.store.tx() as c:
        rows = [
            dict(r)
            for r in c.execute(select(inv_apps).where(inv_apps.c.fund_id == fund_id)).mappings()
        ]
    by_state = {s: sum(r["state"] == s for r in rows) for s in rules.FUND_APP_STATES}
    decided = [r for r in rows if "ACCEPTED" in r["times"] or "DECLINED" in r["times"]]
    accepted = [r for r in decided if "ACCEPTED" in r["times"]]
    cycles = sorted(
        (r["times"].get("ACCEPTED") or r["times"]["DECLINED"]) - r["times"]["SUBMITTED"]
        for r in decided
    )
    return {"fund_id": fund_id, "applications": len(rows), "by_state": by_state,
            "success_rate": len(accepted) / len(decided) if decided else None,
            "decision_cycle_p50_h": cycles[len(cycles) // 2] / 3600 if cycles else None,
            "invested": sum(r["invested"] for r in rows),
            "decline_reasons": {k: sum(r["reason"] == k for r in rows) for k in rules.DECLINE_REASONS}}  # fmt: skip
