"""docker-compose: the committed file is the generator's output and runs only real commands.

This machine has no Docker engine, so the containers are never started here;
the compose file is validated with `docker compose config` when the client
and its compose plugin are installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main

from fedcredit.clients.cli import build_app
from fedcredit.clients.compose import render_compose
from fedcredit.common.config import parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_committed_compose_files_are_current() -> None:
    yml, toml = render_compose()
    assert (ROOT / "docker-compose.yml").read_text() == yml, (
        "run `fedcredit operator compose --out .`"
    )
    assert (ROOT / "deploy/deployment.toml").read_text() == toml, (
        "run `fedcredit operator compose --out .`"
    )


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


def test_every_service_runs_a_command_that_exists() -> None:
    compose = json.loads("\n".join((ROOT / "docker-compose.yml").read_text().splitlines()[1:]))
    paths = _command_paths()
    venv_bin = Path(sys.executable).parent
    checked = 0
    helps: dict[str, str] = {}
    for name, svc in compose["services"].items():
        if svc.get("image", "").startswith("postgres"):
            continue
        entry = svc.get("entrypoint")
        if entry:  # Flower's own executables, shipped with the flwr dependency
            assert entry[0] in ("flower-superlink", "flower-supernode"), name
            exe = venv_bin / entry[0]
            assert exe.exists(), f"{entry[0]} is not installed next to {sys.executable}"
            if entry[0] not in helps:  # one `--help` per executable: Flower's start-up is slow
                helps[entry[0]] = subprocess.run(
                    [str(exe), "--help"], capture_output=True, text=True
                ).stdout
            help_text = helps[entry[0]]
            for flag in (w for w in svc["command"] if w.startswith("--")):
                assert flag in help_text, f"{name}: {entry[0]} has no option {flag}"
        else:
            assert _resolves(svc["command"], paths), (
                f"{name}: `fedcredit {' '.join(svc['command'])}` is not a command"
            )
            hc = svc["healthcheck"]["test"][2:]
            assert _resolves(hc, paths), (
                f"{name}: health check `fedcredit {' '.join(hc)}` is not a command"
            )
        checked += 1
    assert (
        checked == 1 + 1 + 12 + 1 + 1 + 7
    )  # ledger, consent, nodes, coordinator, superlink, supernodes


def test_docker_compose_config_validates() -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed on this machine")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the docker client has no compose plugin here: {probe.stderr.strip()[:120]}")
    res = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
