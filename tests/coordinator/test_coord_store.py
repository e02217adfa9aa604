"""The coordinator store on SQLite and PostgreSQL: model registry rows, atomic activation, fund books."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fedcredit.coordinator.errors import (
    ApplicationConflict,
    ApplicationInProgress,
    GuaranteeNotActive,
    ModelVersionExists,
    ModelVersionNotFound,
)
from fedcredit.coordinator.policy import FundPolicy, decide
from fedcredit.coordinator.rating import Thresholds
from fedcredit.coordinator.store import CoordinatorStore, FundBooks, ModelRecord


def _model(version: str, created: int = 1) -> ModelRecord:
    return ModelRecord(
        version=version,
        sha256="ab" * 32,
        features=("f1", "f2"),
        metrics={"auc": 0.8},
        settings={"strategy": "hist"},
        trainer="coordinator",
        created_at=created,
        thresholds=Thresholds(0.01, 0.02, 0.05),
        grade_counts={"A": 1, "B": 2, "C": 3, "D": 4},
        publish_ledger_index=7,
        calibration=np.linspace(0, 1, 50),
        model_text="tree\nversion=v4\n",
    )


def test_models_roundtrip_and_atomic_activate(db_url: str) -> None:
    store = CoordinatorStore.open(db_url)
    try:
        assert store.get_model(None) is None
        store.add_model(_model("v1", 1))
        store.add_model(_model("v2", 2))
        with pytest.raises(ModelVersionExists):
            store.add_model(_model("v1"))
        got = store.require_model("v1", with_text=True)
        assert got.features == ("f1", "f2") and got.model_text == "tree\nversion=v4\n"
        assert np.allclose(got.calibration, np.linspace(0, 1, 50)) and not got.active
        store.activate("v1", Thresholds(0.1, 0.2, 0.3), {"A": 5}, 11, 100)
        assert store.active_version() == "v1"
        act = store.get_model(None)
        assert act is not None and act.version == "v1" and act.active
        assert act.thresholds == Thresholds(0.1, 0.2, 0.3) and act.activate_ledger_index == 11
        store.activate("v2", Thresholds(0.1, 0.2, 0.4), {"A": 5}, 12, 101)
        assert [m.version for m in store.list_models() if m.active] == ["v2"]
        with pytest.raises(ModelVersionNotFound):
            store.activate("nope", Thresholds(0.1, 0.2, 0.3), {}, 13, 102)
        assert store.active_version() == "v2"
    finally:
        store.close()


def _reserve(
    store: CoordinatorStore, app: str, grade: str, amount: int, bank: str = "bank-a"
) -> tuple:
    policy = FundPolicy(fund_size=1_000_000, max_leverage=2)
    return store.reserve(
        application_id=app,
        bank=bank,
        enterprise="91371000MA3C8ABCDX",
        amount=amount,
        term_months=12,
        collateral_offered=0,
        decide=lambda books: decide(
            policy,
            grade=grade,
            amount=amount,
            term_months=12,
            collateral_offered=0,
            state=books.state(policy),
        ),
        pd=0.01,
        model_version="v1",
        details={"jti": "j"},
    )


def test_model_privacy_roundtrip_and_column_added_to_an_earlier_store(db_url: str) -> None:
    """Issue 15: a private model's (epsilon, delta) is kept; a store created before the
    column existed gets it on open and keeps its rows (their privacy: none)."""
    from dataclasses import replace

    import sqlalchemy as sa

    store = CoordinatorStore.open(db_url)
    try:
        store.add_model(_model("old"))
        with store.engine.begin() as conn:  # the table as an earlier release created it
            conn.execute(sa.text("ALTER TABLE coord_model_versions DROP COLUMN privacy_json"))
    finally:
        store.close()
    store = CoordinatorStore.open(db_url)
    try:
        assert store.require_model("old").privacy is None
        dp = {"epsilon": 4.0, "delta": 1e-6, "noise_multiplier": 9.9}
        store.add_model(replace(_model("private"), privacy=dp))
        assert store.require_model("private").privacy == dp
        assert [m.privacy for m in store.list_models()] == [None, dp]
    finally:
        store.close()


def test_fund_books_reserve_finalize_close(db_url: str) -> None:
    store = CoordinatorStore.open(db_url)
    policy = FundPolicy(fund_size=1_000_000, max_leverage=2)
    try:
        rec, replayed = _reserve(store, "app-1", "A", 1_000_000)
        assert not replayed and rec.status == "PENDING" and rec.decision.fund_amount == 800_000
        assert store.books().exposure == 800_000
        with pytest.raises(ApplicationInProgress):
            _reserve(store, "app-1", "A", 1_000_000)
        store.finalize(rec, 5)
        again, replayed = _reserve(store, "app-1", "A", 1_000_000)
        assert replayed and again.status == "ACTIVE" and again.ledger_index == 5
        with pytest.raises(ApplicationConflict):
            _reserve(store, "app-1", "A", 999_999)
        # ids are per bank: bank-b's "app-1" is an application of its own (nothing about
        # bank-a's is revealed or blocked), decided and abandoned without touching bank-a's
        other, replayed = _reserve(store, "app-1", "B", 100_000, bank="bank-b")
        assert not replayed and other.bank == "bank-b" and other.amount == 100_000
        store.abandon("bank-b", "app-1")
        assert store.get_guarantee("bank-b", "app-1") is None
        assert store.get_guarantee("bank-a", "app-1").status == "ACTIVE"  # type: ignore[union-attr]
        # capacity 2,000,000 - 800,000 = 1,200,000: a 1,500,001 A loan (fund share 1,200,000.8) is refused
        big, _ = _reserve(store, "app-2", "A", 1_500_002)
        assert not big.decision.approved and big.decision.reason == "FUND_CAPACITY_EXCEEDED"
        store.finalize(big, 6)
        # abandon releases the reservation
        _reserve(store, "app-3", "B", 100_000)
        assert store.books().exposure == 860_000
        store.abandon("bank-a", "app-3")
        assert store.books().exposure == 800_000 and store.get_guarantee("bank-a", "app-3") is None
        closed = store.close_guarantee(
            "bank-a", "app-1", status="DEFAULTED", payout=400_000, ledger_index=9
        )
        assert closed.status == "DEFAULTED" and closed.payout == 400_000
        books: FundBooks = store.books()
        assert books.exposure == 0 and books.paid_out == 400_000
        assert books.state(policy).balance == 600_000
        assert (
            books.counts["DEFAULTED"] == 1
            and books.counts["REFUSED"] == 1
            and books.counts["APPROVED"] == 1
        )
        with pytest.raises(GuaranteeNotActive):
            store.close_guarantee("bank-a", "app-1", status="RELEASED", payout=0, ledger_index=10)
        assert {g.application_id for g in store.list_guarantees(bank="bank-a")} == {
            "app-1",
            "app-2",
        }
        assert store.list_guarantees(bank="bank-b") == []
    finally:
        store.close()


def test_concurrent_reservations_never_exceed_capacity(db_url: str) -> None:
    store = CoordinatorStore.open(db_url)
    try:
        # capacity 2,000,000; each A loan of 500,000 reserves 400,000: exactly 5 fit
        results: list[bool] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            rec, _ = _reserve(store, f"c-{k}", "A", 500_000)
            with lock:
                results.append(rec.decision.approved)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False] * 3 + [True] * 5
        assert store.books().exposure == 2_000_000
    finally:
        store.close()


def test_a_store_of_an_earlier_version_gets_per_bank_application_ids(db_url: str) -> None:
    """An earlier version keyed guarantees by the application id alone (one namespace for
    every bank). Opening its database rebuilds the table with the key (bank, application
    id), every row and the fund's books kept; then another bank may use the same id."""
    import sqlalchemy as sa

    from fedcredit.coordinator.store import guarantees

    old = sa.MetaData()
    cols = [sa.Column(c.name, c.type, nullable=c.nullable) for c in guarantees.columns]
    for c in cols:
        c.primary_key = c.name == "application_id"
        c.index = c.name in ("bank", "enterprise")
    sa.Table("coord_guarantees", old, *cols)
    store = CoordinatorStore.open(db_url)
    try:
        with store.engine.begin() as conn:  # the table as the earlier version created it
            conn.execute(sa.text("DROP TABLE coord_guarantees"))
        old.create_all(store.engine)
        rec, _ = _reserve(store, "app-1", "A", 1_000_000)
        store.finalize(rec, 5)
        pk = sa.inspect(store.engine).get_pk_constraint("coord_guarantees")["constrained_columns"]
        assert pk == ["application_id"]
    finally:
        store.close()
    store = CoordinatorStore.open(db_url)
    try:
        insp = sa.inspect(store.engine)
        assert sorted(insp.get_pk_constraint("coord_guarantees")["constrained_columns"]) == ["application_id", "bank"]  # fmt: skip
        kept = store.get_guarantee("bank-a", "app-1")
        assert kept is not None and kept.status == "ACTIVE" and kept.ledger_index == 5
        assert store.books().exposure == 800_000
        other, replayed = _reserve(store, "app-1", "B", 100_000, bank="bank-b")
        assert not replayed and other.bank == "bank-b"
        assert {(g.bank, g.application_id) for g in store.list_guarantees()} == {("bank-a", "app-1"), ("bank-b", "app-1")}  # fmt: skip
    finally:
        store.close()
    store = CoordinatorStore.open(db_url)  # opening again changes nothing
    try:
        assert len(store.list_guarantees()) == 2
    finally:
        store.close()
