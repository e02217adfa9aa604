"""`make compose-test`: the federation in containers, the demo story played against it.

``python -m fedcredit.clients.containers_story --dir var/compose-test`` (the images built by
``make image``, a Docker daemon running, ``docker-compose`` installed):

1. writes the loopback compose file (``fedcredit operator compose --loopback``): every
   service with host networking on its own 127.0.0.1 port, so nothing leaves loopback;
   a PKI whose certificates become the containers' secrets; a host-side deployment
   file (``deploy/host.toml``) for the organisations' own tools on this machine;
2. generates a small synthetic city and loads each department's records into its
   node's volume with ``fedcredit node load`` in a one-off container of that node;
3. brings the federation up (health-gated), recording each service's start-to-healthy;
4. registers the banks' SuperNode keys at the SuperLink (`flwr supernode register`)
   and starts the SuperNodes; trains the credit model (Flower's Deployment Engine as
   processes on the operator's side, as `fedcredit demo` does; consents, publication and
   activation through the containers) and
   plays the demo story: consent, score, guarantee, refused D, revocation, the
   enterprise's proofs, the auditor's checkpoint, consistency and replay; then asks the
   web portal over HTTP from the host and publishes, lists and screens a policy through
   the policy-fund service, and publishes a bank's product on the marketplace
   (clients/containers_services.py);
5. kills one node container: the next score names the node (NODE_UNAVAILABLE); starts
   it again and scores; crashes it (SIGKILL of its process) and waits for the restart
   policy to bring it back;
6. restarts the platform containers and checks that nothing was lost (the ledger is a
   consistent extension of the checkpoint before, the revoked consent stays revoked,
   the fund's decisions and the active model are still there, the portal answers, the
   policy and its awards and the bank's product remain);
7. brings everything down and removes the volumes (unless ``--keep``).

A failed step exits 1 naming the step; each container's last log lines are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tomli_w
from rich.console import Console

from fedcredit.clients.compose import (
    IMAGE,
    POSTGRES_IMAGE,
    Layout,
    all_services,
    compose_config,
    compose_organisations,
    node_service,
    write_compose,
)
from fedcredit.clients.demo_stage import Demo, DemoFailed
from fedcredit.common import pki
from fedcredit.common.config import load_config
from fedcredit.common.departments import DEPARTMENTS
from fedcredit.common.deploy import free_port_base

PROJECT = "fedcredit-test"
CONTAINER_UID = 10001  # the image's non-root user (Dockerfile)
DOCKER = os.environ.get("DOCKER") or (
    "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
)
COMPOSE = os.environ.get("COMPOSE", "docker-compose").split()
PLATFORM = ["postgres", "ledger", "consent", "coordinator", "policies", "market", "portal"]


class Cluster:
    """The test federation's compose project under ``dir``."""

    def __init__(self, dir: Path, banks: list[str], console: Console) -> None:
        self.dir = dir
        self.banks = banks
        self.console = console
        self.layout: Layout | None = None
        self.healthy_after: dict[str, float] = {}
        self.load_when_up: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def compose_run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = [*COMPOSE, "-p", PROJECT, "-f", str(self.dir / "docker-compose.yml"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        res = self.compose_run(*args, timeout=timeout)
        cmd = [*COMPOSE, "-p", PROJECT, "-f", str(self.dir / "docker-compose.yml"), *args]
        if check and res.returncode != 0:
            raise DemoFailed(f"compose {args[0]}", f"`{' '.join(cmd[-len(args) - 4:])}` exited "
                             f"{res.returncode}: {(res.stderr or res.stdout).strip()[-1500:]}")  # fmt: skip
        return res.stdout

    def states(self) -> dict[str, dict[str, Any]]:
        """`docker inspect` of every container of the project, by compose service (one
        `docker ps` and one `docker inspect`: cheap enough to poll)."""
        ps = subprocess.run(
            [DOCKER, "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        ids = ps.stdout.split()
        if not ids:
            return {}
        out = subprocess.run([DOCKER, "inspect", *ids], capture_output=True, text=True)
        if out.returncode != 0:  # a one-off container went away between the two calls
            return {}
        return {
            c["Config"]["Labels"].get("com.docker.compose.service", c["Name"]): c
            for c in json.loads(out.stdout)
            if c["Config"]["Labels"].get("com.docker.compose.oneoff") != "True"
        }

    def inspect(self, service: str) -> dict[str, Any]:
        return self.states().get(service, {})

    def health(self, service: str) -> str:
        return _health(self.inspect(service))

    def wait_healthy(
        self, services: list[str], timeout: float, what: str, abort: Future[None] | None = None
    ) -> None:
        """Until every service is healthy; the first time records seconds from the
        container's start (polled every 0.5 s, while compose may still be starting them:
        ``abort``, the job starting them, ends the wait early when it failed)."""
        t0 = time.monotonic()
        pending = set(services)
        while pending:
            if abort is not None and abort.done() and abort.exception() is not None:
                abort.result()  # raises the failure of `compose up`
            states = self.states()
            for s in sorted(pending):
                if _health(states.get(s, {})) == "healthy":
                    self.healthy_after.setdefault(s, _since(states[s]["State"]["StartedAt"]))
                    pending.discard(s)
            if pending and time.monotonic() - t0 > timeout:
                left = {s: _health(states.get(s, {})) for s in sorted(pending)}
                raise DemoFailed(what, f"not healthy after {timeout:.0f} s: {left}")
            time.sleep(0.5)

    def logs_tail(self, lines: int = 15) -> None:
        out = subprocess.run([*COMPOSE, "-p", PROJECT, "-f", str(self.dir / "docker-compose.yml"),
                              "logs", "--no-color", "--tail", str(lines)],
                             capture_output=True, text=True, cwd=self.dir, timeout=120)  # fmt: skip
        self.console.print(out.stdout[-12000:], markup=False, highlight=False)

    def down(self) -> None:
        if (self.dir / "docker-compose.yml").exists():
            self.compose("down", "-v", "--remove-orphans", "-t", "20", check=False)


def _health(state: dict[str, Any]) -> str:
    st = state.get("State", {})
    return str((st.get("Health") or {}).get("Status") or st.get("Status") or "missing")


def _since(docker_time: str) -> float:
    """Seconds from a container's StartedAt (RFC 3339, nanoseconds) until now."""
    from datetime import UTC, datetime

    head, _, frac = docker_time.rstrip("Z").partition(".")
    started = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp() + float(f"0.{frac or 0}")
    return round(time.time() - started, 1)


def prepare(cluster: Cluster) -> Path:
    """The loopback compose files, the PKI as secrets, the host-side deployment file."""
    d = cluster.dir
    if d.exists():
        cluster.down()
        shutil.rmtree(d)
    d.mkdir(parents=True)
    layout = Layout(loopback_base=free_port_base(40), banks=tuple(cluster.banks))
    cluster.layout = layout
    write_compose(d, layout)
    orgs = compose_organisations(layout)
    pki.init_pki(d / "pki", orgs)
    sec = d / "secrets"
    (sec / "orgs").mkdir(parents=True)
    shutil.copy(d / "pki" / "ca.pem", sec / "ca.pem")
    certs = d / "deploy" / "certs" / "orgs"  # public: every container sees them all
    certs.mkdir(parents=True)
    for org, _ in orgs:
        for ext in ("pem", "key"):
            shutil.copy(d / "pki" / "orgs" / f"{org}.{ext}", sec / "orgs" / f"{org}.{ext}")
        shutil.copy(d / "pki" / "orgs" / f"{org}.pem", certs / f"{org}.pem")
    from fedcredit.training.run.deployment import write_supernode_keys

    (sec / "supernode").mkdir()
    for b in cluster.banks:
        write_supernode_keys(sec / "supernode", b)
    # Compose mounts file secrets as they are on disk (no uid/mode outside swarm): the
    # containers' user must be able to read its own; keys/ is written by the services.
    (d / "deploy" / "keys").mkdir()
    for p in [sec, *sec.rglob("*"), d / "deploy", *(d / "deploy").rglob("*")]:
        os.chown(p, CONTAINER_UID, CONTAINER_UID)
    host = compose_config(layout)
    host["deployment"]["pki"] = str(d / "pki")
    host["organisations"] = [{"id": o, "role": r} for o, r in orgs]
    (d / "deploy" / "host.toml").write_text(tomli_w.dumps(host))
    return d / "deploy" / "host.toml"


def load_nodes(cluster: Cluster, world: Path) -> None:
    """Each department loads its records into its node's own volume, in that node's image."""

    def load(dept: str) -> None:
        cluster.compose("run", "--rm", "--no-deps", "-v", f"{world}:/world:ro", node_service(dept),
                        "node", "load", "--department", dept, "--from", "/world",
                        "--config", "/etc/fedcredit/deployment.toml", "--json")  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(load, [d.id for d in DEPARTMENTS]))


def up(cluster: Cluster) -> None:
    """Everything but the SuperNodes, health-gated: compose starts each service when its
    dependencies are healthy, while this polls when each becomes healthy."""
    assert cluster.layout is not None
    services = [s for s in all_services(cluster.layout) if not s.startswith("supernode-")]
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(_up_gated, cluster, services, time.monotonic() + 600)
        try:
            cluster.wait_healthy(services, 600, "federation up", abort=job)
        finally:
            job.result()


def _up_gated(cluster: Cluster, services: list[str], deadline: float) -> None:
    """`compose up -d` until every service is created. docker-compose 1.29 gives up on a
    service whose dependency is *unhealthy* at that moment, and on a loaded machine a
    dependency can be, for a while (three health probes in a row that ran past their
    30 s timeout at a load average of 50 on 2 cores): it becomes healthy again, or the
    restart policy restarts it, so `up` is asked again. `up` is idempotent: what runs stays."""
    while True:
        res = cluster.compose_run("up", "-d", "--no-build", *services, timeout=900)
        if res.returncode == 0:
            return
        out = (res.stderr or res.stdout).strip()
        if "is unhealthy" not in out or time.monotonic() > deadline:
            raise DemoFailed(
                "compose up", f"`compose up -d` exited {res.returncode}: {out[-1500:]}"
            )
        cluster.console.print(
            f"compose up: a dependency was unhealthy ({out.splitlines()[-2:]}); again"
        )
        time.sleep(5.0)


def start_supernodes(cluster: Cluster) -> None:
    """The operator registers each bank's SuperNode key at the SuperLink (`flwr supernode
    register`: only registered SuperNodes may connect), then the banks' SuperNodes start."""
    from fedcredit.clients.compose import superlink_address

    assert cluster.layout is not None
    home = cluster.dir / "flwr-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "compose-test"\n\n[superlink.compose-test]\n'
        f'address = "{superlink_address(cluster.layout)}"\n'
        f'root-certificates = "{cluster.dir / "pki" / "ca.pem"}"\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0"}
    flwr = str(Path(sys.executable).parent / "flwr")
    for b in cluster.banks:
        pub = cluster.dir / "secrets" / "supernode" / f"{b}.pub"
        res = subprocess.run([flwr, "supernode", "register", str(pub), "compose-test", "--name", b],
                             capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        if res.returncode != 0:
            raise DemoFailed("supernodes", f"`flwr supernode register` for {b} failed: "
                             f"{(res.stdout + res.stderr).strip()[-600:]}")  # fmt: skip
    names = [f"supernode-{b}" for b in cluster.banks]
    _up_gated(cluster, names, time.monotonic() + 300)
    cluster.wait_healthy(names, 300, "supernodes up")


def generate_world(cluster: Cluster, enterprises: int, seed: int) -> Path:
    from fedcredit.world.generate import generate

    world = cluster.dir / "world"
    generate(world, enterprises=enterprises, banks=len(cluster.banks), months=36, seed=seed)
    for p in [world, *world.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o044 | (0o011 if p.is_dir() else 0))
    # The operator's training reads the banks' loan books from <deployment dir>/world on
    # this machine; a relative link, so inside the containers (which mount deploy/) it
    # leads nowhere: no service sees the city's files.
    (cluster.dir / "deploy" / "world").symlink_to("../world")
    # The policy-fund service screens the enterprises of the public registry (codes and
    # registry attributes only): the operator hands it the registry file.
    registry = cluster.dir / "deploy" / "registry.csv"
    shutil.copy(world / "enterprises.csv", registry)
    os.chown(registry, CONTAINER_UID, CONTAINER_UID)
    with (cluster.dir / "deploy" / "deployment.toml").open("a", encoding="utf-8") as f:
        f.write('\n[policies]\nregistry = "registry.csv"\n')
    return world


def demo_for(cluster: Cluster, config: Path, args: argparse.Namespace, console: Console) -> Demo:
    demo = Demo(cluster.dir, args.enterprises, len(cluster.banks), args.seed, console,
                engine="deployment", trees=args.trees)  # fmt: skip
    demo.dep = load_config(config)
    return demo


def image_sizes() -> dict[str, int]:
    out = {}
    for image in (IMAGE, POSTGRES_IMAGE, "fedcredit-base:latest"):
        res = subprocess.run([DOCKER, "image", "inspect", "-f", "{{.Size}}", image],
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode == 0:
            out[image] = int(res.stdout.strip())
    return out


def start_floor() -> float:
    """Seconds for `docker run` of the image to start Python, import the CLI and exit: the
    floor under every service's start-to-healthy (median of 3)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "python3", IMAGE,
                        "-c", "import fedcredit.clients.cli"], check=True, capture_output=True)  # fmt: skip
        times.append(time.perf_counter() - t0)
    return round(sorted(times)[1], 2)


def kill_hard(cluster: Cluster, service: str) -> int:
    """SIGKILL the container's process (a crash, not a stop); its restart count before."""
    st = cluster.inspect(service)
    os.kill(int(st["State"]["Pid"]), signal.SIGKILL)
    return int(st.get("RestartCount", 0))
