"""Consent use counting: CPU of the consent service per 1,000 reserved and settled uses.

Run ``python -m bench.bench_uses``: on SQLite, and on PostgreSQL when it answers at
``--postgres URL`` (default: the local test database; a private schema, dropped after).
What nodes and the coordinator ask of the consent service for a batch (issue 14): one
ReserveUses then one SettleUses per chunk of ``max_uses_batch`` tokens. Measured at the
authority, the code behind the ReserveUses/SettleUses handlers (the wire mapping aside),
in process CPU time (``time.process_time``: the machine is shared), per 1,000 uses:

* open + commit: a node or the coordinator opens a use of 1,000 tokens and commits it;
* open + release: the same, the work failed (the uses are given back);
* join (pinned): a node joins 1,000 uses the coordinator opened, committed at once;
* the floor: one bare DB-API ``UPDATE ... WHERE jti IN (1,000 values)`` of the same
  rows, the least any counting must do (one statement, no ORM, no result handling).

Writes bench/results/uses.json (one entry per database).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from fedcredit.common import uscc
from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import Identity
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.consent.useref import UseRef

RESULTS = Path(__file__).resolve().parent / "results" / "uses.json"
BANK = "bank-icbc-weihai"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
COORD = Identity("coordinator", "coordinator", b"\x04" * 32)
NODE = Identity("dept-tax", "department", b"\x02" * 32)
# Consents per enterprise (grant_many takes one enterprise's batch).
PER_ENTERPRISE = 100


def _terms(ent: str) -> ConsentTerms:
    return ConsentTerms(
        enterprise=ent,
        bank=BANK,
        purpose="model_training",
        scope=["judicial", "operations_tax"],
        validity_days=365,
        max_uses=50,
        retention_days=365,
    )


def grant(authority: ConsentAuthority, n: int) -> list[UseRef]:
    """``n`` active consents with bound tokens; their use refs."""
    bank = Identity(BANK, "bank", b"b" * 32)
    refs: list[UseRef] = []
    rng = random.Random(7)
    while len(refs) < n:
        ent = uscc.generate(rng)
        views = authority.grant_many(
            Identity(ent, "enterprise", b"e" * 32),
            [_terms(ent)] * min(PER_ENTERPRISE, n - len(refs)),
        )
        for v in views:
            tok = authority.token(bank, v.consent_id)
            assert tok.jti is not None
            refs.append(UseRef(tok.jti, ent, BANK))
    return refs


def _cpu_ms(fn: Callable[[], Any], rounds: int) -> float:
    """Median process CPU of ``fn`` over ``rounds`` runs, ms."""
    out = []
    for _ in range(rounds):
        c = time.process_time()
        fn()
        out.append((time.process_time() - c) * 1e3)
    return statistics.median(out)


def _ok(results: list[Any]) -> None:
    bad = [r for r in results if isinstance(r, FedcreditError)]
    if bad:
        raise SystemExit(f"expected every use reserved, got {len(bad)} refusals: {bad[0]}")


def measure(authority: ConsentAuthority, refs: list[UseRef], rounds: int) -> dict[str, float]:
    n = len(refs)
    scale = 1000 / n
    seq = iter(range(10**9))

    def open_commit() -> None:
        use = f"oc-{next(seq)}"
        _ok(authority.reserve_uses(COORD, use, refs))
        assert authority.settle_uses(COORD, use, refs, commit=True) == n

    def open_release() -> None:
        use = f"or-{next(seq)}"
        _ok(authority.reserve_uses(COORD, use, refs))
        assert authority.settle_uses(COORD, use, refs, commit=False) == n

    uses_joined: list[str] = []

    def join_pinned() -> None:
        _ok(authority.reserve_uses(NODE, uses_joined.pop(), refs, pin=True))

    for _ in range(2):  # warm: statement caches, connection pool
        open_release()
    out = {"open_release_cpu_ms": _cpu_ms(open_release, rounds) * scale}
    out["open_commit_cpu_ms"] = _cpu_ms(open_commit, rounds) * scale
    for _ in range(rounds):
        use = f"j-{next(seq)}"
        _ok(authority.reserve_uses(COORD, use, refs))
        uses_joined.append(use)
    out["join_pinned_cpu_ms"] = _cpu_ms(join_pinned, rounds) * scale
    out["floor_cpu_ms"] = _floor_ms(authority.store, refs, rounds) * scale
    return out


def _floor_ms(store: ConsentStore, refs: list[UseRef], rounds: int) -> float:
    """One bare DB-API UPDATE of the rows (the count raised and lowered again, so the
    consents are left as they were)."""
    jtis = [r.jti for r in refs]
    marks = ",".join(["?" if store.engine.dialect.name == "sqlite" else "%s"] * len(jtis))
    raw = store.engine.raw_connection()
    try:

        def once() -> None:
            cur = raw.cursor()
            cur.execute(f"UPDATE consents SET uses = uses + 0 WHERE jti IN ({marks})", jtis)
            cur.close()
            raw.commit()

        once()
        return _cpu_ms(once, rounds)
    finally:
        raw.close()


@contextmanager
def database(kind: str, pg_url: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            yield f"sqlite:///{Path(d) / 'uses.sqlite'}"
        return
    schema = "bench_uses_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        sep = "&" if "?" in pg_url else "?"
        yield f"{pg_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def run(kind: str, pg_url: str, n: int, rounds: int) -> dict[str, float]:
    with database(kind, pg_url) as url:
        store = ConsentStore(url)
        authority = ConsentAuthority(store)
        try:
            refs = grant(authority, n)
            return measure(authority, refs, rounds)
        finally:
            store.close()


LABELS = {
    "open_commit_cpu_ms": "reserve + commit",
    "open_release_cpu_ms": "reserve + release",
    "join_pinned_cpu_ms": "join a use (pinned)",
    "floor_cpu_ms": "floor: one bare DB-API UPDATE ... IN (1,000 values)",
}


def _pg_problem(url: str) -> str | None:
    """None when PostgreSQL answers at ``url``, else why not."""
    try:
        eng = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(sa.text("select 1"))
        eng.dispose()
    except Exception as exc:  # any failure to connect: measured on SQLite only, said so
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def rows(results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The results as run_all's rows (metric, value, unit, target, met)."""
    return [
        {"metric": f"{kind}: {LABELS[k]}, CPU per 1,000 uses", "value": round(v, 2),
         "unit": "ms", "target": "", "met": None}
        for kind, res in results.items()
        for k, v in res.items()
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--postgres",
        default=PG_URL,
        metavar="URL",
        help="PostgreSQL to measure on too, in a private schema (default %(default)s)",
    )
    p.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    p.add_argument("--uses", type=int, default=1000, help="tokens per batch (default 1000)")
    p.add_argument("--rounds", type=int, default=7, help="runs per row, median (default 7)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    a = p.parse_args(argv)  # fmt: skip
    kinds = ["sqlite"]
    problem = None if a.sqlite_only else _pg_problem(a.postgres)
    if not a.sqlite_only and problem is None:
        kinds.append("postgresql")
    elif problem is not None:
        print(f"PostgreSQL not measured: {problem}")
    results = {k: run(k, a.postgres, a.uses, a.rounds) for k in kinds}
    meta = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "uses": a.uses, "rounds": a.rounds, "load_1min": os.getloadavg()[0]}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**meta, "rows": rows(results)}, indent=2))
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    table = Table(title=f"consent service CPU per 1,000 uses, ms (median of {a.rounds})")
    table.add_column("operation")
    for k in kinds:
        table.add_column(k, justify="right")
    for key, label in LABELS.items():
        table.add_row(label, *(f"{results[k][key]:.1f}" for k in kinds))
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
