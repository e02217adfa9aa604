"""Crash test: 8 concurrent clients append to the ledger service; kill -9 it mid-run; restart.

Every acknowledged entry must be present with the same leaf hash, nothing
half-written, the chain and tree verify from an export, and new checkpoints
are consistent with the ones signed before the crash.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment
from fedcredit.common.errors import FedcreditError
from fedcredit.common.server import check_health
from fedcredit.ledger.audit import Trust, replay, verify_checkpoints
from fedcredit.ledger.client import LedgerClient
from fedcredit.ledger.export import read_export
from fedcredit.ledger.keys import log_verifier

pytestmark = pytest.mark.slow


def _start(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedcredit.clients.cli", "ledger", "serve", "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )
    dep = load_config(config)
    svc = dep.service("ledger")
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the ledger exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
            )
        if check_health(svc.address, dep.tls("operator"), server_org=svc.org_id, timeout=1.0):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the ledger did not become healthy: {log_path.read_text()[-2000:]}")


def test_kill_9_mid_run(tmp_path: Path) -> None:
    config = write_local_deployment(tmp_path / "dep")
    with open(config, "a") as f:
        f.write("\n[ledger]\nwitnesses = []\ncheckpoint_interval = 0.2\n")
    dep = load_config(config)
    log_path = tmp_path / "ledger.log"
    proc = _start(config, log_path)
    acked: dict[int, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []

    def client(w: int) -> None:
        with LedgerClient.from_deployment(dep, "coordinator", timeout=5.0) as c:
            i = 0
            while not stop.is_set():
                try:
                    if i % 5 == 4:  # some multi-entry (atomic) appends too
                        rs = c.append_many(
                            [("score_access", None, {"w": w, "i": i, "j": j}) for j in range(3)]
                        )
                    else:
                        rs = [c.append("score_access", None, {"w": w, "i": i})]
                except FedcreditError as exc:
                    errors.append(exc.reason)
                    return
                with lock:
                    for r in rs:
                        acked[r.index] = r.leaf_hash
                i += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    with LedgerClient.from_deployment(dep, "auditor-pboc-weihai") as aud:
        deadline = time.time() + 20
        old_note = ""
        while time.time() < deadline:
            time.sleep(0.3)
            try:
                old_note = aud.checkpoint()
            except FedcreditError:
                continue
            if len(acked) > 300:
                break
    assert old_note, "no checkpoint was signed before the crash"
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: clients are still appending
    proc.wait(10)
    for t in threads:
        t.join(30)
    stop.set()
    n_acked = len(acked)
    assert n_acked > 300 and errors, (n_acked, errors)

    proc = _start(config, log_path)
    try:
        trust = Trust(log_verifier(dep))
        with LedgerClient.from_deployment(dep, "coordinator") as c:
            after = c.append("score_access", None, {"after": "restart"})
        with LedgerClient.from_deployment(dep, "operator") as op:
            new_note = op.sign_checkpoint()
        with LedgerClient.from_deployment(dep, "auditor-pboc-weihai") as aud:
            old, new = trust.open(old_note), trust.open(new_note)
            verify_checkpoints(old_note, new_note, aud.consistency_proof(old.size, new.size), trust)
            aud.export(tmp_path / "export.json")
        ex = read_export(tmp_path / "export.json")
        report = replay(ex, trust, trusted_checkpoints=[old_note, new_note], strict=True)
        assert report.entries == new.size == after.index + 1
        missing = [
            i
            for i, h in acked.items()
            if i >= len(ex.entries) or hashlib.sha256(b"\x00" + ex.entries[i]).digest() != h
        ]
        assert not missing, f"acknowledged entries lost or changed: {missing[:10]}"
        print(
            f"\ncrash test: {n_acked} acknowledged entries before kill -9, all present after restart; "
            f"log size {new.size}; checkpoint {old.size} -> {new.size} consistent; replay verified"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
