"""The loan book: guarantee, disbursement, repayments, default, the fund's claim, recoveries.

Each move is one transaction: the loan row is locked, the state machine
(``market.rules.next_loan_state``) decides or refuses with the reason, the loan and the
fund's book move together, and the event goes to the ledger before the answer. The fund's
book therefore always equals the sums over the loans (``check_books``, property-tested
under concurrency): exposure = the fund amounts of live guaranteed loans, paid out = the
claims paid, recovered = the fund's parts of recoveries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, func, select, update

from fedcredit.common.tls import Identity
from fedcredit.market import rules
from fedcredit.market.errors import (
    GuaranteeMismatch,
    GuaranteeServiceUnavailable,
    LoanNotFound,
    NotYourLoan,
)
from fedcredit.market.rules import GuaranteeView
from fedcredit.market.service import Marketplace
from fedcredit.market.store import Event, loans

LIVE_GUARANTEED = ("GUARANTEED", "ACTIVE")


class LoanBook:
    def __init__(self, market: Marketplace) -> None:
        self.m = market

    def get(self, who: Identity, loan_id: str) -> dict[str, Any]:
        with self.m.store.tx() as c:
            row = self._row(c, loan_id)
        if who.org_id not in (row["bank"], row["enterprise"]) and who.role not in (
            "operator",
            "auditor",
        ):
            raise NotYourLoan(f"loan {loan_id} is not yours")
        return dict(row)

    def list(self, who: Identity, limit: int = 1000) -> list[dict[str, Any]]:
        col = loans.c.enterprise if who.role == "enterprise" else loans.c.bank
        q = select(loans).order_by(loans.c.loan_id).limit(limit)
        if who.role not in ("operator", "auditor"):
            q = q.where(col == who.org_id)
        with self.m.store.tx() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def _row(self, c: Connection, loan_id: str, lock: bool = False) -> Mapping[str, Any]:
        q = select(loans).where(loans.c.loan_id == loan_id)
        row = c.execute(self.m.store.for_update(c, q) if lock else q).mappings().first()
        if row is None:
            raise LoanNotFound(f"no loan {loan_id!r}")
        return dict(row)

    def step(
        self,
        bank: Identity,
        request_id: str,
        loan_id: str,
        event: str,
        amount: int = 0,
        guarantee: GuaranteeView | None = None,
    ) -> dict[str, Any]:
        """Move ``loan_id`` by ``event`` (see ``market.rules.LOAN_MACHINE``)."""

        def apply(c: Connection) -> Event:
            row = self._row(c, loan_id, lock=True)
            if row["bank"] != bank.org_id:
                raise NotYourLoan(f"loan {loan_id} belongs to another bank")
            facts = rules.LoanFacts(
                row["guaranteed_product"],
                row["application_id"] is not None,
                row["principal"],
                row["repaid"],
            )
            nxt = rules.next_loan_state(row["state"], event, facts, amount)
            values, book = self._effects(row, event, nxt, amount, guarantee)
            times = dict(row["times"])
            times.setdefault(nxt, self.m.now())
            c.execute(
                update(loans)
                .where(loans.c.loan_id == loan_id)
                .values(state=nxt, times=times, **values)
            )
            self.m.store.move_book(c, **book)
            payload = {"event": f"loan_{event}", "loan_id": loan_id, "need_id": row["need_id"],
                       "bank": bank.org_id, "enterprise": row["enterprise"], "from": row["state"],
                       "to": nxt, "amount": amount, **values, "fund": book}  # fmt: skip
            result = {"loan_id": loan_id, "state": nxt, **values, "fund": book}
            return Event("market_loan", row["enterprise"], payload, result)

        params = {"loan": loan_id, "event": event, "amount": amount,
                  "app": guarantee.application_id if guarantee else ""}  # fmt: skip
        return self.m._change(bank, request_id, params, apply)

    def _effects(
        self, row: Mapping[str, Any], event: str, nxt: str, amount: int, g: GuaranteeView | None
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """The loan's new figures and the fund book's deltas for one move."""
        if event == "guarantee":
            assert g is not None
            values = {"application_id": g.application_id, "grade": g.rating,
                      "fund_share_bp": g.fund_share_bp, "fund_amount": g.fund_amount}  # fmt: skip
            return values, {"exposure": g.fund_amount, "guaranteed": 1}
        live = row["application_id"] is not None and row["state"] in LIVE_GUARANTEED
        if event == "repay":
            book = {"exposure": -row["fund_amount"]} if nxt == "CLOSED" and live else {}
            return {"repaid": row["repaid"] + amount}, book
        if event == "cancel":
            return {}, {"exposure": -row["fund_amount"]} if live else {}
        if event == "default":
            loss = rules.loss_of(row["principal"], row["repaid"])
            return {"loss": loss}, {}
        if event == "claim":
            paid = rules.claim_payout(row["fund_share_bp"], row["loss"] - row["recovered"])
            return {"paid_out": paid}, {
                "exposure": -row["fund_amount"],
                "paid_out": paid,
                "claims": 1,
            }
        if event == "recover":
            if amount > row["loss"] - row["recovered"]:
                from fedcredit.market.errors import IllegalTransition

                raise IllegalTransition(
                    f"recoveries ({row['recovered'] + amount:,} yuan) would exceed the loss ({row['loss']:,})",
                    state=row["state"], event=event,
                )  # fmt: skip
            share = rules.recovery_share(
                row["fund_share_bp"], amount, row["paid_out"], row["fund_recovered"]
            )
            values = {
                "recovered": row["recovered"] + amount,
                "fund_recovered": row["fund_recovered"] + share,
            }
            return values, {"recovered": share}
        if event == "write_off":
            # a defaulted loan never claimed still holds the fund's exposure: release it
            held = row["application_id"] is not None and row["state"] == "DEFAULTED"
            return {}, {"exposure": -row["fund_amount"]} if held else {}
        return {}, {}

    # ------------------------------------------------------------ the coordinator's decision

    def guarantee(
        self, bank: Identity, request_id: str, loan_id: str, application_id: str
    ) -> dict[str, Any]:
        """Attach the coordinator's approved guarantee ``application_id`` to the loan."""
        if self.m.guarantees is None:
            raise GuaranteeServiceUnavailable(
                "this marketplace is not connected to the coordinator"
            )
        with self.m.store.tx() as c:
            row = self._row(c, loan_id)
        g = self.m.guarantees.get(row["enterprise"], application_id, row["bank"])
        self._check_guarantee(row, g, application_id)
        assert g is not None
        return self.step(bank, request_id, loan_id, "guarantee", guarantee=g)

    def claim(self, bank: Identity, request_id: str, loan_id: str) -> dict[str, Any]:
        """The fund's payout on a defaulted loan; the coordinator's guarantee must be DEFAULTED
        too (the bank reported the outcome there, which books the payout in its fund)."""
        with self.m.store.tx() as c:
            row = self._row(c, loan_id)
        if self.m.guarantees is not None and row["application_id"]:
            g = self.m.guarantees.get(row["enterprise"], row["application_id"], row["bank"])
            if g is None or g.status != "DEFAULTED":
                raise GuaranteeMismatch(
                    f"the coordinator's guarantee {row['application_id']} is "
                    f"{g.status if g else 'missing'}; report the default there first"
                )
        return self.step(bank, request_id, loan_id, "claim")

    @staticmethod
    def _check_guarantee(row: Mapping[str, Any], g: GuaranteeView | None, app: str) -> None:
        if g is None:
            raise GuaranteeMismatch(
                f"the coordinator has no guarantee {app!r} of this bank for this enterprise"
            )
        want = (row["bank"], row["enterprise"], row["principal"], row["term_months"])
        got = (g.bank, g.enterprise, g.amount, g.term_months)
        if want != got:
            raise GuaranteeMismatch(
                f"guarantee {app} is for (bank, enterprise, amount, term) {got}; the loan is {want}"
            )
        if not g.approved or g.status != "ACTIVE":
            raise GuaranteeMismatch(
                f"guarantee {app} is {g.status} ({g.reason}); only an approved, active guarantee backs a loan"
            )


def check_books(market: Marketplace) -> dict[str, int]:
    """The fund's book recomputed from the loans; equal to ``store.book()`` when consistent."""
    with market.store.tx() as c:
        exposure = c.execute(
            select(func.coalesce(func.sum(loans.c.fund_amount), 0)).where(
                loans.c.application_id.is_not(None),
                loans.c.state.in_([*LIVE_GUARANTEED, "DEFAULTED"]),
            )
        ).scalar()
        paid, recovered, guaranteed = c.execute(
            select(
                func.coalesce(func.sum(loans.c.paid_out), 0),
                func.coalesce(func.sum(loans.c.fund_recovered), 0),
                func.count(loans.c.application_id),
            )
        ).one()
    return {"exposure": int(exposure or 0), "guaranteed": int(guaranteed), "paid_out": int(paid),
            "recovered": int(recovered)}  # fmt: skip


def _stats(xs: list[int], limit: int) -> dict[str, Any]:
    xs = sorted(xs)
    if not xs:
        return {"n": 0, "limit_s": limit}
    pct = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {"n": len(xs), "p50_s": pct(0.5), "p95_s": pct(0.95), "max_s": xs[-1],
            "limit_s": limit, "breaches": sum(x > limit for x in xs)}  # fmt: skip


def sla_report(market: Marketplace) -> dict[str, Any]:
    """Service-level timers from the loans' clocks: review (claim -> offer, case study ≤ 1 h),
    disbursement (acceptance -> money, ≤ 1 day) and need -> money end to end."""
    with market.store.tx() as c:
        rows = [dict(r) for r in c.execute(select(loans.c.times, loans.c.channel)).mappings()]
    review, disburse, total = [], [], []
    for r in rows:
        t = r["times"]
        if r["channel"] == "grab" and t.get("claimed") and t.get("offered"):
            review.append(t["offered"] - t["claimed"])
        if "ACTIVE" in t:
            disburse.append(t["ACTIVE"] - t["ACCEPTED"])
            total.append(t["ACTIVE"] - t["posted"])
    s = market.settings
    return {"review": _stats(review, s.review_sla_s), "disbursement": _stats(disburse, s.disbursement_sla_s),
            "need_to_money": _stats(total, s.review_sla_s + s.disbursement_sla_s)}  # fmt: skip
