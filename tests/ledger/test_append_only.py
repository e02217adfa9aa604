"""Findings 1 and 2 of issue 16: the append-only guards cannot be skipped on either engine.

Each bypass the audit found is tried against a real store: SQLite's ``INSERT OR
REPLACE`` / ``REPLACE INTO`` (no DELETE trigger fires for a REPLACE), and a
PostgreSQL superuser's ``SET session_replication_role = replica`` (ordinary
triggers do not fire then). Every one must be refused and leave the row as it was;
a store whose guard was dropped or disabled must not open.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from fedcredit.ledger.checkpoint import Signer
from fedcredit.ledger.errors import TriggerDisabled, TriggerMissing
from fedcredit.ledger.log import Log
from fedcredit.ledger.settings import LogSettings
from fedcredit.ledger.store import APPEND_ONLY_TABLES, LedgerStore

ORIGIN = "fedcredit.test/ledger"
KEY = Signer.generate(ORIGIN)


def _filled(url: str) -> tuple[bytes, bytes]:
    """A store with 8 entries, a checkpoint and a cosignature; returns entry 3's data and
    node (3, 0)'s hash."""
    with Log.open(url, KEY, ORIGIN, settings=LogSettings(checkpoint_interval=3600)) as log:
        log.append_many([("k", None, {"i": i}) for i in range(8)])
        cp = log.checkpoint()
        log.store.add_cosignature(cp.size, "dept-tax", "— dept-tax AAAA\n", 1.0)
        e3 = log.store.get_entries(3, 4)[0].data
        n = log.store.get_nodes([(3, 0)])[(3, 0)]
    return e3, n


def _unchanged(url: str, e3: bytes, node: bytes) -> None:
    store = LedgerStore.open(url)
    try:
        assert store.get_entries(3, 4)[0].data == e3
        assert store.get_nodes([(3, 0)])[(3, 0)] == node
        assert store.size() == 8
        assert store.latest_checkpoint() is not None
        assert store.cosignature_lines(8) == ["— dept-tax AAAA\n"]
    finally:
        store.close()


SQLITE_REWRITES = [
    "INSERT OR REPLACE INTO ledger_entries (idx, leaf_hash, data, kind, actor, subject) "
    "VALUES (3, zeroblob(32), X'7b7d', 'k', 'x', NULL)",
    "REPLACE INTO ledger_entries (idx, leaf_hash, data, kind, actor, subject) "
    "VALUES (3, zeroblob(32), X'7b7d', 'k', 'x', NULL)",
    "INSERT OR REPLACE INTO ledger_nodes (level, idx, hash) VALUES (3, 0, zeroblob(32))",
    "REPLACE INTO ledger_nodes (level, idx, hash) VALUES (3, 0, zeroblob(32))",
    "REPLACE INTO ledger_checkpoints (size, root, note, signed_at) VALUES (8, zeroblob(32), 'x', 0)",
    "REPLACE INTO ledger_cosignatures (size, witness, line, received_at) "
    "VALUES (8, 'dept-tax', 'forged', 0)",
    "INSERT INTO ledger_entries (idx, leaf_hash, data, kind, actor, subject) "
    "VALUES (3, zeroblob(32), X'7b7d', 'k', 'x', NULL) "
    "ON CONFLICT (idx) DO UPDATE SET data = excluded.data",
    "UPDATE ledger_entries SET data = X'7b7d' WHERE idx = 3",
    "DELETE FROM ledger_entries WHERE idx = 3",
    "UPDATE ledger_nodes SET hash = zeroblob(32) WHERE level = 3",
    "DELETE FROM ledger_checkpoints",
    "DELETE FROM ledger_cosignatures",
]


@pytest.mark.parametrize("sql", SQLITE_REWRITES)
def test_sqlite_refuses_every_rewrite(tmp_path: object, sql: str) -> None:
    url = f"sqlite:///{tmp_path}/l.sqlite"
    e3, node = _filled(url)
    engine = sa.create_engine(url)
    with pytest.raises(sa.exc.IntegrityError, match="append-only"), engine.begin() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()
    _unchanged(url, e3, node)


PG_REWRITES = [
    "UPDATE ledger_entries SET data = '\\x7b7d' WHERE idx = 3",
    "DELETE FROM ledger_entries WHERE idx = 3",
    "INSERT INTO ledger_entries (idx, leaf_hash, data, kind, actor, subject) "
    "VALUES (3, '\\x00', '\\x7b7d', 'k', 'x', NULL) "
    "ON CONFLICT (idx) DO UPDATE SET data = excluded.data",
    "UPDATE ledger_nodes SET hash = '\\x00' WHERE level = 3",
    "TRUNCATE ledger_cosignatures",
    "DELETE FROM ledger_cosignatures",
]


@pytest.mark.postgres
@pytest.mark.parametrize("replica", [False, True], ids=["origin", "replica"])
@pytest.mark.parametrize("sql", PG_REWRITES)
def test_postgres_refuses_every_rewrite_even_as_replica(
    db_url: str, sql: str, replica: bool
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    e3, node = _filled(db_url)
    engine = sa.create_engine(db_url)
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        if replica:  # the superuser's switch that silences ordinary (ENABLE ORIGIN) triggers
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.exec_driver_sql(sql)
    engine.dispose()
    _unchanged(db_url, e3, node)


def _drop_sql(url: str) -> str:
    if url.startswith("postgresql"):
        return "DROP TRIGGER ledger_entries_append_only_row ON ledger_entries"
    return "DROP TRIGGER ledger_entries_no_update"


def test_a_dropped_trigger_is_refused_at_open(db_url: str) -> None:
    _filled(db_url)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(_drop_sql(db_url))
    engine.dispose()
    with pytest.raises(TriggerMissing) as e:
        LedgerStore.open(db_url)
    assert e.value.reason == "LEDGER_TRIGGER_MISSING"
    assert "ledger_entries_" in e.value.message


def test_a_trigger_replaced_by_a_no_op_is_refused(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/l.sqlite"
    _filled(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER ledger_entries_no_update")
        conn.exec_driver_sql(
            "CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries "
            "BEGIN SELECT 1; END"
        )
    engine.dispose()
    with pytest.raises(TriggerMissing, match="replaced by other SQL"):
        LedgerStore.open(url)


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["DISABLE", "ENABLE REPLICA"])
def test_postgres_disabled_trigger_is_refused_at_open(db_url: str, mode: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    _filled(db_url)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"ALTER TABLE ledger_nodes {mode} TRIGGER ledger_nodes_append_only_row"
        )
    engine.dispose()
    with pytest.raises(TriggerDisabled) as e:
        LedgerStore.open(db_url)
    assert "ledger_nodes_append_only_row" in e.value.message


@pytest.mark.postgres
def test_postgres_triggers_are_enable_always(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    store = LedgerStore.open(db_url)
    with store.engine.connect() as conn:
        states = conn.exec_driver_sql(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgname LIKE 'ledger_%%' "
            "AND tgrelid = ANY(CAST(%s AS regclass[]))",
            ("{" + ",".join(APPEND_ONLY_TABLES) + "}",),
        ).all()
    store.close()
    assert len(states) == 2 * len(APPEND_ONLY_TABLES) == 10
    assert {str(s) for _, s in states} == {"A"}
