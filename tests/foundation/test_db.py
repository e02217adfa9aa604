"""The shared engine factory works on both backends, one private database per test."""

from __future__ import annotations

import sqlalchemy as sa

from fedcredit.common.db import (
    SQLITE_MMAP_BYTES,
    create_schema,
    is_postgres,
    make_engine,
    session_factory,
)

meta = sa.MetaData()
items = sa.Table(
    "items",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("parent", sa.Integer, sa.ForeignKey("items.id"), nullable=True),
    sa.Column("name", sa.String(50), nullable=False),
)


def test_round_trip_and_foreign_keys(db_url: str) -> None:
    engine = make_engine(db_url)
    create_schema(engine, meta)
    create_schema(engine, meta)  # idempotent
    with session_factory(engine)() as s, s.begin():
        s.execute(items.insert(), [{"id": 1, "name": "a"}, {"id": 2, "parent": 1, "name": "b"}])
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(items)).scalar_one() == 2
    # Foreign keys are enforced on both engines (SQLite needs the pragma).
    try:
        with engine.begin() as conn:
            conn.execute(items.insert(), {"id": 3, "parent": 99, "name": "orphan"})
        raised = False
    except sa.exc.IntegrityError:
        raised = True
    assert raised
    if is_postgres(engine):
        with engine.connect() as conn:
            schema = conn.execute(sa.text("select current_schema()")).scalar_one()
        assert schema.startswith("t_")  # each test in its own schema
    else:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            # Reads through a memory map (common.db.SQLITE_MMAP_BYTES), not read() calls.
            assert conn.exec_driver_sql("PRAGMA mmap_size").scalar_one() == SQLITE_MMAP_BYTES
    engine.dispose()


def test_each_test_starts_empty(db_url: str) -> None:
    engine = make_engine(db_url)
    assert not sa.inspect(engine).has_table("items")
    engine.dispose()
