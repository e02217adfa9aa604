"""Consent benchmarks: verify latency, issue throughput, revocation propagation.

Run ``python -m bench.bench_consent`` (``--quick`` for a smaller run). Measures,
in one run on this machine:

* the floor: a bare Ed25519 verification of a token-sized message;
* verify per token, cold (first sight: signature checked) and warm (caches
  filled: JWKS, status list, and the per-token signature cache), p50/p99 and
  throughput (target: warm p50 <= 200 µs);
* issue throughput through the library: one consent per call from one
  thread (each call its own durable commit: bounded by the commit floor), one
  per call from 8 threads (group commit shares a commit between callers), and
  batches of 100; and over gRPC with mTLS from 8 enterprises in parallel (one
  consent per call, and 50 per call), the clients in a separate process as
  real clients would be (target >= 500 consents/s). Every consent's event is
  in the outbox when the call returns; the time until the background worker
  has moved them all into the evidence chain is reported too;
* the floors of issuance: a bare Ed25519 signature of a token-sized message,
  and a durable SQLite commit (WAL, synchronous=FULL: one fsync) of one row;
* revocation propagation: an enterprise revokes over gRPC, a verifier in a
  node-like process subscribed to the pushed status list refuses the token;
  time from the revoke call to the first refusal, p50/p99 over 50 revocations
  (target p99 <= 1 s).

Writes bench/results/consent.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import Progress
from sqlalchemy import text

from bench.report import Row, row, table, write
from fedcredit.common import pki, uscc
from fedcredit.common.db import make_engine
from fedcredit.common.ed25519 import Ed25519Key
from fedcredit.common.tls import Identity, TlsFiles
from fedcredit.consent import errors as E
from fedcredit.consent.authority import ConsentAuthority, local_verifier
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.service import serve, stop
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.consent.verify import remote_verifier

RESULTS = Path(__file__).resolve().parent / "results" / "consent.json"
BANK = "bank-icbc-weihai"
SERVER_ORG = "consent-service"


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def bare_ed25519_us(n: int, *, openssl: bool = False) -> float:
    """Median bare verification: libsodium as the verifier runs it (common.ed25519), or
    OpenSSL through ``cryptography`` for reference."""
    key = Ed25519PrivateKey.generate()
    pub, msg = key.public_key(), b"x" * 700  # a consent token's signing input is ~700 bytes
    sig = key.sign(msg)
    fast = Ed25519Key(pub.public_bytes_raw())
    times = []
    for _ in range(n):
        t = time.perf_counter()
        if openssl:
            pub.verify(sig, msg)
        elif not fast.verify(sig, msg):
            raise AssertionError("libsodium refused a good signature")
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def bare_ed25519_sign_us(n: int) -> float:
    key, msg = Ed25519PrivateKey.generate(), b"x" * 700
    times = []
    for _ in range(n):
        t = time.perf_counter()
        key.sign(msg)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def durable_commit_ms(path: Path, n: int) -> float:
    """p50 of one-row INSERT + COMMIT with the project's SQLite settings (WAL, synchronous=FULL)."""
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": "x" * 900})
        times.append(time.perf_counter() - t)
    engine.dispose()
    return statistics.median(times) * 1e3


def terms(ent: str, **kw: Any) -> ConsentTerms:
    base: dict[str, Any] = {
        "enterprise": ent,
        "bank": BANK,
        "purpose": "credit_assessment",
        "scope": ["judicial", "operations_tax"],
        "validity_days": 30,
        "max_uses": 5,
        "retention_days": 30,
    }
    base.update(kw)
    return ConsentTerms(**base)


def bench_verify(
    authority: ConsentAuthority, bank: Identity, codes: list[str], n_ops: int
) -> dict[str, float]:
    by_ent: dict[str, list[ConsentTerms]] = {}
    for c in codes:
        by_ent.setdefault(c, []).append(terms(c, scope=["score_only"]))
    tokens: list[tuple[str, str]] = []
    for c, ts in by_ent.items():
        ident = Identity(c, "enterprise", b"e" * 32)
        for v in authority.grant_many(ident, ts):
            tokens.append((c, authority.token(bank, v.consent_id).token or ""))
    verifier = local_verifier(authority)
    cold = []
    for ent, tok in tokens:
        t = time.perf_counter()
        verifier.verify(
            tok,
            bank_org=BANK,
            bank_cert_sha256=bank.cert_sha256,
            enterprise=ent,
            purposes=["credit_assessment"],
        )
        cold.append(time.perf_counter() - t)
    warm = []
    t_all = time.perf_counter()
    for i in range(n_ops):
        ent, tok = tokens[i % len(tokens)]
        t = time.perf_counter()
        verifier.verify(
            tok,
            bank_org=BANK,
            bank_cert_sha256=bank.cert_sha256,
            enterprise=ent,
            purposes=["credit_assessment"],
            category="judicial",
            node="dept-courts",
        )
        warm.append(time.perf_counter() - t)
    total = time.perf_counter() - t_all
    return {
        "tokens": len(tokens),
        "cold_p50_us": pct(cold, 0.5) * 1e6,
        "cold_p99_us": pct(cold, 0.99) * 1e6,
        "warm_p50_us": pct(warm, 0.5) * 1e6,
        "warm_p99_us": pct(warm, 0.99) * 1e6,
        "warm_per_s": n_ops / total,
        "cold_per_s": len(cold) / sum(cold),
    }


def cpu_s() -> float:
    """CPU seconds used so far by this process (user + system, all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def drain_s(authority: ConsentAuthority) -> float:
    """Seconds until the background worker has delivered every pending event."""
    t = time.perf_counter()
    while authority.store.pending_events(1):
        time.sleep(0.01)
    return time.perf_counter() - t


def bench_issue_library(authority: ConsentAuthority, codes: list[str], n: int) -> dict[str, float]:
    authority.start()  # group commit + events delivered in the background, as in the service
    idents = [Identity(c, "enterprise", b"e" * 32) for c in codes]
    out: dict[str, float] = {}
    t, c = time.perf_counter(), cpu_s()
    for i in range(n):
        ident = idents[i % len(idents)]
        authority.grant(ident, terms(ident.org_id))
    out["library_single_per_s"] = n / (time.perf_counter() - t)
    out["library_single_drain_s"] = drain_s(authority)
    out["library_single_cpu_ms"] = (cpu_s() - c) / n * 1e3

    def worker(ident: Identity, count: int) -> None:
        for _ in range(count):
            authority.grant(ident, terms(ident.org_id))

    per = n // len(idents)
    threads = [threading.Thread(target=worker, args=(i, per)) for i in idents]
    t, c = time.perf_counter(), cpu_s()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out["library_8threads_single_per_s"] = per * len(idents) / (time.perf_counter() - t)
    out["library_8threads_drain_s"] = drain_s(authority)
    out["library_8threads_cpu_ms"] = (cpu_s() - c) / (per * len(idents)) * 1e3

    t, c = time.perf_counter(), cpu_s()
    done = 0
    while done < n:
        ident = idents[(done // 100) % len(idents)]
        done += len(authority.grant_many(ident, [terms(ident.org_id)] * 100))
    out["library_batch100_per_s"] = done / (time.perf_counter() - t)
    out["library_batch100_drain_s"] = drain_s(authority)
    out["library_batch100_cpu_ms"] = (cpu_s() - c) / done * 1e3
    return out


GRPC_MODES = ((1, "grpc_8clients_single_per_s"), (50, "grpc_8clients_batch50_per_s"))


def _grpc_clients(
    address: str, ent_tls: list[tuple[str, TlsFiles]], n: int, go: Any, results: Any
) -> None:
    """In a child process: 8 enterprise clients in parallel, each mode of :data:`GRPC_MODES`
    when the parent says go; each mode's rate goes to ``results``."""
    try:
        per = n // len(ent_tls)
        clients = [
            (code, ConsentClient(address, tls, server_org=SERVER_ORG)) for code, tls in ent_tls
        ]
        for _, c in clients:  # handshakes outside the timing
            c.jwks()
        errors: list[BaseException] = []

        def worker(code: str, c: ConsentClient, batch: int) -> None:
            try:
                done = 0
                while done < per:
                    done += len(c.grant_many([terms(code)] * batch))
            except BaseException as exc:
                errors.append(exc)

        results.put(("ready", 0.0))
        for batch, name in GRPC_MODES:
            go.get()
            threads = [
                threading.Thread(target=worker, args=(code, c, batch)) for code, c in clients
            ]
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if errors:
                raise errors[0]
            results.put((name, per * len(clients) / (time.perf_counter() - t0)))
        for _, c in clients:
            c.close()
    except BaseException as exc:
        results.put(("error", repr(exc)))


def bench_issue_grpc(
    authority: ConsentAuthority, address: str, ent_tls: list[tuple[str, TlsFiles]], n: int
) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    go, results = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_grpc_clients, args=(address, ent_tls, n, go, results))
    child.start()
    out: dict[str, float] = {}
    per = n // len(ent_tls)
    try:
        cpu0 = 0.0
        for _ in range(len(GRPC_MODES) + 1):
            name, value = results.get(timeout=300)
            if name == "error":
                raise RuntimeError(f"gRPC client process failed: {value}")
            if name != "ready":
                out[name] = value
                out[name.replace("_per_s", "_drain_s")] = drain_s(authority)
                # The service's CPU per consent (all its threads, delivery included).
                out[name.replace("_per_s", "_server_cpu_ms")] = (
                    (cpu_s() - cpu0) / (per * len(ent_tls)) * 1e3
                )
            if len(out) < 3 * len(GRPC_MODES):
                cpu0 = cpu_s()
                go.put(True)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    return out


def bench_revocation(
    address: str,
    issuer: str,
    pki_files: dict[str, TlsFiles],
    ent: tuple[str, TlsFiles],
    n: int,
    progress: Progress,
) -> dict[str, float]:
    code, tls = ent
    bank_cert = pki_files[BANK].identity().cert_sha256
    with (
        ConsentClient(address, tls, server_org=SERVER_ORG) as me,
        ConsentClient(address, pki_files[BANK], server_org=SERVER_ORG) as bank,
    ):
        grants = me.grant_many([terms(code)] * n)
        tokens = [(g.consent_id, bank.token(g.consent_id).token or "") for g in grants]
        # status_ttl long: only the pushed list can make the node notice in time.
        node = remote_verifier(
            consent_address=address, tls=pki_files["dept-courts"], server_org=SERVER_ORG, issuer=issuer,
            status_ttl=600,
        )  # fmt: skip
        assert node.wait_connected(5)  # type: ignore[attr-defined]
        args: dict[str, Any] = {
            "bank_org": BANK, "bank_cert_sha256": bank_cert, "enterprise": code, "purposes": ["credit_assessment"],
        }  # fmt: skip
        lat = []
        task = progress.add_task("revocations", total=n)
        try:
            for cid, tok in tokens:
                node.verify(tok, **args)  # warm: accepted
                t0 = time.perf_counter()
                me.revoke(cid)
                while True:
                    try:
                        node.verify(tok, **args)
                    except E.ConsentRevoked:
                        break
                    if time.perf_counter() - t0 > 5:
                        raise RuntimeError("revocation not seen within 5 s")
                lat.append(time.perf_counter() - t0)
                progress.advance(task)
        finally:
            node.close()
    return {
        "revocations": n,
        "propagation_p50_ms": pct(lat, 0.5) * 1e3,
        "propagation_p99_ms": pct(lat, 0.99) * 1e3,
        "propagation_max_ms": max(lat) * 1e3,
    }


def bench_compromise(
    address: str,
    issuer: str,
    pki_files: dict[str, TlsFiles],
    ent: tuple[str, TlsFiles],
    rounds: int,
    progress: Progress,
) -> dict[str, float]:
    """Key compromise -> refused at every subscribed verifier (issue 14): per round, a token
    verified by 3 remote verifiers (a node's, another node's, the coordinator's), then
    RotateKeys(compromised) over gRPC; the time until the *last* verifier refuses it."""
    code, tls = ent
    orgs = ("dept-courts", "dept-tax", "coordinator")
    verifiers = [
        remote_verifier(
            consent_address=address, tls=pki_files[o], server_org=SERVER_ORG, issuer=issuer,
            status_ttl=600, jwks_ttl=3600,  # long: only the push can make them notice in time
        )
        for o in orgs
    ]  # fmt: skip
    args: dict[str, Any] = {
        "bank_org": BANK, "bank_cert_sha256": pki_files[BANK].identity().cert_sha256,
        "enterprise": code, "purposes": ["credit_assessment"],
    }  # fmt: skip
    everywhere, first = [], []
    task = progress.add_task("key compromises", total=rounds)
    try:
        with (
            ConsentClient(address, tls, server_org=SERVER_ORG) as me,
            ConsentClient(address, pki_files[BANK], server_org=SERVER_ORG) as bank,
            ConsentClient(address, pki_files["operator-1"], server_org=SERVER_ORG) as op,
        ):
            for v in verifiers:
                assert v.wait_connected(5)  # type: ignore[attr-defined]
            for _ in range(rounds):
                g = me.grant(terms(code))
                tok = bank.token(g.consent_id).token or ""
                for v in verifiers:
                    v.verify(tok, **args)  # warm: accepted everywhere
                pending = set(range(len(verifiers)))
                seen: list[float] = []
                t0 = time.perf_counter()
                op.rotate_keys(compromised=True)
                while pending:
                    for i in list(pending):
                        try:
                            verifiers[i].verify(tok, **args)
                        except E.SigningKeyCompromised:
                            pending.discard(i)
                            seen.append(time.perf_counter() - t0)
                    if time.perf_counter() - t0 > 5:
                        raise RuntimeError("compromise not seen everywhere within 5 s")
                everywhere.append(max(seen))
                first.append(min(seen))
                progress.advance(task)
    finally:
        for v in verifiers:
            v.close()
    return {
        "rounds": rounds,
        "verifiers": len(verifiers),
        "everywhere_p50_ms": pct(everywhere, 0.5) * 1e3,
        "everywhere_p99_ms": pct(everywhere, 0.99) * 1e3,
        "everywhere_max_ms": max(everywhere) * 1e3,
        "first_p50_ms": pct(first, 0.5) * 1e3,
    }


def _authority(path: Path, bank: Identity) -> ConsentAuthority:
    return ConsentAuthority(
        ConsentStore(f"sqlite:///{path}"), ConsentSettings(),
        bank_certs={BANK: bank.cert_sha256}.get,
    )  # fmt: skip


def _floors() -> dict[str, float]:
    return {
        "floor": bare_ed25519_us(3000),
        "floor_openssl": bare_ed25519_us(3000, openssl=True),
        "floor_sign": bare_ed25519_sign_us(3000),
    }


def measure(d: Path, quick: bool, console: Console) -> dict[str, Any]:
    """Every measurement of one run, keyed as ``consent_rows`` reads them."""
    import random

    n_verify, n_issue, n_revoke = (2000, 300, 20) if quick else (20000, 2000, 50)
    n_compromise = 10 if quick else 30
    rng = random.Random(7)
    codes = [uscc.generate(rng) for _ in range(8)]
    orgs = [(SERVER_ORG, "consent"), (BANK, "bank"), ("dept-courts", "department"),
            ("dept-tax", "department"), ("coordinator", "coordinator"), ("operator-1", "operator")]  # fmt: skip
    files = pki.init_pki(d / "pki", orgs + [(c, "enterprise") for c in codes])
    bank = files[BANK].identity()
    issuer = ConsentSettings().issuer
    m: dict[str, Any] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("floor, verify, issue", total=4)
        m.update(_floors(), floor_commit=durable_commit_ms(d / "floor.sqlite", 300))
        progress.advance(task)
        a1 = _authority(d / "verify.sqlite", bank)
        m["verify"] = bench_verify(a1, bank, codes, n_verify)
        a1.close()
        progress.advance(task)
        a2 = _authority(d / "issue.sqlite", bank)
        m["issue"] = bench_issue_library(a2, codes, n_issue)
        a2.close()
        progress.advance(task)
        a3 = _authority(d / "svc.sqlite", bank)
        server, port = serve(a3, address="127.0.0.1:0", tls=files[SERVER_ORG])
        address = f"127.0.0.1:{port}"
        try:
            m["issue"].update(
                bench_issue_grpc(a3, address, [(c, files[c]) for c in codes], n_issue)
            )
            progress.advance(task)
            m["revoke"] = bench_revocation(address, issuer, files, (codes[0], files[codes[0]]), n_revoke, progress)  # fmt: skip
        finally:
            stop(server, a3)
        # Its own service and store: each compromise re-issues the live tokens of the
        # rotated key, and the issue benchmark's thousands would be timed with it.
        a4 = _authority(d / "compromise.sqlite", bank)
        server, port = serve(a4, address="127.0.0.1:0", tls=files[SERVER_ORG])
        try:
            m["compromise"] = bench_compromise(
                f"127.0.0.1:{port}",
                issuer,
                files,
                (codes[1], files[codes[1]]),
                n_compromise,
                progress,
            )
        finally:
            stop(server, a4)
    return m


def _at_least(v: float, floor: float) -> tuple[str, bool]:
    return f">= {floor:g}", v >= floor


def _at_most(v: float, ceiling: float) -> tuple[str, bool]:
    return f"<= {ceiling:g}", v <= ceiling


def consent_rows(m: dict[str, Any]) -> list[Row]:
    verify, issue, revoke, comp = m["verify"], m["issue"], m["revoke"], m["compromise"]
    n_rev, n_comp, k = revoke["revocations"], comp["rounds"], comp["verifiers"]
    return [
        row("bare Ed25519 verify, libsodium as the verifier runs it (floor)", m["floor"], "µs"),
        row("bare Ed25519 verify, OpenSSL via cryptography (reference)", m["floor_openssl"], "µs"),
        row("verify warm p50", verify["warm_p50_us"], "µs", *_at_most(verify["warm_p50_us"], 200)),
        row("verify warm p99", verify["warm_p99_us"], "µs"),
        row("verify warm throughput", verify["warm_per_s"], "tokens/s"),
        row("verify cold p50 (first sight, signature)", verify["cold_p50_us"], "µs"),
        row("verify cold p99", verify["cold_p99_us"], "µs"),
        row("bare Ed25519 sign, 700 B (floor)", m["floor_sign"], "µs"),
        row("durable SQLite commit, 1 row, p50 (floor)", m["floor_commit"], "ms"),
        row("ceiling for 1 caller, 1 commit per consent (1 / commit floor)", 1000 / m["floor_commit"], "consents/s"),
        row("issue, library, 1 caller, 1 per transaction", issue["library_single_per_s"], "consents/s",
            *_at_least(issue["library_single_per_s"], 500)),
        row("issue, library, 8 callers, 1 per call (group commit)", issue["library_8threads_single_per_s"],
            "consents/s", *_at_least(issue["library_8threads_single_per_s"], 500)),
        row("issue, library, batches of 100", issue["library_batch100_per_s"], "consents/s",
            *_at_least(issue["library_batch100_per_s"], 500)),
        row("issue, gRPC mTLS, 8 clients, 1 per call", issue["grpc_8clients_single_per_s"], "consents/s",
            *_at_least(issue["grpc_8clients_single_per_s"], 500)),
        row("issue, gRPC mTLS, 8 clients, 50 per call", issue["grpc_8clients_batch50_per_s"], "consents/s",
            *_at_least(issue["grpc_8clients_batch50_per_s"], 500)),
        row("CPU per consent, library, 1 caller", issue["library_single_cpu_ms"], "ms"),
        row("CPU per consent, library, batches of 100", issue["library_batch100_cpu_ms"], "ms"),
        row("service CPU per consent, gRPC 1 per call", issue["grpc_8clients_single_server_cpu_ms"], "ms"),
        row("service CPU per consent, gRPC 50 per call", issue["grpc_8clients_batch50_server_cpu_ms"], "ms"),
        row("events → evidence chain, backlog left after gRPC 1 per call",
            issue["grpc_8clients_single_drain_s"] * 1e3, "ms"),
        row(f"revocation → node refuses, p50 (n={n_rev})", revoke["propagation_p50_ms"], "ms"),
        row(f"revocation → node refuses, p99 (n={n_rev})", revoke["propagation_p99_ms"], "ms",
            *_at_most(revoke["propagation_p99_ms"], 1000)),
        row("revocation → node refuses, max", revoke["propagation_max_ms"], "ms"),
        row(f"key compromise → refused at all {k} verifiers, p50 (n={n_comp})", comp["everywhere_p50_ms"], "ms"),
        row(f"key compromise → refused at all {k} verifiers, p99 (n={n_comp})", comp["everywhere_p99_ms"], "ms",
            *_at_most(comp["everywhere_p99_ms"], 1000)),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="Smaller run (for CI smoke).")
    args = ap.parse_args(argv)
    console = Console()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-consent-") as tmp:
        m = measure(Path(tmp), args.quick, console)
    rows = consent_rows(m)
    console.print(table("consent benchmarks", rows))
    raw = {
        "verify": m["verify"], "issue": m["issue"], "revocation": m["revoke"], "compromise": m["compromise"],
        # Other work on the machine shares its 2 cores: wall-clock rates move with it, CPU
        # per consent much less.
        "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]],
        "floor_ed25519_us": m["floor"], "floor_ed25519_sign_us": m["floor_sign"],
        "floor_durable_commit_ms": m["floor_commit"],
    }  # fmt: skip
    write(RESULTS, {"area": "consent", "quick": args.quick, "rows": rows, "raw": raw}, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
