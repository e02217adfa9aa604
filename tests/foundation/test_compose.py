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
    # postgres, ledger, consent, coordinator, superlink, 12 nodes, 7 supernodes
    assert len(everything) == 5 + 12 + 7


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
