"""`fedcredit up | status | down` run real service processes; taken ports and dying services are named."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment

pytestmark = pytest.mark.xdist_group("up-down")


def fc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedcredit.clients.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    return write_local_deployment(tmp_path / "dep", name="updown", bank_count=3)


def test_up_status_down(deployment: Path) -> None:
    cfg = str(deployment)
    try:
        up = fc("up", "--config", cfg, "--only", "ledger", "--only", "consent", "--json")
        assert up.returncode == 0, up.stdout + up.stderr
        rows = {r["service"]: r for r in json.loads(up.stdout)}
        assert rows["ledger"]["healthy"] and rows["consent"]["healthy"]
        assert not rows["coordinator"]["running"]
        logs = deployment.parent / "logs"
        assert (logs / "ledger.log").exists() and (logs / "consent.log").exists()

        # Not everything runs: status says which and exits 1.
        st = fc("status", "--config", cfg, "--json")
        assert st.returncode == 1
        assert {r["service"] for r in json.loads(st.stdout) if r["healthy"]} == {
            "ledger",
            "consent",
        }

        probe = fc("operator", "probe", "--config", cfg, "--service", "ledger", "--json")
        assert probe.returncode == 0 and json.loads(probe.stdout)["serving"] is True
        pids = [r["pid"] for r in json.loads(st.stdout) if r["running"]]
        assert len(pids) == 2
    finally:
        down = fc("down", "--config", cfg, "--json")
    assert down.returncode == 0, down.stdout + down.stderr
    assert sorted(json.loads(down.stdout)["stopped"]) == ["consent", "ledger"]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    st = fc("status", "--config", cfg, "--json")
    assert st.returncode == 1
    assert not any(r["running"] for r in json.loads(st.stdout))


def test_up_names_a_taken_port_and_starts_nothing(deployment: Path) -> None:
    addr = load_config(deployment).service("ledger").address
    host, _, port = addr.rpartition(":")
    with socket.socket() as s:
        s.bind((host, int(port)))
        s.listen()
        res = fc("up", "--config", str(deployment), "--only", "ledger", "--json")
    assert res.returncode == 8, res.stdout + res.stderr  # FAILED_PRECONDITION
    err = json.loads(res.stdout)["error"]
    assert err["reason"] == "PORT_TAKEN"
    assert addr in err["message"] and "ledger" in err["message"]
    assert not (deployment.parent / "run" / "ledger.pid").exists()


def test_up_names_a_service_that_dies_while_starting(deployment: Path) -> None:
    # A database file that is not a database: the consent service exits during start-up.
    db = deployment.parent / "data" / "consent.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not an SQLite database\n" * 200)
    try:
        res = fc("up", "--config", str(deployment), "--only", "consent", "--json")
    finally:
        fc("down", "--config", str(deployment))
    assert res.returncode == 10, res.stdout + res.stderr  # UNAVAILABLE
    err = json.loads(res.stdout)["error"]
    assert err["reason"] == "SERVICE_DIED"
    assert "consent" in err["message"] and "consent.log" in err["message"]


def test_up_restarts_a_service_whose_pid_is_an_unreaped_zombie(deployment: Path) -> None:
    """After kill -9 the PID stays in the process table until reaped (a container's init
    often never does); `up` must see it as dead and start the service again."""
    cfg = str(deployment)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        up = fc("up", "--config", cfg, "--only", "ledger", "--only", "consent", "--json")
        assert up.returncode == 0, up.stdout + up.stderr
        old = {r["service"]: r["pid"] for r in json.loads(up.stdout) if r["running"]}
        # The consent service is killed; its pidfile now names a zombie (our unreaped child).
        os.killpg(old["consent"], 9)
        os.kill(sleeper.pid, 9)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{sleeper.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (deployment.parent / "run" / "consent.pid").write_text(str(sleeper.pid))

        st = fc("status", "--config", cfg, "--json")
        rows = {r["service"]: r for r in json.loads(st.stdout)}
        assert not rows["consent"]["running"] and rows["ledger"]["healthy"]

        again = fc("up", "--config", cfg, "--only", "ledger", "--only", "consent", "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        rows = {r["service"]: r for r in json.loads(again.stdout)}
        assert rows["consent"]["healthy"] and rows["consent"]["pid"] not in (
            old["consent"],
            sleeper.pid,
        )
        assert rows["ledger"]["pid"] == old["ledger"]  # the live one is left alone
    finally:
        fc("down", "--config", cfg)
        sleeper.wait(timeout=10)


def test_up_fails_naming_a_service_that_runs_but_does_not_serve(deployment: Path) -> None:
    """A frozen service (SIGSTOP) is alive but not healthy: `up` must not exit 0."""
    cfg = str(deployment)
    try:
        up = fc("up", "--config", cfg, "--only", "ledger", "--only", "consent", "--json")
        assert up.returncode == 0, up.stdout + up.stderr
        pid = {r["service"]: r["pid"] for r in json.loads(up.stdout)}["consent"]
        os.kill(pid, 19)  # SIGSTOP
        again = fc("up", "--config", cfg, "--only", "ledger", "--only", "consent", "--json")
        assert again.returncode == 10, again.stdout + again.stderr  # UNAVAILABLE
        err = json.loads(again.stdout)["error"]
        assert err["reason"] == "SERVICE_NOT_READY"
        assert "consent" in err["message"] and "ledger" not in err["message"].split(";")[0]
        os.kill(pid, 18)  # SIGCONT
    finally:
        fc("down", "--config", cfg)
