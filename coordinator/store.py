"""The coordinator's SQLAlchemy store: model registry and guarantee fund books.

Tables:

* ``coord_model_versions`` — one row per published model version (text,
  SHA-256, features, metrics, trainer, time, calibration sample, thresholds,
  ledger indexes); ``coord_active_model`` — one row naming the active version.
  Activation updates both in one transaction, so a reader sees the old or the
  new version, never a mix.
* ``coord_fund`` — one row with the fund's running exposure and payouts (its
  ``seq`` column is bumped first in every fund transaction so concurrent
  decisions serialise: SQLite takes its write lock, PostgreSQL the row lock).
* ``coord_guarantees`` — one row per (bank, application id): the idempotency key, chosen
  by the bank, scoped to it (issue 19 review): another bank's id is another application,
  so no bank can read, probe or block another's ids. A table of an earlier version (keyed
  by the application id alone) is rebuilt with its rows on open (:func:`scope_guarantee_ids`).

Works on SQLite and PostgreSQL (tested with the ``db_url`` fixture).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from fedcredit.common.db import add_missing_columns, create_schema, make_engine
from fedcredit.common.errors import StoreUnavailable
from fedcredit.coordinator.errors import (
    ApplicationConflict,
    ApplicationInProgress,
    ApplicationNotFound,
    GuaranteeNotActive,
    ModelVersionExists,
    ModelVersionNotFound,
)
from fedcredit.coordinator.policy import Decision, FundPolicy, FundState
from fedcredit.coordinator.rating import Thresholds

metadata = MetaData()

model_versions = Table(
    "coord_model_versions",
    metadata,
    Column("version", String(128), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("model_text", Text, nullable=False),
    Column("features_json", Text, nullable=False),
    Column("metrics_json", Text, nullable=False),
    Column("settings_json", Text, nullable=False),
    Column("trainer", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("calibration", LargeBinary, nullable=False),  # float64 little-endian PDs
    Column("th_a", Float, nullable=False),
    Column("th_b", Float, nullable=False),
    Column("th_c", Float, nullable=False),
    Column("grade_counts_json", Text, nullable=False),
    Column("publish_ledger_index", BigInteger, nullable=False),
    Column("activate_ledger_index", BigInteger),
    Column("activated_at", BigInteger),
    # Private training runs: {"epsilon", "delta", ...} as JSON; NULL without noise.
    Column("privacy_json", Text),
)
# Columns added since the first release (nullable): (table, column, SQL type).
ADDED_COLUMNS = (("coord_model_versions", "privacy_json", "TEXT"),)  # issue 15

active_model = Table(
    "coord_active_model",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", String(128), ForeignKey("coord_model_versions.version"), nullable=False),
    Column("activated_at", BigInteger, nullable=False),
)

fund = Table(
    "coord_fund",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("exposure", BigInteger, nullable=False),
    Column("paid_out", BigInteger, nullable=False),
)

guarantees = Table(
    "coord_guarantees",
    metadata,
    Column("bank", String(128), primary_key=True),
    Column("application_id", String(128), primary_key=True),
    Column("enterprise", String(18), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("term_months", Integer, nullable=False),
    Column("collateral_offered", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # PENDING, REFUSED, ACTIVE, RELEASED, DEFAULTED
    Column("approved", Boolean, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("explanation", Text, nullable=False),
    Column("rating", String(1), nullable=False),
    Column("pd", Float, nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("fund_share_bp", Integer, nullable=False),
    Column("bank_share_bp", Integer, nullable=False),
    Column("fund_amount", BigInteger, nullable=False),
    Column("collateral_required", BigInteger, nullable=False),
    Column("details_json", Text, nullable=False),  # reasons, missing categories, consent jti
    Column("ledger_index", BigInteger),
    Column("decided_at", BigInteger, nullable=False),
    Column("payout", BigInteger, nullable=False, default=0),
    Column("outcome_ledger_index", BigInteger),
    Column("closed_at", BigInteger),
)

# ScoreBatch items of batches with an id (resumable batches): one row per (bank, batch,
# request id), written when the item's use is about to be reserved (``use_index``: the
# item's rank among the batch's items with the same consent token, which names its use)
# and completed with the answer once the score_access entry is in the ledger.
batch_items = Table(
    "coord_batch_items",
    metadata,
    Column("bank", String(128), primary_key=True),
    Column("batch_id", String(128), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    Column("item_sha256", String(64), nullable=False),  # of enterprise + token: same item?
    Column("jti", String(128), nullable=False),
    Column("use_index", Integer, nullable=False),
    Column("result", LargeBinary),  # the ScoreResult as sent; NULL until decided
    Column("created_at", BigInteger, nullable=False),
    Column("decided_at", BigInteger),
    Index("ix_coord_batch_items_jti", "bank", "batch_id", "jti"),
)

GUARANTEE_STATUSES = ("PENDING", "REFUSED", "ACTIVE", "RELEASED", "DEFAULTED")


@dataclass(frozen=True)
class ModelRecord:
    version: str
    sha256: str
    features: tuple[str, ...]
    metrics: dict[str, Any]
    settings: dict[str, Any]
    trainer: str
    created_at: int
    thresholds: Thresholds
    grade_counts: dict[str, int]
    publish_ledger_index: int
    calibration: np.ndarray = field(repr=False)
    model_text: str | None = field(default=None, repr=False)
    active: bool = False
    activated_at: int | None = None
    activate_ledger_index: int | None = None
    # The training run's differential privacy ({"epsilon", "delta", ...}); None: no noise.
    privacy: dict[str, Any] | None = None


@dataclass(frozen=True)
class GuaranteeRecord:
    application_id: str
    bank: str
    enterprise: str
    amount: int
    term_months: int
    collateral_offered: int
    status: str
    decision: Decision
    pd: float
    model_version: str
    details: dict[str, Any]
    ledger_index: int | None
    decided_at: int
    payout: int = 0
    outcome_ledger_index: int | None = None
    closed_at: int | None = None

    def same_terms(
        self, bank: str, enterprise: str, amount: int, term: int, collateral: int
    ) -> bool:
        return (
            self.bank,
            self.enterprise,
            self.amount,
            self.term_months,
            self.collateral_offered,
        ) == (
            bank,
            enterprise,
            amount,
            term,
            collateral,
        )


@dataclass(frozen=True, slots=True)
class BatchItemRow:
    """What the store holds about one item of a batch."""

    item_sha256: str
    jti: str
    use_index: int
    result: bytes | None


@dataclass(frozen=True)
class FundBooks:
    exposure: int
    paid_out: int
    counts: dict[str, int]

    def state(self, policy: FundPolicy) -> FundState:
        return FundState(balance=policy.fund_size - self.paid_out, exposure=self.exposure)


class CoordinatorStore:
    """Model registry and fund books over one SQLAlchemy engine (sync; call from a thread in aio code)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> CoordinatorStore:
        engine = make_engine(url)
        store = cls(engine)
        store.create()
        return store

    def create(self) -> None:
        with self._guard():
            create_schema(self.engine, metadata)
            add_missing_columns(self.engine, ADDED_COLUMNS)
            scope_guarantee_ids(self.engine)
            try:
                with self.engine.begin() as conn:
                    if conn.execute(select(fund.c.id)).first() is None:
                        conn.execute(insert(fund).values(id=1, seq=0, exposure=0, paid_out=0))
            except IntegrityError:  # the row was created concurrently by another process
                pass

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise StoreUnavailable(
                f"the coordinator's database does not answer: {str(exc.orig).splitlines()[0]}"
            ) from exc

    # ------------------------------------------------------------ models
    def add_model(self, rec: ModelRecord) -> None:
        assert rec.model_text is not None
        with self._guard(), self.engine.begin() as conn:
            if conn.execute(
                select(model_versions.c.version).where(model_versions.c.version == rec.version)
            ).first():
                raise ModelVersionExists(f"model version {rec.version!r} is already registered")
            try:
                conn.execute(
                    insert(model_versions).values(
                        version=rec.version,
                        sha256=rec.sha256,
                        model_text=rec.model_text,
                        features_json=json.dumps(list(rec.features)),
                        metrics_json=json.dumps(rec.metrics, sort_keys=True),
                        settings_json=json.dumps(rec.settings, sort_keys=True),
                        trainer=rec.trainer,
                        created_at=rec.created_at,
                        calibration=np.asarray(rec.calibration, dtype="<f8").tobytes(),
                        th_a=rec.thresholds.a,
                        th_b=rec.thresholds.b,
                        th_c=rec.thresholds.c,
                        grade_counts_json=json.dumps(rec.grade_counts, sort_keys=True),
                        publish_ledger_index=rec.publish_ledger_index,
                        privacy_json=(
                            None if rec.privacy is None else json.dumps(rec.privacy, sort_keys=True)
                        ),
                    )
                )
            except IntegrityError as exc:
                raise ModelVersionExists(
                    f"model version {rec.version!r} is already registered"
                ) from exc

    def _model_from_row(self, row: Any, active_version: str | None, with_text: bool) -> ModelRecord:
        m = row._mapping
        return ModelRecord(
            version=m["version"],
            sha256=m["sha256"],
            features=tuple(json.loads(m["features_json"])),
            metrics=json.loads(m["metrics_json"]),
            settings=json.loads(m["settings_json"]),
            trainer=m["trainer"],
            created_at=int(m["created_at"]),
            thresholds=Thresholds(m["th_a"], m["th_b"], m["th_c"]),
            grade_counts=json.loads(m["grade_counts_json"]),
            publish_ledger_index=int(m["publish_ledger_index"]),
            calibration=np.frombuffer(m["calibration"], dtype="<f8"),
            model_text=m["model_text"] if with_text else None,
            active=m["version"] == active_version,
            activated_at=m["activated_at"],
            activate_ledger_index=m["activate_ledger_index"],
            privacy=json.loads(m["privacy_json"]) if m["privacy_json"] else None,
        )

    def _active_version(self, conn: Connection) -> str | None:
        row = conn.execute(select(active_model.c.version).where(active_model.c.id == 1)).first()
        return None if row is None else str(row[0])

    def get_model(self, version: str | None, *, with_text: bool = False) -> ModelRecord | None:
        """A version (``None``: the active one), or ``None`` when there is none."""
        with self._guard(), self.engine.connect() as conn:
            active = self._active_version(conn)
            version = version or active
            if version is None:
                return None
            row = conn.execute(
                select(model_versions).where(model_versions.c.version == version)
            ).first()
            return None if row is None else self._model_from_row(row, active, with_text)

    def require_model(self, version: str, *, with_text: bool = False) -> ModelRecord:
        rec = self.get_model(version, with_text=with_text)
        if rec is None:
            raise ModelVersionNotFound(f"no model version {version!r} in the registry")
        return rec

    def list_models(self) -> list[ModelRecord]:
        with self._guard(), self.engine.connect() as conn:
            active = self._active_version(conn)
            rows = conn.execute(
                select(model_versions).order_by(
                    model_versions.c.created_at, model_versions.c.version
                )
            )
            return [self._model_from_row(r, active, False) for r in rows]

    def active_version(self) -> str | None:
        with self._guard(), self.engine.connect() as conn:
            return self._active_version(conn)

    def activate(
        self,
        version: str,
        thresholds: Thresholds,
        grade_counts: dict[str, int],
        ledger_index: int,
        at: int,
    ) -> None:
        """Make ``version`` the active model with its re-calibrated thresholds, in one transaction."""
        with self._guard(), self.engine.begin() as conn:
            res = conn.execute(
                update(model_versions)
                .where(model_versions.c.version == version)
                .values(
                    th_a=thresholds.a,
                    th_b=thresholds.b,
                    th_c=thresholds.c,
                    grade_counts_json=json.dumps(grade_counts, sort_keys=True),
                    activate_ledger_index=ledger_index,
                    activated_at=at,
                )
            )
            if res.rowcount != 1:
                raise ModelVersionNotFound(f"no model version {version!r} in the registry")
            if (
                conn.execute(
                    update(active_model)
                    .where(active_model.c.id == 1)
                    .values(version=version, activated_at=at)
                ).rowcount
                == 0
            ):
                conn.execute(insert(active_model).values(id=1, version=version, activated_at=at))

    # ------------------------------------------------------------ resumable batches
    def batch_items(
        self, bank: str, batch_id: str, request_ids: Collection[str]
    ) -> dict[str, BatchItemRow]:
        """The stored rows of these request ids of a bank's batch (absent: never claimed)."""
        with self._guard(), self.engine.connect() as conn:
            return self._batch_rows(conn, bank, batch_id, request_ids)

    @staticmethod
    def _batch_rows(
        conn: Connection, bank: str, batch_id: str, request_ids: Collection[str]
    ) -> dict[str, BatchItemRow]:
        out: dict[str, BatchItemRow] = {}
        ids = list(request_ids)
        c = batch_items.c
        for k in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            rows = conn.execute(
                select(c.request_id, c.item_sha256, c.jti, c.use_index, c.result).where(
                    c.bank == bank, c.batch_id == batch_id, c.request_id.in_(ids[k : k + 500])
                )
            )
            for r in rows:
                out[r[0]] = BatchItemRow(r[1], r[2], int(r[3]), r[4])
        return out

    def claim_batch_items(
        self, bank: str, batch_id: str, items: Sequence[tuple[str, str, str]], now: int
    ) -> dict[str, BatchItemRow]:
        """Claim ``(request_id, item_sha256, jti)`` items of a batch before their uses are
        reserved: an item claimed before keeps its row (and use index); a new one gets the
        next use index of its token in the batch. The rows of every item, after it."""
        for attempt in range(3):
            try:
                with self._guard(), self.engine.begin() as conn:
                    return self._claim(conn, bank, batch_id, items, now)
            except IntegrityError:  # the same batch claimed concurrently: read again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _claim(
        self,
        conn: Connection,
        bank: str,
        batch_id: str,
        items: Sequence[tuple[str, str, str]],
        now: int,
    ) -> dict[str, BatchItemRow]:
        have = self._batch_rows(conn, bank, batch_id, [rid for rid, _, _ in items])
        new = [(rid, h, jti) for rid, h, jti in items if rid not in have]
        if not new:
            return have
        c = batch_items.c
        jtis = sorted({jti for _, _, jti in new})
        ranks: dict[str, int] = {}
        for k in range(0, len(jtis), 500):
            ranks.update(
                conn.execute(
                    select(c.jti, func.count())
                    .where(c.bank == bank, c.batch_id == batch_id, c.jti.in_(jtis[k : k + 500]))
                    .group_by(c.jti)
                ).all()
            )
        rows: list[dict[str, Any]] = []
        for rid, h, jti in new:
            if rid in have:  # a request id twice in one call: its first item holds it
                continue
            rank = int(ranks.get(jti, 0))
            ranks[jti] = rank + 1
            rows.append(
                {"bank": bank, "batch_id": batch_id, "request_id": rid, "item_sha256": h,
                 "jti": jti, "use_index": rank, "result": None, "created_at": now}
            )  # fmt: skip
            have[rid] = BatchItemRow(h, jti, rank, None)
        conn.execute(insert(batch_items), rows)
        return have

    def store_batch_results(
        self, bank: str, batch_id: str, results: Sequence[tuple[str, bytes]], now: int
    ) -> None:
        """The answers of claimed items (``(request_id, ScoreResult bytes)``), in one transaction."""
        if not results:
            return
        c = batch_items.c
        with self._guard(), self.engine.begin() as conn:
            conn.execute(
                update(batch_items)
                .where(
                    c.bank == bank,
                    c.batch_id == batch_id,
                    c.request_id == bindparam("rid"),
                    c.result.is_(None),
                )
                .values(result=bindparam("res"), decided_at=now),
                [{"rid": rid, "res": res} for rid, res in results],
            )

    # ------------------------------------------------------------ fund
    def _lock_fund(self, conn: Connection) -> FundBooks:
        conn.execute(update(fund).where(fund.c.id == 1).values(seq=fund.c.seq + 1))
        row = conn.execute(select(fund.c.exposure, fund.c.paid_out).where(fund.c.id == 1)).one()
        counts: dict[str, int] = dict(
            conn.execute(
                select(guarantees.c.status, func.count()).group_by(guarantees.c.status)
            ).all()
        )
        return FundBooks(
            exposure=int(row[0]),
            paid_out=int(row[1]),
            counts={k: int(v) for k, v in counts.items()},
        )

    def books(self) -> FundBooks:
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(select(fund.c.exposure, fund.c.paid_out).where(fund.c.id == 1)).one()
            counts: dict[str, int] = dict(
                conn.execute(
                    select(guarantees.c.status, func.count()).group_by(guarantees.c.status)
                ).all()
            )
            approved = conn.execute(
                select(func.count()).where(guarantees.c.approved.is_(True))
            ).scalar_one()
            out = {k: int(v) for k, v in counts.items()}
            out["APPROVED"] = int(approved)
            return FundBooks(exposure=int(row[0]), paid_out=int(row[1]), counts=out)

    def _guarantee_from_row(self, row: Any) -> GuaranteeRecord:
        m = row._mapping
        decision = Decision(
            approved=bool(m["approved"]),
            reason=m["reason"],
            explanation=m["explanation"],
            grade=m["rating"],
            fund_share_bp=int(m["fund_share_bp"]),
            bank_share_bp=int(m["bank_share_bp"]),
            fund_amount=int(m["fund_amount"]),
            collateral_required=int(m["collateral_required"]),
        )
        return GuaranteeRecord(
            application_id=m["application_id"],
            bank=m["bank"],
            enterprise=m["enterprise"],
            amount=int(m["amount"]),
            term_months=int(m["term_months"]),
            collateral_offered=int(m["collateral_offered"]),
            status=m["status"],
            decision=decision,
            pd=float(m["pd"]),
            model_version=m["model_version"],
            details=json.loads(m["details_json"]),
            ledger_index=m["ledger_index"],
            decided_at=int(m["decided_at"]),
            payout=int(m["payout"] or 0),
            outcome_ledger_index=m["outcome_ledger_index"],
            closed_at=m["closed_at"],
        )

    def get_guarantee(self, bank: str, application_id: str) -> GuaranteeRecord | None:
        """``bank``'s application ``application_id`` (None: this bank has none by that id)."""
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(select(guarantees).where(*_key(bank, application_id))).first()
            return None if row is None else self._guarantee_from_row(row)

    def list_guarantees(
        self, *, bank: str | None = None, enterprise: str | None = None, limit: int = 100
    ) -> list[GuaranteeRecord]:
        q = (
            select(guarantees)
            .order_by(guarantees.c.decided_at.desc(), guarantees.c.application_id)
            .limit(limit)
        )
        if bank is not None:
            q = q.where(guarantees.c.bank == bank)
        if enterprise:
            q = q.where(guarantees.c.enterprise == enterprise)
        with self._guard(), self.engine.connect() as conn:
            return [self._guarantee_from_row(r) for r in conn.execute(q)]

    def reserve(
        self,
        *,
        application_id: str,
        bank: str,
        enterprise: str,
        amount: int,
        term_months: int,
        collateral_offered: int,
        decide: Callable[[FundBooks], Decision],
        pd: float,
        model_version: str,
        details: dict[str, Any],
        now: int | None = None,
    ) -> tuple[GuaranteeRecord, bool]:
        """Decide and record an application as PENDING, reserving the fund's share if approved.

        ``decide(books) -> Decision`` runs inside the fund's lock, on the fund's books as
        they are then, so concurrent applications cannot together exceed the capacity.
        Returns ``(record, replayed)``; ``replayed`` is true when the
        application id was already decided (the stored record is returned).
        """
        now = int(time.time()) if now is None else now
        with self._guard(), self.engine.begin() as conn:
            books = self._lock_fund(conn)
            row = conn.execute(select(guarantees).where(*_key(bank, application_id))).first()
            if row is not None:
                rec = self._guarantee_from_row(row)
                check_replay(rec, bank, enterprise, amount, term_months, collateral_offered)
                return rec, True
            decision: Decision = decide(books)
            conn.execute(
                insert(guarantees).values(
                    application_id=application_id,
                    bank=bank,
                    enterprise=enterprise,
                    amount=amount,
                    term_months=term_months,
                    collateral_offered=collateral_offered,
                    status="PENDING",
                    approved=decision.approved,
                    reason=decision.reason,
                    explanation=decision.explanation,
                    rating=decision.grade,
                    pd=pd,
                    model_version=model_version,
                    fund_share_bp=decision.fund_share_bp,
                    bank_share_bp=decision.bank_share_bp,
                    fund_amount=decision.fund_amount,
                    collateral_required=decision.collateral_required,
                    details_json=json.dumps(details, sort_keys=True),
                    decided_at=now,
                    payout=0,
                )
            )
            if decision.approved:
                conn.execute(
                    update(fund)
                    .where(fund.c.id == 1)
                    .values(exposure=fund.c.exposure + decision.fund_amount)
                )
        rec = GuaranteeRecord(
            application_id=application_id,
            bank=bank,
            enterprise=enterprise,
            amount=amount,
            term_months=term_months,
            collateral_offered=collateral_offered,
            status="PENDING",
            decision=decision,
            pd=pd,
            model_version=model_version,
            details=details,
            ledger_index=None,
            decided_at=now,
        )
        return rec, False

    def pending_guarantees(self) -> list[GuaranteeRecord]:
        """Applications left PENDING (a crash between the ledger append and the final record)."""
        with self._guard(), self.engine.connect() as conn:
            rows = conn.execute(select(guarantees).where(guarantees.c.status == "PENDING"))
            return [self._guarantee_from_row(r) for r in rows]

    def abandon(self, bank: str, application_id: str) -> None:
        """Undo a PENDING reservation (its ledger entry could not be written)."""
        with self._guard(), self.engine.begin() as conn:
            self._lock_fund(conn)
            row = conn.execute(
                select(guarantees.c.approved, guarantees.c.fund_amount, guarantees.c.status).where(
                    *_key(bank, application_id)
                )
            ).first()
            if row is None or row[2] != "PENDING":
                return
            conn.execute(guarantees.delete().where(*_key(bank, application_id)))
            if row[0]:
                conn.execute(
                    update(fund)
                    .where(fund.c.id == 1)
                    .values(exposure=fund.c.exposure - int(row[1]))
                )

    def finalize(self, rec: GuaranteeRecord, ledger_index: int) -> GuaranteeRecord:
        status = "ACTIVE" if rec.decision.approved else "REFUSED"
        with self._guard(), self.engine.begin() as conn:
            conn.execute(
                update(guarantees)
                .where(*_key(rec.bank, rec.application_id), guarantees.c.status == "PENDING")
                .values(status=status, ledger_index=ledger_index)
            )
        return replace(rec, status=status, ledger_index=ledger_index)

    def close_guarantee(
        self,
        bank: str,
        application_id: str,
        *,
        status: str,
        payout: int,
        ledger_index: int,
        now: int | None = None,
    ) -> GuaranteeRecord:
        """Release (repaid) or default an ACTIVE guarantee: exposure freed, payout booked."""
        now = int(time.time()) if now is None else now
        with self._guard(), self.engine.begin() as conn:
            self._lock_fund(conn)
            row = conn.execute(select(guarantees).where(*_key(bank, application_id))).first()
            if row is None:
                raise ApplicationNotFound(f"no guarantee with application id {application_id!r}")
            rec = self._guarantee_from_row(row)
            if rec.status != "ACTIVE":
                raise GuaranteeNotActive(
                    f"guarantee {application_id!r} is {rec.status}; only an ACTIVE guarantee can be closed"
                )
            conn.execute(
                update(guarantees)
                .where(*_key(bank, application_id))
                .values(
                    status=status, payout=payout, outcome_ledger_index=ledger_index, closed_at=now
                )
            )
            conn.execute(
                update(fund)
                .where(fund.c.id == 1)
                .values(
                    exposure=fund.c.exposure - rec.decision.fund_amount,
                    paid_out=fund.c.paid_out + payout,
                )
            )
        return replace(
            rec, status=status, payout=payout, outcome_ledger_index=ledger_index, closed_at=now
        )


def check_replay(
    rec: GuaranteeRecord, bank: str, enterprise: str, amount: int, term: int, collateral: int
) -> None:
    """A retry (the same bank's application id: ids are per bank) must have the same
    terms; refuse otherwise."""
    if not rec.same_terms(bank, enterprise, amount, term, collateral):
        raise ApplicationConflict(
            f"application id {rec.application_id!r} was used for enterprise {rec.enterprise}, amount "
            f"{rec.amount:,} yuan, term {rec.term_months} months, collateral {rec.collateral_offered:,}; "
            f"got {enterprise}, {amount:,}, {term}, {collateral:,}"
        )
    if rec.status == "PENDING":
        raise ApplicationInProgress(
            f"application {rec.application_id!r} is being decided right now; retry in a moment"
        )


def _key(bank: str, application_id: str) -> tuple[Any, Any]:
    """The WHERE clause of one bank's application (ids are per bank)."""
    return guarantees.c.bank == bank, guarantees.c.application_id == application_id


def scope_guarantee_ids(engine: Engine) -> bool:
    """Rebuild a ``coord_guarantees`` table of an earlier version, keyed by the application
    id alone, with the key (bank, application id), keeping every row (they are unique under
    the narrower key too). True if it was rebuilt. Indexes and the old primary key's name
    are moved out of the way first (PostgreSQL's index names are per schema)."""
    insp = inspect(engine)
    if not insp.has_table("coord_guarantees"):
        return False
    pk = insp.get_pk_constraint("coord_guarantees")
    if list(pk.get("constrained_columns") or ()) != ["application_id"]:
        return False
    names = ", ".join(c.name for c in guarantees.columns)
    with engine.begin() as conn:
        for ix in insp.get_indexes("coord_guarantees"):
            conn.execute(text(f"DROP INDEX {ix['name']}"))
        conn.execute(text("ALTER TABLE coord_guarantees RENAME TO coord_guarantees_v1"))
        if pk.get("name") and engine.dialect.name == "postgresql":
            conn.execute(text(f"ALTER TABLE coord_guarantees_v1 RENAME CONSTRAINT {pk['name']} TO coord_guarantees_v1_pkey"))  # fmt: skip
        guarantees.create(conn)
        conn.execute(text(f"INSERT INTO coord_guarantees ({names}) SELECT {names} FROM coord_guarantees_v1"))  # fmt: skip
        conn.execute(text("DROP TABLE coord_guarantees_v1"))
    return True
