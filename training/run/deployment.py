"""Flower's Deployment Engine on this machine: one SuperLink, one SuperNode per bank.

``fedcredit train --engine deployment`` (and :func:`run_local_deployment`):

1. makes a development PKI (``common.pki``) with a certificate for the
   SuperLink (CN ``coordinator``; SANs localhost, 127.0.0.1) and, per bank, a
   P-384 key pair in OpenSSH format for Flower's SuperNode authentication;
2. starts ``flower-superlink`` with TLS and ``--enable-supernode-auth``, every
   API on an ephemeral 127.0.0.1 port, with long polls (training/flower/
   fastpull.py: a pull that finds nothing waits for the next message instead of
   coming back empty);
3. registers each bank's public key (``flwr supernode register``) — only
   registered SuperNodes may connect;
4. starts one SuperNode per bank, each with its data in ``--node-config``
   (``csv='...'``, or city mode's ``deployment='...' bank='...'``), the CA as root
   certificate and its private key; by default (``clientapp_mode="inline"``) the
   SuperNode (training/bank/fast_supernode.py) has short polls and runs the
   ClientApp in its own process (``--isolation process --clientapp ...``), so a
   message costs no extra process and no Runtime API round trips;
   ``"executor"`` runs one long-running ClientApp executor process per bank
   next to it (training/bank/executor.py), ``"stock"`` Flower's defaults (a
   new ClientApp process for every message);
5. submits the app in ``training/flwr_app`` with ``flwr run``, the
   training settings as run config, waits for the ServerApp's output
   (``model.txt`` + ``summary.json``, or ``error.json``), and stops every process
   it started.

:meth:`LocalDeployment.floor` (``python -m fedcredit.training.run.deployment
floor --csv A --csv B --csv C``) measures the mean seconds of an empty round to every
bank, and the CPU seconds each kind of process spends on it.

Banks on separate machines run step 4 themselves against the coordinator's
SuperLink address, with the CA certificate the operator gives them and their
own key pair, whose public half the operator registers (step 3); see
training/flwr_app/README.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcredit.common import pki
from fedcredit.common.errors import DeadlineExceeded, FailedPrecondition, FedcreditError, Internal
from fedcredit.common.tls import TlsFiles
from fedcredit.training.server.settings import TrainSettings

# Not resolved: under the source tree's fedcredit/ links and in an installed wheel alike,
# the app folder sits beside this package.
APP_DIR = Path(__file__).parent.parent / "flwr_app"
# The ClientApp the FAB names (training/flwr_app/pyproject.toml); an inline
# SuperNode runs exactly this installed code.
CLIENTAPP = "fedcredit.training.bank.app:app"
# inline: the SuperNode runs the ClientApp in its own process (fast_supernode
# --clientapp); executor: one long-running ClientApp executor process per bank next to
# the SuperNode (training/bank/executor.py); stock: flower-supernode with Flower's
# default isolation, a new ClientApp process for every message.
CLIENTAPP_MODES = ("inline", "executor", "stock")
CONNECTION = "fedcredit"


class DeploymentFailed(Internal):
    reason = "DEPLOYMENT_FAILED"


class DeploymentTimeout(DeadlineExceeded):
    reason = "DEPLOYMENT_TIMEOUT"


class FlowerNotInstalled(FailedPrecondition):
    reason = "FLOWER_NOT_INSTALLED"


@dataclass(frozen=True)
class DeploymentResult:
    model_text: str
    summary: dict[str, Any]
    wall_seconds: float  # from `flwr run` to the model on disk
    start_seconds: float  # PKI, SuperLink, registrations, SuperNodes


def free_port() -> int:
    """An ephemeral port on 127.0.0.1 (bound and released; the OS hands out a fresh one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exe(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise FlowerNotInstalled(f"{name} not found next to {sys.executable} or on PATH")
    return found


def write_supernode_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """A P-384 key pair in OpenSSH format, as Flower's SuperNode authentication expects."""
    key = ec.generate_private_key(ec.SECP384R1())
    priv = directory / f"{name}.key"
    pub = directory / f"{name}.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    priv.chmod(0o600)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return priv, pub


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentFailed(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise DeploymentTimeout(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


@dataclass
class LocalDeployment:
    work_dir: Path
    csv_paths: Sequence[str] = ()
    timeout: float = 1800.0
    # Instead of CSV files: one ``--node-config`` string per bank (city mode:
    # "deployment='...' bank='...'") and the banks' names for keys and logs.
    node_configs: Sequence[str] = ()
    bank_names: Sequence[str] = ()
    # Where each bank's ClientApp runs (see CLIENTAPP_MODES); "inline" by default.
    clientapp_mode: str = "inline"
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    fleet_port: int = 0
    control_port: int = 0
    last_floor: dict[str, Any] = field(default_factory=dict)

    def _spawn(self, what: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.work_dir / "logs" / f"{what}.log").open("wb")
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.work_dir,
            start_new_session=True,
        )
        self.procs.append((what, proc))
        return proc

    def _flwr(self, *args: str) -> str:
        res = subprocess.run(
            [_exe("flwr"), *args],
            env=self.env,
            cwd=self.work_dir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if res.returncode != 0:
            raise DeploymentFailed(
                f"`flwr {' '.join(args[:2])}` failed ({res.returncode}): "
                f"{(res.stdout + res.stderr).strip()[-800:]}"
            )
        return res.stdout

    def banks(self) -> list[tuple[str, str]]:
        """(name, node config) per bank."""
        if self.node_configs:
            names = list(self.bank_names) or [f"bank{i}" for i in range(len(self.node_configs))]
            return list(zip(names, self.node_configs, strict=True))
        # ``bank``: the file's name, how the server names the bank in its messages.
        return [
            (f"bank{i}", f"csv='{Path(c).resolve()}' bank='{Path(c).name}'")
            for i, c in enumerate(self.csv_paths)
        ]

    def pids(self) -> list[int]:
        return [p.pid for _, p in self.procs]

    def start(self) -> None:
        if self.clientapp_mode not in CLIENTAPP_MODES:
            raise DeploymentFailed(
                f"clientapp_mode must be one of {', '.join(CLIENTAPP_MODES)}, "
                f"got {self.clientapp_mode!r}"
            )
        d = self.work_dir
        for sub in ("logs", "pki", "keys", "flwr-home"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        tls = pki.init_pki(d / "pki", [("coordinator", "coordinator")])["coordinator"]
        self._set_env(d / "flwr-home")
        self._start_superlink(tls, d / "flwr-home")
        banks = self.banks()
        keys = {name: write_supernode_keys(d / "keys", name) for name, _ in banks}
        # Registration is one `flwr` CLI call per bank (seconds each): in parallel.
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda n: self._flwr(
                        "supernode", "register", str(keys[n][1]), CONNECTION, "--name", n
                    ),
                    [n for n, _ in banks],
                )
            )
        nodes = [
            self._start_supernode(name, node_config, tls, keys[name][0])
            for name, node_config in banks
        ]
        if self.clientapp_mode == "executor":
            for name, node_port, proc in nodes:
                _wait_port(node_port, proc, f"supernode {name}", 60)
                self._start_executor(name, node_port, proc)

    def _set_env(self, home: Path) -> None:
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            # Flower's SuperExec looks for new tasks every second by default. With stock
            # SuperNodes every message is a ClientApp task for their SuperExec; otherwise
            # only the SuperLink's runs one, for the ServerApp, once per run, and its
            # polls are requests the SuperLink serves all through training.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05"
            if self.clientapp_mode == "stock"
            else "0.25",
        }

    def _start_superlink(self, tls: TlsFiles, home: Path) -> None:
        # Flower 1.42 serves its Fleet, Control and Runtime APIs on one HTTPS port. Its
        # state stays in memory (no --database): with a SQLite file, seven banks polling
        # at once met "database is locked" errors. A run does not outlive the SuperLink.
        port, health_port = free_port(), free_port()
        self.fleet_port = self.control_port = port
        # Only our SuperLink is known to the flwr CLI in this FLWR_HOME.
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.control_port}"\n'
            f'root-certificates = "{tls.ca}"\n'
        )
        # Our SuperLink is Flower's with long polls (fastpull.install_long_poll).
        link_exe = (
            [_exe("flower-superlink")]
            if self.clientapp_mode == "stock"
            else [sys.executable, "-m", "fedcredit.training.flower.fastpull"]
        )
        link = self._spawn(
            "superlink",
            [
                *link_exe,
                "--ssl-ca-certfile",
                str(tls.ca),
                "--ssl-certfile",
                str(tls.cert),
                "--ssl-keyfile",
                str(tls.key),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--health-server-address",
                f"127.0.0.1:{health_port}",
            ],
        )
        _wait_port(port, link, "flower-superlink", 60)

    def _start_supernode(
        self, name: str, node_config: str, tls: TlsFiles, key: Path
    ) -> tuple[str, int, subprocess.Popen[bytes]]:
        """One bank's SuperNode: (name, its port, its process)."""
        node_port, node_health = free_port(), free_port()
        head = (
            [_exe("flower-supernode")]
            if self.clientapp_mode == "stock"
            else [sys.executable, "-m", "fedcredit.training.bank.fast_supernode"]
        )
        if self.clientapp_mode == "inline":
            head += ["--clientapp", CLIENTAPP]
        proc = self._spawn(
            f"supernode-{name}",
            [
                *head,
                "--superlink",
                f"127.0.0.1:{self.fleet_port}",
                "--root-certificates",
                str(tls.ca),
                "--auth-supernode-private-key",
                str(key),
                "--node-config",
                node_config,
                "--host",
                "127.0.0.1",
                "--port",
                str(node_port),
                "--health-server-address",
                f"127.0.0.1:{node_health}",
                *(["--isolation", "process"] if self.clientapp_mode != "stock" else []),
            ],
        )
        return name, node_port, proc

    def _start_executor(self, name: str, node_port: int, node: subprocess.Popen[bytes]) -> None:
        self._spawn(
            f"executor-{name}",
            [
                sys.executable,
                "-m",
                "fedcredit.training.bank.executor",
                "--runtime-api-address",
                f"127.0.0.1:{node_port}",
                "--parent-pid",
                str(node.pid),
            ],
        )

    def run(self, settings: TrainSettings) -> tuple[str, dict[str, Any], float]:
        out = self.work_dir / "output"
        summary, wall = self._submit(APP_DIR, settings, out, "summary.json")
        return (out / "model.txt").read_text(), summary, wall

    def floor(self, rounds: int, settings: TrainSettings | None = None) -> float:
        """Mean seconds of an empty round to every bank (``Federation.floor``): the
        Deployment Engine's own cost per round, measured after 3 warm-up rounds."""
        app = self.work_dir / "floor-app"
        app.mkdir(exist_ok=True)
        # The same FAB with the floor ServerApp (training/server/floor.py) in place of the trainer.
        (app / "pyproject.toml").write_text(
            (APP_DIR / "pyproject.toml")
            .read_text()
            .replace(
                '"fedcredit.training.server.server_app:app"',
                '"fedcredit.training.server.floor:app"',
            )
            .replace('output-dir = "', f'floor-rounds = {int(rounds)}\noutput-dir = "')
        )
        out = self.work_dir / "floor-output"
        cpu: dict[str, dict[tuple[str, int], float]] = {}

        def between() -> None:
            # The ServerApp waits after its warm-up rounds until the CPU counters are read.
            if (out / "warm").exists() and "before" not in cpu:
                cpu["before"] = self.cpu_seconds()
                (out / "go").touch()

        result, _wall = self._submit(app, settings or TrainSettings(), out, "floor.json", between)
        after = self.cpu_seconds()
        rounds_done = max(int(result["rounds"]), 1)
        # Processes alive at both readings only: short-lived ones (stock SuperNodes'
        # ClientApp process per message) are not counted, so the figures are a lower
        # bound there.
        before = cpu.get("before", {})
        per_role: dict[str, float] = {}
        for key, seconds in after.items():
            if key in before:
                per_role[key[0]] = per_role.get(key[0], 0.0) + seconds - before[key]
        result["cpu_seconds_per_round"] = {
            k: round(v / rounds_done, 4) for k, v in sorted(per_role.items())
        }
        self.last_floor = result
        return float(result["seconds_per_round"])

    def cpu_seconds(self) -> dict[tuple[str, int], float]:
        """CPU seconds used so far by each process this deployment started and their
        live children (the ServerApp, Flower's SuperExec), by (role, pid); from /proc."""
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[tuple[str, int], float] = {}
        for what, p in self.procs:
            role = what.split("-", 1)[0]
            for pid in {p.pid} | _descendants({p.pid}):
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                fields = stat[stat.rindex(")") + 2 :].split()
                name = role
                if pid != p.pid:
                    name = next((Path(c.decode()).name for c in cmd[1:2] if c), role)
                out[(name, pid)] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def _submit(
        self,
        app: Path,
        settings: TrainSettings,
        out: Path,
        done: str,
        between: Callable[[], None] | None = None,
    ) -> tuple[dict[str, Any], float]:
        """``flwr run`` the app and wait for ``out/done`` (JSON) or ``out/error.json``."""
        out.mkdir(exist_ok=True)
        # A second run on the same deployment writes to the same folder: the last run's
        # result must not be taken for this one's.
        for stale in (done, "error.json", "model.txt"):
            (out / stale).unlink(missing_ok=True)
        s = TrainSettings.from_dict(settings.to_dict() | {"num_banks": len(self.banks())})
        overrides = {"settings": json.dumps(s.to_dict()), "output-dir": str(out)}
        cfg = self.work_dir / "run-config.toml"
        cfg.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in overrides.items()))
        start = time.perf_counter()
        self._flwr("run", str(app), CONNECTION, "--run-config", str(cfg))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if (out / "error.json").exists():
                err = json.loads((out / "error.json").read_text())
                raise DeploymentFailed(
                    f"training stopped: {err.get('reason')}: {err.get('message')}"
                )
            if (out / done).exists():
                return json.loads((out / done).read_text()), time.perf_counter() - start
            if between is not None:
                between()
            for what, p in self.procs:
                if p.poll() is not None:
                    raise DeploymentFailed(
                        f"{what} exited with code {p.returncode} during training; see "
                        f"{self.work_dir / 'logs' / (what + '.log')}"
                    )
            time.sleep(0.2)
        raise DeploymentTimeout(f"no model after {self.timeout:.0f} s")

    def stop(self) -> None:
        # Processes ours started, found before anything dies: the SuperLink's ServerApp
        # runs in a session of its own and would outlive a failed run otherwise.
        children = _descendants({p.pid for _, p in self.procs})
        # Supernodes first, the SuperLink last; each by its own process group.
        for _what, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for _what, p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        # Children the leaders started (ServerApp/ClientApp processes) share their group;
        # none may outlive the run.
        for _what, p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.procs.clear()


def _descendants(roots: set[int]) -> set[int]:
    """Every live descendant of ``roots`` (from /proc; empty where there is no /proc)."""
    parent: dict[int, int] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found: set[int] = set()
    frontier = set(roots)
    while frontier:
        frontier = {pid for pid, pp in parent.items() if pp in frontier and pid not in found}
        found |= frontier
    return found


def run_local_deployment(
    settings: TrainSettings,
    csv_paths: Sequence[str],
    work_dir: Path,
    timeout: float = 1800.0,
    *,
    node_configs: Sequence[str] = (),
    bank_names: Sequence[str] = (),
    on_start: Callable[[LocalDeployment], None] | None = None,
    clientapp_mode: str = "inline",
) -> DeploymentResult:
    """Start, train once, stop. ``on_start`` sees the running deployment (e.g. its pids)."""
    dep = LocalDeployment(work_dir, csv_paths, timeout, node_configs, bank_names, clientapp_mode)
    t0 = time.perf_counter()
    try:
        dep.start()
        if on_start is not None:
            on_start(dep)
        started = time.perf_counter() - t0
        text, summary, wall = dep.run(settings)
    except FedcreditError:
        raise
    finally:
        dep.stop()
    return DeploymentResult(text, summary, wall, started)


def measure_floor(
    csv_paths: Sequence[str], work_dir: Path, rounds: int = 20, *, clientapp_mode: str = "inline"
) -> tuple[float, float]:
    """(seconds per empty round, start-up seconds) of a local deployment of these banks."""
    dep = LocalDeployment(work_dir, csv_paths, clientapp_mode=clientapp_mode)
    t0 = time.perf_counter()
    try:
        dep.start()
        started = time.perf_counter() - t0
        return dep.floor(rounds), started
    finally:
        dep.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fedcredit.training.run.deployment floor --csv A --csv B ... [--rounds N]``"""
    import argparse

    p = argparse.ArgumentParser(description="Deployment Engine round-trip floor")
    p.add_argument("what", choices=["floor"])
    p.add_argument("--csv", action="append", required=True, help="one per bank")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--clientapp-mode", choices=CLIENTAPP_MODES, default="inline")
    args = p.parse_args(argv)
    dep = LocalDeployment(args.work_dir, args.csv, clientapp_mode=args.clientapp_mode)
    t0 = time.perf_counter()
    try:
        dep.start()
        started = time.perf_counter() - t0
        dep.floor(args.rounds)
    finally:
        dep.stop()
    print(
        json.dumps(
            {
                "banks": len(args.csv),
                "clientapp_mode": args.clientapp_mode,
                "start_seconds": round(started, 2),
                **dep.last_floor,
            }
        )
    )


if __name__ == "__main__":
    main()
