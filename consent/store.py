"""The consent service's storage (SQLAlchemy 2 Core; SQLite and PostgreSQL).

Tables:

* ``consent_keys``     signing keys and their times (see :mod:`consent.keys`);
* ``consents``         one row per consent; its integer primary key is the
                       token's index in the status list;
* ``consent_events``   every state change, written in the same transaction
                       as the change (an outbox: each is then delivered to the
                       evidence sink and its receipt recorded);
* ``consent_evidence`` the store-backed evidence sink (hash-chained entries
                       with RFC 6962 leaf hashes) used until a ledger is configured.

Every method takes an open :class:`~sqlalchemy.Connection` from
:meth:`ConsentStore.begin` so one lifecycle step is one transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fedcredit.common.canonical import canonical_json
from fedcredit.common.db import create_schema, is_sqlite, make_engine
from fedcredit.common.errors import StoreUnavailable
from fedcredit.common.evidence import Receipt
from fedcredit.consent import idlist, statusidx
from fedcredit.consent.keys import KeyRecord
from fedcredit.consent.migrate import add_missing_columns
from fedcredit.consent.terms import ConsentView

log = logging.getLogger(__name__)

# Keys per IN (...) list: below every driver's bound-parameter limit.
IN_CHUNK = 500

T = TypeVar("T")

metadata = MetaData()

keys_t = Table(
    "consent_keys",
    metadata,
    Column("kid", String(128), primary_key=True),
    Column("private_pem", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("activate_at", BigInteger, nullable=False),
    Column("retired_at", BigInteger, nullable=True),
    Column("expires_at", BigInteger, nullable=True),
    Column("compromised_at", BigInteger, nullable=True),  # consent.migrate adds it to old stores
)

consents_t = Table(
    "consents",
    metadata,
    # = status-list index, drawn at random (consent.statusidx), never sequential
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("consent_id", String(40), nullable=False, unique=True),
    Column("enterprise", String(32), nullable=False),
    Column("bank", String(128), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("scope", Text, nullable=False),  # JSON list: categories or ["score_only"]
    Column("nodes", Text, nullable=False),  # JSON list of node org ids
    Column("max_uses", Integer, nullable=False),
    Column("uses", Integer, nullable=False, default=0),
    Column("retention_days", Integer, nullable=False),
    Column("validity_days", Integer, nullable=False),
    Column("loan_term_days", Integer, nullable=True),
    Column("state", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("not_before", BigInteger, nullable=True),
    Column("expires_at", BigInteger, nullable=False),  # for PENDING: when the request lapses
    Column("bank_x5t", String(64), nullable=True),
    Column("jti", String(40), nullable=True, unique=True),
    Column("token", Text, nullable=True),
    Column("replaces", String(40), nullable=True),
    Column("replaced_by", String(40), nullable=True),
    Column("requested_by", String(128), nullable=False),
)
Index("ix_consents_enterprise", consents_t.c.enterprise, consents_t.c.state)
Index("ix_consents_bank", consents_t.c.bank, consents_t.c.state)
Index("ix_consents_expiry", consents_t.c.state, consents_t.c.expires_at)

# One row per use of a consent: the bank's use id (one Score, one training fetch round),
# who opened it, and whether it is still reserved or committed. ``consents.uses`` counts
# these rows, so a token yields at most ``max_uses`` distinct use ids, whichever node or
# coordinator sees them.
uses_t = Table(
    "consent_uses",
    metadata,
    Column("jti", String(40), primary_key=True),
    Column("use_id", String(128), primary_key=True),
    Column("actor", String(128), nullable=False),  # org id that opened (reserved) the use
    Column("state", String(12), nullable=False),  # RESERVED | COMMITTED
    Column("opened_at", BigInteger, nullable=False),
)
# The lease reaper's scan: reservations opened before a cutoff (consent.uses.UseRecorder.reap).
Index("ix_consent_uses_lease", uses_t.c.state, uses_t.c.opened_at)

events_t = Table(
    "consent_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("consent_id", String(40), nullable=False, index=True),
    Column("event", String(24), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("actor_role", String(24), nullable=False),
    Column("subject", String(32), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),  # canonical JSON
    Column("ledger_index", BigInteger, nullable=True),
    Column("leaf_hash", LargeBinary, nullable=True),
)
Index("ix_events_pending", events_t.c.ledger_index, events_t.c.seq)

evidence_t = Table(
    "consent_evidence",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(48), nullable=False),
    Column("subject", String(32), nullable=True),
    Column("entry", LargeBinary, nullable=False),  # canonical JSON of the whole entry
    Column("leaf_hash", LargeBinary, nullable=False),
)


# Built once: per-call statement construction shows in the issuance profile.
_INSERT_CONSENT = insert(consents_t)
_INSERT_EVENT = insert(events_t)
_SET_TOKEN = update(consents_t).where(consents_t.c.consent_id == bindparam("cid"))


class _UseSql:
    """The statements that count uses, built once per dialect, each with its list of jtis
    bound as one parameter (:mod:`consent.idlist`): the same SQL text on every call, so
    SQLAlchemy compiles it once and the database reuses its plan. Named parameters:
    ``jtis`` (the list), ``uid`` (use id), ``who`` (the opener's org id), ``now``."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        c, u = consents_t.c, uses_t.c
        jtis = idlist.rows("jtis", dialect)
        in_c = idlist.member(c.jti, "jtis", dialect)
        in_u = idlist.member(u.jti, "jtis", dialect)
        uid, now = bindparam("uid", type_=String), bindparam("now", type_=BigInteger)
        mine = and_(u.use_id == uid, in_u, u.actor == bindparam("who", type_=String))
        # Each token's narrow row and its use under ``uid`` if open: ONE statement, so
        # both come from one snapshot (a use seen open has its count seen too).
        self.view = (
            select(*_USE_STATE_COLUMNS, u.actor, u.state, u.opened_at)
            .select_from(consents_t.outerjoin(uses_t, and_(u.jti == c.jti, u.use_id == uid)))
            .where(in_c)
        )
        self.rows = select(consents_t).where(in_c)
        self.uses = select(u.jti, u.actor, u.state, u.opened_at).where(and_(u.use_id == uid, in_u))
        # WHERE true: SQLite would read ON CONFLICT as a join's ON without it.
        opening = select(
            jtis.c.value, uid, bindparam("who", type_=String),
            bindparam("st", type_=String), now,
        ).select_from(jtis).where(true())  # fmt: skip
        self.insert = (
            _insert_for(dialect)
            .from_select(["jti", "use_id", "actor", "state", "opened_at"], opening)
            .on_conflict_do_nothing()
            .returning(u.jti)
        )
        usable = and_(in_c, c.state == "ACTIVE", c.uses < c.max_uses, c.expires_at > now)
        self.count = (
            update(consents_t)
            .where(usable)
            .values(uses=c.uses + 1, updated_at=bindparam("at", type_=BigInteger))
            .returning(c.jti, c.uses)
        )
        self.count_late = (
            update(consents_t)
            .where(and_(in_c, c.uses < c.max_uses))
            .values(uses=c.uses + 1, updated_at=now)
            .returning(c.jti, c.uses)
        )
        self.give_back = (
            update(consents_t).where(and_(in_c, c.uses > 0)).values(uses=c.uses - 1, updated_at=now)
        )
        self.drop = delete(uses_t).where(and_(u.use_id == uid, in_u))
        reserved = and_(mine, u.state == "RESERVED")
        self.commit = update(uses_t).where(reserved).values(state="COMMITTED").returning(u.jti)
        self.release = delete(uses_t).where(reserved).returning(u.jti)
        self.pin = (
            update(uses_t)
            .where(and_(u.use_id == uid, in_u, u.state == "RESERVED"))
            .values(state="COMMITTED")
        )

    def jtis(self, jtis: Sequence[str]) -> Any:
        """The value of the ``jtis`` parameter."""
        return idlist.value(jtis, self.dialect)


def _insert_for(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(uses_t)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(uses_t)


_USE_SQL: dict[str, _UseSql] = {}


def use_sql(conn: Connection) -> _UseSql:
    """The use statements for ``conn``'s dialect (built at its first use)."""
    name = conn.dialect.name
    sql = _USE_SQL.get(name)
    if sql is None:
        sql = _USE_SQL[name] = _UseSql(name)
    return sql


@dataclass(frozen=True, slots=True)
class ConsentRow:
    id: int
    consent_id: str
    enterprise: str
    bank: str
    purpose: str
    scope: list[str]
    nodes: list[str]
    max_uses: int
    uses: int
    retention_days: int
    validity_days: int
    loan_term_days: int | None
    state: str
    created_at: int
    updated_at: int
    not_before: int | None
    expires_at: int
    bank_x5t: str | None
    jti: str | None
    token: str | None
    replaces: str | None
    replaced_by: str | None
    requested_by: str

    @classmethod
    def from_mapping(cls, m: Any) -> ConsentRow:
        d = dict(m)
        d["scope"] = json.loads(d["scope"])
        d["nodes"] = json.loads(d["nodes"])
        return cls(**d)

    def view(self, *, with_token: bool = False) -> ConsentView:
        """The consent as its parties see it (the token only when asked for)."""
        return ConsentView(
            consent_id=self.consent_id,
            enterprise=self.enterprise,
            bank=self.bank,
            purpose=self.purpose,
            scope=self.scope,
            nodes=self.nodes,
            max_uses=self.max_uses,
            uses=self.uses,
            retention_days=self.retention_days,
            validity_days=self.validity_days,
            loan_term_days=self.loan_term_days,
            state=self.state,
            created_at=self.created_at,
            not_before=self.not_before,
            expires_at=self.expires_at,
            jti=self.jti,
            status_idx=self.id,
            replaces=self.replaces,
            replaced_by=self.replaced_by,
            token=self.token if with_token else None,
        )


@dataclass(frozen=True, slots=True)
class EventRow:
    seq: int
    consent_id: str
    event: str
    actor: str
    actor_role: str
    subject: str
    at: int
    payload: dict[str, Any]
    ledger_index: int | None


@dataclass(frozen=True, slots=True)
class UseState:
    """What counting a use reads of a consent (a narrow row: no token, no JSON to parse)."""

    jti: str
    consent_id: str
    enterprise: str
    bank: str
    state: str
    uses: int
    max_uses: int
    expires_at: int


_USE_STATE_COLUMNS = tuple(getattr(consents_t.c, f) for f in UseState.__slots__)


def _pending(limit: int) -> Any:
    """Events not yet delivered to the evidence sink, oldest first."""
    return (
        select(events_t)
        .where(events_t.c.ledger_index.is_(None))
        .order_by(events_t.c.seq)
        .limit(limit)
    )


class ConsentStore:
    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self._evidence_lock = threading.Lock()
        # SQLite has one writer at a time; contending threads would wait in its
        # busy handler's sleeps (milliseconds each). Queue them here instead.
        self._group: GroupCommitter | None = None
        self._sqlite_lock: threading.Lock | None = (
            threading.Lock() if is_sqlite(self.engine) else None
        )

    def create_schema(self) -> None:
        with self._guard():
            create_schema(self.engine, metadata)
            add_missing_columns(self.engine)
            # create_all adds indexes only with their table: a store from before the lease
            # reaper gets its index here.
            for index in uses_t.indexes:
                index.create(self.engine, checkfirst=True)
        with self.begin() as conn:  # rows of a store from before random indexes
            statusidx.migrate(conn, consents_t)

    def close(self) -> None:
        self.stop_group_commit()
        self.engine.dispose()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (OperationalError, PoolTimeout) as exc:
            # the driver's text (SQL, parameters) stays in the server's log
            log.warning("consent store error: %s", str(exc).splitlines()[0])
            raise StoreUnavailable("the consent store does not answer; retry later") from exc

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction; database outages become STORE_UNAVAILABLE."""
        if self._sqlite_lock is None:
            with self._guard(), self.engine.begin() as conn:
                yield conn
        else:
            with self._sqlite_lock, self._guard(), self.engine.begin() as conn:
                yield conn

    # --- group commit -------------------------------------------------------

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a transaction: its own, or one shared with concurrent callers
        when group commit is on (one fsync for a whole batch; each caller still gets
        its own result or error, and nothing of a failed call is committed)."""
        gc = self._group
        if gc is None:
            with self.begin() as conn:
                return fn(conn)
        return gc.submit(fn)

    def write_merged(
        self, key: str, fn: Callable[[Connection, list[Any]], list[T]], item: Any
    ) -> T:
        """Like :meth:`write` for calls that can share statements: ``fn(conn, items)`` handles
        several callers' items at once and returns one result per item, in order. Under
        group commit, consecutive queued calls with the same ``key`` are handed to ``fn``
        together (one multi-row statement instead of one per caller); alone, ``fn`` gets
        just this item."""
        gc = self._group
        if gc is None:
            with self.begin() as conn:
                return fn(conn, [item])[0]
        return gc.submit_merged(key, fn, item)

    def start_group_commit(self, max_batch: int = 256) -> None:
        if self._group is None:
            self._group = GroupCommitter(self, max_batch)

    def stop_group_commit(self) -> None:
        gc, self._group = self._group, None
        if gc is not None:
            gc.stop()

    # --- keys ---------------------------------------------------------------

    def load_keys(self) -> list[KeyRecord]:
        with self.begin() as conn:
            rows = conn.execute(select(keys_t)).mappings().all()
        return [KeyRecord(**dict(r)) for r in rows]

    def save_keys(
        self, conn: Connection, new: Iterable[KeyRecord], changed: Iterable[KeyRecord]
    ) -> None:
        for k in new:
            conn.execute(
                insert(keys_t).values(
                    kid=k.kid,
                    private_pem=k.private_pem,
                    created_at=k.created_at,
                    activate_at=k.activate_at,
                    retired_at=k.retired_at,
                    expires_at=k.expires_at,
                )
            )
        for k in changed:
            conn.execute(
                update(keys_t)
                .where(keys_t.c.kid == k.kid)
                .values(
                    retired_at=k.retired_at,
                    expires_at=k.expires_at,
                    compromised_at=k.compromised_at,
                )
            )

    # --- consents -----------------------------------------------------------

    def insert_consent(self, conn: Connection, values: Mapping[str, Any]) -> int:
        v = dict(values)
        v["scope"] = json.dumps(v["scope"])
        v["nodes"] = json.dumps(v["nodes"])
        v.setdefault("uses", 0)
        statusidx.assign(conn, consents_t, [v])
        # Parameters apart from the statement: the compiled INSERT is cached.
        result = conn.execute(_INSERT_CONSENT, v)
        pk = result.inserted_primary_key
        assert pk is not None
        return int(pk[0])

    def insert_consents(self, conn: Connection, values: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert several consents in one statement; their primary keys, in order."""
        if not values:
            return []
        if len(values) == 1:
            return [self.insert_consent(conn, values[0])]
        rows = []
        for v in values:
            d = dict(v)
            d["scope"] = json.dumps(d["scope"])
            d["nodes"] = json.dumps(d["nodes"])
            d.setdefault("uses", 0)
            rows.append(d)
        statusidx.assign(conn, consents_t, rows)
        # One multi-row INSERT ... RETURNING (SQLAlchemy "insertmanyvalues"); the
        # keys come back in parameter order, so each row learns its status index.
        result = conn.execute(
            insert(consents_t).returning(consents_t.c.id, sort_by_parameter_order=True), rows
        )
        return [int(r[0]) for r in result]

    def get(
        self, conn: Connection, consent_id: str, *, for_update: bool = False
    ) -> ConsentRow | None:
        q = select(consents_t).where(consents_t.c.consent_id == consent_id)
        if for_update:
            q = q.with_for_update()  # ignored by SQLite, whose writer lock serialises anyway
        row = conn.execute(q).mappings().first()
        return ConsentRow.from_mapping(row) if row is not None else None

    def get_by_jti(self, conn: Connection, jti: str) -> ConsentRow | None:
        row = conn.execute(select(consents_t).where(consents_t.c.jti == jti)).mappings().first()
        return ConsentRow.from_mapping(row) if row is not None else None

    def get_by_jtis(self, conn: Connection, jtis: Sequence[str]) -> dict[str, ConsentRow]:
        """The consents of these jtis (absent ones left out): one query for any number."""
        if not jtis:
            return {}
        sql = use_sql(conn)
        out: dict[str, ConsentRow] = {}
        for m in conn.execute(sql.rows, {"jtis": sql.jtis(jtis)}).mappings().all():
            row = ConsentRow.from_mapping(m)
            if row.jti is not None:
                out[row.jti] = row
        return out

    def use_states(self, conn: Connection, jtis: Sequence[str]) -> dict[str, UseState]:
        """:class:`UseState` of the consents of these jtis (absent ones left out)."""
        return self.use_view(conn, "", jtis)[0]

    def use_view(
        self, conn: Connection, use_id: str, jtis: Sequence[str]
    ) -> tuple[dict[str, UseState], dict[str, tuple[str, str, int]]]:
        """In one statement (one snapshot): the :class:`UseState` of the consents of these
        jtis (absent ones left out), and the uses already open under ``use_id`` among them
        (as :meth:`uses_of`). Narrow rows: a batch of 1,000 reads no token, parses no JSON."""
        states: dict[str, UseState] = {}
        held: dict[str, tuple[str, str, int]] = {}
        if not jtis:
            return states, held
        sql = use_sql(conn)
        for r in conn.execute(sql.view, {"jtis": sql.jtis(jtis), "uid": use_id}).all():
            states[r[0]] = UseState(*r[:8])
            if r[8] is not None:
                held[r[0]] = (r[8], r[9], int(r[10]))
        return states, held

    def update_consent(
        self,
        conn: Connection,
        consent_id: str,
        *,
        from_states: Sequence[str] | None = None,
        **values: Any,
    ) -> bool:
        """Conditional update (compare-and-set on the state); True if a row changed."""
        cond = consents_t.c.consent_id == consent_id
        if from_states is not None:
            cond = and_(cond, consents_t.c.state.in_(list(from_states)))
        return conn.execute(update(consents_t).where(cond).values(**values)).rowcount == 1

    def set_token(
        self, conn: Connection, consent_id: str, *, x5t: str, jti: str, token: str, now: int
    ) -> None:
        conn.execute(
            _SET_TOKEN,
            {"cid": consent_id, "bank_x5t": x5t, "jti": jti, "token": token, "updated_at": now},
        )

    def set_tokens(
        self, conn: Connection, tokens: Sequence[tuple[str, str, str, str, int]]
    ) -> None:
        """Several :meth:`set_token` at once (one executemany): (consent_id, x5t, jti, token, now)."""
        if not tokens:
            return
        params = [
            {"cid": cid, "bank_x5t": x5t, "jti": jti, "token": token, "updated_at": now}
            for cid, x5t, jti, token, now in tokens
        ]
        # One row: a plain execute (SQLAlchemy's executemany path costs more per call).
        conn.execute(_SET_TOKEN, params[0] if len(params) == 1 else params)

    def record_uses_many(
        self, conn: Connection, jtis: Sequence[str], now: int, updated_at: int
    ) -> dict[str, int]:
        """Count one use of each of these distinct jtis, atomically, where the consent is
        active, unexpired and has uses left; returns the count after it of each one counted."""
        if not jtis:
            return {}
        sql = use_sql(conn)
        params = {"jtis": sql.jtis(jtis), "now": now, "at": updated_at}
        return {jti: int(uses) for jti, uses in conn.execute(sql.count, params).all()}

    # --- uses (reserve, then commit or release) ---------------------------------

    def open_uses(
        self, conn: Connection, use_id: str, jtis: Sequence[str], actor: str, now: int
    ) -> dict[str, int]:
        """Open ``use_id`` for each of these jtis (the caller found none open under it),
        where the consent is active, unexpired and has uses left (the STORED
        ``max_uses``); returns the count after it of each one opened.

        The use rows are inserted first (ON CONFLICT DO NOTHING: a concurrent opener of the
        same use waits on our row, PostgreSQL, and then inserts nothing; only the rows
        inserted here are counted), then the counts are raised conditionally; a row whose
        count could not be raised is removed again, in the same transaction. Three
        statements for the whole batch (two when every use is counted).
        """
        if not jtis:
            return {}
        sql = use_sql(conn)
        # Sorted: concurrent openers insert (and so wait on) the use rows in one order.
        params = {"jtis": sql.jtis(sorted(jtis)), "uid": use_id, "who": actor, "st": "RESERVED"}
        fresh = [j for (j,) in conn.execute(sql.insert, {**params, "now": now}).all()]
        if not fresh:
            return {}
        counted = conn.execute(sql.count, {"jtis": sql.jtis(fresh), "now": now, "at": now})
        out = {jti: int(uses) for jti, uses in counted.all()}
        refused = [j for j in fresh if j not in out]
        if refused:
            conn.execute(sql.drop, {"jtis": sql.jtis(refused), "uid": use_id})
        return out

    def uses_of(
        self, conn: Connection, use_id: str, jtis: Sequence[str]
    ) -> dict[str, tuple[str, str, int]]:
        """The uses already open under ``use_id`` among ``jtis``: jti -> (actor, state, opened_at)."""
        if not jtis:
            return {}
        sql = use_sql(conn)
        rows = conn.execute(sql.uses, {"jtis": sql.jtis(jtis), "uid": use_id}).all()
        return {jti: (actor, state, int(opened)) for jti, actor, state, opened in rows}

    def settle_uses(
        self,
        conn: Connection,
        use_id: str,
        jtis: Sequence[str],
        actor: str,
        *,
        commit: bool,
        now: int,
    ) -> list[str]:
        """Commit (the answer reached the bank) or release (the work failed) the uses
        ``actor`` reserved under ``use_id``; a released use no longer counts. Uses another
        actor opened, or already committed, are left alone. Returns the jtis settled."""
        if not jtis:
            return []
        sql = use_sql(conn)
        params = {"jtis": sql.jtis(jtis), "uid": use_id, "who": actor}
        done = [j for (j,) in conn.execute(sql.commit if commit else sql.release, params).all()]
        if not commit and done:
            conn.execute(sql.give_back, {"jtis": sql.jtis(done), "now": now})
        return done

    def pin_uses(self, conn: Connection, use_id: str, jtis: Sequence[str]) -> None:
        """Commit the uses still reserved under ``use_id`` among ``jtis`` (a verifier that
        joined them disclosed to the bank: no one may give them back now)."""
        if not jtis:
            return
        sql = use_sql(conn)
        conn.execute(sql.pin, {"jtis": sql.jtis(list(dict.fromkeys(jtis))), "uid": use_id})

    def expired_reservations(
        self, conn: Connection, cutoff: int, limit: int
    ) -> list[tuple[str, str, str, int]]:
        """Uses still RESERVED that were opened at or before ``cutoff`` (oldest first, at
        most ``limit``): (jti, use_id, actor, opened_at)."""
        u = uses_t.c
        q = (
            select(u.jti, u.use_id, u.actor, u.opened_at)
            .where(and_(u.state == "RESERVED", u.opened_at <= cutoff))
            .order_by(u.opened_at)
            .limit(limit)
        )
        return [(j, uid, a, int(t)) for j, uid, a, t in conn.execute(q)]

    def release_reservations(
        self, conn: Connection, found: Sequence[tuple[str, str, str, int]], cutoff: int, now: int
    ) -> list[tuple[str, str, str, int]]:
        """Delete those of ``found`` that are STILL reserved and opened by ``cutoff`` (a
        settle that got there first wins: DELETE ... RETURNING hands each row to one
        caller), and give their uses back; the ones released."""
        u = uses_t.c
        gone: set[tuple[str, str]] = set()
        for i in range(0, len(found), IN_CHUNK):
            pairs = [(j, uid) for j, uid, _, _ in found[i : i + IN_CHUNK]]
            stmt = (
                delete(uses_t)
                .where(
                    and_(
                        tuple_(u.jti, u.use_id).in_(pairs),
                        u.state == "RESERVED",
                        u.opened_at <= cutoff,
                    )
                )
                .returning(u.jti, u.use_id)
            )
            gone.update((j, uid) for j, uid in conn.execute(stmt))
        released = [f for f in found if (f[0], f[1]) in gone]
        self._give_back(conn, [f[0] for f in released], now)
        return released

    def _give_back(self, conn: Connection, jtis: Sequence[str], now: int) -> None:
        """Lower each consent's count by the times its jti is listed (never below 0)."""
        c = consents_t.c
        by_n: dict[int, list[str]] = {}
        for jti, n in Counter(jtis).items():
            by_n.setdefault(n, []).append(jti)
        for n, group in by_n.items():
            for i in range(0, len(group), IN_CHUNK):
                conn.execute(
                    update(consents_t)
                    .where(c.jti.in_(group[i : i + IN_CHUNK]))
                    .values(uses=case((c.uses >= n, c.uses - n), else_=0), updated_at=now)
                )

    def released_by_lease(
        self, conn: Connection, consent_ids: Sequence[str]
    ) -> set[tuple[str, str, str]]:
        """(jti, use_id, reserved_by) of every use the lease reaper released for these
        consents (from their ``use_released`` events)."""
        e = events_t.c
        out: set[tuple[str, str, str]] = set()
        for i in range(0, len(consent_ids), IN_CHUNK):
            q = select(e.payload).where(
                and_(
                    e.consent_id.in_(list(consent_ids[i : i + IN_CHUNK])), e.event == "use_released"
                )
            )
            for (payload,) in conn.execute(q):
                p = json.loads(payload)
                out.add((p.get("jti"), p.get("use_id"), p.get("reserved_by")))
        return out

    def count_late_uses(
        self, conn: Connection, use_id: str, jtis: Sequence[str], actor: str, now: int
    ) -> dict[str, int]:
        """Record as COMMITTED, and count, uses committed after the reaper released them,
        where the consent still has a use left (the STORED ``max_uses``: a count never
        exceeds it); the count after it of each one counted."""
        if not jtis:
            return {}
        sql = use_sql(conn)
        params = {"jtis": sql.jtis(jtis), "uid": use_id, "who": actor, "st": "COMMITTED"}
        fresh = [j for (j,) in conn.execute(sql.insert, {**params, "now": now}).all()]
        if not fresh:
            return {}
        counted = conn.execute(sql.count_late, {"jtis": sql.jtis(fresh), "now": now})
        out = {j: int(n) for j, n in counted.all()}
        full = [j for j in fresh if j not in out]
        if full:
            conn.execute(sql.drop, {"jtis": sql.jtis(full), "uid": use_id})
        return out

    def list_consents(
        self,
        conn: Connection,
        *,
        enterprise: str | None = None,
        bank: str | None = None,
        states: Sequence[str] | None = None,
        expiring_before: int | None = None,
        limit: int = 1000,
    ) -> list[ConsentRow]:
        c = consents_t.c
        q = select(consents_t)
        if enterprise is not None:
            q = q.where(c.enterprise == enterprise)
        if bank is not None:
            q = q.where(c.bank == bank)
        if states:
            q = q.where(c.state.in_(list(states)))
        if expiring_before is not None:
            q = q.where(c.expires_at <= expiring_before).order_by(c.expires_at, c.consent_id)
        else:
            q = q.order_by(c.created_at, c.consent_id)  # ids are random: order by age
        rows = conn.execute(q.limit(limit)).mappings().all()
        return [ConsentRow.from_mapping(r) for r in rows]

    def due(self, conn: Connection, now: int, limit: int = 500) -> list[str]:
        c = consents_t.c
        q = (
            select(c.consent_id)
            .where(and_(c.state.in_(["PENDING", "ACTIVE", "PAUSED"]), c.expires_at <= now))
            .order_by(c.expires_at)
            .limit(limit)
        )
        return [r[0] for r in conn.execute(q)]

    def status_entries(self, conn: Connection) -> list[tuple[int, str]]:
        """(status index, state) of every consent that ever had a token slot."""
        c = consents_t.c
        return [(int(r[0]), str(r[1])) for r in conn.execute(select(c.id, c.state))]

    def count(self, conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(consents_t)).scalar_one())

    # --- events (outbox) ----------------------------------------------------

    def add_event(
        self,
        conn: Connection,
        *,
        consent_id: str,
        event: str,
        actor: str,
        actor_role: str,
        subject: str,
        at: int,
        payload: Mapping[str, Any],
    ) -> None:
        self.add_events(
            conn,
            [
                {
                    "consent_id": consent_id,
                    "event": event,
                    "actor": actor,
                    "actor_role": actor_role,
                    "subject": subject,
                    "at": at,
                    "payload": payload,
                }
            ],
        )

    def add_events(self, conn: Connection, events: Sequence[Mapping[str, Any]]) -> None:
        """Write events to the outbox in this transaction, in order (ascending ``seq``).

        Each mapping has the columns consent_id, event, actor, actor_role, subject, at,
        payload (a mapping).
        """
        if not events:
            return
        rows = []
        for e in events:
            r = dict(e)
            # The outbox copy; the evidence sink canonicalises (RFC 8785) what it signs.
            r["payload"] = json.dumps(dict(e["payload"]), sort_keys=True, separators=(",", ":"))
            rows.append(r)
        conn.execute(_INSERT_EVENT, rows[0] if len(rows) == 1 else rows)

    def pending_events(self, limit: int = 500) -> list[EventRow]:
        with self.begin() as conn:
            rows = conn.execute(_pending(limit)).mappings().all()
        return [_event(r) for r in rows]

    def events(
        self, *, consent_id: str | None = None, subject: str | None = None
    ) -> list[EventRow]:
        q = select(events_t).order_by(events_t.c.seq)
        if consent_id is not None:
            q = q.where(events_t.c.consent_id == consent_id)
        if subject is not None:
            q = q.where(events_t.c.subject == subject)
        with self.begin() as conn:
            return [_event(r) for r in conn.execute(q).mappings().all()]

    def mark_delivered(self, receipts: Sequence[tuple[int, Receipt]]) -> None:
        if not receipts:
            return
        with self.begin() as conn:
            self._mark(conn, receipts)

    @staticmethod
    def _mark(conn: Connection, receipts: Sequence[tuple[int, Receipt]]) -> None:
        conn.execute(
            update(events_t)
            .where(events_t.c.seq == bindparam("s"))
            .values(ledger_index=bindparam("li"), leaf_hash=bindparam("lh")),
            [{"s": seq, "li": r.index, "lh": r.leaf_hash} for seq, r in receipts],
        )

    def deliver_to_evidence(self, kind: str, limit: int = 500) -> int:
        """Move up to ``limit`` pending outbox events into the store's own evidence chain
        and mark them delivered in one write transaction (exactly once: both happen or
        neither); return how many.

        The entries are built between a short read and that write, so writers of
        consents never wait for the hashing. Another deliverer that got in between
        (another process on the same database) makes the write fail on the evidence
        primary key or on an event already marked: it rolls back and is retried.
        """
        with self._evidence_lock:
            with self.begin() as conn:
                rows = conn.execute(_pending(limit)).mappings().all()
                if not rows:
                    return 0
                last = self._last_evidence(conn)
            events = [_event(r) for r in rows]
            entries, receipts = _chain(last, [(kind, e.subject, e.payload) for e in events])
            with self.begin() as conn:
                if self._last_evidence(conn) != last:
                    raise StoreUnavailable("the evidence chain moved during delivery; retrying")
                conn.execute(insert(evidence_t), entries)
                marked = conn.execute(
                    update(events_t)
                    .where(
                        and_(events_t.c.seq == bindparam("s"), events_t.c.ledger_index.is_(None))
                    )
                    .values(ledger_index=bindparam("li"), leaf_hash=bindparam("lh")),
                    [
                        {"s": e.seq, "li": r.index, "lh": r.leaf_hash}
                        for e, r in zip(events, receipts, strict=True)
                    ],
                ).rowcount
                if marked != len(events):
                    raise StoreUnavailable("consent events were delivered concurrently; retrying")
        return len(events)

    @staticmethod
    def _last_evidence(conn: Connection) -> tuple[int, bytes] | None:
        last = conn.execute(
            select(evidence_t.c.idx, evidence_t.c.leaf_hash)
            .order_by(evidence_t.c.idx.desc())
            .limit(1)
        ).first()
        return None if last is None else (int(last[0]), bytes(last[1]))

    # --- store-backed evidence sink ----------------------------------------

    def append_evidence(
        self, items: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> list[Receipt]:
        """Append hash-chained entries in one transaction; leaf hash SHA-256(0x00 ‖ entry)
        as in RFC 6962 §2.1, each entry carrying the previous leaf hash."""
        with self._evidence_lock, self.begin() as conn:
            return self._append_evidence(conn, items)

    @classmethod
    def _append_evidence(
        cls, conn: Connection, items: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> list[Receipt]:
        rows, receipts = _chain(cls._last_evidence(conn), items)
        if rows:
            # A concurrent appender (another process on the same database) collides
            # on the primary key and rolls back.
            conn.execute(insert(evidence_t), rows)
        return receipts

    def evidence(self) -> list[tuple[int, bytes, bytes]]:
        with self.begin() as conn:
            rows = conn.execute(
                select(evidence_t.c.idx, evidence_t.c.entry, evidence_t.c.leaf_hash).order_by(
                    evidence_t.c.idx
                )
            ).all()
        return [(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]


# JCS (RFC 8785) serialises numbers as IEEE doubles: integers beyond 2**53 and
# floats need its number formatting; anything else below has a faster exact form.
_SAFE_INT = 2**53


def _plain(v: Any) -> bool:
    """True if ``v`` holds only str (keys ASCII), bool, None, safe ints, lists and dicts."""
    if v is None or isinstance(v, (str, bool)):
        return True
    if isinstance(v, int):
        return -_SAFE_INT < v < _SAFE_INT
    if isinstance(v, list):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and k.isascii() and _plain(x) for k, x in v.items())
    return False


def entry_json(obj: Any) -> bytes:
    """The RFC 8785 canonical bytes of an evidence entry, as :func:`common.canonical.canonical_json`.

    For the values events hold (strings, integers, lists, objects with ASCII keys)
    ``json.dumps`` with sorted keys and no ASCII escaping writes exactly the JCS
    bytes: the same escapes for quote, backslash and control characters (short forms
    for b f n r t, lowercase ``u00xx`` for the rest), and code-point order equals
    UTF-16 order for ASCII keys. It is ~10x cheaper than the pure-Python JCS encoder
    (tested equal on such values); anything else goes to that encoder.
    """
    if _plain(obj):
        try:
            return json.dumps(
                obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
        except UnicodeEncodeError:  # a lone surrogate: let the JCS encoder decide
            pass
    return canonical_json(obj)


def _chain(
    last: tuple[int, bytes] | None, items: Sequence[tuple[str, str | None, Mapping[str, Any]]]
) -> tuple[list[dict[str, Any]], list[Receipt]]:
    """Evidence rows continuing the chain after ``last`` (index, leaf hash): leaf hash
    SHA-256(0x00 ‖ entry) as in RFC 6962 §2.1, each entry carrying the previous leaf hash."""
    idx = 0 if last is None else last[0] + 1
    prev = b"\x00" * 32 if last is None else last[1]
    rows: list[dict[str, Any]] = []
    receipts: list[Receipt] = []
    for kind, subject, payload in items:
        entry = entry_json(
            {
                "index": idx,
                "kind": kind,
                "subject": subject,
                "payload": dict(payload),
                "prev": prev.hex(),
            }
        )
        leaf = hashlib.sha256(b"\x00" + entry).digest()
        rows.append(
            {"idx": idx, "kind": kind, "subject": subject, "entry": entry, "leaf_hash": leaf}
        )
        receipts.append(Receipt(index=idx, leaf_hash=leaf))
        idx, prev = idx + 1, leaf
    return rows, receipts


def _event(r: Any) -> EventRow:
    return EventRow(
        seq=r["seq"],
        consent_id=r["consent_id"],
        event=r["event"],
        actor=r["actor"],
        actor_role=r["actor_role"],
        subject=r["subject"],
        at=r["at"],
        payload=json.loads(r["payload"]),
        ledger_index=r["ledger_index"],
    )


class StoreEvidenceSink:
    """An :class:`common.evidence.EvidenceSink` writing to the consent store itself.

    Used until a ledger is configured; entries are hash-chained so tampering
    with the stored sequence is detectable (:func:`verify_evidence_chain`).
    """

    def __init__(self, store: ConsentStore) -> None:
        self.store = store

    def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> Receipt:
        return self.store.append_evidence([(kind, subject, payload)])[0]

    def append_many(
        self, items: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> list[Receipt]:
        return self.store.append_evidence(items)


def verify_evidence_chain(entries: Sequence[tuple[int, bytes, bytes]]) -> int | None:
    """Index of the first entry whose leaf hash, index or chain link is wrong; None if all good."""
    prev = b"\x00" * 32
    for pos, (idx, entry, leaf) in enumerate(entries):
        data = json.loads(entry)
        if idx != pos or data.get("index") != pos or data.get("prev") != prev.hex():
            return pos
        if hashlib.sha256(b"\x00" + entry).digest() != leaf:
            return pos
        prev = leaf
    return None


@dataclass(slots=True)
class _Call:
    """One queued call: ``fn(conn)``, or with ``key`` set, ``fn(conn, [item, ...])`` merged
    with its queued neighbours of the same key."""

    fn: Callable[..., Any]
    fut: Future[Any]
    key: str | None = None
    item: Any = None


class GroupCommitter:
    """One writer thread committing concurrent callers' work in shared transactions.

    A batch is whatever is queued when the writer gets to it (no waiting to fill
    it, so a lone caller pays only a thread hop). Consecutive merged calls (see
    :meth:`ConsentStore.write_merged`) run as one call with all their items. If
    anything in a batch raises, the batch is rolled back and every call is re-run
    in its own transaction, so one call's error never touches another's outcome.
    """

    def __init__(self, store: ConsentStore, max_batch: int) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.batches = 0
        self.calls = 0
        self._thread = threading.Thread(target=self._run, name="consent-group-commit", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Connection], T]) -> T:
        call = _Call(fn, Future())
        self._queue.put(call)
        return call.fut.result()  # type: ignore[no-any-return]

    def submit_merged(
        self, key: str, fn: Callable[[Connection, list[Any]], list[T]], item: Any
    ) -> T:
        call = _Call(fn, Future(), key, item)
        self._queue.put(call)
        return call.fut.result()  # type: ignore[no-any-return]

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._commit(batch)

    @staticmethod
    def _groups(batch: list[_Call]) -> list[list[_Call]]:
        groups: list[list[_Call]] = []
        for call in batch:
            prev = groups[-1][0] if groups else None
            if call.key is not None and prev is not None and prev.key == call.key:
                groups[-1].append(call)
            else:
                groups.append([call])
        return groups

    @staticmethod
    def _run_group(conn: Connection, group: list[_Call]) -> list[Any]:
        head = group[0]
        if head.key is None:
            return [head.fn(conn)]
        results = head.fn(conn, [c.item for c in group])
        if len(results) != len(group):
            raise RuntimeError(
                f"merged call returned {len(results)} results for {len(group)} items"
            )
        return list(results)

    def _commit(self, batch: list[_Call]) -> None:
        results: list[Any] = []
        try:
            with self.store.begin() as conn:
                for group in self._groups(batch):
                    results.extend(self._run_group(conn, group))
        except BaseException as exc:
            if len(batch) == 1:
                batch[0].fut.set_exception(exc)
                return
            for call in batch:  # isolate the failing call
                try:
                    with self.store.begin() as conn:
                        call.fut.set_result(self._run_group(conn, [call])[0])
                except BaseException as one:
                    call.fut.set_exception(one)
            return
        self.batches += 1
        self.calls += len(batch)
        for call, r in zip(batch, results, strict=True):
            call.fut.set_result(r)
