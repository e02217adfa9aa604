"""The committed generated code matches the .proto files; every CLI command has --help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from fedcredit.clients.cli import GROUPS, build_app

ROOT = Path(__file__).resolve().parents[2]


def test_generated_protobuf_code_is_not_stale(tmp_path: Path) -> None:
    protos = sorted((ROOT / "proto/fedcredit/v1").glob("*.proto"))
    assert protos, "no .proto files found"
    out = tmp_path / "gen"
    shutil.copytree(ROOT / "proto", out, ignore=shutil.ignore_patterns("*_pb2*", "__pycache__"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{out}",
        f"--python_out={out}", f"--grpc_python_out={out}", f"--mypy_out={out}", f"--mypy_grpc_out={out}",
        *[str(out / p.relative_to(ROOT / "proto")) for p in protos],
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"protoc failed:\n{res.stderr}"
    stale = []
    for gen in sorted((out / "fedcredit/v1").glob("*_pb2*")):
        committed = ROOT / "proto/fedcredit/v1" / gen.name
        if not committed.exists() or committed.read_bytes() != gen.read_bytes():
            stale.append(gen.name)
    for committed in (ROOT / "proto/fedcredit/v1").glob("*_pb2*"):
        if not (out / "fedcredit/v1" / committed.name).exists():
            stale.append(f"{committed.name} (no .proto generates it)")
    assert not stale, f"generated code is stale, run `make proto`: {stale}"


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            out += _commands(sub, (*path, name))
    return out


def test_help_lists_roles_and_services_and_every_command_has_help() -> None:
    app = build_app()
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for group in GROUPS:
        assert group in top.output
    paths = _commands(typer.main.get_command(app))
    assert len(paths) > len(GROUPS)
    for path in paths:
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, f"fedcredit {' '.join(path)} --help failed: {res.output}"
        assert "Usage" in res.output


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (
            [
                "pki",
                "issue",
                "--org",
                "91350100M000100Y44",
                "--role",
                "enterprise",
                "--dir",
                "/nonexistent",
            ],
            3,
            "INVALID_USCC",
        ),
        (
            ["pki", "issue", "--org", "bank-x", "--role", "bank", "--dir", "/nonexistent"],
            4,
            "PKI_NOT_FOUND",
        ),
        (
            ["pki", "issue", "--org", "bank x", "--role", "bank", "--dir", "/nonexistent"],
            3,
            "INVALID_ORG_ID",
        ),
    ],
)
def test_user_errors_exit_cleanly(args: list[str], code: int, fragment: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "fedcredit.clients.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == code, res.stderr
    assert fragment in res.stderr
    assert "Traceback" not in res.stderr
