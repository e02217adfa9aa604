"""Running a deployment as local processes: start, health-check, watch, stop.

Used by ``fedcredit up|status|down`` and by ``fedcredit demo``. Each service
is one ``fedcredit ... serve`` process with its own log file under
``DIR/logs/`` and pid file under ``DIR/run/``; readiness is the standard gRPC
health check over mTLS with the operator's certificate. A service that exits
during start-up is reported with the last lines of its log; a port already
taken is reported before anything is started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fedcredit.common.config import Deployment
from fedcredit.common.errors import FailedPrecondition, Unavailable
from fedcredit.common.server import check_health
from fedcredit.common.tls import TlsFiles

OPERATOR_ORG = "operator"


class PortTaken(FailedPrecondition):
    reason = "PORT_TAKEN"


class ServiceDied(Unavailable):
    reason = "SERVICE_DIED"


class ServiceNotReady(Unavailable):
    reason = "SERVICE_NOT_READY"


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # e.g. "ledger", "node-tax"
    org_id: str
    address: str
    argv: tuple[str, ...]  # arguments after `fedcredit`


def service_specs(dep: Deployment) -> list[ServiceSpec]:
    """Every server of the deployment, in start order (the ledger first: others write to it)."""
    cfg = str(dep.path)
    specs: list[ServiceSpec] = []
    if "ledger" in dep.services:
        s = dep.services["ledger"]
        specs.append(
            ServiceSpec("ledger", s.org_id, s.address, ("ledger", "serve", "--config", cfg))
        )
    if "consent" in dep.services:
        s = dep.services["consent"]
        specs.append(
            ServiceSpec("consent", s.org_id, s.address, ("consent", "serve", "--config", cfg))
        )
    for n in dep.nodes:
        specs.append(
            ServiceSpec(
                f"node-{n.department}",
                n.org_id,
                n.address,
                ("node", "serve", "--department", n.department, "--config", cfg),
            )
        )
    if "coordinator" in dep.services:
        s = dep.services["coordinator"]
        specs.append(
            ServiceSpec(
                "coordinator", s.org_id, s.address, ("coordinator", "serve", "--config", cfg)
            )
        )
    if "policies" in dep.services:
        s = dep.services["policies"]
        specs.append(
            ServiceSpec("policies", s.org_id, s.address, ("policy", "serve", "--config", cfg))
        )
    if "market" in dep.services:
        s = dep.services["market"]
        specs.append(
            ServiceSpec("market", s.org_id, s.address, ("market", "serve", "--config", cfg))
        )
    if isinstance(dep.raw.get("portal"), dict) and "address" in dep.raw["portal"]:
        p = dep.raw["portal"]
        specs.append(
            ServiceSpec("portal", str(p.get("org", "portal")), str(p["address"]),
                        ("portal", "serve", "--config", cfg))
        )  # fmt: skip
    return specs


def portal_healthy(dep: Deployment, address: str, timeout: float = 1.0) -> bool:
    """``GET /healthz`` of the portal answers ``ok``: plain HTTP, or HTTPS checked against
    the deployment's CA when ``[portal] tls`` is set (the portal's certificate names
    127.0.0.1). A wildcard bind address (a container's) is asked on loopback; no proxy is
    consulted, whatever the environment says."""
    import ssl
    import urllib.request

    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    portal = dep.raw.get("portal")
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    scheme = "http"
    if isinstance(portal, dict) and portal.get("tls") is True:
        org = str(portal.get("org", "portal"))
        ctx = ssl.create_default_context(cafile=str(dep.tls(org).ca))
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
        scheme = "https"
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(f"{scheme}://{host}:{port}/healthz", timeout=timeout) as r:
            return bool(r.status == 200 and r.read(16).strip() == b"ok")
    except (OSError, ValueError, ssl.SSLError):
        return False


def start_waves(specs: list[ServiceSpec]) -> list[list[ServiceSpec]]:
    """Consecutive specs of the same kind (``node-*`` together) form one wave, in order."""
    waves: list[list[ServiceSpec]] = []
    for spec in specs:
        kind = spec.name.split("-", 1)[0]
        if waves and waves[-1][0].name.split("-", 1)[0] == kind:
            waves[-1].append(spec)
        else:
            waves.append([spec])
    return waves


def _port_free(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        # As the gRPC servers do: a port whose previous owner just died may still have
        # connections in TIME_WAIT; that does not stop a server from listening on it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


# Every service process runs `python -m SERVICE_MODULE ...`.
SERVICE_MODULE = "fedcredit.clients.cli"


def _proc_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (proc(5)); None when there is no such
    process or no /proc. The command name is in parentheses and may hold any character,
    so the state is the first field after the last ``)``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process. A process killed with SIGKILL whose parent
    has gone stays in the table as a zombie until something reaps it: ``kill(pid, 0)``
    still succeeds for it, so /proc's state decides (Z, zombie; X, dead)."""
    try:
        # Ours to reap when we started it in an earlier call of this process.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's: not ours, but alive
    state = _proc_state(pid)
    if state is None:
        return True  # no /proc here: kill(pid, 0) is all we can know
    if state in ("Z", "X"):
        return False
    # A PID from an old pidfile may since belong to another program (after a reboot,
    # say): only a process running our command line counts as the service.
    try:
        return SERVICE_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _wait_reaped(pid: int, *, timeout: float) -> None:
    """Wait (bounded) until a dead process has left the process table, so that `down`
    returns with its PIDs gone; a zombie nobody reaps is dead all the same."""
    deadline = time.monotonic() + timeout
    while _proc_state(pid) is not None and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.05)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Running:
    spec: ServiceSpec
    pid: int
    log: Path


class Supervisor:
    def __init__(self, dep: Deployment, *, operator_org: str = OPERATOR_ORG) -> None:
        self.dep = dep
        self.logs = dep.dir / "logs"
        self.run_dir = dep.dir / "run"
        self.operator_tls: TlsFiles = dep.tls(operator_org)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _command(self, spec: ServiceSpec) -> list[str]:
        return [sys.executable, "-m", SERVICE_MODULE, *spec.argv]

    def start(
        self, specs: Iterable[ServiceSpec], *, timeout: float = 60.0, together: bool = False
    ) -> list[Running]:
        """Start services in order, each healthy before the next starts; with ``together``,
        launch them all first and then wait for each (for services that do not need each
        other, such as the twelve nodes: their start-up is mostly imports)."""
        specs = list(specs)
        taken = [
            f"{s.name} ({s.address})"
            for s in specs
            if not _port_free(s.address) and not self.alive(s.name)
        ]
        if taken:
            raise PortTaken(
                "cannot start: these addresses are already in use: "
                + ", ".join(taken)
                + "; stop what holds them or pick other ports (fedcredit init --base-port)"
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started: list[Running] = []
        launched: list[tuple[ServiceSpec, subprocess.Popen[bytes], Path]] = []
        for spec in specs:
            if self.alive(spec.name):
                continue
            log_path = self.logs / f"{spec.name}.log"
            log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
            env = dict(
                os.environ,
                FEDCREDIT_LOG=os.environ.get("FEDCREDIT_LOG", "INFO"),
                PYTHONUNBUFFERED="1",
            )
            proc = subprocess.Popen(
                self._command(spec), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, cwd=self.dep.dir,
            )  # fmt: skip
            log.close()
            self.procs[spec.name] = proc
            self.pidfile(spec.name).write_text(str(proc.pid))
            if together:
                launched.append((spec, proc, log_path))
                continue
            self.wait_healthy(spec, proc, log_path, timeout=timeout)
            started.append(Running(spec, proc.pid, log_path))
        for spec, proc, log_path in launched:
            self.wait_healthy(spec, proc, log_path, timeout=timeout)
            started.append(Running(spec, proc.pid, log_path))
        return started

    def start_all(
        self,
        specs: Iterable[ServiceSpec],
        *,
        timeout: float = 60.0,
        on_started: Callable[[list[Running]], None] | None = None,
    ) -> list[Running]:
        """Start a deployment in waves: the ledger, then consent, then every node at once,
        then the coordinator (each wave needs the previous one to be serving)."""
        started: list[Running] = []
        for wave in start_waves(list(specs)):
            got = self.start(wave, timeout=timeout, together=True)
            started.extend(got)
            if on_started is not None:
                on_started(got)
        return started

    def wait_healthy(
        self, spec: ServiceSpec, proc: subprocess.Popen[bytes] | None, log: Path, *, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServiceDied(
                    f"service {spec.name} exited with code {proc.returncode} while starting; last lines of {log}:\n{_tail(log)}"
                )
            if self.healthy(spec):
                return
            time.sleep(0.1)
        raise ServiceNotReady(
            f"service {spec.name} at {spec.address} was not healthy within {timeout:.0f} s; see {log}"
        )

    def healthy(self, spec: ServiceSpec) -> bool:
        """The gRPC health check; the portal (HTTP) answers ``GET /healthz``."""
        if spec.name == "portal":
            return portal_healthy(self.dep, spec.address)
        return check_health(spec.address, self.operator_tls, server_org=spec.org_id, timeout=1.0)

    def pid(self, name: str) -> int | None:
        try:
            return int(self.pidfile(name).read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self, name: str) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        proc = self.procs.get(name)
        if proc is not None:
            return proc.poll() is None
        return pid_alive(pid)

    def status(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for spec in service_specs(self.dep):
            alive = self.alive(spec.name)
            healthy = alive and self.healthy(spec)
            rows.append(
                {"service": spec.name, "org": spec.org_id, "address": spec.address, "pid": self.pid(spec.name) if alive else None,
                 "running": alive, "healthy": healthy, "log": str(self.logs / f"{spec.name}.log")}
            )  # fmt: skip
        return rows

    def dead_services(self) -> list[str]:
        """Services started by this supervisor that are no longer running."""
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def stop(self, names: Iterable[str] | None = None, *, grace: float = 10.0) -> list[str]:
        """SIGTERM each service (reverse start order), SIGKILL after ``grace`` seconds."""
        order = [s.name for s in reversed(service_specs(self.dep))]
        wanted = set(names) if names is not None else None
        stopped: list[str] = []
        pending: list[tuple[str, int]] = []
        for name in order:
            if wanted is not None and name not in wanted:
                continue
            pid = self.pid(name)
            if pid is None or not self.alive(name):
                self.pidfile(name).unlink(missing_ok=True)
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            pending.append((name, pid))
        deadline = time.monotonic() + grace
        for name, pid in pending:
            while time.monotonic() < deadline and self.alive(name):
                proc = self.procs.get(name)
                if proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.1)
                else:
                    time.sleep(0.1)
            # Whatever is left of the group (the leader, or workers a dead leader left
            # behind) is killed; a group already gone raises and is fine.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            proc = self.procs.pop(name, None)
            if proc is not None:
                proc.wait(timeout=5)
            _wait_reaped(pid, timeout=5.0)
            self.pidfile(name).unlink(missing_ok=True)
            stopped.append(name)
        return stopped
