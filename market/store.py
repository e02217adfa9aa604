"""The marketplace's store (SQLAlchemy 2.x Core; SQLite and PostgreSQL).

Every state change is one transaction that also writes its event to an outbox
(``market_events``), keyed by the caller's request id: a retry finds the event and gets
the same answer, and the event is published to the central ledger before anyone is
answered (:mod:`market.service`). Races are settled by the database: a claim is one
conditional ``UPDATE ... WHERE state = 'OPEN'`` (exactly one wins), a loan moves under
``SELECT ... FOR UPDATE`` (PostgreSQL) or the writer lock (SQLite, taken at ``BEGIN
IMMEDIATE`` so a transaction never has to upgrade a read snapshot), and the fund's book
moves by relative updates in the same transaction as the loan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from fedcredit.common.db import create_schema, is_sqlite, make_engine
from fedcredit.market.errors import RequestIdReused

metadata = MetaData()

profiles = Table(
    "market_profiles",
    metadata,
    Column("enterprise", String(32), primary_key=True),
    Column("industry", String(2), nullable=False),
    Column("region", String(64), nullable=False),
    Column("headcount", Integer, nullable=False),
    Column("grade", String(1)),
    Column("prev_grade", String(1)),
    Column("pd_ppm", Integer),
    Column("run_id", String(64)),
    Column("push_opt_out", Boolean, nullable=False, default=False),
)

products = Table(
    "market_products",
    metadata,
    Column("product_id", String(64), primary_key=True),
    Column("bank", String(128), nullable=False, index=True),
    Column("spec", JSON, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
)

needs = Table(
    "market_needs",
    metadata,
    Column("need_id", String(40), primary_key=True),
    Column("enterprise", String(32), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("term_months", Integer, nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("bank", String(128)),  # the claim's winner while CLAIMED/OFFERED/ACCEPTED
    Column("claim_until", BigInteger),
    Column("claimed_at", BigInteger),
    Column("offer", JSON),
    Column("offered_at", BigInteger),
    Column("declined_by", JSON, nullable=False),
    Column("consent_id", String(64)),  # marketplace consent the enterprise released to the winner
    Column("channel", String(8), nullable=False),  # grab | push
    Column("created_at", BigInteger, nullable=False),
    Column("closed_at", BigInteger),
)

loans = Table(
    "market_loans",
    metadata,
    Column("loan_id", String(40), primary_key=True),
    Column("need_id", String(40), nullable=False, unique=True),
    Column("bank", String(128), nullable=False, index=True),
    Column("enterprise", String(32), nullable=False, index=True),
    Column("product_id", String(64), nullable=False),
    Column("principal", BigInteger, nullable=False),
    Column("term_months", Integer, nullable=False),
    Column("rate_bp", Integer, nullable=False),
    Column("guaranteed_product", Boolean, nullable=False),
    Column("channel", String(8), nullable=False),  # grab | push
    Column("state", String(16), nullable=False, index=True),
    Column("application_id", String(128)),
    Column("grade", String(1)),
    Column("fund_share_bp", Integer, nullable=False, default=0),
    Column("fund_amount", BigInteger, nullable=False, default=0),
    Column("repaid", BigInteger, nullable=False, default=0),
    Column("loss", BigInteger, nullable=False, default=0),
    Column("paid_out", BigInteger, nullable=False, default=0),
    Column("recovered", BigInteger, nullable=False, default=0),
    Column("fund_recovered", BigInteger, nullable=False, default=0),
    Column("times", JSON, nullable=False),  # state -> unix seconds it was entered
)

fund_book = Table(
    "market_fund_book",
    metadata,
    Column("fund", String(32), primary_key=True),
    Column("exposure", BigInteger, nullable=False, default=0),
    Column("guaranteed", BigInteger, nullable=False, default=0),
    Column("paid_out", BigInteger, nullable=False, default=0),
    Column("recovered", BigInteger, nullable=False, default=0),
    Column("claims", Integer, nullable=False, default=0),
)

events = Table(
    "market_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_key", String(300), nullable=False, unique=True),
    Column("request_hash", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", String(64)),
    Column("payload", JSON, nullable=False),
    Column("result", JSON, nullable=False),
    Column("ledger_index", BigInteger),
    Index("ix_market_events_unpublished", "ledger_index"),
)

warnings_t = Table(
    "market_warnings",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("loan_id", String(40), nullable=False, index=True),
    Column("recipient", String(128), nullable=False, index=True),
    Column("run_id", String(64), nullable=False),
    Column("from_grade", String(1), nullable=False),
    Column("to_grade", String(1), nullable=False),
)

leads = Table(
    "market_leads",
    metadata,
    Column("lead_id", String(40), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("bank", String(128), nullable=False, index=True),
    Column("enterprise", String(32), nullable=False, index=True),
    Column("product_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # PUSHED | OFFERED
    Column("need_id", String(40)),
)

inv_funds = Table(
    "market_inv_funds",
    metadata,
    Column("fund_id", String(64), primary_key=True),
    Column("manager", String(128), nullable=False, index=True),
    Column("spec", JSON, nullable=False),
)

inv_apps = Table(
    "market_inv_applications",
    metadata,
    Column("app_id", String(40), primary_key=True),
    Column("fund_id", String(64), nullable=False, index=True),
    Column("enterprise", String(32), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("plan", String(2000), nullable=False),
    Column("consent_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(64)),
    Column("note", String(500)),
    Column("invested", BigInteger, nullable=False, default=0),
    Column("milestones", JSON, nullable=False),
    Column("times", JSON, nullable=False),
)

FUND = "guarantee"


def request_hash(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Event:
    """A state change to ledger: (kind, subject, payload); ``result`` is what the caller got."""

    kind: str
    subject: str | None
    payload: Mapping[str, Any]
    result: Mapping[str, Any]


@dataclass(frozen=True)
class Stored:
    seq: int
    result: Mapping[str, Any]
    ledger_index: int | None
    replayed: bool


class MarketStore:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        if is_sqlite(self.engine):
            # Every transaction takes the writer lock at once: no snapshot upgrade can fail.
            @event.listens_for(self.engine, "connect")
            def _autocommit_driver(dbapi_conn: Any, _rec: Any) -> None:
                dbapi_conn.isolation_level = None

            @event.listens_for(self.engine, "begin")
            def _immediate(conn: Connection) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        create_schema(self.engine, metadata)
        with self.tx() as c:
            if c.execute(select(fund_book.c.fund).where(fund_book.c.fund == FUND)).first() is None:
                try:
                    with c.begin_nested():
                        c.execute(insert(fund_book).values(fund=FUND))
                except IntegrityError:
                    pass

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def for_update(self, conn: Connection, q: Any) -> Any:
        return q if is_sqlite(self.engine) else q.with_for_update()

    # ------------------------------------------------------------ the outbox

    def replay(self, conn: Connection, key: str, params: Mapping[str, Any]) -> Stored | None:
        """The stored answer to a retried request, or None; a reused id with other
        parameters is refused."""
        row = conn.execute(
            select(
                events.c.seq, events.c.request_hash, events.c.result, events.c.ledger_index
            ).where(events.c.event_key == key)
        ).first()
        if row is None:
            return None
        if row.request_hash != request_hash(params):
            raise RequestIdReused(
                f"request id {key.split(':', 2)[-1]!r} was already used for a different request"
            )
        return Stored(row.seq, row.result, row.ledger_index, True)

    def record(self, conn: Connection, key: str, params: Mapping[str, Any], ev: Event) -> Stored:
        pk = conn.execute(
            insert(events).values(
                event_key=key,
                request_hash=request_hash(params),
                kind=ev.kind,
                subject=ev.subject,
                payload=dict(ev.payload),
                result=dict(ev.result),
            )
        ).inserted_primary_key
        assert pk is not None
        return Stored(int(pk[0]), ev.result, None, False)

    def unpublished(
        self, seqs: Sequence[int] | None = None
    ) -> list[tuple[int, str, str | None, Any]]:
        q = select(events.c.seq, events.c.kind, events.c.subject, events.c.payload).where(
            events.c.ledger_index.is_(None)
        )
        if seqs is not None:
            q = q.where(events.c.seq.in_(list(seqs)))
        with self.tx() as c:
            return [tuple(r) for r in c.execute(q.order_by(events.c.seq))]  # type: ignore[misc]

    def mark_published(self, pairs: Sequence[tuple[int, int]]) -> None:
        with self.tx() as c:
            for seq, index in pairs:
                c.execute(
                    update(events)
                    .where(events.c.seq == seq, events.c.ledger_index.is_(None))
                    .values(ledger_index=index)
                )

    def ledger_index(self, seq: int) -> int | None:
        with self.tx() as c:
            v = c.execute(select(events.c.ledger_index).where(events.c.seq == seq)).scalar()
        return None if v is None else int(v)

    def events_of(self, subject: str) -> list[dict[str, Any]]:
        q = select(events.c.kind, events.c.payload, events.c.ledger_index).where(
            events.c.subject == subject
        )
        with self.tx() as c:
            return [
                {"kind": r.kind, "payload": r.payload, "ledger_index": r.ledger_index}
                for r in c.execute(q.order_by(events.c.seq))
            ]

    # ------------------------------------------------------------ the fund's book

    def book(self, conn: Connection | None = None) -> dict[str, int]:
        q = select(fund_book).where(fund_book.c.fund == FUND)
        if conn is None:
            with self.tx() as c:
                row = c.execute(q).mappings().one()
        else:
            row = conn.execute(q).mappings().one()
        return {k: int(v) for k, v in row.items() if k != "fund"}

    def move_book(self, conn: Connection, **delta: int) -> None:
        """Relative update of the fund's book (atomic under concurrent writers)."""
        values = {k: getattr(fund_book.c, k) + v for k, v in delta.items() if v}
        if values:
            conn.execute(update(fund_book).where(fund_book.c.fund == FUND).values(**values))
