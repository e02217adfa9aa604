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
from typing import Any

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


class Appenders:
    """8 coordinator threads appending (single and 3-entry atomic batches) until stopped or
    refused; ``acked`` is every acknowledged index with the leaf hash the ledger returned."""

    def __init__(self, dep: Any) -> None:
        self.dep = dep
        self.acked: dict[int, bytes] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(w,)) for w in range(8)]
        for t in self.threads:
            t.start()

    def _run(self, w: int) -> None:
        with LedgerClient.from_deployment(self.dep, "coordinator", timeout=5.0) as c:
            i = 0
            while not self.stop.is_set():
                try:
                    if i % 5 == 4:  # some multi-entry (atomic) appends too
                        rs = c.append_many(
                            [("score_access", None, {"w": w, "i": i, "j": j}) for j in range(3)]
                        )
                    else:
                        rs = [c.append("score_access", None, {"w": w, "i": i})]
                except FedcreditError as exc:
                    self.errors.append(exc.reason)
                    return
                with self.lock:
                    for r in rs:
                        self.acked[r.index] = r.leaf_hash
                i += 1

    def join(self) -> None:
        for t in self.threads:
            t.join(30)
        self.stop.set()


def _checkpoint_after(dep: Any, appenders: Appenders, entries: int) -> str:
    """A signed checkpoint fetched once more than ``entries`` appends were acknowledged."""
    with LedgerClient.from_deployment(dep, "auditor-pboc-weihai") as aud:
        deadline = time.time() + 20
        note = ""
        while time.time() < deadline:
            time.sleep(0.3)
            try:
                note = aud.checkpoint()
            except FedcreditError:
                continue
            if len(appenders.acked) > entries:
                break
    return note


def _verify_after_restart(dep: Any, tmp_path: Path, old_note: str, acked: dict[int, bytes]) -> None:
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
        f"\ncrash test: {len(acked)} acknowledged entries before kill -9, all present after restart; "
        f"log size {new.size}; checkpoint {old.size} -> {new.size} consistent; replay verified"
    )


def test_kill_9_mid_run(tmp_path: Path) -> None:
    config = write_local_deployment(tmp_path / "dep")
    with open(config, "a") as f:
        f.write("\n[ledger]\nwitnesses = []\ncheckpoint_interval = 0.2\n")
    dep = load_config(config)
    log_path = tmp_path / "ledger.log"
    proc = _start(config, log_path)
    appenders = Appenders(dep)
    old_note = _checkpoint_after(dep, appenders, 300)
    assert old_note, "no checkpoint was signed before the crash"
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: clients are still appending
    proc.wait(10)
    appenders.join()
    acked = dict(appenders.acked)
    assert len(acked) > 300 and appenders.errors, (len(acked), appenders.errors)
    proc = _start(config, log_path)
    try:
        _verify_after_restart(dep, tmp_path, old_note, acked)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
