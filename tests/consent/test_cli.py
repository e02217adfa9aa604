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


def test_enterprise_and_bank_commands(deployment: Path, tmp_path: Path) -> None:
    cfg, ent = str(deployment), enterprise_code(21)
    code, g, _ = run(
        "enterprise",
        "consent",
        "grant",
        "--config",
        cfg,
        "--as",
        ent,
        "--bank",
        BANK,
        "--purpose",
        "credit_assessment",
        "--scope",
        "judicial",
        "--scope",
        "trade",
        "--days",
        "10",
        "--uses",
        "2",
        "--json",
    )
    assert code == 0, g
    cid = g["consent_id"]
    assert g["state"] == "ACTIVE" and g["scope"] == ["judicial", "trade"]

    code, listed, _ = run("bank", "consent", "list", "--config", cfg, "--bank", BANK, "--json")
    assert code == 0 and [c["consent_id"] for c in listed] == [cid]
    code, soon, _ = run(
        "bank",
        "consent",
        "list",
        "--config",
        cfg,
        "--bank",
        BANK,
        "--expiring-within",
        "11",
        "--json",
    )
    assert [c["consent_id"] for c in soon] == [cid]

    out = tmp_path / "token.jwt"
    code, tok, _ = run(
        "bank",
        "consent",
        "token",
        cid,
        "--config",
        cfg,
        "--bank",
        BANK,
        "--out",
        str(out),
        "--json",
    )
    assert code == 0 and out.read_text().strip() == tok["token"] and tok["token"].count(".") == 2

    for action, state in (("pause", "PAUSED"), ("resume", "ACTIVE")):
        code, v, _ = run(
            "enterprise", "consent", action, cid, "--config", cfg, "--as", ent, "--json"
        )
        assert code == 0 and v["state"] == state

    code, n, _ = run(
        "enterprise",
        "consent",
        "narrow",
        cid,
        "--config",
        cfg,
        "--as",
        ent,
        "--remove-category",
        "trade",
        "--json",
    )
    assert (
        code == 0
        and n["revoked"]["state"] == "REVOKED"
        and n["replacement"]["scope"] == ["judicial"]
    )
    new_id = n["replacement"]["consent_id"]

    code, v, _ = run(
        "enterprise",
        "consent",
        "revoke",
        new_id,
        "--config",
        cfg,
        "--as",
        ent,
        "--reason",
        "done",
        "--json",
    )
    assert code == 0 and v["state"] == "REVOKED"
    code, mine, _ = run(
        "enterprise",
        "consent",
        "list",
        "--config",
        cfg,
        "--as",
        ent,
        "--state",
        "revoked",
        "--json",
    )
    assert {c["consent_id"] for c in mine} == {cid, new_id}

    # Request, approve; request, reject.
    code, r1, _ = run(
        "bank",
        "consent",
        "request",
        "--config",
        cfg,
        "--bank",
        BANK,
        "--enterprise",
        ent,
        "--purpose",
        "guarantee",
        "--score-only",
        "--json",
    )
    assert code == 0 and r1["state"] == "PENDING"
    code, v, _ = run(
        "enterprise", "consent", "approve", r1["consent_id"], "--config", cfg, "--as", ent, "--json"
    )
    assert v["state"] == "ACTIVE"
    code, r2, _ = run(
        "bank",
        "consent",
        "request",
        "--config",
        cfg,
        "--bank",
        BANK,
        "--enterprise",
        ent,
        "--purpose",
        "guarantee",
        "--score-only",
        "--json",
    )
    code, v, _ = run(
        "enterprise", "consent", "reject", r2["consent_id"], "--config", cfg, "--as", ent, "--json"
    )
    assert v["state"] == "REJECTED"

    # Human output is a table.
    code, text, _ = run("enterprise", "consent", "list", "--config", cfg, "--as", ent)
    assert code == 0 and "consents of" in text and "┏" in text  # a rich table


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
