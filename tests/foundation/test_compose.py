"""Compose files: the committed ones are the generator's output, every service runs a real
command, and the compose tool validates every file (the committed all-in-one and
per-organisation files, and the loopback file `make compose-test` runs).

The containers themselves run in `make compose-test` (clients/containers.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main

from fedcredit.clients.cli import build_app
from fedcredit.clients.compose import Layout, render_compose
from fedcredit.common.config import parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_committed_compose_files_are_current() -> None:
    files = render_compose()
    for rel, text in files.items():
        assert (ROOT / rel).read_text() == text, f"{rel}: run `fedcredit operator compose --out .`"
    committed = {str(p.relative_to(ROOT)) for p in (ROOT / "deploy/compose").glob("*.yml")}
    assert committed == {r for r in files if r.startswith("deploy/compose/")}


def _compose_files() -> list[Path]:
    return [ROOT / "docker-compose.yml", *sorted((ROOT / "deploy/compose").glob("*.yml"))]


def _load(path: Path) -> dict[str, object]:
    return dict(json.loads("\n".join(path.read_text().splitlines()[1:])))


def test_compose_deployment_file_parses() -> None:
    import tomllib

    dep = parse_config(
        tomllib.loads((ROOT / "deploy/deployment.toml").read_text()),
        ROOT / "deploy/deployment.toml",
    )
    assert len(dep.nodes) == 12 and len(dep.banks) == 7
    assert all(s.database.startswith("postgresql://") for s in dep.services.values())


def _command_paths() -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        out.add(path)
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))

    walk(typer.main.get_command(build_app()), ())
    return out


def _resolves(words: list[str], paths: set[tuple[str, ...]]) -> bool:
    for n in range(len(words), 0, -1):
        if tuple(words[:n]) in paths and (n == len(words) or words[n].startswith("-")):
            return True
    return False


def _check_service(name: str, svc: dict[str, object], paths: set[tuple[str, ...]],
                   helps: dict[str, str]) -> None:  # fmt: skip
    entry = svc.get("entrypoint")
    command = svc["command"]
    assert isinstance(command, list)
    if entry:  # Flower's own executables, shipped with the flwr dependency, under tini
        assert isinstance(entry, list) and entry[:2] == ["/usr/bin/tini", "--"], name
        exe_name = entry[2]
        assert exe_name in ("flower-superlink", "flower-supernode"), name
        exe = Path(sys.executable).parent / exe_name
        assert exe.exists(), f"{exe_name} is not installed next to {sys.executable}"
        if exe_name not in helps:  # one `--help` per executable: Flower's start-up is slow
            helps[exe_name] = subprocess.run(
                [str(exe), "--help"], capture_output=True, text=True
            ).stdout
        for flag in (w for w in command if w.startswith("--")):
            assert flag in helps[exe_name], f"{name}: {exe_name} has no option {flag}"
    else:
        assert _resolves(command, paths), (
            f"{name}: `fedcredit {' '.join(command)}` is not a command"
        )
    hc = svc["healthcheck"]["test"]  # type: ignore[index]
    assert hc[:2] == ["CMD", "fedcredit"] and _resolves(hc[2:], paths), (
        f"{name}: health check `{' '.join(hc[1:])}` is not a fedcredit command"
    )


def test_every_service_runs_a_command_that_exists(tmp_path: Path) -> None:
    """Every service of every compose file (the database aside) runs a `fedcredit` command
    or Flower's own executable with options it has, and is health-checked by a command."""
    paths = _command_paths()
    helps: dict[str, str] = {}
    loopback = tmp_path / "loopback.yml"
    loopback.write_text(render_compose(Layout(loopback_base=20000))["docker-compose.yml"])
    for path in [*_compose_files(), loopback]:
        compose = _load(path)
        services = compose["services"]
        assert isinstance(services, dict) and services, path
        for name, svc in services.items():
            if svc["image"].startswith("fedcredit-postgres"):
                continue
            _check_service(name, svc, paths, helps)
    everything = _load(ROOT / "docker-compose.yml")["services"]
    assert isinstance(everything, dict)
    # postgres, ledger, consent, coordinator, superlink, policies, market, portal,
    # 12 nodes, 7 supernodes
    assert len(everything) == 8 + 12 + 7
    platform = _load(ROOT / "deploy/compose/platform.yml")["services"]
    assert isinstance(platform, dict)
    assert {"policies", "market", "portal"} <= set(platform), sorted(platform)


def _compose_tool() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        if subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            return cmd
    return None


def test_compose_tool_validates_every_file(tmp_path: Path) -> None:
    tool = _compose_tool()
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have a compose tool (.ci/run installs Debian's docker-compose)")
        print("SKIP: neither `docker compose` nor `docker-compose` is installed here")
        pytest.skip("neither `docker compose` nor `docker-compose` is installed here")
    (tmp_path / "docker-compose.yml").write_text(
        render_compose(Layout(loopback_base=20000))["docker-compose.yml"]
    )
    for path in [*_compose_files(), tmp_path / "docker-compose.yml"]:
        res = subprocess.run(
            [*tool, "-f", str(path), "config", "-q"], capture_output=True, text=True,
            cwd=path.parent,
        )  # fmt: skip
        assert res.returncode == 0, f"{path}: {res.stderr}"


def test_platform_file_runs_the_portal_policies_and_market() -> None:
    """The portal, the policy-fund service and the marketplace in the platform's file as
    the other platform services are: own certificate and key as secrets, restart policy, a
    health check that probes them, a start gated on what they call being healthy; the
    policy and market stores on PostgreSQL (databases of their own, created by the
    PostgreSQL container on its first start)."""
    import tomllib

    platform = _load(ROOT / "deploy/compose/platform.yml")["services"]
    assert isinstance(platform, dict)
    for name, org, needs in (("policies", "policies", {"postgres", "ledger"}),
                             ("market", "market", {"postgres", "ledger", "coordinator"}),
                             ("portal", "portal", {"ledger", "consent", "market"})):  # fmt: skip
        svc = platform[name]
        assert {s["source"] for s in svc["secrets"]} == {"ca", f"{org}-cert", f"{org}-key"}
        assert svc["restart"] == "unless-stopped"
        probe = svc["healthcheck"]["test"]
        assert probe[2:4] == ["operator", "probe"] and probe[probe.index("--service") + 1] == name
        assert {
            k for k, v in svc["depends_on"].items() if v["condition"] == "service_healthy"
        } == needs
        assert "network_mode" not in svc  # the compose network, not the host's
    assert platform["portal"]["ports"] == ["8640:8640"]
    assert platform["market"]["ports"] == ["7105:7105"]
    assert {"policies", "market"} <= set(
        platform["postgres"]["environment"]["POSTGRES_DBS"].split()
    )
    dep = tomllib.loads((ROOT / "deploy/deployment.toml").read_text())
    for store in ("policies", "market"):
        assert dep["services"][store]["database"] == f"postgresql://fedcredit@postgres:5432/{store}"
    # Reachable from the compose network: HTTPS with the portal's certificate.
    # Its batch jobs in its own SQLite database, on a volume of its own (portal/jobstore.py).
    assert dep["portal"] == {"org": "portal", "address": "0.0.0.0:8640", "rp_id": "localhost",
                             "database": "sqlite:////data/portal.sqlite", "tls": True}  # fmt: skip
    assert "portal-data:/data" in platform["portal"]["volumes"]
    everything = _load(ROOT / "docker-compose.yml")["services"]
    assert isinstance(everything, dict)
    nodes = {n for n in everything if n.startswith("node-")}
    assert nodes <= set(everything["policies"]["depends_on"])  # screening asks every node


def test_loopback_layout_keeps_the_portal_on_loopback_http() -> None:
    import tomllib

    files = render_compose(Layout(loopback_base=20000))
    dep = tomllib.loads(files["deploy/deployment.toml"].split("\n", 1)[1])
    host, _, port = dep["portal"]["address"].rpartition(":")
    assert host == "127.0.0.1" and "tls" not in dep["portal"]
    assert dep["services"]["policies"]["address"].startswith("127.0.0.1:")
    assert dep["services"]["market"]["address"].startswith("127.0.0.1:")
    addresses = [s["address"] for s in dep["services"].values()] + [dep["portal"]["address"]]
    assert len(set(addresses)) == len(addresses)
    services = _load_text(files["docker-compose.yml"])["services"]
    assert all(s["network_mode"] == "host" for s in services.values())  # type: ignore[index]
    assert "--service" in services["portal"]["healthcheck"]["test"]  # type: ignore[index]
    assert 20000 <= int(port) < 20100


def _load_text(text: str) -> dict[str, object]:
    return dict(json.loads(text.split("\n", 1)[1]))


def _probe(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedcredit.clients.cli", "operator", "probe", "--config", str(cfg),
         "--service", "portal", "--as", "portal", "--json", "--timeout", "5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_probe_asks_the_portal_over_https(tmp_path: Path) -> None:
    """`fedcredit operator probe --service portal` (the portal container's health check)
    asks a real `fedcredit portal serve` for /healthz over HTTPS, checked against the CA:
    exit 0 while it serves, 1 once it is gone."""
    import time
    import tomllib

    import tomli_w

    from fedcredit.common.deploy import write_local_deployment

    cfg = write_local_deployment(tmp_path / "dep", name="probe", bank_count=1)
    data = tomllib.loads(cfg.read_text())
    data["portal"]["tls"] = True
    cfg.write_text(tomli_w.dumps(data))
    assert _probe(cfg).returncode == 1  # nothing listens yet
    log = (tmp_path / "portal.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedcredit.clients.cli", "portal", "serve", "--config", str(cfg)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while (res := _probe(cfg)).returncode != 0:
            assert proc.poll() is None, (tmp_path / "portal.log").read_text()
            assert time.monotonic() < deadline, res.stdout + res.stderr
            time.sleep(0.5)
        assert json.loads(res.stdout)["serving"] is True
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert _probe(cfg).returncode == 1


def _wait_probe(cfg: Path, service: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import time

    deadline = time.monotonic() + 90
    while True:
        res = subprocess.run(
            [sys.executable, "-m", "fedcredit.clients.cli", "operator", "probe", "--config",
             str(cfg), "--service", service, "--json", "--timeout", "5"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if res.returncode == 0:
            assert json.loads(res.stdout)["serving"] is True
            return
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, res.stdout + res.stderr
        time.sleep(0.5)


def test_market_serves_from_the_deployment_file(tmp_path: Path) -> None:
    """`fedcredit market serve --config` (the market container's command) runs from the
    deployment's [services.market] and answers the probe over mTLS; without --config or
    the flags it refuses in one line."""
    import tomllib

    import tomli_w

    from fedcredit.common import pki
    from fedcredit.common.deploy import free_port_base, write_local_deployment

    cfg = write_local_deployment(tmp_path / "dep", name="market", bank_count=1)
    pki.issue(cfg.parent / "pki", "market", "market")
    data = tomllib.loads(cfg.read_text())
    data["organisations"].append({"id": "market", "role": "market"})
    data["services"]["market"] = {"org": "market", "database": "sqlite:///data/market.sqlite",
                                  "address": f"127.0.0.1:{free_port_base(1)}"}  # fmt: skip
    cfg.write_text(tomli_w.dumps(data))
    bare = subprocess.run([sys.executable, "-m", "fedcredit.clients.cli", "market", "serve"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bare.returncode != 0 and bare.stderr.startswith("error: ")
    assert "expected --config, or --db, --pki, --ledger" in bare.stderr
    log = tmp_path / "market.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedcredit.clients.cli", "market", "serve", "--config",
             str(cfg)], stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_probe(cfg, "market", proc, log)
        finally:
            proc.terminate()
            proc.wait(30)
    assert (cfg.parent / "data" / "market.sqlite").exists()
