"""Status-list indexes drawn at random, so they say nothing about how many consents exist
or in what order they were given (finding 7 of issue 14).

Implements the index guidance of draft-ietf-oauth-status-list-17 (January 2026): every
Referenced Token gets a fresh, never re-used entry (Implementation Considerations,
"Default Values and Double Allocation"), and the Privacy Considerations on linkability ask
that an index reveal nothing beyond the token's own status — sequential indexes let any
verifier that sees two tokens order them and estimate the issuer's volume. Here an index
is drawn uniformly from ``[0, capacity)``, where the capacity is a power of two at least
``MIN_CAPACITY`` and at least ``HEADROOM`` times the rows already holding one, so a draw
collides rarely and the list's length moves in coarse steps only.

The consent row's primary key *is* its index (``consents.id``); tokens already signed carry
theirs, so :func:`migrate` re-draws only rows that have no token yet.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, func, select, update

MIN_CAPACITY = 1 << 17  # 131,072 entries: 32 KiB of 2-bit statuses, ~100 bytes compressed
HEADROOM = 4
_MAX_ROUNDS = 32


def capacity(used: int) -> int:
    """The index space for a store holding ``used`` indexes."""
    cap = MIN_CAPACITY
    while cap < used * HEADROOM:
        cap <<= 1
    return cap


def draw(conn: Connection, table: Table, n: int) -> list[int]:
    """``n`` distinct random indexes not held by any row of ``table`` (its ``id``)."""
    if n <= 0:
        return []
    used = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    cap = capacity(used + n)
    picked: set[int] = set()
    for _ in range(_MAX_ROUNDS):
        want = [secrets.randbelow(cap) for _ in range(n - len(picked))]
        fresh = {i for i in want if i not in picked}
        if fresh:
            taken = set(
                conn.execute(select(table.c.id).where(table.c.id.in_(list(fresh)))).scalars()
            )
            picked |= fresh - taken
        if len(picked) >= n:
            return sorted(picked, key=lambda _: secrets.randbits(32))[:n]
    # HEADROOM keeps the space at most a quarter full: 32 rounds failing is ~impossible.
    raise RuntimeError(f"no free status index after {_MAX_ROUNDS} draws in {cap}")


def assign(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Give each row to be inserted a random ``id`` (its status-list index)."""
    for row, idx in zip(rows, draw(conn, table, len(rows)), strict=True):
        row["id"] = idx


def migrate(conn: Connection, table: Table) -> int:
    """Re-draw the index of every row without a signed token (their index is not out yet);
    rows with a token keep the one it carries. Returns how many rows moved."""
    ids = list(conn.execute(select(table.c.id).where(table.c.jti.is_(None))).scalars())
    if not ids:
        return 0
    new = draw(conn, table, len(ids))
    for old, idx in zip(ids, new, strict=True):
        conn.execute(update(table).where(table.c.id == old).values(id=idx))
    return len(ids)
