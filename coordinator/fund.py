"""The guarantee desk: consent-gated rating, the fund's rules, the fund's books, ledger first.

``Apply``: the enterprise is assessed with its ``guarantee`` consent (same
path as a score, no separate score entry), the fund's rules decide under the
fund's lock (so concurrent applications never exceed the capacity), the
decision is written to the ledger (``guarantee_decision``) and only then
recorded as final and answered. An application id already decided is
answered from the store — same decision, no new ledger entry.

``ReportOutcome``: a repaid loan releases the fund's exposure; a defaulted
one books the fund's share of the loss as a payout (``guarantee_outcome`` in
the ledger first).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from fedcredit.common.tls import Identity
from fedcredit.common.wire import via_field
from fedcredit.coordinator.errors import (
    ApplicationNotFound,
    GuaranteeNotActive,
    InvalidLoan,
)
from fedcredit.coordinator.gate import LedgerGate
from fedcredit.coordinator.policy import Decision, FundPolicy, check_loan, decide, payout
from fedcredit.coordinator.scoring import Assessment, ScoreItem, Scorer
from fedcredit.coordinator.store import CoordinatorStore, FundBooks, GuaranteeRecord, check_replay

APPLICATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True)
class FundStatus:
    policy: FundPolicy
    books: FundBooks

    def to_dict(self) -> dict[str, Any]:
        st = self.books.state(self.policy)
        c = self.books.counts
        return {
            "fund_size": self.policy.fund_size,
            "balance": st.balance,
            "exposure": st.exposure,
            "capacity": st.capacity(self.policy),
            "max_leverage": self.policy.max_leverage,
            "paid_out": self.books.paid_out,
            "active": c.get("ACTIVE", 0),
            "approved": c.get("APPROVED", 0),
            "refused": c.get("REFUSED", 0),
            "released": c.get("RELEASED", 0),
            "defaulted": c.get("DEFAULTED", 0),
        }


@dataclass(frozen=True)
class OutcomeAnswer:
    record: GuaranteeRecord
    replayed: bool


@dataclass(frozen=True, slots=True)
class Application:
    """A guarantee application's terms, as the bank sent them."""

    application_id: str
    enterprise: str
    amount: int
    term_months: int
    collateral: int

    def check(self, policy: FundPolicy) -> None:
        """Refuse a malformed application id or loan terms outside the fund's rules."""
        if not APPLICATION_ID_RE.match(self.application_id):
            raise InvalidLoan(
                f"application id {self.application_id!r} is not valid: expected 1-128 letters, digits, '.', '_', ':' or '-'"
            )
        check_loan(policy, self.amount, self.term_months, self.collateral)


def decision_entry(bank: Identity, app: Application, a: Assessment, d: Decision) -> dict[str, Any]:
    """The ``guarantee_decision`` ledger entry's payload."""
    return {
        "application_id": app.application_id,
        "bank": bank.org_id,
        "enterprise": app.enterprise,
        "jti": a.jti,
        "model_version": a.model_version,
        "rating": a.rating,
        "feature_hash": a.feature_hash,
        "amount": app.amount,
        "term_months": app.term_months,
        "collateral_offered": app.collateral,
        "approved": d.approved,
        "reason": d.reason,
        "fund_share_bp": d.fund_share_bp,
        "fund_amount": d.fund_amount,
        "collateral_required": d.collateral_required,
        **via_field(bank.via),  # "portal": a person's delegated session
    }


class GuaranteeDesk:
    def __init__(
        self, *, scorer: Scorer, gate: LedgerGate, store: CoordinatorStore, policy: FundPolicy
    ) -> None:
        self.scorer = scorer
        self.gate = gate
        self.store = store
        self.policy = policy
        # Striped locks: one bank's application id is decided by one task at a time here.
        self._stripes = [asyncio.Lock() for _ in range(256)]

    def _lock(self, bank: str, application_id: str) -> asyncio.Lock:
        return self._stripes[hash((bank, application_id)) % len(self._stripes)]

    async def apply(
        self,
        bank: Identity,
        *,
        application_id: str,
        enterprise: str,
        token: str,
        amount: int,
        term_months: int,
        collateral: int,
    ) -> tuple[GuaranteeRecord, bool]:
        app = Application(application_id, enterprise, amount, term_months, collateral)
        app.check(self.policy)
        async with self._lock(bank.org_id, application_id):
            existing = await asyncio.to_thread(
                self.store.get_guarantee, bank.org_id, application_id
            )
            if existing is not None:
                check_replay(existing, bank.org_id, enterprise, amount, term_months, collateral)
                return existing, True
            (assessed,) = await self.scorer.assess_many(
                bank, [ScoreItem(enterprise, token, application_id)], "guarantee"
            )
            if not isinstance(assessed, Assessment):
                raise assessed
            rec, replayed = await asyncio.to_thread(self._reserve, bank, app, assessed)
            if replayed:  # decided by another coordinator process meanwhile
                return rec, True
            try:
                index = await self.gate.append(
                    "guarantee_decision",
                    enterprise,
                    decision_entry(bank, app, assessed, rec.decision),
                )
            except BaseException:
                await asyncio.to_thread(self.store.abandon, bank.org_id, application_id)
                raise
            return await asyncio.to_thread(self.store.finalize, rec, index), False

    def _reserve(
        self, bank: Identity, app: Application, a: Assessment
    ) -> tuple[GuaranteeRecord, bool]:
        """Decide by the fund's rules under the fund's lock and record the decision PENDING."""

        def decide_now(books: FundBooks) -> Decision:
            return decide(
                self.policy,
                grade=a.rating,
                amount=app.amount,
                term_months=app.term_months,
                collateral_offered=app.collateral,
                state=books.state(self.policy),
            )

        return self.store.reserve(
            application_id=app.application_id,
            bank=bank.org_id,
            enterprise=app.enterprise,
            amount=app.amount,
            term_months=app.term_months,
            collateral_offered=app.collateral,
            decide=decide_now,
            pd=a.pd,
            model_version=a.model_version,
            details={
                "jti": a.jti,
                "reasons": [r.to_dict() for r in a.reasons],
                "missing_categories": a.missing_categories,
                "feature_hash": a.feature_hash,
            },
        )

    async def report_outcome(
        self, bank: Identity, *, application_id: str, defaulted: bool, loss: int
    ) -> OutcomeAnswer:
        async with self._lock(bank.org_id, application_id):
            # ids are per bank: another bank's id is simply not one of this bank's
            rec = await asyncio.to_thread(self.store.get_guarantee, bank.org_id, application_id)
            if rec is None:
                raise ApplicationNotFound(
                    f"{bank.org_id} has no guarantee with application id {application_id!r}"
                )
            wanted = "DEFAULTED" if defaulted else "RELEASED"
            if rec.status == wanted:
                return OutcomeAnswer(rec, True)
            if rec.status != "ACTIVE":
                raise GuaranteeNotActive(
                    f"guarantee {application_id!r} is {rec.status}; only an ACTIVE guarantee can be "
                    f"reported {wanted.lower()}"
                )
            paid = 0
            if defaulted:
                loss = loss or rec.amount
                if not 0 < loss <= rec.amount:
                    raise InvalidLoan(
                        f"the reported loss must be between 1 and the loan amount {rec.amount:,} yuan, got {loss:,}"
                    )
                paid = payout(rec.decision.fund_share_bp, loss)
            index = await self.gate.append(
                "guarantee_outcome",
                rec.enterprise,
                {
                    "application_id": application_id,
                    "bank": bank.org_id,
                    "enterprise": rec.enterprise,
                    "outcome": wanted,
                    "loss": loss if defaulted else 0,
                    "payout": paid,
                    "released_exposure": rec.decision.fund_amount,
                },
            )
            out = await asyncio.to_thread(
                lambda: self.store.close_guarantee(
                    bank.org_id, application_id, status=wanted, payout=paid, ledger_index=index
                )
            )
            return OutcomeAnswer(out, False)

    async def status(self) -> FundStatus:
        return FundStatus(self.policy, await asyncio.to_thread(self.store.books))


DecisionFinder = Callable[[str, str, str], "int | None"]


def recover_pending(
    store: CoordinatorStore, find_decision: DecisionFinder
) -> tuple[list[str], list[str]]:
    """Settle applications a crash left PENDING, from what the ledger says.

    The decision is appended to the ledger before it is recorded as final; if the
    coordinator died in between, the ledger is the judge: ``find_decision(bank, enterprise,
    application_id)`` returns the index of that application's ``guarantee_decision``
    entry, or None. Found: the decision is final (a retry gets it, no second entry).
    Not found: nothing was decided in public, so the reservation is undone.
    Returns (finalized, abandoned) application ids.
    """
    finalized: list[str] = []
    abandoned: list[str] = []
    for rec in store.pending_guarantees():
        index = find_decision(rec.bank, rec.enterprise, rec.application_id)
        if index is None:
            store.abandon(rec.bank, rec.application_id)
            abandoned.append(rec.application_id)
        else:
            store.finalize(rec, index)
            finalized.append(rec.application_id)
    return finalized, abandoned


class SubjectLog(Protocol):
    """What settling a crash reads from the central ledger (``ledger.client.LedgerClient``)."""

    def sign_checkpoint(self) -> str: ...

    def list_by_subject(self, subject: str) -> Iterable[Any]:
        """The subject's ``ListBySubject`` pages."""
        ...


def ledger_decision_finder(ledger: SubjectLog) -> DecisionFinder:
    """A :data:`DecisionFinder` over the central ledger client (``ListBySubject``, after a fresh checkpoint)."""
    from fedcredit.ledger.entry import Entry

    def find(bank: str, enterprise: str, application_id: str) -> int | None:
        ledger.sign_checkpoint()  # entries appended just before a crash are covered
        for page in ledger.list_by_subject(enterprise):
            for pe in page.entries:
                e = Entry.parse(bytes(pe.entry.data))
                if (
                    e.kind == "guarantee_decision"
                    and e.payload.get("application_id") == application_id
                    and e.payload.get("bank") == bank
                ):
                    return int(pe.entry.index)
        return None

    return find
