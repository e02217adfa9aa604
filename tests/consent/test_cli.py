"""The consent commands against a running service of a local deployment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.common import pki
from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment
from fedcredit.consent.cli import build_authority
from fedcredit.consent.service import serve, stop
from tests.consent.conftest import BANK, enterprise_code

runner = CliRunner()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("dep")
    cfg = write_local_deployment(d, bank_count=2)
    with cfg.open("a") as f:
        f.write('\n[consent]\nevidence = "store"\n')
    dep = load_config(cfg)
    for n in (21, 22):
        pki.issue(dep.pki_dir, enterprise_code(n), "enterprise")
    authority = build_authority(dep)
    s = dep.service("consent")
    server, _ = serve(authority, address=s.address, tls=dep.tls(s.org_id))
    yield cfg
    stop(server, authority)


def run(*args: str) -> tuple[int, Any, str]:
    app = build_app()
    result = runner.invoke(app, list(args))
    out = result.stdout
    try:
        data = json.loads(out) if "--json" in args else out
    except json.JSONDecodeError:
        data = out
    return result.exit_code, data, result.stderr if result.stderr_bytes is not None else ""


def as_ent(cfg: str, ent: str, *args: str) -> tuple[int, Any, str]:
    """``fedcredit enterprise consent <args> --as ent --json``."""
    return run("enterprise", "consent", *args, "--config", cfg, "--as", ent, "--json")


def as_bank(cfg: str, *args: str) -> tuple[int, Any, str]:
    """``fedcredit bank consent <args> --bank BANK --json``."""
    return run("bank", "consent", *args, "--config", cfg, "--bank", BANK, "--json")


def test_enterprise_and_bank_commands(deployment: Path, tmp_path: Path) -> None:
    cfg, ent = str(deployment), enterprise_code(21)
    code, g, _ = as_ent(
        cfg, ent, "grant", "--bank", BANK, "--purpose", "credit_assessment",
        "--scope", "judicial", "--scope", "trade", "--days", "10", "--uses", "2",
    )  # fmt: skip
    assert code == 0, g
    cid = g["consent_id"]
    assert g["state"] == "ACTIVE" and g["scope"] == ["judicial", "trade"]

    code, listed, _ = as_bank(cfg, "list")
    assert code == 0 and cid in [c["consent_id"] for c in listed]
    # Granted for 10 days: due within 11, not within 9.
    code, soon, _ = as_bank(cfg, "list", "--expiring-within", "11")
    assert cid in [c["consent_id"] for c in soon]
    code, later, _ = as_bank(cfg, "list", "--expiring-within", "9")
    assert code == 0 and cid not in [c["consent_id"] for c in later]

    out = tmp_path / "token.jwt"
    code, tok, _ = as_bank(cfg, "token", cid, "--out", str(out))
    assert code == 0 and out.read_text().strip() == tok["token"] and tok["token"].count(".") == 2

    for action, state in (("pause", "PAUSED"), ("resume", "ACTIVE")):
        code, v, _ = as_ent(cfg, ent, action, cid)
        assert code == 0 and v["state"] == state

    code, n, _ = as_ent(cfg, ent, "narrow", cid, "--remove-category", "trade")
    assert code == 0 and n["revoked"]["state"] == "REVOKED"
    assert n["replacement"]["scope"] == ["judicial"]
    new_id = n["replacement"]["consent_id"]

    code, v, _ = as_ent(cfg, ent, "revoke", new_id, "--reason", "done")
    assert code == 0 and v["state"] == "REVOKED"
    code, mine, _ = as_ent(cfg, ent, "list", "--state", "revoked")
    assert {cid, new_id} <= {c["consent_id"] for c in mine}
    assert all(c["state"] == "REVOKED" for c in mine)

    # Human output is a table.
    code, text, _ = run("enterprise", "consent", "list", "--config", cfg, "--as", ent)
    assert code == 0 and "consents of" in text and "┏" in text  # a rich table


def test_request_approve_and_reject(deployment: Path) -> None:
    cfg, ent = str(deployment), enterprise_code(22)
    ask = ("request", "--enterprise", ent, "--purpose", "guarantee", "--score-only")
    code, r1, _ = as_bank(cfg, *ask)
    assert code == 0 and r1["state"] == "PENDING"
    code, v, _ = as_ent(cfg, ent, "approve", r1["consent_id"])
    assert code == 0 and v["state"] == "ACTIVE"
    code, r2, _ = as_bank(cfg, *ask)
    assert code == 0 and r2["state"] == "PENDING"
    code, v, _ = as_ent(cfg, ent, "reject", r2["consent_id"])
    assert code == 0 and v["state"] == "REJECTED"
    code, mine, _ = as_ent(cfg, ent, "list")
    states = {c["consent_id"]: c["state"] for c in mine}
    assert states[r1["consent_id"]] == "ACTIVE" and states[r2["consent_id"]] == "REJECTED"


def test_errors_are_one_line_with_reason_and_exit_code(deployment: Path) -> None:
    cfg, a, b = str(deployment), enterprise_code(21), enterprise_code(22)
    code, g, _ = run(
        "enterprise",
        "consent",
        "grant",
        "--config",
        cfg,
        "--as",
        a,
        "--bank",
        BANK,
        "--purpose",
        "credit_assessment",
        "--score-only",
        "--json",
    )
    assert code == 0
    result = runner.invoke(
        build_app(),
        ["enterprise", "consent", "revoke", g["consent_id"], "--config", cfg, "--as", b],
    )
    assert result.exit_code == 4  # NOT_FOUND: another's consent looks like no consent at all
    assert "error: CONSENT_NOT_FOUND:" in result.stderr and "Traceback" not in result.stderr
    assert a not in result.stderr
    result = runner.invoke(
        build_app(),
        [
            "enterprise",
            "consent",
            "grant",
            "--config",
            cfg,
            "--as",
            a,
            "--bank",
            BANK,
            "--purpose",
            "credit_assessment",
            "--score-only",
            "--days",
            "45",
        ],
    )
    assert result.exit_code == 3 and "error: CONSENT_VALIDITY_CAP_EXCEEDED:" in result.stderr
    assert "at most 30 days" in " ".join(result.stderr.split())


def test_rotate_keys(deployment: Path) -> None:
    code, r, _ = run("consent", "rotate-keys", "--config", str(deployment), "--json")
    assert code == 0, r
    states = {k["kid"]: k["state"] for k in r["keys"]}
    assert states[r["kid"]] == "next"  # published before it signs
    assert r["signing_now"] != r["kid"]
    code, r2, _ = run(
        "consent", "rotate-keys", "--config", str(deployment), "--immediate", "--json"
    )
    assert code == 0 and r2["signing_now"] == r2["kid"]


def test_rotate_compromised(deployment: Path) -> None:
    """`consent rotate --compromised`: a new key signs at once; the old ones are withdrawn."""
    code, r, _ = run("consent", "rotate", "--config", str(deployment), "--compromised", "--json")
    assert code == 0, r
    states = {k["kid"]: k["state"] for k in r["keys"]}
    assert r["signing_now"] == r["kid"] and states[r["kid"]] == "active"
    assert r["retired"] and all(states[k["kid"]] == "compromised" for k in r["retired"])
