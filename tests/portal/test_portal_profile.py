"""``FEDCREDIT_PORTAL_PROFILE=FILE fedcredit portal serve``: the portal's cProfile is
written when it is stopped with SIGTERM (as ``fedcredit down`` stops it), for
bench/bench_portal.py to read where a page's time goes under load."""

from __future__ import annotations

import os
import pstats
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment


def test_sigterm_writes_the_profile(tmp_path: Path) -> None:
    cfg = write_local_deployment(tmp_path / "dep", name="profile", bank_count=1)
    address = load_config(cfg).raw["portal"]["address"]
    out = tmp_path / "portal.prof"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedcredit.clients.cli", "portal", "serve", "--config", str(cfg)],
        env={**os.environ, "FEDCREDIT_PORTAL_PROFILE": str(out)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://{address}/healthz", timeout=1).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the portal did not answer /healthz in 60 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    stats = pstats.Stats(str(out))
    assert any(func[2] == "healthz" for func in stats.stats)  # type: ignore[attr-defined]
