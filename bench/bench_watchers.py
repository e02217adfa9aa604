"""Status watchers held by the consent service without threads (issue 14, finding 6).

One consent service (grpc.aio, mTLS, SQLite) in this process; the watchers are grpc.aio
streams in a child process (its own interpreter: the watchers' client work does not take
the service's GIL). Measured in the same run:

- the consent round trip of a Score (ReserveUses then SettleUses, the two calls the
  coordinator makes per Score) p50/p99, with no watcher, then with N watchers held;
- revocation → every watcher holds the new list, p50/p99/max over the revocations.

The watchers all present one department certificate, so the per-identity cap is raised
for the run (the default, 16, is what a real verifier process needs); the service-wide
cap stays above N.

    .venv/bin/python -m bench.bench_watchers [--watchers 5000] [--calls 400] [--revocations 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedcredit.common import pki, uscc
from fedcredit.common.tls import Identity, TlsFiles
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.service import serve, stop
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.consent.useref import UseRef

RESULTS = Path(__file__).resolve().parent / "results" / "watchers.json"
BANK = "bank-icbc-weihai"
SERVER_ORG = "consent-service"
STREAMS_PER_CHANNEL = 100


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --- the watchers (child process) ----------------------------------------------------


def _watchers_main(address: str, tls: TlsFiles, n: int, pipe: Connection) -> None:
    asyncio.run(_watchers(address, tls, n, pipe))


async def _watchers(address: str, tls: TlsFiles, n: int, pipe: Connection) -> None:
    import grpc

    from fedcredit.common.tls import channel_credentials
    from fedcredit.v1 import consent_pb2, consent_pb2_grpc

    creds = channel_credentials(tls)
    opts = [("grpc.ssl_target_name_override", SERVER_ORG)]
    channels = [
        grpc.aio.secure_channel(address, creds, options=opts)
        for _ in range(-(-n // STREAMS_PER_CHANNEL))
    ]
    first: list[dict[int, float]] = [{} for _ in range(n)]  # per stream: seq -> first seen
    connected = 0
    done = asyncio.Event()

    failed: list[str] = []

    async def one(k: int) -> None:
        nonlocal connected
        stub = consent_pb2_grpc.ConsentServiceStub(channels[k // STREAMS_PER_CHANNEL])
        call = stub.WatchStatus(consent_pb2.WatchStatusRequest())
        got_first = False
        try:
            async for msg in call:
                first[k].setdefault(msg.seq, time.time())
                if not got_first:
                    got_first = True
                    connected += 1
                    if connected == n:
                        done.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                failed.append(f"{exc.code().name}: {exc.details()}")
                done.set()

    tasks = [asyncio.create_task(one(k)) for k in range(n)]
    # Wait until every stream delivered its first list, or until no more arrive for 10 s
    # (then the run goes on with the streams held, and says how many that is).
    last, quiet = -1, time.monotonic()
    while not done.is_set() and time.monotonic() - quiet < 10:
        await asyncio.sleep(0.2)
        if connected != last:
            last, quiet = connected, time.monotonic()
    loop = asyncio.get_running_loop()
    if failed:
        pipe.send(("failed", failed[:3]))
        return
    pipe.send(("connected", connected))
    first = [f for f in first if f]  # the streams held
    while True:
        cmd = await loop.run_in_executor(None, pipe.recv)
        if cmd[0] == "stop":
            break
        _, after_seq, t0 = cmd  # every stream's first list with seq > after_seq, latest
        deadline = time.time() + 10
        while time.time() < deadline:
            reached = [min((t for s, t in f.items() if s > after_seq), default=None) for f in first]
            if all(t is not None for t in reached):
                pipe.send(("reached", max(t for t in reached if t is not None) - t0))
                break
            await asyncio.sleep(0.01)
        else:
            missing = sum(1 for f in first if not any(s > after_seq for s in f))
            pipe.send(("timeout", missing))
    for t in tasks:
        t.cancel()
    for ch in channels:
        await ch.close(None)


# --- the measurements --------------------------------------------------------------------


def score_round_trips(client: ConsentClient, ref: UseRef, n: int) -> list[float]:
    """n times what a Score asks the consent service: reserve a use, then settle it
    (released here, so the consent's count never runs out)."""
    lat = []
    for k in range(n):
        use_id = f"bench-{time.time_ns()}-{k}"
        t0 = time.perf_counter()
        (r,) = client.reserve_uses(use_id, [ref])
        if isinstance(r, Exception):
            raise r
        client.settle_uses(use_id, [ref], commit=False)
        lat.append(time.perf_counter() - t0)
    return lat


def run(n_watchers: int, n_calls: int, n_revocations: int) -> dict[str, Any]:
    import random

    rng = random.Random(11)
    codes = [uscc.generate(rng) for _ in range(2)]
    with tempfile.TemporaryDirectory(prefix="bench-watchers-") as tmp:
        d = Path(tmp)
        files = pki.init_pki(
            d / "pki",
            [(SERVER_ORG, "consent"), (BANK, "bank"), ("dept-courts", "department"),
             ("coordinator", "coordinator")] + [(c, "enterprise") for c in codes],
        )  # fmt: skip
        bank: Identity = files[BANK].identity()
        authority = ConsentAuthority(
            ConsentStore(f"sqlite:///{d}/svc.sqlite"),
            ConsentSettings(),
            bank_certs={BANK: bank.cert_sha256}.get,
        )
        server, port = serve(
            authority,
            address="127.0.0.1:0",
            tls=files[SERVER_ORG],
            watchers_per_identity=n_watchers + 10,
            watchers_total=n_watchers + 100,
        )
        address = f"127.0.0.1:{port}"
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = None
        try:
            ent = ConsentClient(address, files[codes[0]], server_org=SERVER_ORG)
            bank_c = ConsentClient(address, files[BANK], server_org=SERVER_ORG)
            coord = ConsentClient(address, files["coordinator"], server_org=SERVER_ORG)
            terms = ConsentTerms(
                enterprise=codes[0], bank=BANK, purpose="credit_assessment",
                scope=["judicial"], validity_days=30, max_uses=5, retention_days=30,
            )  # fmt: skip
            view = ent.grant(terms)
            tok = bank_c.token(view.consent_id)
            assert tok.jti is not None
            ref = UseRef(tok.jti, codes[0], BANK)
            score_round_trips(coord, ref, 50)  # warm
            without = score_round_trips(coord, ref, n_calls)
            print(f"measured without watchers; opening {n_watchers} watchers", flush=True)
            t_conn = time.perf_counter()
            proc = ctx.Process(
                target=_watchers_main, args=(address, files["dept-courts"], n_watchers, child)
            )
            proc.start()
            if not parent.poll(320):
                raise RuntimeError("the watchers did not connect within 320 s")
            msg = parent.recv()
            connect_s = time.perf_counter() - t_conn
            print(f"watchers: {msg} after {connect_s:.1f} s", flush=True)
            assert msg[0] == "connected", msg
            held = authority_watchers(server)
            with_w = score_round_trips(coord, ref, n_calls)
            reach = []
            grants = ent.grant_many([terms] * n_revocations)
            for g in grants:
                seq = authority.status.seq
                t0 = time.time()
                ent.revoke(g.consent_id)
                parent.send(("wait", seq, t0))
                kind, value = parent.recv()
                if kind != "reached":
                    raise RuntimeError(f"{value} watchers never saw the revocation")
                reach.append(value)
            parent.send(("stop",))
            proc.join(30)
            for c in (ent, bank_c, coord):
                c.close()
        finally:
            if proc is not None and proc.is_alive():
                proc.terminate()
            stop(server, authority)
    return {
        "watchers": n_watchers,
        "watchers_held": held,
        "watchers_reporting": msg[1],
        "connect_all_s": connect_s,
        "calls": n_calls,
        "score_consent_p50_ms_without": pct(without, 0.5) * 1e3,
        "score_consent_p99_ms_without": pct(without, 0.99) * 1e3,
        "score_consent_p50_ms_with": pct(with_w, 0.5) * 1e3,
        "score_consent_p99_ms_with": pct(with_w, 0.99) * 1e3,
        "revocations": n_revocations,
        "reach_all_p50_ms": pct(reach, 0.5) * 1e3,
        "reach_all_p99_ms": pct(reach, 0.99) * 1e3,
        "reach_all_max_ms": max(reach) * 1e3,
    }


def authority_watchers(server: Any) -> int:
    return int(server.servicer.broadcaster.open)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--watchers", type=int, default=5000)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--revocations", type=int, default=20)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    r = run(args.watchers, args.calls, args.revocations)
    p99_ratio = r["score_consent_p99_ms_with"] / r["score_consent_p99_ms_without"]
    n = r["watchers_held"]
    rows = [
        {"metric": "Score's consent round trip (ReserveUses + SettleUses) p99, no watcher",
         "value": r["score_consent_p99_ms_without"], "unit": "ms", "target": None, "met": None},
        {"metric": f"Score's consent round trip p99, {n:,} watchers held",
         "value": r["score_consent_p99_ms_with"], "unit": "ms",
         "target": "<= 1.2 x without", "met": p99_ratio <= 1.2},
        {"metric": f"revocation → all {n:,} watchers hold it, p50 (n={r['revocations']})",
         "value": r["reach_all_p50_ms"], "unit": "ms", "target": None, "met": None},
        {"metric": f"revocation → all {n:,} watchers hold it, p99 (n={r['revocations']})",
         "value": r["reach_all_p99_ms"], "unit": "ms", "target": "<= 1000",
         "met": r["reach_all_p99_ms"] <= 1000},
        {"metric": f"watchers held (of {r['watchers']:,} opened)", "value": n, "unit": "streams",
         "target": None, "met": None},
        {"metric": "time to open them", "value": r["connect_all_s"], "unit": "s",
         "target": None, "met": None},
    ]  # fmt: skip
    console = Console()
    table = Table(title="consent watchers")
    for col in ("metric", "value", "unit", "target", "met"):
        table.add_column(col)
    for row in rows:
        met = row["met"]
        table.add_row(
            str(row["metric"]), f"{row['value']:,.2f}", str(row["unit"]), str(row["target"] or ""),
            "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"),
        )  # fmt: skip
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "area": "consent-watchers",
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "rows": rows,
                "raw": {
                    **r,
                    "p99_ratio": p99_ratio,
                    "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]],
                },
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
