"""The marketplace's loan book on the coordinator's real guarantee path: the bank applies at
the coordinator with its guarantee consent, the marketplace reads the decision through the
coordinator's SDK (role market) and checks it against the loan; on default the bank reports
the outcome there, and the marketplace's claim pays the same share of the loss."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.tls import Identity
from fedcredit.coordinator.client import CoordinatorClient
from fedcredit.coordinator.policy import payout
from fedcredit.ledger.log import Log
from fedcredit.market.client import CoordinatorGuarantees
from fedcredit.market.errors import GuaranteeMismatch
from fedcredit.market.loans import LoanBook, check_books
from fedcredit.market.ratings import rate_city
from fedcredit.market.rules import Profile
from fedcredit.market.service import Marketplace
from fedcredit.market.store import MarketStore

from .conftest import BANK, City, ConsentEnv, Coord, start_coordinator, stop_coordinator


@pytest.fixture(scope="module")
def coord(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Coord]:
    c = start_coordinator(
        pki=pki, consent_env=consent_env, city=city, tmp=tmp_path_factory.mktemp("mcoord")
    )
    yield c
    stop_coordinator(c)


def test_loan_guaranteed_and_claimed_through_the_coordinator(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City, tmp_path: Path
) -> None:
    ent = city.codes[int(city.pds.argmin())]  # the city's best risk: a guarantee it will get
    bank = Identity(BANK, "bank", b"b" * 32)
    firm = Identity(ent, "enterprise", b"e" * 32)
    log = Log.open(
        f"sqlite:///{tmp_path}/ledger.sqlite",
        Ed25519PrivateKey.generate(),
        "ledger/m",
        actor="market",
    )
    coordinator = CoordinatorClient(coord.target, pki.issue("market", "market"), timeout=20)
    m = Marketplace(
        MarketStore(f"sqlite:///{tmp_path}/m.sqlite"),
        log,
        guarantees=CoordinatorGuarantees(coordinator),
    )
    try:
        rate_city(m, "r0", [Profile(ent, "C", "huancui", 30, "B", 30_000)])
        m.publish_product(bank, "p", {"product_id": "g1", "name": "guaranteed", "grade_floor": "C",
                                      "amount_min": 100_000, "amount_max": 5_000_000, "term_min": 6,
                                      "term_max": 36, "rate_min_bp": 300, "rate_max_bp": 600,
                                      "fund_guaranteed": True})  # fmt: skip
        need = m.post_need(firm, "n", 1_000_000, 12, "equipment")["need_id"]
        m.claim(bank, "c", need)
        m.offer(bank, "o", need, "g1", 420)
        loan = m.answer(firm, "a", need, accept=True)["loan_id"]
        _, gtoken = consent_env.grant(ent, purpose="guarantee")
        with CoordinatorClient(coord.target, pki.tls(BANK), timeout=20) as c:
            d = c.apply(application_id="mkt-1", enterprise=ent, token=gtoken, amount_yuan=1_000_000,
                        term_months=12, collateral_yuan=1_000_000)  # fmt: skip
            assert d.approved, d.explanation
            book = LoanBook(m)
            with pytest.raises(GuaranteeMismatch, match="no guarantee"):
                book.guarantee(bank, "g0", loan, "mkt-unknown")
            r = book.guarantee(bank, "g", loan, "mkt-1")
            assert (r["fund_share_bp"], r["fund_amount"]) == (d.fund_share_bp, d.fund_amount_yuan)
            book.step(bank, "d", loan, "disburse")
            book.step(bank, "r", loan, "repay", 250_000)
            book.step(bank, "df", loan, "default")
            with pytest.raises(GuaranteeMismatch, match="report the default there first"):
                book.claim(bank, "cl0", loan)
            c.report_outcome("mkt-1", defaulted=True, loss_yuan=750_000)
        paid = book.claim(bank, "cl", loan)["paid_out"]
        assert paid == payout(d.fund_share_bp, 750_000)
        stored = m.store.book()
        assert {
            k: stored[k] for k in ("exposure", "paid_out", "recovered", "guaranteed")
        } == check_books(m)
    finally:
        coordinator.close()
        log.close()
        m.store.close()
