"""Schema changes ``create_all`` cannot make: columns added to a table that already exists
(a store created by an earlier version)."""

from __future__ import annotations

from sqlalchemy import Engine, inspect, text

# (table, column, SQL type) added since the first release; all nullable.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("consent_keys", "compromised_at", "BIGINT"),  # issue 14: key compromise
)


def add_missing_columns(engine: Engine) -> list[str]:
    """ALTER TABLE ... ADD COLUMN for each added column a table lacks; the ones added."""
    done = []
    insp = inspect(engine)
    for table, column, sql_type in ADDED_COLUMNS:
        if not insp.has_table(table):
            continue
        if column in {c["name"] for c in insp.get_columns(table)}:
            continue
        with engine.begin() as conn:
            # Names are the constants above, never input.
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
        done.append(f"{table}.{column}")
    return done
