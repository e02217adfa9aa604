"""Status watchers held by the consent service without threads (issue 14, finding 6).

One consent service (grpc.aio, mTLS, SQLite) in this process; the watchers are grpc.aio
streams in child processes of at most 2,500 streams each (their own interpreters: the
watchers' client work does not take the service's GIL), over a connection of their own per
100 streams. The run raises its open-file limit (RLIMIT_NOFILE) to the hard limit, in
this process and the children: sockets, not the service, must not be what caps it.
Streams that end before their first list (the server dropping calls it could not take)
are counted and reported. Measured in the same run:

- the consent round trip of a Score (ReserveUses then SettleUses, the two calls the
  coordinator makes per Score) p50/p99, with no watcher, then with N watchers held, each
  phase calling for at least one heartbeat period of the service (so the "with" phase
  always includes one heartbeat to every watcher); and this process's CPU time per round
  trip (client + service: far less sensitive to other load on the machine than latency).
  This is the part of a Score the watchers can slow: they load the consent service only,
  and the rest of a Score (the node fan-out, the ledger) is the same with or without
  them, so the whole Score's p99 would show the same milliseconds diluted;
- the service's CPU per second while idle (no call), without and with N watchers held,
  over one heartbeat period each: what holding idle streams costs (heartbeats, keepalive);
- revocation → every watcher holds the new list, p50/p99/max over the revocations.

The watchers all present one department certificate, so the per-identity cap is raised
for the run (the default, 16, is what a real verifier process needs); the service-wide
cap stays above N.

    .venv/bin/python -m bench.bench_watchers [--watchers 5000] [--calls 400] [--revocations 20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.report import table, write
from fedcredit.common import pki, uscc
from fedcredit.common.gctune import tune_for_service
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
# Streams per watcher process.
PER_PROCESS = int(os.environ.get("BENCH_WATCHERS_PER_PROCESS", "2500"))
# Opening stops when no stream got its first list for this long.
QUIET_S = float(os.environ.get("BENCH_WATCHERS_QUIET_S", "10"))


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --- the watchers (child process) ----------------------------------------------------


@dataclass
class _WatchState:
    connected: int = 0  # streams past their first list
    target: int | None = None  # the seq a revocation must pass
    reached: int = 0  # streams past target
    lost: int = 0  # streams that ended before their first list


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file limit (RLIMIT_NOFILE) to its hard limit: each
    channel is a socket in the watchers' process and each connection one in the
    service's; a default soft limit of 1,024 would cap the run, not the service. Returns
    (soft, hard) after it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _watchers_main(address: str, tls: TlsFiles, n: int, pipe: Connection) -> None:
    raise_nofile()
    asyncio.run(_watchers(address, tls, n, pipe))


async def _answer_waits(
    pipe: Connection, st: _WatchState, latest: list[int], hist: list[list[tuple[int, float]]],
    all_reached: asyncio.Event,
) -> None:  # fmt: skip
    """Answer the parent's waits until it says stop: for ("wait", after_seq, t0), the
    seconds from t0 until every held stream got a list with seq > after_seq."""
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, pipe.recv)
        if cmd[0] == "stop":
            return
        _, after_seq, t0 = cmd
        all_reached.clear()
        st.reached = sum(1 for s in latest if s > after_seq)
        st.target = after_seq
        if st.reached == st.connected:
            all_reached.set()
        try:
            await asyncio.wait_for(all_reached.wait(), 10)
            # the moment the last stream first held a list past after_seq
            reach = max(min(t for s, t in h if s > after_seq) for h in hist if h)
            pipe.send(("reached", reach - t0))
        except TimeoutError:
            pipe.send(("timeout", st.connected - st.reached))
        st.target = None


async def _watchers(address: str, tls: TlsFiles, n: int, pipe: Connection) -> None:
    import grpc

    from fedcredit.common.tls import channel_credentials
    from fedcredit.v1 import consent_pb2, consent_pb2_grpc

    creds = channel_credentials(tls)
    # A connection of its own per channel: channels with equal arguments would otherwise
    # share one subchannel (one TCP connection carrying every stream).
    opts = [("grpc.ssl_target_name_override", SERVER_ORG), ("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.secure_channel(address, creds, options=opts)
        for _ in range(-(-n // STREAMS_PER_CHANNEL))
    ]
    # Bookkeeping is O(1) per message, so the loop spends its time receiving: per stream the
    # highest seq seen; per wait, how many streams have passed ``target`` and when the last did.
    latest = [-1] * n
    # per stream: (seq, time first seen) each time its seq went up
    hist: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    st = _WatchState()
    done = asyncio.Event()
    all_reached = asyncio.Event()
    failed: list[str] = []

    async def one(k: int) -> None:
        stub = consent_pb2_grpc.ConsentServiceStub(channels[k // STREAMS_PER_CHANNEL])
        call = stub.WatchStatus(consent_pb2.WatchStatusRequest())
        try:
            async for msg in call:
                prev = latest[k]
                if msg.seq <= prev:
                    continue  # a heartbeat
                latest[k] = msg.seq
                hist[k].append((msg.seq, time.time()))
                if prev < 0:
                    st.connected += 1
                    if st.connected == n:
                        done.set()
                if st.target is not None and prev <= st.target < msg.seq:
                    st.reached += 1
                    if st.reached == st.connected:
                        all_reached.set()
        except grpc.aio.AioRpcError as exc:
            if latest[k] < 0:
                st.lost += 1  # ended before its first list (the server dropped the call)
            if exc.code() != grpc.StatusCode.CANCELLED:
                failed.append(f"{exc.code().name}: {exc.details()}")
                done.set()

    tasks = [asyncio.create_task(one(k)) for k in range(n)]
    # Wait until every stream delivered its first list, or until no more arrive for 10 s
    # (then the run goes on with the streams held, and says how many that is).
    last, quiet = -1, time.monotonic()
    while not done.is_set() and time.monotonic() - quiet < QUIET_S:
        await asyncio.sleep(0.2)
        if st.connected != last:
            last, quiet = st.connected, time.monotonic()
    if failed:
        pipe.send(("failed", failed[:3]))
        return
    pipe.send(("connected", st.connected, st.lost))
    await _answer_waits(pipe, st, latest, hist, all_reached)
    for t in tasks:
        t.cancel()
    for ch in channels:
        await ch.close(None)


class WatcherProcs:
    """The watchers, split over processes of at most ``PER_PROCESS`` streams each (as
    verifiers are: many processes, few streams each; one interpreter holding thousands of
    streams would measure its own loop, not the service)."""

    def __init__(self, address: str, tls: TlsFiles, n: int) -> None:
        ctx = mp.get_context("spawn")
        k = -(-n // PER_PROCESS)
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for size in sizes:
            parent, child = ctx.Pipe()
            self.pipes.append(parent)
            self.procs.append(ctx.Process(target=_watchers_main, args=(address, tls, size, child)))

    def start(self) -> int:
        """Open every stream; how many delivered their first list."""
        for p in self.procs:
            p.start()
        held = self.lost = 0
        for pipe in self.pipes:
            if not pipe.poll(320):
                raise RuntimeError("the watchers did not connect within 320 s")
            msg = pipe.recv()
            if msg[0] != "connected":
                raise RuntimeError(f"watchers failed: {msg}")
            held += msg[1]
            self.lost += msg[2]
        return held

    def wait(self, after_seq: int, t0: float) -> float:
        """Seconds from ``t0`` until every stream held a list past ``after_seq``."""
        for pipe in self.pipes:
            pipe.send(("wait", after_seq, t0))
        got = [pipe.recv() for pipe in self.pipes]
        missing = sum(v for kind, v in got if kind != "reached")
        if missing:
            raise RuntimeError(f"{missing} watchers never saw the revocation")
        return max(v for _, v in got)

    def stop(self) -> None:
        for pipe in self.pipes:
            pipe.send(("stop",))
        for p in self.procs:
            p.join(30)

    def terminate(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()


# --- the measurements --------------------------------------------------------------------


def score_round_trips(
    client: ConsentClient, ref: UseRef, n: int, min_s: float = 0.0
) -> list[float]:
    """n times (and for at least ``min_s`` seconds) what a Score asks the consent service:
    reserve a use, then settle it (released here, so the consent's count never runs out)."""
    lat: list[float] = []
    end = time.perf_counter() + min_s
    k = 0
    while k < n or time.perf_counter() < end:
        k += 1
        use_id = f"bench-{time.time_ns()}-{k}"
        t0 = time.perf_counter()
        (r,) = client.reserve_uses(use_id, [ref])
        if isinstance(r, Exception):
            raise r
        client.settle_uses(use_id, [ref], commit=False)
        lat.append(time.perf_counter() - t0)
    return lat


def _consent_service(
    d: Path, n_watchers: int
) -> tuple[dict[str, TlsFiles], list[str], ConsentAuthority, Any, str]:
    import random

    rng = random.Random(11)
    codes = [uscc.generate(rng) for _ in range(2)]
    files = pki.init_pki(
        d / "pki",
        [(SERVER_ORG, "consent"), (BANK, "bank"), ("dept-courts", "department"),
         ("coordinator", "coordinator")] + [(c, "enterprise") for c in codes],
    )  # fmt: skip
    bank: Identity = files[BANK].identity()
    authority = ConsentAuthority(
        ConsentStore(f"sqlite:///{d}/svc.sqlite"), ConsentSettings(),
        bank_certs={BANK: bank.cert_sha256}.get,
    )  # fmt: skip
    server, port = serve(
        authority, address="127.0.0.1:0", tls=files[SERVER_ORG],
        watchers_per_identity=n_watchers + 10, watchers_total=n_watchers + 100,
    )  # fmt: skip
    return files, codes, authority, server, f"127.0.0.1:{port}"


def _measured(
    calls: int, revocations: int, without: list[float], with_w: list[float], reach: list[float]
) -> dict[str, Any]:
    return {
        "calls": calls, "calls_without": len(without), "calls_with": len(with_w),
        "score_consent_p50_ms_without": pct(without, 0.5) * 1e3,
        "score_consent_p99_ms_without": pct(without, 0.99) * 1e3,
        "score_consent_p50_ms_with": pct(with_w, 0.5) * 1e3,
        "score_consent_p99_ms_with": pct(with_w, 0.99) * 1e3,
        "revocations": revocations,
        "reach_all_p50_ms": pct(reach, 0.5) * 1e3,
        "reach_all_p99_ms": pct(reach, 0.99) * 1e3,
        "reach_all_max_ms": max(reach) * 1e3,
    }  # fmt: skip


def run(n_watchers: int, n_calls: int, n_revocations: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-watchers-") as tmp:
        files, codes, authority, server, address = _consent_service(Path(tmp), n_watchers)
        procs = WatcherProcs(address, files["dept-courts"], n_watchers)
        try:
            r = _run_against(
                authority, server, procs, address, files, codes, n_calls, n_revocations
            )
        finally:
            procs.terminate()
            stop(server, authority)
    return {**r, "watchers": n_watchers, "watcher_processes": len(procs.procs),
            "watchers_lost_opening": procs.lost}  # fmt: skip


def _run_against(
    authority: ConsentAuthority, server: Any, procs: WatcherProcs, address: str,
    files: dict[str, TlsFiles], codes: list[str], n_calls: int, n_revocations: int,
) -> dict[str, Any]:  # fmt: skip
    ent = ConsentClient(address, files[codes[0]], server_org=SERVER_ORG)
    bank_c = ConsentClient(address, files[BANK], server_org=SERVER_ORG)
    coord = ConsentClient(address, files["coordinator"], server_org=SERVER_ORG)
    terms = ConsentTerms(
        enterprise=codes[0], bank=BANK, purpose="credit_assessment",
        scope=["judicial"], validity_days=30, max_uses=5, retention_days=30,
    )  # fmt: skip
    tok = bank_c.token(ent.grant(terms).consent_id)
    assert tok.jti is not None
    ref = UseRef(tok.jti, codes[0], BANK)
    # The service's GC settings as `fedcredit consent serve` sets them once it serves.
    tune_for_service()
    beat = float(server.servicer.heartbeat_s)
    idle_without = idle_cpu_per_s(beat)
    score_round_trips(coord, ref, 50)  # warm
    c0 = time.process_time()
    without = score_round_trips(coord, ref, n_calls, beat)
    cpu_without = (time.process_time() - c0) / len(without)
    print("measured without watchers; opening the watchers", flush=True)
    t_conn = time.perf_counter()
    reporting = procs.start()
    connect_s = time.perf_counter() - t_conn
    print(f"watchers: {reporting} held after {connect_s:.1f} s "
          f"({procs.lost} ended before their first list)", flush=True)  # fmt: skip
    held = authority_watchers(server)
    idle_with = idle_cpu_per_s(beat)
    c0 = time.process_time()
    with_w = score_round_trips(coord, ref, n_calls, beat)
    cpu_with = (time.process_time() - c0) / len(with_w)
    reach = []
    for g in ent.grant_many([terms] * n_revocations):
        seq = authority.status.seq
        t0 = time.time()
        ent.revoke(g.consent_id)
        reach.append(procs.wait(seq, t0))
    procs.stop()
    for c in (ent, bank_c, coord):
        c.close()
    return {
        **_measured(n_calls, n_revocations, without, with_w, reach),
        "watchers_held": held, "watchers_reporting": reporting, "connect_all_s": connect_s,
        "heartbeat_s": beat,
        "cpu_ms_per_round_trip_without": cpu_without * 1e3, "cpu_ms_per_round_trip_with": cpu_with * 1e3,
        "idle_cpu_ms_per_s_without": idle_without * 1e3, "idle_cpu_ms_per_s_with": idle_with * 1e3,
    }  # fmt: skip


def idle_cpu_per_s(seconds: float) -> float:
    """This process's CPU seconds per second over ``seconds`` of no calls (the consent
    service's own background work: heartbeats to the watchers, keepalive, timers)."""
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return (time.process_time() - c0) / (time.perf_counter() - t0)


def authority_watchers(server: Any) -> int:
    return int(server.servicer.broadcaster.open)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--watchers", type=int, default=5000)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--revocations", type=int, default=20)
    args = ap.parse_args(argv)
    nofile = raise_nofile()
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
        {"metric": "Score's consent round trip: CPU (client + service), no watcher",
         "value": r["cpu_ms_per_round_trip_without"], "unit": "ms", "target": None, "met": None},
        {"metric": f"Score's consent round trip: CPU (client + service), {n:,} watchers held",
         "value": r["cpu_ms_per_round_trip_with"], "unit": "ms", "target": None, "met": None},
        {"metric": "consent service idle CPU, no watcher",
         "value": r["idle_cpu_ms_per_s_without"], "unit": "ms/s", "target": None, "met": None},
        {"metric": f"consent service idle CPU, {n:,} watchers held (heartbeat every "
                   f"{r['heartbeat_s']:.0f} s)",
         "value": r["idle_cpu_ms_per_s_with"], "unit": "ms/s", "target": None, "met": None},
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
    console.print(table("consent watchers", rows, fmt=",.2f"))
    raw = {
        **r, "p99_ratio": p99_ratio, "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]],
        "rlimit_nofile": list(nofile), "streams_per_channel": STREAMS_PER_CHANNEL,
    }  # fmt: skip
    write(RESULTS, {"area": "consent-watchers", "rows": rows, "raw": raw}, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
