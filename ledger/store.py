"""Append-only SQLAlchemy store of a Merkle log (SQLite or PostgreSQL).

Tables: entries (canonical bytes + leaf hash + indexed kind/subject), the
perfect-subtree hashes (see ledger.merkle), signed checkpoints and witness
cosignatures. The store has no update or delete path, and both backends
refuse every rewrite with triggers: SQLite refuses UPDATE, DELETE and an
INSERT at a key that exists (which is what ``INSERT OR REPLACE`` / ``REPLACE
INTO`` do: SQLite fires no DELETE trigger for a REPLACE); PostgreSQL refuses
UPDATE (also ``ON CONFLICT DO UPDATE``), DELETE and TRUNCATE with triggers
``ENABLE ALWAYS``, which fire even under ``session_replication_role =
replica``. Opening an existing store checks the guards: a missing, altered or
disabled one is refused by name (``LEDGER_TRIGGER_MISSING`` /
``LEDGER_TRIGGER_DISABLED``), so removing one is visible; whatever was
rewritten meanwhile is caught by ``ledger.fsck``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    select,
    text,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError, OperationalError

from fedcredit.common.db import make_engine
from fedcredit.common.errors import StoreUnavailable
from fedcredit.ledger.errors import TriggerDisabled, TriggerMissing
from fedcredit.ledger.merkle import NodeId

log = logging.getLogger(__name__)

metadata = MetaData()

entries = Table(
    "ledger_entries",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("subject", String(18), nullable=True),
    Index("ix_ledger_entries_subject", "subject", "idx"),
)

nodes = Table(
    "ledger_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("signed_at", Float, nullable=False),
)

cosignatures = Table(
    "ledger_cosignatures",
    metadata,
    Column("size", BigInteger, ForeignKey("ledger_checkpoints.size"), primary_key=True),
    Column("witness", String(200), primary_key=True),
    Column("line", Text, nullable=False),
    Column("received_at", Float, nullable=False),
)

# What ``ledger.fsck`` last proved: the tree of ``size`` entries (its right border and
# last leaf, from which a later check continues) matched every signed checkpoint.
# Append-only like the rest: a rollback below a recorded size is visible.
fsck_runs = Table(
    "ledger_fsck",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("border", LargeBinary, nullable=False),
    Column("last_leaf", LargeBinary(32), nullable=False),
    Column("full", SmallInteger, nullable=False),
    Column("checked_at", Float, nullable=False),
)

# Not part of the log (not append-only): the witness pushes' counters, one row per
# witness, read by `fedcredit status`.
status_metadata = MetaData()
witness_status = Table(
    "ledger_witness_status",
    status_metadata,
    Column("witness", String(200), primary_key=True),
    Column("status", Text, nullable=False),  # JSON: counts, last outcome and reason
    Column("updated_at", Float, nullable=False),
)

_INSERT_ENTRIES = "INSERT INTO ledger_entries (idx, leaf_hash, data, kind, actor, subject) VALUES "
_INSERT_NODES = "INSERT INTO ledger_nodes (level, idx, hash) VALUES "
_MULTI_ROW_SIZES = (128, 16)

APPEND_ONLY_TABLES = tuple(t.name for t in metadata.sorted_tables)

# Each table's primary key, for SQLite's refuse-an-insert-at-an-existing-key trigger.
_PRIMARY_KEYS = {
    t.name: tuple(c.name for c in t.primary_key.columns) for t in metadata.sorted_tables
}

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql
"""


def _sqlite_triggers() -> dict[str, tuple[str, str]]:
    """name -> (table, CREATE TRIGGER statement) of every SQLite guard."""
    out: dict[str, tuple[str, str]] = {}
    for t in APPEND_ONLY_TABLES:
        for op in ("UPDATE", "DELETE"):
            out[f"{t}_no_{op.lower()}"] = (
                t,
                f"CREATE TRIGGER {t}_no_{op.lower()} BEFORE {op} ON {t} "
                f"BEGIN SELECT RAISE(ABORT, 'the ledger table {t} is append-only: "
                f"{op} refused'); END",
            )
        key = " AND ".join(f"{c} = NEW.{c}" for c in _PRIMARY_KEYS[t])
        # INSERT OR REPLACE / REPLACE INTO delete the old row without firing a
        # DELETE trigger; refusing the insert itself closes that path.
        out[f"{t}_no_overwrite"] = (
            t,
            f"CREATE TRIGGER {t}_no_overwrite BEFORE INSERT ON {t} "
            f"WHEN EXISTS (SELECT 1 FROM {t} WHERE {key}) "
            f"BEGIN SELECT RAISE(ABORT, 'the ledger table {t} is append-only: "
            f"an insert over an existing row refused'); END",
        )
    return out


SQLITE_TRIGGERS = _sqlite_triggers()
# The guards an earlier version installed: on an existing store their absence is
# tampering; a guard added since (the overwrite one) is installed on open.
_SQLITE_V1 = {n for n in SQLITE_TRIGGERS if not n.endswith("_no_overwrite")}
PG_TRIGGERS = {
    f"{t}_append_only_{suffix}": (t, when, each)
    for t in APPEND_ONLY_TABLES
    for suffix, when, each in (
        ("row", "UPDATE OR DELETE", "ROW"),
        ("truncate", "TRUNCATE", "STATEMENT"),
    )
}


def _install_triggers(conn: Connection, existing: set[str]) -> None:
    """Install the guards on new tables; on the ``existing`` ones, check them (and add
    guards introduced since)."""
    if conn.dialect.name == "postgresql":
        _pg_guards(conn, existing)
    else:
        _sqlite_guards(conn, existing)


def _sqlite_guards(conn: Connection, existing: set[str]) -> None:
    have: dict[str, str] = {
        r[0]: r[1]
        for r in conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
    }
    for name, (table, sql) in SQLITE_TRIGGERS.items():
        if name not in have:
            if table in existing and name in _SQLITE_V1:
                raise TriggerMissing(
                    f"the append-only trigger {name} on {table} is missing: someone removed it; "
                    "run `fedcredit ledger fsck` and restore the store before serving",
                    trigger=name,
                )
            conn.exec_driver_sql(sql)
        elif " ".join(have[name].split()) != sql:
            raise TriggerMissing(
                f"the append-only trigger {name} on {table} was replaced by other SQL "
                f"(expected {sql!r}, got {have[name]!r:.200})",
                trigger=name,
            )


def _pg_guards(conn: Connection, existing: set[str]) -> None:
    # re-created on every open: a function replaced by a no-op is restored
    conn.execute(text(_PG_FUNCTION))
    rows = conn.execute(
        text(
            "SELECT tg.tgname, tg.tgenabled, p.proname FROM pg_trigger tg "
            "JOIN pg_proc p ON p.oid = tg.tgfoid "
            "WHERE tg.tgrelid = ANY(CAST(:oids AS regclass[])) AND NOT tg.tgisinternal"
        ),
        {"oids": "{" + ",".join(APPEND_ONLY_TABLES) + "}"},
    ).all()
    have = {r[0]: (str(r[1]), r[2]) for r in rows}
    for name, (table, when, each) in PG_TRIGGERS.items():
        state = have.get(name)
        if state is None:
            if table in existing:
                raise TriggerMissing(
                    f"the append-only trigger {name} on {table} is missing: someone removed it; "
                    "run `fedcredit ledger fsck` and restore the store before serving",
                    trigger=name,
                )
            conn.execute(
                text(
                    f"CREATE TRIGGER {name} BEFORE {when} ON {table} "
                    f"FOR EACH {each} EXECUTE FUNCTION ledger_refuse_change()"
                )
            )
        elif state[1] != "ledger_refuse_change":
            raise TriggerMissing(
                f"the append-only trigger {name} on {table} calls {state[1]}(), "
                "not ledger_refuse_change()",
                trigger=name,
            )
        elif state[0] in ("D", "R"):
            raise TriggerDisabled(
                f"the append-only trigger {name} on {table} is disabled "
                f"(pg_trigger.tgenabled = {state[0]!r}, expected 'A' = ENABLE ALWAYS); "
                "run `fedcredit ledger fsck` and re-enable it before serving",
                trigger=name,
            )
        if state is None or state[0] == "O":
            if state is not None:  # a store created before the guards were ALWAYS
                log.warning("making the ledger trigger %s ENABLE ALWAYS", name)
            # ALWAYS: also fires under session_replication_role = replica
            conn.execute(text(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}"))


@dataclass(frozen=True, slots=True)
class StoredEntry:
    index: int
    data: bytes
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str  # the log-signed note (without cosignatures)
    signed_at: float


@dataclass(frozen=True, slots=True)
class FsckRun:
    size: int
    root: bytes
    border: list[bytes]  # the compact range's hashes at ``size``, left to right
    last_leaf: bytes
    full: bool
    checked_at: float


class LedgerStore:
    """All SQL of the ledger. The single writer is the sequencer in ledger.log."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer: Connection | None = None  # append_batch's, used by the sequencer only
        self._sql: dict[tuple[str, int], str] = {}

    @classmethod
    def open(cls, url: str | Engine) -> LedgerStore:
        engine = url if isinstance(url, Engine) else make_engine(url)
        try:
            # one transaction (DDL is transactional on both engines): a store is
            # never seen with its tables but without their guards
            with engine.begin() as conn:
                insp = sa_inspect(conn)
                existing = {t for t in APPEND_ONLY_TABLES if insp.has_table(t)}
                metadata.create_all(conn)
                status_metadata.create_all(conn)
                _install_triggers(conn, existing)
        except OperationalError as exc:
            raise StoreUnavailable(f"the ledger database does not answer: {exc.orig}") from exc
        return cls(engine)

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self.engine.dispose()

    # --- writes (append only) ---------------------------------------------------

    def append_batch(
        self,
        entry_rows: Sequence[tuple[int, bytes, bytes, str, str, str | None]],
        node_rows: Sequence[tuple[int, int, bytes]],
    ) -> None:
        """Insert a batch of entries (idx, leaf_hash, data, kind, actor, subject) and the
        interior tree nodes (level >= 1, idx, hash) they complete, in one transaction."""
        # Straight to the DB-API executemany: SQLAlchemy's per-row parameter
        # processing costs more than the insert itself at these volumes.
        # The single writer keeps one connection: a pool checkout, reset and
        # checkin per batch cost more than a small batch's inserts.
        conn = self._writer
        if conn is None:
            conn = self._writer = self.engine.connect()
        try:
            with conn.begin():
                self._insert(conn, _INSERT_ENTRIES, 6, entry_rows)
                if node_rows:
                    self._insert(conn, _INSERT_NODES, 3, node_rows)
        except BaseException:
            # the transaction was rolled back; start the next batch on a fresh connection
            self._writer = None
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # already broken
                pass
            raise

    def _insert(
        self, conn: Connection, head: str, width: int, rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Insert rows with multi-row VALUES statements of fixed sizes (each size's statement
        is prepared once), the rest with executemany: fewer statement executions than one
        per row. At most 128 x 6 parameters per statement (SQLite's old limit is 999)."""
        ph = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        one = "(" + ", ".join([ph] * width) + ")"
        pos, n = 0, len(rows)
        for size in _MULTI_ROW_SIZES:
            if n - pos < size:
                continue
            sql = self._sql.get((head, size))
            if sql is None:
                sql = self._sql[(head, size)] = head + ", ".join([one] * size)
            while n - pos >= size:
                conn.exec_driver_sql(sql, tuple(v for row in rows[pos : pos + size] for v in row))
                pos += size
        if pos < n:
            conn.exec_driver_sql(head + one, list(rows[pos:]))

    def add_checkpoint(self, cp: StoredCheckpoint) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                checkpoints.insert(),
                {"size": cp.size, "root": cp.root, "note": cp.note, "signed_at": cp.signed_at},
            )

    def add_cosignature(self, size: int, witness: str, line: str, received_at: float) -> bool:
        """Store a cosignature; False if this witness already cosigned this size."""
        try:
            with self.engine.begin() as conn:
                exists = conn.execute(
                    select(cosignatures.c.size).where(
                        cosignatures.c.size == size, cosignatures.c.witness == witness
                    )
                ).first()
                if exists:
                    return False
                conn.execute(
                    cosignatures.insert(),
                    {"size": size, "witness": witness, "line": line, "received_at": received_at},
                )
        except IntegrityError:  # a concurrent push stored it first (the guard refuses a second)
            return False
        return True

    def record_witness(self, witness: str, status: dict[str, Any]) -> None:
        import json
        import time

        row = {"witness": witness, "status": json.dumps(status), "updated_at": time.time()}
        with self.engine.begin() as conn:
            done = conn.execute(
                witness_status.update().where(witness_status.c.witness == witness).values(**row)
            )
            if done.rowcount == 0:
                conn.execute(witness_status.insert(), row)

    def witness_status(self) -> dict[str, dict[str, Any]]:
        """Per witness: what the log's pushes saw (counts, last outcome and reason)."""
        import json

        with self.engine.connect() as conn:
            rows = conn.execute(select(witness_status).order_by(witness_status.c.witness)).all()
        return {r.witness: {**json.loads(r.status), "updated_at": r.updated_at} for r in rows}

    def add_fsck_run(self, run: FsckRun) -> None:
        """Record what a check proved (a size already recorded is left as it is)."""
        with self.engine.begin() as conn:
            if conn.execute(select(fsck_runs.c.size).where(fsck_runs.c.size == run.size)).first():
                return
            conn.execute(
                fsck_runs.insert(),
                {
                    "size": run.size,
                    "root": run.root,
                    "border": b"".join(run.border),
                    "last_leaf": run.last_leaf,
                    "full": int(run.full),
                    "checked_at": run.checked_at,
                },
            )

    # --- reads ------------------------------------------------------------------

    def latest_fsck_run(self) -> FsckRun | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(fsck_runs).order_by(fsck_runs.c.size.desc()).limit(1)).first()
        if r is None:
            return None
        b = bytes(r.border)
        return FsckRun(
            int(r.size),
            bytes(r.root),
            [b[i : i + 32] for i in range(0, len(b), 32)],
            bytes(r.last_leaf),
            bool(r.full),
            float(r.checked_at),
        )

    def count(self) -> int:
        """Rows in the entries table (``size()`` is max(idx) + 1: a gap shows as a difference)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(entries)).scalar() or 0)

    def _fetch(self, sql: str, params: tuple[int, ...]) -> list[Any]:
        """Rows straight from the DB-API cursor: a full check reads every row, and
        SQLAlchemy's result processing would cost as much as hashing them."""
        ph = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(sql.replace("?", ph), params)
            rows = list(cur.fetchall())
            cur.close()
        finally:
            raw.close()
        return rows

    def raw_entries(self, start: int, end: int) -> list[tuple[int, bytes, bytes]]:
        """(idx, leaf_hash, data) of the rows in [start, end), in index order."""
        return self._fetch(
            "SELECT idx, leaf_hash, data FROM ledger_entries "
            "WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, end),
        )

    def raw_nodes(self, level: int, lo: int, hi: int) -> list[tuple[int, bytes]]:
        """(idx, hash) of one level's interior nodes with index in [lo, hi), in index order."""
        return self._fetch(
            "SELECT idx, hash FROM ledger_nodes WHERE level = ? AND idx >= ? AND idx < ? "
            "ORDER BY idx",
            (level, lo, hi),
        )

    def node_hashes_joined(self, level: int, lo: int, hi: int) -> bytes:
        """One level's interior node hashes with index in [lo, hi) concatenated in index
        order, in one row: a full check compares a whole level at once instead of
        paying the driver's per-row cost (on a difference it reads rows to name it)."""
        if self.engine.dialect.name == "postgresql":
            sql = (
                "SELECT string_agg(hash, ''::bytea ORDER BY idx) FROM ledger_nodes "
                "WHERE level = ? AND idx >= ? AND idx < ?"
            )
        else:  # SQLite's group_concat is text: join hex, in the subquery's index order
            sql = (
                "SELECT group_concat(h, '') FROM (SELECT hex(hash) AS h FROM ledger_nodes "
                "WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx)"
            )
        got = self._fetch(sql, (level, lo, hi))[0][0]
        if got is None:
            return b""
        return bytes.fromhex(got) if isinstance(got, str) else bytes(got)

    def all_checkpoints(self) -> list[StoredCheckpoint]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(checkpoints).order_by(checkpoints.c.size)).all()
        return [StoredCheckpoint(int(r.size), bytes(r.root), r.note, r.signed_at) for r in rows]

    def size(self) -> int:
        with self.engine.connect() as conn:
            n = conn.execute(select(func.max(entries.c.idx))).scalar()
        return 0 if n is None else int(n) + 1

    def get_nodes(self, ids: Iterable[NodeId]) -> dict[NodeId, bytes]:
        """Perfect-subtree hashes by id; level 0 is read from the entries' leaf hashes.

        One round trip, as plain driver SQL: a proof needs O(log n) nodes and
        SQLAlchemy's statement compilation would cost more than the lookup.
        """
        ids = list(ids)
        if not ids:
            return {}
        by_level: dict[int, list[int]] = {}
        for lvl, idx in ids:
            by_level.setdefault(lvl, []).append(idx)
        ph = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        parts: list[str] = []
        params: list[int] = []
        leaves = by_level.pop(0, None)
        if leaves:
            parts.append(
                f"SELECT 0, idx, leaf_hash FROM ledger_entries WHERE idx IN ({', '.join([ph] * len(leaves))})"
            )
            params.extend(leaves)
        for lvl, idxs in by_level.items():
            parts.append(
                f"SELECT level, idx, hash FROM ledger_nodes WHERE level = {ph} "
                f"AND idx IN ({', '.join([ph] * len(idxs))})"
            )
            params.append(lvl)
            params.extend(idxs)
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(" UNION ALL ".join(parts), tuple(params)).all()
        return {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows}

    def get_entries(self, start: int, end: int) -> list[StoredEntry]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(entries.c.idx, entries.c.data, entries.c.leaf_hash)
                .where(entries.c.idx >= start, entries.c.idx < end)
                .order_by(entries.c.idx)
            ).all()
        return [StoredEntry(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

    def iter_entries(self, start: int, end: int, chunk: int = 5000) -> Iterator[StoredEntry]:
        pos = start
        while pos < end:
            batch = self.get_entries(pos, min(end, pos + chunk))
            if not batch:
                return
            yield from batch
            pos = batch[-1].index + 1

    def entries_by_subject(
        self, subject: str, below: int, after: int = -1, limit: int = 1000
    ) -> list[StoredEntry]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(entries.c.idx, entries.c.data, entries.c.leaf_hash)
                .where(entries.c.subject == subject, entries.c.idx > after, entries.c.idx < below)
                .order_by(entries.c.idx)
                .limit(limit)
            ).all()
        return [StoredEntry(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        with self.engine.connect() as conn:
            r = conn.execute(
                select(checkpoints).order_by(checkpoints.c.size.desc()).limit(1)
            ).first()
        return (
            None if r is None else StoredCheckpoint(int(r.size), bytes(r.root), r.note, r.signed_at)
        )

    def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(checkpoints).where(checkpoints.c.size == size)).first()
        return (
            None if r is None else StoredCheckpoint(int(r.size), bytes(r.root), r.note, r.signed_at)
        )

    def checkpoints_between(self, lo: int, hi: int) -> list[StoredCheckpoint]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(checkpoints)
                .where(checkpoints.c.size >= lo, checkpoints.c.size <= hi)
                .order_by(checkpoints.c.size)
            ).all()
        return [StoredCheckpoint(int(r.size), bytes(r.root), r.note, r.signed_at) for r in rows]

    def latest_cosigned_checkpoint(self, quorum: int) -> StoredCheckpoint | None:
        """The largest checkpoint with at least ``quorum`` cosignatures."""
        with self.engine.connect() as conn:
            sub = (
                select(cosignatures.c.size)
                .group_by(cosignatures.c.size)
                .having(func.count() >= quorum)
                .order_by(cosignatures.c.size.desc())
                .limit(1)
                .scalar_subquery()
            )
            r = conn.execute(select(checkpoints).where(checkpoints.c.size == sub)).first()
        return (
            None if r is None else StoredCheckpoint(int(r.size), bytes(r.root), r.note, r.signed_at)
        )

    def cosignature_lines(self, size: int) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(cosignatures.c.line)
                .where(cosignatures.c.size == size)
                .order_by(cosignatures.c.witness)
            ).all()
        return [r[0] for r in rows]

    def cosignature_lines_between(self, lo: int, hi: int) -> dict[int, list[str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(cosignatures.c.size, cosignatures.c.line)
                .where(cosignatures.c.size >= lo, cosignatures.c.size <= hi)
                .order_by(cosignatures.c.size, cosignatures.c.witness)
            ).all()
        out: dict[int, list[str]] = {}
        for size, line in rows:
            out.setdefault(int(size), []).append(line)
        return out

    def witness_sizes(self) -> dict[str, int]:
        """For each witness, the largest size it cosigned."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(cosignatures.c.witness, func.max(cosignatures.c.size)).group_by(
                    cosignatures.c.witness
                )
            ).all()
        return {r[0]: int(r[1]) for r in rows}


def read_witness_status(url: str) -> dict[str, dict[str, Any]]:
    """The witness pushes' counters from a ledger database, read-only (``fedcredit
    status``); empty when the ledger has not pushed yet."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not sa_inspect(conn).has_table(witness_status.name):
                return {}
        return LedgerStore(engine).witness_status()
    finally:
        engine.dispose()
