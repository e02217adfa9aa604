"""Department node benchmarks: GetFeatures latency and batch throughput over mTLS.

Run ``python -m bench.bench_node`` (``--quick`` for a smaller run). In one run:

* the floor: bare Ed25519 verifications per second of a token-sized message (one core,
  libsodium as the node runs it; OpenSSL next to it for reference);
  a batch answer verifies one consent token per enterprise, so a cold batch on one core
  cannot beat it (the node spreads a batch's signatures over worker processes,
  ``node.sigpool``; the same bare rate through that pool is reported next to it);
* the world generator: 2,000 enterprises (target <= 5 s), and 120,000 with ``--full``
  (target <= 2 min);
* ``GetFeatures`` for 1 enterprise x all of the tax node's features, end to end over mTLS
  on loopback and server-side (the servicer called in-process), p50/p99
  (target p50 <= 2 ms end to end), next to the floor measured in the same run: a bare
  unary RPC (``grpc.health.v1.Health/Check``) over the same mTLS channel; and the node
  process's CPU time per call;
* ``GetFeatures`` for a batch of 1,000 enterprises each with its own consent token,
  enterprise-feature-vectors per second, cold (every token seen for the first time: a
  verifier with an empty token cache, so every signature and claim is checked, sharing
  the running node's JWKS and status-list caches; feature cache empty: every vector
  computed from the database) and warm (target >= 5,000/s); cold also without the
  signature workers (one core), in the same run;
* the disclosure-log cost (atomic append of the answer's entries) as a share of the request.

Every request counts its uses as deployed: the node reserves (or joins) the request's use
at the consent service, which runs here over mTLS gRPC (one ReserveUses per 1,000 tokens,
one SettleUses after the answer), as the coordinator's requests carry a use id.

Writes bench/results/node.json (rows: metric, value, unit, target, met).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from fedcredit.common import pki
from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.common.ed25519 import Ed25519Key
from fedcredit.common.gctune import tune_for_service
from fedcredit.common.tls import Identity
from fedcredit.consent.authority import ConsentAuthority, local_verifier
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.service import serve as serve_consent
from fedcredit.consent.service import stop as stop_consent
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.consent.useref import UseRef
from fedcredit.consent.verify import ConsentVerifier
from fedcredit.ledger.log import Log
from fedcredit.node.client import NodeClient, build_request
from fedcredit.node.disclosure import open_disclosure_log
from fedcredit.node.engine import FeatureEngine
from fedcredit.node.policy import AccessPolicy
from fedcredit.node.service import FeatureServicer, build_node_server
from fedcredit.node.settings import NodeSettings
from fedcredit.node.sigpool import SignaturePool, default_workers, verify_jobs
from fedcredit.node.store import NodeStore
from fedcredit.world.generate import generate

RESULTS = Path(__file__).resolve().parent / "results" / "node.json"
BANK = DEFAULT_BANKS[0]
DEPT, ORG = "tax", "dept-tax"


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def bare_ed25519_per_s(n: int, *, openssl: bool = False) -> float:
    """Bare verifications per second on one core: libsodium (what the node runs,
    ``common.ed25519``) or, for reference, OpenSSL through ``cryptography``."""
    key = Ed25519PrivateKey.generate()
    pub, msg = key.public_key(), b"x" * 700  # a consent token's signing input is ~700 bytes
    sig = key.sign(msg)
    fast = Ed25519Key(pub.public_bytes_raw())
    t = time.perf_counter()
    if openssl:
        for _ in range(n):
            pub.verify(sig, msg)
    else:
        for _ in range(n):
            if not fast.verify(sig, msg):
                raise AssertionError("libsodium refused a good signature")
    return n / (time.perf_counter() - t)


def pool_ed25519_per_s(pool: SignaturePool, n: int) -> float:
    key = Ed25519PrivateKey.generate()
    raw, msg = key.public_key().public_bytes_raw(), b"x" * 700
    jobs = [(raw, msg, key.sign(msg))] * n
    t = time.perf_counter()
    ok = pool.verify_many(jobs)
    rate = n / (time.perf_counter() - t)
    assert all(ok) and ok == verify_jobs(jobs[:1]) * n
    return rate


class TimedLog:
    """Wraps the disclosure log to measure how long each request waits for its entries:
    from submitting them to their being durable (the servicer builds its answer meanwhile,
    so this is the log's time, not all of it added to the request)."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.seconds: list[float] = []

    def prepare(self, *args: Any) -> Any:
        return self.log.prepare(*args)

    def prepare_each(self, *args: Any) -> Any:
        return self.log.prepare_each(*args)

    def submit_many(self, items: Any) -> Any:
        t = time.perf_counter()
        fut = self.log.submit_many(items)
        fut.add_done_callback(lambda _f: self.seconds.append(time.perf_counter() - t))
        return fut

    def append_many(
        self,
        items: Sequence[tuple[str, str | None, Mapping[str, Any]]],
        *,
        timeout: float | None = None,
    ) -> Any:
        t = time.perf_counter()
        out = self.log.append_many(items, timeout=timeout)
        self.seconds.append(time.perf_counter() - t)
        return out


class FakeContext:
    """Just enough of a grpc.ServicerContext for an in-process (server-side) call."""

    def __init__(self, cert_pem: bytes) -> None:
        self._auth = {"x509_pem_cert": [cert_pem]}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return "in-process"

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")

    def set_trailing_metadata(self, md: Any) -> None:
        pass


class _NodeCommands:
    """The node side of the benchmark's control pipe: one method per command."""

    def __init__(self, tmp: Path, store: NodeStore, authority: ConsentAuthority, tls: Any,
                 caller_pem: bytes, batch_n: int) -> None:  # fmt: skip
        origin = f"{ORG}/disclosures"
        self.logs = {
            mode: open_disclosure_log(
                f"sqlite:///{tmp / f'disclosures-{mode}.sqlite'}", Ed25519PrivateKey.generate(), origin,
                NodeSettings(disclosure_synchronous=mode),
            )
            for mode in ("full", "normal")
        }  # fmt: skip
        self.timed_log = TimedLog(self.logs["full"])
        settings = NodeSettings(max_batch=batch_n)
        self.engine = FeatureEngine(store, cache_size=settings.cache_size)
        self.pool = SignaturePool(default_workers())
        self.pool.wait_ready()
        self.authority, self.tls = authority, tls
        self.verifier = local_verifier(authority)
        self.servicer = FeatureServicer(node_org=ORG, engine=self.engine, verifier=self.verifier,
                                        signatures=self.pool, disclosures=self.timed_log,
                                        policy=AccessPolicy(banks=[BANK]), settings=settings)  # fmt: skip
        self.server_ctx = FakeContext(caller_pem)  # in-process calls as the coordinator

    def cpu(self) -> float:  # this process's CPU time (every thread)
        return time.process_time()

    def pool_rate(self, n: int) -> float:
        return pool_ed25519_per_s(self.pool, n)

    def workers(self, on: bool) -> None:  # use the signature workers or not
        self.servicer.signatures = self.pool if on else None

    def log(self, mode: str) -> None:
        self.timed_log.log = self.logs[mode]
        self.timed_log.seconds.clear()

    def log_seconds(self) -> float:
        total = sum(self.timed_log.seconds)
        self.timed_log.seconds.clear()
        return total

    def consent(self, address: str) -> None:
        # Uses counted as deployed: ReserveUses/SettleUses at the consent service, over
        # mTLS gRPC, as this node (one round trip per batch chunk).
        from fedcredit.consent.client import ConsentClient
        from fedcredit.consent.remote import RemoteUseCounter

        counter = RemoteUseCounter(ConsentClient(address, self.tls, server_org="consent-service"))
        self.verifier = local_verifier(self.authority, counter=counter)
        self.servicer.verifier = self.verifier

    def cold(self) -> None:
        # An empty token cache (every signature checked); the JWKS and the status list stay
        # cached as in a running node (refreshed on their own schedule); uses are still
        # counted at the consent service.
        v = self.verifier
        self.servicer.verifier = ConsentVerifier(
            issuer=v.issuer, keys=v.keys, status=v.status, leeway=v.leeway, counter=v.counter
        )
        self.engine._cache.clear()
        self.timed_log.seconds.clear()

    def server_side(self, raw: bytes, n: int) -> list[float]:
        from fedcredit.v1 import feature_pb2

        req = feature_pb2.GetFeaturesRequest.FromString(raw)
        return timed(functools.partial(self.servicer.GetFeatures, req, self.server_ctx), n)

    def close(self) -> None:
        self.pool.close()
        for lg in self.logs.values():
            lg.close()


def _node_process(
    conn: Any, tmp: Path, store: NodeStore, authority: ConsentAuthority, tls: Any,
    caller_pem: bytes, batch_n: int,
) -> None:  # fmt: skip
    """The node server, in its own process; answers the benchmark's control commands."""
    store.engine.dispose(close=False)  # connections are not shared across fork
    authority.store.engine.dispose(close=False)
    node = _NodeCommands(tmp, store, authority, tls, caller_pem, batch_n)
    server = build_node_server(servicer=node.servicer, address="127.0.0.1:0", tls=tls)
    server.start()
    # As `fedcredit node serve` does once it serves: the start-up heap frozen and young
    # collections rarer (common.gctune). Without it, every cold batch paid one full
    # collection over the whole inherited heap (~50 ms of the node's CPU per batch).
    tune_for_service()
    conn.send((server.port, node.pool.workers))
    while True:
        op, *args = conn.recv()
        if op == "stop":
            break
        conn.send(getattr(node, op)(*args))
    server.stop(0)
    node.close()
    conn.send(None)


def use_round_trips(address: str, tls: Any, refs: Sequence[UseRef], n: int) -> list[float]:
    """n times: reserve a fresh use of every token in one call, then release it."""
    out = []
    with ConsentClient(address, tls, server_org="consent-service") as c:
        for k in range(n):
            use_id = f"bench-rt-{k}-{time.time_ns()}"
            t = time.perf_counter()
            got = c.reserve_uses(use_id, refs)
            c.settle_uses(use_id, refs, commit=False)
            out.append(time.perf_counter() - t)
            bad = [r for r in got if isinstance(r, Exception)]
            assert not bad, bad[:3]
    return out


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


class _Rows(list[dict[str, Any]]):
    def add(
        self, metric: str, value: float, unit: str, target: str = "", met: bool | None = None
    ) -> None:
        self.append(
            {"metric": metric, "value": round(value, 3), "unit": unit, "target": target, "met": met}
        )


@dataclass
class _Rig:
    """The tax node's store, the consent authority and 1,000 enterprises' tokens."""

    tmp: Path
    files: dict[str, Any]
    store: NodeStore
    authority: ConsentAuthority
    tokens: list[tuple[str, str]]
    refs: list[UseRef]
    batch_n: int = 1000


def _floor_rows(quick: bool, rows: _Rows) -> float:
    # Other work on the machine moves every figure; the floors below are measured in the
    # same run for that reason, and the load is recorded next to them.
    rows.add("machine load average (1 min) at start", os.getloadavg()[0], "runnable tasks")
    ed = bare_ed25519_per_s(3000 if quick else 20000)
    rows.add("floor: bare Ed25519 verify, libsodium as the node runs it (1 core)", ed,
             "verifications/s", "floor for cold batches")  # fmt: skip
    rows.add("reference: bare Ed25519 verify, OpenSSL via cryptography (1 core)",
             bare_ed25519_per_s(3000 if quick else 20000, openssl=True), "verifications/s")  # fmt: skip
    return ed


def _world_rows(tmp: Path, quick: bool, full: bool, rows: _Rows) -> Path:
    t = time.perf_counter()
    generate(tmp / "w2k", enterprises=2000, seed=1)
    g2k = time.perf_counter() - t
    rows.add("world generate 2,000 enterprises", g2k, "s", "<= 5 s", g2k <= 5)
    if full:
        t = time.perf_counter()
        generate(tmp / "w120k", enterprises=120_000, seed=1)
        g120 = time.perf_counter() - t
        rows.add("world generate 120,000 enterprises", g120, "s", "<= 120 s", g120 <= 120)
    world = tmp / "world"
    generate(world, enterprises=2000 if quick else 5000, seed=7)
    return world


def _rig(tmp: Path, world: Path, rows: _Rows, console: Console) -> _Rig:
    files = pki.init_pki(
        tmp / "pki",
        [
            (ORG, "department"),
            ("coordinator", "coordinator"),
            (BANK, "bank"),
            ("consent-service", "consent"),
        ],
    )
    bank_id = files[BANK].identity()
    store = NodeStore(f"sqlite:///{tmp / 'node.sqlite'}", DEPT)
    store.create_schema()
    codes = [
        ln.split(",", 1)[0]
        for ln in (world / "enterprises.csv").read_text(encoding="utf-8").splitlines()[1:]
    ]
    t = time.perf_counter()
    store.load(world)
    rows.add(f"node load ({len(codes):,} enterprises, tax)", time.perf_counter() - t, "s")
    authority = ConsentAuthority(ConsentStore(f"sqlite:///{tmp / 'consent.sqlite'}"), banks=[BANK],
                                 bank_certs=lambda b: bank_id.cert_sha256 if b == BANK else None)  # fmt: skip
    rig = _Rig(tmp, files, store, authority, [], [])
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("granting consents", total=rig.batch_n)
        for code in codes[: rig.batch_n]:
            v = authority.grant(Identity(code, "enterprise", b"\x01" * 32),
                                ConsentTerms(enterprise=code, bank=BANK, purpose="credit_assessment",
                                             scope=["operations_tax"], max_uses=5))  # fmt: skip
            view = authority.token(bank_id, v.consent_id)
            assert view.token is not None and view.jti is not None
            rig.tokens.append((code, view.token))
            rig.refs.append(UseRef(view.jti, code, BANK))
            bar.advance(task)
    return rig


def _single_rows(
    client: NodeClient, cmd: Callable[..., Any], one: Any, n1: int, rows: _Rows
) -> None:
    """1 enterprise x all 8 features, warm, beside the bare unary floor on the same channel."""
    health = health_pb2_grpc.HealthStub(client.channel)
    hreq = health_pb2.HealthCheckRequest(service="")
    timed(lambda: client.get_features_raw(one), 50)
    timed(lambda: health.Check(hreq, timeout=10), 50)
    for mode in ("full", "normal"):
        cmd("log", mode)
        e2e, bare, cpu_feat, cpu_bare = [], [], 0.0, 0.0
        for _ in range(5):  # interleaved rounds: the floor and the call see the same machine
            c0 = cmd("cpu")
            e2e += timed(lambda: client.get_features_raw(one), n1 // 5)
            c1 = cmd("cpu")
            bare += timed(lambda: health.Check(hreq, timeout=10), n1 // 5)
            c2 = cmd("cpu")
            cpu_feat, cpu_bare = cpu_feat + c1 - c0, cpu_bare + c2 - c1
        share = cmd("log_seconds") / sum(e2e)
        p50 = pct(e2e, 0.5) * 1e3
        what = "fsync per commit" if mode == "full" else "synchronous=normal"
        rows.add(
            f"1 enterprise x 8 features: end-to-end p50 (log {what})",
            p50,
            "ms",
            "<= 2 ms",
            p50 <= 2,
        )
        rows.add(
            f"1 enterprise x 8 features: end-to-end p99 (log {what})", pct(e2e, 0.99) * 1e3, "ms"
        )
        rows.add(f"1 enterprise: disclosure-log share (log {what})", 100 * share, "%")
        rows.add(f"1 enterprise: node CPU per call (log {what})", cpu_feat / len(e2e) * 1e3, "ms")
        rows.add(f"floor: bare unary RPC (Health/Check, same mTLS channel) p50 (with log {what})",
                 pct(bare, 0.5) * 1e3, "ms")  # fmt: skip
        rows.add(
            f"floor: bare unary RPC node CPU per call (with log {what})",
            cpu_bare / len(bare) * 1e3,
            "ms",
        )
    cmd("log", "full")
    srv = cmd("server_side", one.SerializeToString(), n1)
    rows.add("1 enterprise x 8 features: server-side p50", pct(srv, 0.5) * 1e3, "ms")


def _cold_rounds(
    client: NodeClient, cmd: Callable[..., Any], rig: _Rig, kw: dict[str, Any], reps: int
) -> dict[str, list[float]]:
    """Cold batches (every signature checked), with and without the signature workers."""
    m: dict[str, list[float]] = {
        k: [] for k in ("cold", "cold_log", "cold1", "cold_cpu", "cold1_cpu")
    }
    for rnd in range(reps):  # with and without the signature workers, alternating
        big = build_request(rig.tokens, [], **{**kw, "request_id": f"cold-{rnd}"})
        for use_workers, out, cpu in ((True, "cold", "cold_cpu"), (False, "cold1", "cold1_cpu")):
            cmd("workers", use_workers)
            cmd("cold")  # empty token cache (every signature checked), empty feature cache
            c0 = cmd("cpu")
            t = time.perf_counter()
            resp = client.get_features_raw(big)
            m[out].append(time.perf_counter() - t)
            m[cpu].append(cmd("cpu") - c0)
            if use_workers:
                m["cold_log"].append(cmd("log_seconds"))
            assert len(resp.items) == rig.batch_n and not any(
                it.HasField("error") for it in resp.items
            )
    cmd("workers", True)
    return m


def _batch_rows(
    client: NodeClient, cmd: Callable[..., Any], rig: _Rig, kw: dict[str, Any], consent_address: str,
    quick: bool, workers: int, ed: float, rows: _Rows,
) -> None:  # fmt: skip
    """Batches of 1,000 enterprises, each with its own token: cold, warm, use counting."""
    reps = 3 if quick else 5
    # The use counting alone, as the node does it for a batch it opens: one ReserveUses of
    # 1,000 tokens and one SettleUses over mTLS, as this node (released, and before the
    # cold rounds, so the tokens keep their uses).
    rt = statistics.median(use_round_trips(consent_address, rig.files[ORG], rig.refs, reps))
    m = _cold_rounds(client, cmd, rig, kw, reps)
    pool_rate = cmd("pool_rate", 3000 if quick else 10000)
    big = build_request(rig.tokens, [], **kw)
    warm, warm_log = [], []
    for _ in range(reps):
        t = time.perf_counter()
        client.get_features_raw(big)
        warm.append(time.perf_counter() - t)
        warm_log.append(cmd("log_seconds"))
    srv_warm = cmd("server_side", big.SerializeToString(), reps)
    med = statistics.median
    cold_rate, warm_rate = rig.batch_n / med(m["cold"]), rig.batch_n / med(warm)
    rows.add(f"batch 1,000 (own token each), cold: vectors/s ({workers} signature worker(s))",
             cold_rate, "vectors/s", ">= 5,000/s", cold_rate >= 5000)  # fmt: skip
    rows.add("batch 1,000 (own token each), cold, no signature worker (1 core): vectors/s",
             rig.batch_n / med(m["cold1"]), "vectors/s")  # fmt: skip
    rows.add(f"floor: bare Ed25519 verify through the node's pool ({workers} worker(s) + caller)",
             pool_rate, "verifications/s")  # fmt: skip
    rows.add(
        "batch 1,000, cold: node CPU per batch (with workers' CPU not counted)",
        med(m["cold_cpu"]) * 1e3,
        "ms",
    )
    rows.add(
        "batch 1,000, cold, no signature worker: node CPU per batch",
        med(m["cold1_cpu"]) * 1e3,
        "ms",
    )
    rows.add("batch 1,000 (own token each), warm: vectors/s", warm_rate, "vectors/s", ">= 5,000/s",
             warm_rate >= 5000)  # fmt: skip
    rows.add("batch 1,000, cold: end-to-end median", med(m["cold"]) * 1e3, "ms")
    rows.add("batch 1,000, warm: end-to-end median", med(warm) * 1e3, "ms")
    rows.add("batch 1,000, warm: server-side median", med(srv_warm) * 1e3, "ms")
    rows.add(
        "batch 1,000, cold: disclosure-log share", 100 * sum(m["cold_log"]) / sum(m["cold"]), "%"
    )
    rows.add("batch 1,000, warm: disclosure-log share", 100 * sum(warm_log) / sum(warm), "%")
    rows.add("cold batch rate / bare Ed25519 rate", cold_rate / ed, "ratio", "<= 1 (floor)")
    rows.add("batch 1,000: ReserveUses + SettleUses round trip, median", rt * 1e3, "ms")
    rows.add("batch 1,000, cold: use-counting share", 100 * rt / med(m["cold"]), "%")


def _against_node(rig: _Rig, quick: bool, ed: float, rows: _Rows) -> None:
    # The node runs in its own process (as in a deployment); the client here.
    ctx = mp.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    child = ctx.Process(
        target=_node_process,
        args=(child_conn, rig.tmp, rig.store, rig.authority, rig.files[ORG],
              rig.files["coordinator"].cert.read_bytes(), rig.batch_n),
        daemon=True,
    )  # fmt: skip
    child.start()
    port, workers = parent_conn.recv()

    def cmd(*args: Any) -> Any:
        parent_conn.send(args)
        return parent_conn.recv()

    # The consent service over mTLS gRPC, here (started after the fork: gRPC does not
    # survive one); the node reserves and settles its uses there.
    consent_server, consent_port = serve_consent(
        rig.authority, address="127.0.0.1:0", tls=rig.files["consent-service"]
    )
    cmd("consent", f"127.0.0.1:{consent_port}")
    kw: dict[str, Any] = {
        "purpose": "credit_assessment", "on_behalf_of": BANK,
        "on_behalf_of_cert_sha256": rig.files[BANK].identity().cert_sha256,
        # As the coordinator: the use id of a Score. The node reserves (here: joins) it at
        # the consent service for every batch; each cold round opens a use of its own
        # (cold-<round>: at most 5, the tokens' max_uses).
        "request_id": "cold-0",
    }  # fmt: skip
    try:
        with NodeClient(f"127.0.0.1:{port}", rig.files["coordinator"], server_org=ORG) as client:
            one = build_request(rig.tokens[:1], [], **kw)
            _single_rows(client, cmd, one, 200 if quick else 1000, rows)
            _batch_rows(client, cmd, rig, kw, f"127.0.0.1:{consent_port}", quick, workers, ed, rows)
    finally:
        cmd("stop")
        child.join(10)
        stop_consent(consent_server, rig.authority)


def run(quick: bool, full: bool) -> list[dict[str, Any]]:
    console = Console()
    rows = _Rows()
    ed = _floor_rows(quick, rows)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        world = _world_rows(tmp, quick, full, rows)
        rig = _rig(tmp, world, rows, console)
        try:
            _against_node(rig, quick, ed, rows)
        finally:
            rig.store.close()
    table = Table(title="bench node (tax node, 8 features; mTLS on loopback)")
    for col in ("metric", "value", "unit", "target", "met"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        table.add_row(r["metric"], f"{r['value']:,.3f}", r["unit"], r["target"], met)
    console.print(table)
    return list(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller, faster run")
    ap.add_argument("--full", action="store_true", help="also time the 120,000-enterprise world")
    args = ap.parse_args()
    rows = run(args.quick, args.full)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
