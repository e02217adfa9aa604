"""Fault injection: services in processes of their own, killed (-9) and frozen (SIGSTOP).

Department nodes run as real processes (``tests.faults.nodeproc``). The consent service
and the ledger run inside the test process (the tests read their state directly: uses,
entries) behind a forwarding process each (``tests.faults.tcpproxy``) that every other
party connects through; killing or stopping that process is, on the wire, killing or
stopping the service. The coordinator runs in the test process on its own store, so the
tests can restart it on the same database.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common.departments import BY_ID
from tests.coordinator.conftest import (  # noqa: F401  (fixtures used by the tests here)
    DEPARTMENTS,
    City,
    ConsentEnv,
    city,
    consent_env,
    open_ledger,
)

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    """A child process that prints ``PORT <n>`` when ready; kill -9, stop, continue, restart."""

    argv: list[str]
    port: int = 0
    popen: subprocess.Popen[str] | None = None
    started_at: float = 0.0

    def start(self, timeout: float = 60.0) -> Proc:
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        self.popen = subprocess.Popen(
            [sys.executable, "-m", *argv], cwd=ROOT, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert self.popen.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([self.popen.stdout], [], [], 0.5)
            if r:
                line = self.popen.stdout.readline()
                if line.startswith("PORT "):
                    self.port = int(line.split()[1])
                    self.started_at = time.monotonic()
                    return self
                if not line and self.popen.poll() is not None:
                    break
        raise RuntimeError(f"{argv} did not start (exit {self.popen.poll()})")

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        assert self.popen is not None
        self.popen.wait(10)

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            # poll() also answers None while another thread is inside wait() for the same
            # process (a kill9() from the request iterator's thread): it may be gone by now.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                self.popen.kill()
            self.popen.wait(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def proxy(target_port: int) -> Proc:
    return Proc(["tests.faults.tcpproxy", "{port}", str(target_port)]).start()


def node_proc(
    pki: Any, consent_address: str, issuer: str, world: City, tmp: Path, dep: str
) -> Proc:
    d = BY_ID[dep]
    tls = pki.tls(d.org_id)
    args = {"department": dep, "dir": str(tmp), "ca": str(tls.ca), "cert": str(tls.cert),
            "key": str(tls.key), "city": str(world.dir), "consent": consent_address,
            "issuer": issuer, "port": "{port}"}  # fmt: skip
    return Proc(["tests.faults.nodeproc", json.dumps(args)]).start()


@dataclass
class Federation:
    consent_proxy: Proc
    ledger: Any
    ledger_proxy: Proc
    nodes: dict[str, Proc]  # department -> node process
    procs: list[Proc] = field(default_factory=list)

    def close(self) -> None:
        for p in [self.consent_proxy, self.ledger_proxy, *self.nodes.values()]:
            p.close()
        self.ledger.close()


@pytest.fixture(scope="module")
def federation(
    pki: Any,
    consent_env: ConsentEnv,  # noqa: F811  (the fixture imported above)
    city: City,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("faults")
    consent_port = int(consent_env.address.rsplit(":", 1)[1])
    cproxy = proxy(consent_port)
    ledger = open_ledger(tmp / "ledger.sqlite", pki)
    lproxy = proxy(ledger.port)
    issuer = consent_env.authority.settings.issuer
    nodes = {dep: node_proc(pki, cproxy.address, issuer, city, tmp, dep) for dep in DEPARTMENTS}
    fed = Federation(cproxy, ledger, lproxy, nodes)
    yield fed
    fed.close()
