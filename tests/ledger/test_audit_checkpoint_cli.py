"""Finding 5 of issue 16 end to end: `fedcredit audit checkpoint --quorum 1` passes while the
witness cosigns, and fails (exit 1, CHECKPOINT_STALE, one line) once the log has moved on
without it — where it used to return the old cosigned checkpoint and exit 0."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment
from fedcredit.common.server import build_server
from fedcredit.ledger.witness import WITNESS_SERVICE, mount_witness

runner = CliRunner()
WITNESS = "dept-tax"


def test_audit_checkpoint_fails_when_the_witness_stops_cosigning(tmp_path: Path) -> None:
    from fedcredit.ledger.service import serve

    config = write_local_deployment(tmp_path / "dep")
    with open(config, "a") as f:
        f.write(
            f'\n[ledger]\nwitnesses = ["{WITNESS}"]\ncheckpoint_interval = 0.2\n'
            "witness_refresh = 1.0\nwitness_retry_min = 0.05\nwitness_retry_max = 0.2\n"
        )
    dep = load_config(config)
    node = next(n for n in dep.nodes if n.org_id == WITNESS)

    def register(s: Any) -> None:
        mount_witness(s, dep, WITNESS, f"sqlite:///{tmp_path}/w.sqlite")

    wserver, _ = build_server(
        address=node.address,
        tls=dep.tls(WITNESS),
        register=register,
        service_names=[WITNESS_SERVICE],
    )
    wserver.start()
    loop, stop = asyncio.new_event_loop(), asyncio.Event()
    box: dict[str, Any] = {}
    ready = threading.Event()

    def on_ready(port: int, log: Any) -> None:
        box["log"] = log
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve(dep, stop=stop, on_ready=on_ready))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert ready.wait(60)
        log: Any = box["log"]
        log.append_many([("operator_note", None, {"i": i}) for i in range(10)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and log.store.witness_sizes().get(WITNESS) != 10:
            time.sleep(0.05)
        args = ["audit", "checkpoint", "--config", str(config), "--quorum", "1", "--json"]
        r = runner.invoke(build_app(), args)
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["size"] == 10 and out["cosigned_by"] == [WITNESS]
        assert out["quorum_cosigned_seconds_ago"] <= 5

        wserver.stop(0).wait()  # the witness goes away; the log goes on
        log.append_many([("operator_note", None, {"i": i}) for i in range(10, 15)])
        log.checkpoint()
        r = runner.invoke(build_app(), args[:-1])
        assert r.exit_code == 1, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "CHECKPOINT_STALE" in lines[0], r.stderr
        assert "the ledger reports size 15" in lines[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(30)
        wserver.stop(0)
