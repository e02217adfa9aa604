"""Ledger read-side rows for bench_ledger: an auditor syncing the log over C2SP tlog-tiles,
and the consent coverage audit. Called from bench_ledger.measure (same run, same log)."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from fedcredit.common.pki import init_pki
from fedcredit.ledger.coverage import audit_coverage
from fedcredit.ledger.log import Log
from fedcredit.ledger.merkle import MemoryTree
from fedcredit.ledger.tiles import TILE_WIDTH, TileRef, parse_bundle, read_tile
from fedcredit.ledger.tiles_http import TilesHTTPServer


def tiles_sync(log: Log) -> tuple[float, float]:
    """An auditor follows the whole log from scratch over HTTPS, presenting its client
    certificate (entry bundles are served only to roles that read every entry): every
    entry bundle and level-0 tile (keep-alive, one connection), each entry hashed and
    compared with its tile hash, the root rebuilt and compared with the checkpoint.
    Returns (entries/s over HTTPS, entries/s of the floor: the same tiles read from the
    store without HTTP)."""
    size = log.size
    want = log.store.checkpoint_at(size) or log.checkpoint()
    refs = []
    for n in range(0, size, TILE_WIDTH):
        w = min(TILE_WIDTH, size - n)
        refs.append((TileRef(None, n // TILE_WIDTH, w), TileRef(0, n // TILE_WIDTH, w)))
    sha = hashlib.sha256

    def check(bundle: bytes, hashes: bytes, tree: MemoryTree) -> None:
        for i, e in enumerate(parse_bundle(bundle)):
            h = sha(b"\x00" + e).digest()
            if h != hashes[32 * i : 32 * i + 32]:
                raise AssertionError("an entry's leaf hash differs from its tile")
            tree.append(h)

    t = time.perf_counter()
    tree = MemoryTree()
    for b, h in refs:  # the floor: no HTTP
        check(read_tile(log, b), read_tile(log, h), tree)
    floor = size / (time.perf_counter() - t)
    assert tree.root() == want.root

    with tempfile.TemporaryDirectory() as d:
        files = init_pki(Path(d), [("ledger", "ledger"), ("auditor-bench", "auditor")])
        tls, auditor = files["ledger"], files["auditor-bench"]
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        ctx.check_hostname = False  # the certificate names the org; we connect to 127.0.0.1
        ctx.load_cert_chain(str(auditor.cert), str(auditor.key))
        srv = TilesHTTPServer(log, "127.0.0.1:0", tls).start()
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=30)

        def get(path: str) -> bytes:
            conn.request("GET", "/" + path)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise AssertionError(f"GET {path}: {r.status} {body[:200]!r}")
            return body

        t = time.perf_counter()
        get("checkpoint")
        tree = MemoryTree()
        for b, h in refs:
            check(get(b.path()), get(h.path()), tree)
        rate = size / (time.perf_counter() - t)
        conn.close()
    finally:
        srv.close()
    assert tree.root() == want.root
    return rate, floor


def _entry(i: int, kind: str, subject: str, payload: dict[str, Any], when: str) -> bytes:
    return json.dumps(
        {"actor": "x", "chain": "00" * 32, "index": i, "kind": kind, "payload": payload,
         "subject": subject, "time": when, "v": 1},
        separators=(",", ":"), sort_keys=True,
    ).encode()  # fmt: skip


def coverage_rate(n: int, consents: int = 2000) -> tuple[float, int, float]:
    """Coverage audit of ``n`` entries: ``consents`` grants, then score_access entries
    spread over them (within their uses), a pause/resume per consent. Returns (entries/s,
    uncovered, floor) — uncovered must be 0; the floor is json.loads of every entry."""
    now = int(time.time())
    when = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now))
    entries: list[bytes] = []
    uses = (n - 3 * consents) // consents + 1
    for c in range(consents):
        p = {"event": "granted", "consent_id": f"c{c}", "jti": f"j{c}", "bank": "bank-a",
             "purpose": "loan_application", "scope": ["score_only"], "nodes": ["dept-tax"],
             "state": "ACTIVE", "not_before": now - 900, "expires_at": now + 900,
             "max_uses": uses, "actor": "e", "actor_role": "enterprise", "at": now - 900}  # fmt: skip
        entries.append(_entry(len(entries), "consent_event", f"E{c:017d}", p, when))
        for ev, at in (("paused", now - 800), ("resumed", now - 700)):
            entries.append(_entry(len(entries), "consent_event", f"E{c:017d}",
                                  {**p, "event": ev, "at": at}, when))  # fmt: skip
    i = 0
    while len(entries) < n:
        c = i % consents
        p = {"bank": "bank-a", "enterprise": f"E{c:017d}", "jti": f"j{c}",
             "purpose": "loan_application", "model_version": "m", "rating": "A",
             "feature_hash": "00" * 32, "missing_categories": []}  # fmt: skip
        entries.append(_entry(len(entries), "score_access", f"E{c:017d}", p, when))
        i += 1
    t = time.perf_counter()
    for e in entries:
        json.loads(e)
    floor = n / (time.perf_counter() - t)
    t = time.perf_counter()
    report = audit_coverage([("bench", entries)])
    return n / (time.perf_counter() - t), len(report.uncovered), floor


def witness_add_checkpoint(n: int = 300) -> tuple[float, float]:
    """``n`` tlog-witness add-checkpoint calls over HTTP (loopback, keep-alive), each for a
    log grown by 1,000 entries with its consistency proof, stored in SQLite. Returns
    (p50 ms, p99 ms)."""
    import base64
    import tempfile

    from fedcredit.ledger.checkpoint import SIG_COSIGNATURE_V1, Checkpoint, Signer, sign_checkpoint
    from fedcredit.ledger.witness import Witness, WitnessStore
    from fedcredit.ledger.witness_http import WitnessHTTPServer

    log_key = Signer.generate("bench/log")
    tree = MemoryTree(hashlib.sha256(b"%d" % i).digest() for i in range(1000 * n + 1))
    with tempfile.TemporaryDirectory() as d:
        store = WitnessStore.open(f"sqlite:///{d}/w.sqlite")
        w = Witness(
            Signer.generate("w", SIG_COSIGNATURE_V1), {"bench/log": log_key.verifier}, store
        )
        srv = WitnessHTTPServer(w, "127.0.0.1:0").start()
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        times: list[float] = []
        old = 0
        try:
            for k in range(1, n + 1):
                size = 1000 * k
                note = sign_checkpoint(Checkpoint("bench/log", size, tree.root(size)), log_key)
                proof = tree.consistency_proof(old, size) if old else []
                body = "\n".join([f"old {old}", *(base64.b64encode(h).decode() for h in proof)])
                t = time.perf_counter()
                conn.request("POST", "/add-checkpoint", (body + "\n\n" + note).encode())
                r = conn.getresponse()
                r.read()
                times.append(time.perf_counter() - t)
                if r.status != 200:
                    raise AssertionError(f"add-checkpoint {size}: {r.status}")
                old = size
        finally:
            conn.close()
            srv.close()
            store.close()
    times.sort()
    return times[len(times) // 2] * 1e3, times[int(len(times) * 0.99)] * 1e3
