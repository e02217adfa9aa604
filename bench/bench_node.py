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


def _node_process(
    conn: Any,
    tmp: Path,
    store: NodeStore,
    authority: ConsentAuthority,
    tls: Any,
    caller_pem: bytes,
    batch_n: int,
) -> None:
    """The node server, in its own process; answers the benchmark's control commands."""
    from fedcredit.v1 import feature_pb2

    store.engine.dispose(close=False)  # connections are not shared across fork
    authority.store.engine.dispose(close=False)
    origin = f"{ORG}/disclosures"
    logs = {
        mode: open_disclosure_log(
            f"sqlite:///{tmp / f'disclosures-{mode}.sqlite'}", Ed25519PrivateKey.generate(), origin,
            NodeSettings(disclosure_synchronous=mode),
        )
        for mode in ("full", "normal")
    }  # fmt: skip
    timed_log = TimedLog(logs["full"])
    settings = NodeSettings(max_batch=batch_n)
    engine = FeatureEngine(store, cache_size=settings.cache_size)
    pool = SignaturePool(default_workers())
    pool.wait_ready()
    verifier = local_verifier(authority)
    servicer = FeatureServicer(node_org=ORG, engine=engine, verifier=verifier, signatures=pool,
                               disclosures=timed_log, policy=AccessPolicy(banks=[BANK]), settings=settings)  # fmt: skip
    server = build_node_server(servicer=servicer, address="127.0.0.1:0", tls=tls)
    server.start()
    # As `fedcredit node serve` does once it serves: the start-up heap frozen and young
    # collections rarer (common.gctune). Without it, every cold batch paid one full
    # collection over the whole inherited heap (~50 ms of the node's CPU per batch).
    tune_for_service()
    server_ctx = FakeContext(caller_pem)  # in-process calls as the coordinator
    conn.send((server.port, pool.workers))
    while True:
        op, *args = conn.recv()
        if op == "stop":
            break
        if op == "cpu":  # this process's CPU time (every thread)
            conn.send(time.process_time())
        elif op == "pool_rate":
            conn.send(pool_ed25519_per_s(pool, args[0]))
        elif op == "workers":  # use the signature workers or not
            servicer.signatures = pool if args[0] else None
            conn.send(None)
        if op == "log":
            timed_log.log = logs[args[0]]
            timed_log.seconds.clear()
            conn.send(None)
        elif op == "log_seconds":
            conn.send(sum(timed_log.seconds))
            timed_log.seconds.clear()
        elif op == "consent":
            # Uses counted as deployed: ReserveUses/SettleUses at the consent service, over
            # mTLS gRPC, as this node (one round trip per batch chunk).
            from fedcredit.consent.client import ConsentClient
            from fedcredit.consent.remote import RemoteUseCounter

            counter = RemoteUseCounter(ConsentClient(args[0], tls, server_org="consent-service"))
            verifier = local_verifier(authority, counter=counter)
            servicer.verifier = verifier
            conn.send(None)
        elif op == "cold":
            # An empty token cache (every signature checked); the JWKS and the status list
            # stay cached as in a running node (refreshed on their own schedule); uses are
            # still counted at the consent service.
            servicer.verifier = ConsentVerifier(
                issuer=verifier.issuer, keys=verifier.keys, status=verifier.status,
                leeway=verifier.leeway, counter=verifier.counter,
            )  # fmt: skip
            engine._cache.clear()
            timed_log.seconds.clear()
            conn.send(None)
        elif op == "server_side":
            req = feature_pb2.GetFeaturesRequest.FromString(args[0])
            conn.send(timed(functools.partial(servicer.GetFeatures, req, server_ctx), args[1]))
    server.stop(0)
    pool.close()
    for lg in logs.values():
        lg.close()
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


def run(quick: bool, full: bool) -> list[dict[str, Any]]:
    console = Console()
    rows: list[dict[str, Any]] = []

    def add(
        metric: str, value: float, unit: str, target: str = "", met: bool | None = None
    ) -> None:
        rows.append(
            {"metric": metric, "value": round(value, 3), "unit": unit, "target": target, "met": met}
        )

    # Other work on the machine moves every figure; the floors below are measured in the
    # same run for that reason, and the load is recorded next to them.
    add("machine load average (1 min) at start", os.getloadavg()[0], "runnable tasks")
    ed = bare_ed25519_per_s(3000 if quick else 20000)
    add(
        "floor: bare Ed25519 verify, libsodium as the node runs it (1 core)",
        ed,
        "verifications/s",
        "floor for cold batches",
    )
    add(
        "reference: bare Ed25519 verify, OpenSSL via cryptography (1 core)",
        bare_ed25519_per_s(3000 if quick else 20000, openssl=True),
        "verifications/s",
    )
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t = time.perf_counter()
        generate(tmp / "w2k", enterprises=2000, seed=1)
        g2k = time.perf_counter() - t
        add("world generate 2,000 enterprises", g2k, "s", "<= 5 s", g2k <= 5)
        if full:
            t = time.perf_counter()
            generate(tmp / "w120k", enterprises=120_000, seed=1)
            g120 = time.perf_counter() - t
            add("world generate 120,000 enterprises", g120, "s", "<= 120 s", g120 <= 120)
        n_ent = 2000 if quick else 5000
        world = tmp / "world"
        generate(world, enterprises=n_ent, seed=7)
        files = pki.init_pki(
            tmp / "pki",
            [(ORG, "department"), ("coordinator", "coordinator"), (BANK, "bank"),
             ("consent-service", "consent")],
        )  # fmt: skip
        bank_id = files[BANK].identity()
        store = NodeStore(f"sqlite:///{tmp / 'node.sqlite'}", DEPT)
        store.create_schema()
        t = time.perf_counter()
        store.load(world)
        add(f"node load ({n_ent:,} enterprises, tax)", time.perf_counter() - t, "s")
        authority = ConsentAuthority(ConsentStore(f"sqlite:///{tmp / 'consent.sqlite'}"), banks=[BANK],
                                     bank_certs=lambda b: bank_id.cert_sha256 if b == BANK else None)  # fmt: skip
        codes = (world / "enterprises.csv").read_text(encoding="utf-8").splitlines()[1:]
        codes = [ln.split(",", 1)[0] for ln in codes]
        batch_n = 1000
        tokens: list[tuple[str, str]] = []
        refs: list[UseRef] = []
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("granting consents", total=batch_n)
            for code in codes[:batch_n]:
                v = authority.grant(Identity(code, "enterprise", b"\x01" * 32),
                                    ConsentTerms(enterprise=code, bank=BANK, purpose="credit_assessment",
                                                 scope=["operations_tax"], max_uses=5))  # fmt: skip
                view = authority.token(bank_id, v.consent_id)
                assert view.token is not None and view.jti is not None
                tokens.append((code, view.token))
                refs.append(UseRef(view.jti, code, BANK))
                bar.advance(task)
        # The node runs in its own process (as in a deployment); the client here.
        parent_conn, child_conn = mp.get_context("fork").Pipe()
        child = mp.get_context("fork").Process(
            target=_node_process,
            args=(
                child_conn,
                tmp,
                store,
                authority,
                files[ORG],
                files["coordinator"].cert.read_bytes(),
                batch_n,
            ),
            daemon=True,
        )
        child.start()
        port, workers = parent_conn.recv()

        def cmd(*args: Any) -> Any:
            parent_conn.send(args)
            return parent_conn.recv()

        # The consent service over mTLS gRPC, here (started after the fork: gRPC does not
        # survive one); the node reserves and settles its uses there.
        consent_server, consent_port = serve_consent(
            authority, address="127.0.0.1:0", tls=files["consent-service"]
        )
        cmd("consent", f"127.0.0.1:{consent_port}")

        kw: dict[str, Any] = {
            "purpose": "credit_assessment",
            "on_behalf_of": BANK,
            "on_behalf_of_cert_sha256": bank_id.cert_sha256,
            # As the coordinator: the use id of a Score. The node reserves (here: joins) it
            # at the consent service for every batch; each cold round opens a use of its
            # own (cold-<round>: at most 5, the tokens' max_uses).
            "request_id": "cold-0",
        }
        try:
            with NodeClient(f"127.0.0.1:{port}", files["coordinator"], server_org=ORG) as client:
                # 1 enterprise x all 8 features, warm.
                one = build_request(tokens[:1], [], **kw)
                n1 = 200 if quick else 1000
                health = health_pb2_grpc.HealthStub(client.channel)
                hreq = health_pb2.HealthCheckRequest(service="")
                timed(lambda: client.get_features_raw(one), 50)
                timed(lambda: health.Check(hreq, timeout=10), 50)
                for mode in ("full", "normal"):
                    cmd("log", mode)
                    e2e, bare, cpu_feat, cpu_bare = [], [], 0.0, 0.0
                    # interleaved rounds: the floor and the call see the same machine
                    for _ in range(5):
                        c0 = cmd("cpu")
                        e2e += timed(lambda: client.get_features_raw(one), n1 // 5)
                        c1 = cmd("cpu")
                        bare += timed(lambda: health.Check(hreq, timeout=10), n1 // 5)
                        c2 = cmd("cpu")
                        cpu_feat, cpu_bare = cpu_feat + c1 - c0, cpu_bare + c2 - c1
                    share = cmd("log_seconds") / sum(e2e)
                    p50 = pct(e2e, 0.5) * 1e3
                    what = "fsync per commit" if mode == "full" else "synchronous=normal"
                    add(
                        f"1 enterprise x 8 features: end-to-end p50 (log {what})",
                        p50,
                        "ms",
                        "<= 2 ms",
                        p50 <= 2,
                    )
                    add(
                        f"1 enterprise x 8 features: end-to-end p99 (log {what})",
                        pct(e2e, 0.99) * 1e3,
                        "ms",
                    )
                    add(f"1 enterprise: disclosure-log share (log {what})", 100 * share, "%")
                    add(
                        f"1 enterprise: node CPU per call (log {what})",
                        cpu_feat / len(e2e) * 1e3,
                        "ms",
                    )
                    add(
                        f"floor: bare unary RPC (Health/Check, same mTLS channel) p50 (with log {what})",
                        pct(bare, 0.5) * 1e3,
                        "ms",
                    )
                    add(
                        f"floor: bare unary RPC node CPU per call (with log {what})",
                        cpu_bare / len(bare) * 1e3,
                        "ms",
                    )
                cmd("log", "full")
                srv = cmd("server_side", one.SerializeToString(), n1)
                add("1 enterprise x 8 features: server-side p50", pct(srv, 0.5) * 1e3, "ms")
                # Batches of 1,000 enterprises, each with its own token.
                big = build_request(tokens, [], **kw)
                reps = 3 if quick else 5
                cold: list[float] = []
                cold_log: list[float] = []
                cold1: list[float] = []
                cold_cpu: list[float] = []
                cold1_cpu: list[float] = []
                # The use counting alone, as the node does it for a batch it opens: one
                # ReserveUses of 1,000 tokens and one SettleUses over mTLS, as this node
                # (released, and before the cold rounds, so the tokens keep their uses).
                rt = use_round_trips(f"127.0.0.1:{consent_port}", files[ORG], refs, reps)
                for rnd in range(reps):  # with and without the signature workers, alternating
                    big = build_request(tokens, [], **{**kw, "request_id": f"cold-{rnd}"})
                    for use_workers, out, cpu in (
                        (True, cold, cold_cpu),
                        (False, cold1, cold1_cpu),
                    ):
                        cmd("workers", use_workers)
                        cmd(
                            "cold"
                        )  # empty token cache (every signature checked), empty feature cache
                        c0 = cmd("cpu")
                        t = time.perf_counter()
                        resp = client.get_features_raw(big)
                        out.append(time.perf_counter() - t)
                        cpu.append(cmd("cpu") - c0)
                        if use_workers:
                            cold_log.append(cmd("log_seconds"))
                        assert len(resp.items) == batch_n and not any(
                            it.HasField("error") for it in resp.items
                        )
                cmd("workers", True)
                pool_rate = cmd("pool_rate", 3000 if quick else 10000)
                warm, warm_log = [], []
                for _ in range(reps):
                    t = time.perf_counter()
                    client.get_features_raw(big)
                    warm.append(time.perf_counter() - t)
                    warm_log.append(cmd("log_seconds"))
                srv_warm = cmd("server_side", big.SerializeToString(), reps)
                cold_rate = batch_n / statistics.median(cold)
                cold1_rate = batch_n / statistics.median(cold1)
                warm_rate = batch_n / statistics.median(warm)
                add(
                    f"batch 1,000 (own token each), cold: vectors/s ({workers} signature worker(s))",
                    cold_rate,
                    "vectors/s",
                    ">= 5,000/s",
                    cold_rate >= 5000,
                )
                add(
                    "batch 1,000 (own token each), cold, no signature worker (1 core): vectors/s",
                    cold1_rate,
                    "vectors/s",
                )
                add(
                    f"floor: bare Ed25519 verify through the node's pool ({workers} worker(s) + caller)",
                    pool_rate,
                    "verifications/s",
                )
                add(
                    "batch 1,000, cold: node CPU per batch (with workers' CPU not counted)",
                    statistics.median(cold_cpu) * 1e3,
                    "ms",
                )
                add(
                    "batch 1,000, cold, no signature worker: node CPU per batch",
                    statistics.median(cold1_cpu) * 1e3,
                    "ms",
                )
                add(
                    "batch 1,000 (own token each), warm: vectors/s",
                    warm_rate,
                    "vectors/s",
                    ">= 5,000/s",
                    warm_rate >= 5000,
                )
                add("batch 1,000, cold: end-to-end median", statistics.median(cold) * 1e3, "ms")
                add("batch 1,000, warm: end-to-end median", statistics.median(warm) * 1e3, "ms")
                add(
                    "batch 1,000, warm: server-side median", statistics.median(srv_warm) * 1e3, "ms"
                )
                add("batch 1,000, cold: disclosure-log share", 100 * sum(cold_log) / sum(cold), "%")
                add("batch 1,000, warm: disclosure-log share", 100 * sum(warm_log) / sum(warm), "%")
                add("cold batch rate / bare Ed25519 rate", cold_rate / ed, "ratio", "<= 1 (floor)")
                add(
                    "batch 1,000: ReserveUses + SettleUses round trip, median",
                    statistics.median(rt) * 1e3,
                    "ms",
                )
                add(
                    "batch 1,000, cold: use-counting share",
                    100 * statistics.median(rt) / statistics.median(cold),
                    "%",
                )
        finally:
            cmd("stop")
            child.join(10)
            stop_consent(consent_server, authority)
            store.close()
    table = Table(title="bench node (tax node, 8 features; mTLS on loopback)")
    for col in ("metric", "value", "unit", "target", "met"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        table.add_row(r["metric"], f"{r['value']:,.3f}", r["unit"], r["target"], met)
    console.print(table)
    return rows


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
