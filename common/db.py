"""Database plumbing shared by every store: one engine factory, two backends.

SQLite is the embedded default (WAL journal so readers never block the
writer, foreign keys on, a busy timeout instead of immediate "database is
locked"). PostgreSQL is reached through psycopg 3; plain ``postgresql://``
URLs are rewritten to the ``postgresql+psycopg://`` driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from fedcredit.common.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Bytes of the database file a connection reads through a memory map instead of read()
# calls. Without it every page that is not in the connection's own small page cache
# (2 MiB, and WAL empties it whenever another connection commits) is copied in by a
# system call: a batch's use checks at the consent service spent a fifth of that
# process's CPU in the kernel (bench_coordinator, perf). Writes still go through the
# WAL; the map only serves reads, from the OS page cache every process shares.
SQLITE_MMAP_BYTES = 256 * 1024 * 1024


def normalise_url(url: str) -> str:
    """Pick the project's drivers: psycopg 3 for PostgreSQL, pysqlite for SQLite."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"database URL {url!r} is not valid: {exc}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise ConfigError(
            f"database URL {url!r}: driver {parsed.drivername!r} is not supported; "
            "expected sqlite:///PATH or postgresql://HOST/DB"
        )
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    # WAL + NORMAL is durable against application crashes (kill -9); FULL also
    # survives power loss at the cost of an fsync per commit.
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the project's settings for its backend."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault(
            "connect_args", {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def create_schema(engine: Engine, metadata: MetaData) -> None:
    """Create missing tables (idempotent)."""
    metadata.create_all(engine)


def add_missing_columns(engine: Engine, added: tuple[tuple[str, str, str], ...]) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each (table, column, SQL type) a table created by
    an earlier version lacks (``create_all`` adds tables, never columns); the ones added.
    The columns must be nullable; the names are the caller's constants, never input."""
    done = []
    insp = inspect(engine)
    for table, column, sql_type in added:
        if not insp.has_table(table) or column in {c["name"] for c in insp.get_columns(table)}:
            continue
        with engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
        done.append(f"{table}.{column}")
    return done


def sqlite_url(path: Path | str) -> str:
    return f"sqlite:///{Path(path)}"
