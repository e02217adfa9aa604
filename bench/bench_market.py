"""Marketplace benchmark: the city-wide rating run with matching, and the grab-claim race.

1. **Rating + matching** (target ≤ 3 min): 120,000 enterprises scored by a LightGBM credit
   model (trained beforehand on a separate synthetic sample, not timed: it comes from the
   registry), thresholds calibrated, graded, stored as the platform's profiles with the
   ledgered run entry, every enterprise matched against 200 products of 23 banks, and each
   bank's leads pushed. Floor, same run: a bare ``executemany`` insert of the same rows
   into an empty table of the same database (the storage cost nothing can avoid).
2. **Grab-claim latency** under 23 concurrent banks over gRPC with mTLS: for each need all
   23 banks claim at once (a barrier), exactly one wins (checked); p50/p99 of every claim
   call. Floor, same run and concurrency: ListProducts (one read) over the same server.

    python -m bench.bench_market [--enterprises 120000] [--products 200] [--needs 60] [--pg]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from fedcredit.common import pki as pki_mod
from fedcredit.common.db import make_engine
from fedcredit.common.errors import FedcreditError
from fedcredit.coordinator.rating import GRADES, calibrate
from fedcredit.ledger.log import Log
from fedcredit.market import rules
from fedcredit.market.client import MarketClient
from fedcredit.market.pushes import push_leads
from fedcredit.market.ratings import rate_city
from fedcredit.market.service import Marketplace
from fedcredit.market.servicer import serve
from fedcredit.market.store import MarketStore, metadata, profiles

RESULTS = Path(__file__).resolve().parent / "results" / "market.json"
N_BANKS = 23
REGIONS = ("huancui", "wendeng", "rongcheng", "rushan", "gaoqu", "jingqu", "linggang")
PG_URL = os.environ.get(
    "FEDCREDIT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def pct(values: Sequence[float], q: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def synthetic_city(n: int, seed: int = 20) -> tuple[np.ndarray, np.ndarray, Any]:
    """Features driven by a latent health (as world/ does), outcomes, and a trained model."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    health = rng.normal(size=n + 20_000)
    x = health[:, None] * rng.uniform(0.3, 1.0, 12) + rng.normal(size=(n + 20_000, 12))
    y = rng.random(n + 20_000) < 1 / (1 + np.exp(2.5 + 1.5 * health))
    model = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 31, "num_threads": 2},
        lgb.Dataset(x[n:], y[n:].astype(int)),
        num_boost_round=60,
    )
    return x[:n], y[:n], model


def products(k: int, seed: int = 21) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        lo = int(rng.choice([100_000, 300_000, 500_000, 1_000_000]))
        floor = str(rng.choice(["A", "B", "C", "C", "D"]))
        out.append({
            "product_id": f"p{i:03d}", "name": f"product {i}", "grade_floor": floor,
            "amount_min": lo, "amount_max": lo * int(rng.choice([5, 10, 20])),
            "term_min": 3, "term_max": int(rng.choice([12, 24, 36])),
            "rate_min_bp": 300, "rate_max_bp": 700,
            "industries": sorted({str(c) for c in rng.choice(list("ACEFGI"), 2)}) if i % 3 == 0 else [],
            "regions": [str(rng.choice(REGIONS))] if i % 4 == 0 else [],
            "fund_guaranteed": floor != "D" and bool(i % 2),
        })  # fmt: skip
    return out


def uscc_codes(n: int, seed: int = 8) -> list[str]:
    import random

    from fedcredit.common import uscc

    rnd = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(uscc.generate(rnd))
    return sorted(out)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def rating_run(url: str, n: int, k: int, tmp: Path) -> dict[str, Any]:
    x, _, model = synthetic_city(n)
    rng = np.random.default_rng(22)
    codes = uscc_codes(n)
    industry = rng.choice(list(rules.INDUSTRIES[:10]), n)
    region = rng.choice(REGIONS, n)
    head = rng.integers(1, 500, n)
    log = Log.open(
        f"sqlite:///{tmp}/ledger.sqlite",
        Ed25519PrivateKey.generate(),
        "ledger/bench",
        actor="market",
    )
    market = Marketplace(MarketStore(url), log)
    for i, spec in enumerate(products(k)):
        org = f"bank-{i % N_BANKS:02d}"
        market.publish_product(pki_mod_identity(org), f"p{i}", spec)
    t0 = time.perf_counter()
    t_pred, pds = _timed(lambda: model.predict(x, num_threads=2))
    t_rate, grades = _timed(lambda: _grade(pds))
    rows = [rules.Profile(codes[i], str(industry[i]), str(region[i]), int(head[i]), grades[i],
                          int(pds[i] * 1e6)) for i in range(n)]  # fmt: skip
    t_store, report = _timed(lambda: rate_city(market, "bench-run", rows))
    amounts = rng.choice([200_000, 500_000, 1_000_000, 3_000_000, 8_000_000], n)
    pop = rules.Population(
        grade_rank=np.array([GRADES.index(g) for g in grades], dtype=np.int8),
        industry=np.array([rules.INDUSTRIES.index(i) for i in industry], dtype=np.int8),
        region=np.array([REGIONS.index(r) for r in region], dtype=np.int16),
        amount=amounts.astype(np.int64), regions=REGIONS,
    )  # fmt: skip
    t_match, counts = _timed(lambda: rules.match_population(market.products(), pop, term=12))
    t_push, pushed = _timed(lambda: push_leads(market, "bench-run"))
    total = time.perf_counter() - t0
    floor = storage_floor(url, rows, tmp)
    log.close()
    market.store.close()
    return {"enterprises": n, "products": k, "total_s": total, "predict_s": t_pred, "grade_s": t_rate,
            "store_and_ledger_s": t_store, "match_s": t_match, "push_s": t_push,
            "grades": report.grades, "matched_share": float((counts > 0).mean()),
            "leads_pushed": sum(pushed.values()), "storage_floor_s": floor}  # fmt: skip


def _grade(pds: np.ndarray) -> list[str]:
    th = calibrate(pds)
    return np.where(
        pds <= th.a, "A", np.where(pds <= th.b, "B", np.where(pds <= th.c, "C", "D"))
    ).tolist()


def pki_mod_identity(org: str) -> Any:
    from fedcredit.common.tls import Identity

    return Identity(org, "bank", org.encode().ljust(32, b"."))


def storage_floor(url: str, rows: list[rules.Profile], tmp: Path) -> float:
    """A bare executemany of the same rows into an empty table (same database)."""
    from sqlalchemy import MetaData, insert

    eng = make_engine(url if "postgresql" in url else f"sqlite:///{tmp}/floor.sqlite")
    md = MetaData()
    t = profiles.to_metadata(md, name="bench_floor_profiles")
    md.drop_all(eng)
    md.create_all(eng)
    values = [{"enterprise": p.enterprise, "industry": p.industry, "region": p.region,
               "headcount": p.headcount, "grade": p.grade, "pd_ppm": p.pd_ppm,
               "run_id": "floor", "push_opt_out": False} for p in rows]  # fmt: skip
    t0 = time.perf_counter()
    with eng.begin() as c:
        c.execute(insert(t), values)
    took = time.perf_counter() - t0
    md.drop_all(eng)
    eng.dispose()
    return took


def claim_race(url: str, n_needs: int, tmp: Path) -> dict[str, Any]:
    banks = [f"bank-{i:02d}" for i in range(N_BANKS)]
    codes = uscc_codes(n_needs, seed=9)
    files = pki_mod.init_pki(tmp / "pki", [("market", "market"), *[(b, "bank") for b in banks],
                                           *[(c, "enterprise") for c in codes]])  # fmt: skip
    log = Log.open(
        f"sqlite:///{tmp}/ledger2.sqlite",
        Ed25519PrivateKey.generate(),
        "ledger/bench2",
        actor="market",
    )
    market = Marketplace(MarketStore(url), log)
    rate_city(market, "r", [rules.Profile(c, "C", "huancui", 50, "B", 20_000) for c in codes])
    server, port = serve(market, "127.0.0.1:0", files["market"])
    addr = f"127.0.0.1:{port}"
    clients = {b: MarketClient(addr, files[b]) for b in banks}
    for b in banks:
        clients[b].publish_product(products(1)[0] | {
            "product_id": f"p-{b}", "grade_floor": "C", "industries": [], "regions": [],
            "amount_min": 100_000, "amount_max": 5_000_000})  # fmt: skip
    need_ids = [
        MarketClient(addr, files[c]).post_need(1_000_000, 12, "trade")["need_id"] for c in codes
    ]
    claim_ms, floor_ms, winners = _race(clients, need_ids)
    server.stop(2).wait()
    for c in clients.values():
        c.close()
    log.close()
    market.store.close()
    return {"needs": n_needs, "banks": N_BANKS, "claims": len(claim_ms),
            "claim_p50_ms": pct(claim_ms, 0.5), "claim_p99_ms": pct(claim_ms, 0.99),
            "floor_p50_ms": pct(floor_ms, 0.5), "floor_p99_ms": pct(floor_ms, 0.99),
            "one_winner_each": all(w == 1 for w in winners), "winners": winners}  # fmt: skip


def _race(
    clients: dict[str, MarketClient], need_ids: list[str]
) -> tuple[list[float], list[float], list[int]]:
    claim_ms: list[float] = []
    floor_ms: list[float] = []
    winners: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients))

    def one(bank: str, need: str, floor: bool) -> bool:
        barrier.wait()
        t = time.perf_counter()
        won = False
        try:
            if floor:
                clients[bank].products(bank)
            else:
                clients[bank].claim(need)
                won = True
        except FedcreditError:
            pass
        ms = (time.perf_counter() - t) * 1000
        with lock:
            (floor_ms if floor else claim_ms).append(ms)
        return won

    with ThreadPoolExecutor(len(clients)) as pool:
        for i, need in enumerate(need_ids):
            floor = i % 2 == 1  # interleaved: the floor sees the same load over time
            res = list(pool.map(lambda b, n=need, f=floor: one(b, n, f), clients))
            if not floor:
                winners.append(sum(res))
    return claim_ms, floor_ms, winners


def table(rows: list[dict[str, Any]]) -> None:
    t = Table(title="marketplace")
    for col in ("metric", "value", "unit", "target", "met"):
        t.add_column(col)
    for r in rows:
        met = r["met"]
        t.add_row(str(r["metric"]), f"{r['value']:,.2f}", r["unit"], str(r["target"] or ""),
                  "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"))  # fmt: skip
    Console().print(t)


def rows_of(rr: dict[str, Any], races: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    n, k = rr["enterprises"], rr["products"]
    rows = [
        {"metric": f"city-wide rating + matching: {n:,} enterprises x {k} products (total)",
         "value": rr["total_s"], "unit": "s", "target": "<= 180", "met": rr["total_s"] <= 180},
        {"metric": "  of which: model predict", "value": rr["predict_s"], "unit": "s", "target": None, "met": None},
        {"metric": "  of which: store profiles + ledgered run", "value": rr["store_and_ledger_s"], "unit": "s", "target": None, "met": None},
        {"metric": "  of which: match against every product", "value": rr["match_s"], "unit": "s", "target": None, "met": None},
        {"metric": "  of which: push leads (500 per bank)", "value": rr["push_s"], "unit": "s", "target": None, "met": None},
        {"metric": "  floor: bare insert of the same rows", "value": rr["storage_floor_s"], "unit": "s", "target": None, "met": None},
    ]  # fmt: skip
    for db, r in races.items():
        rows += [
            {"metric": f"grab-claim p99, 23 concurrent banks, mTLS ({db}, {r['claims']} claims)",
             "value": r["claim_p99_ms"], "unit": "ms", "target": "one winner per need",
             "met": r["one_winner_each"]},
            {"metric": f"  grab-claim p50 ({db})", "value": r["claim_p50_ms"], "unit": "ms", "target": None, "met": None},
            {"metric": f"  floor: ListProducts p99, same concurrency ({db})", "value": r["floor_p99_ms"], "unit": "ms", "target": None, "met": None},
        ]  # fmt: skip
    return rows


SIMULATION = RESULTS.parent / "simulation" / "report.json"


def simulation_rows() -> list[dict[str, Any]]:
    """The last `fedcredit world simulate --months 12` run's wall time (7-10 minutes alone,
    so run on its own, like bench_training_city)."""
    if not SIMULATION.exists():
        return []
    r = json.loads(SIMULATION.read_text())
    p = r["params"]
    return [{"metric": f"simulated year ({p['enterprises']:,} enterprises, {p['banks']} institutions, "
             f"{r['loans']:,} loans; last `fedcredit world simulate` run)",
             "value": r["wall_s"], "unit": "s", "target": "<= 600", "met": r["wall_s"] <= 600}]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--enterprises", type=int, default=120_000)
    ap.add_argument("--products", type=int, default=200)
    ap.add_argument("--needs", type=int, default=60)
    ap.add_argument("--pg", action="store_true", help="also race on PostgreSQL (PG_URL)")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rr = rating_run(f"sqlite:///{tmp}/market.sqlite", args.enterprises, args.products, tmp)
        races = {"sqlite": claim_race(f"sqlite:///{tmp}/race.sqlite", args.needs, tmp / "s")}
        if args.pg:
            eng = make_engine(PG_URL)
            metadata.drop_all(eng)
            eng.dispose()
            races["postgresql"] = claim_race(PG_URL, args.needs, tmp / "p")
            eng = make_engine(PG_URL)
            metadata.drop_all(eng)
            eng.dispose()
    rows = rows_of(rr, races) + simulation_rows()
    table(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "area": "market", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows, "raw": {"rating": rr, "races": races, "loadavg_1m_before_after": [load, os.getloadavg()[0]]},
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
