"""The coordinator's CLI commands against a running coordinator (typer's CliRunner, real gRPC)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.common.errors import FedcreditError

from .conftest import BANK, City, ConsentEnv, Coord, start_coordinator, stop_coordinator


@pytest.fixture(scope="module")
def coord(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Coord]:
    c = start_coordinator(
        pki=pki, consent_env=consent_env, city=city, tmp=tmp_path_factory.mktemp("coord")
    )
    yield c
    stop_coordinator(c)


@pytest.fixture(scope="module")
def config(pki: Any, coord: Coord, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    path = d / "deployment.toml"
    path.write_text(
        f"""
[deployment]
name = "cli-test"
pki = "{pki.dir}"

[[organisations]]
id = "coordinator"
role = "coordinator"

[[organisations]]
id = "operator"
role = "operator"

[[organisations]]
id = "{BANK}"
role = "bank"

[services.coordinator]
org = "coordinator"
address = "{coord.target}"
database = "sqlite:///unused.sqlite"
"""
    )
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(build_app(), list(args))


def test_bank_score_json_and_table(
    config: Path, consent_env: ConsentEnv, city: City, tmp_path: Path
) -> None:
    code = city.codes[200]
    _, token = consent_env.grant(code)
    tok = tmp_path / "consent.jwt"
    tok.write_text(token)
    res = run(
        "bank",
        "score",
        "--config",
        str(config),
        "--bank",
        BANK,
        "--enterprise",
        code,
        "--consent",
        str(tok),
        "--json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["enterprise"] == code and data["rating"] in "ABCD" and data["ledger_index"] >= 0
    res = run(
        "bank",
        "score",
        "--config",
        str(config),
        "--bank",
        BANK,
        "--enterprise",
        code,
        "--consent",
        str(tok),
    )
    assert res.exit_code == 0 and "Score for" in res.output


def test_bank_score_refused_prints_reason_and_exit_code(
    config: Path, consent_env: ConsentEnv, city: City, tmp_path: Path
) -> None:
    code = city.codes[201]
    cid, token = consent_env.grant(code)
    consent_env.authority.revoke(consent_env.enterprise(code), cid)
    tok = tmp_path / "consent.jwt"
    tok.write_text(token)
    import time

    time.sleep(1.0)  # the pushed revocation reaches the coordinator's verifier
    res = run(
        "bank",
        "score",
        "--config",
        str(config),
        "--bank",
        BANK,
        "--enterprise",
        code,
        "--consent",
        str(tok),
    )
    assert res.exit_code == 6, res.output  # PERMISSION_DENIED
    assert "error: CONSENT_REVOKED:" in res.output and "Traceback" not in res.output


def test_score_batch_guarantee_fund_and_models(
    config: Path, consent_env: ConsentEnv, city: City, tmp_path: Path
) -> None:
    rows = ["enterprise,token,request_id"]
    for k, code in enumerate(city.codes[210:215]):
        _, token = consent_env.grant(code)
        rows.append(f"{code},{token},q{k}")
    inp = tmp_path / "batch.csv"
    inp.write_text("\n".join(rows) + "\n")
    res = run(
        "bank",
        "score-batch",
        "--config",
        str(config),
        "--bank",
        BANK,
        "--input",
        str(inp),
        "--json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [r["request_id"] for r in data["results"]] == [f"q{k}" for k in range(5)]

    code = city.codes[220]
    _, token = consent_env.grant(code, purpose="guarantee")
    tok = tmp_path / "g.jwt"
    tok.write_text(token)
    args = ["bank", "guarantee", "apply", "--config", str(config), "--bank", BANK, "--application-id", "cli-1",
            "--enterprise", code, "--consent", str(tok), "--amount", "300000", "--term", "12", "--collateral", "300000", "--json"]  # fmt: skip
    res = run(*args)
    assert res.exit_code == 0, res.output
    first = json.loads(res.output)
    again = json.loads(run(*args).output)
    assert again["replayed"] and again["ledger_index"] == first["ledger_index"]

    res = run("fund", "status", "--config", str(config), "--org", "operator", "--json")
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    assert (
        st["fund_size_yuan"] == 200_000_000 and st["policy"]["rules"]["A"]["fund_share_bp"] == 8000
    )

    res = run("model", "list", "--config", str(config), "--org", "operator", "--json")
    assert res.exit_code == 0 and json.loads(res.output)[0]["version"] == "test-v1"
    res = run("model", "show", "--config", str(config), "--org", "operator", "--json")
    assert json.loads(res.output)["active"] is True
    res = run("model", "activate", "--config", str(config), "--org", BANK, "--version", "test-v1")
    assert res.exit_code == 6 and "ROLE_NOT_ALLOWED" in res.output


def test_private_model_epsilon_delta_in_registry_ledger_and_model_show(
    pki: Any, config: Path, coord: Coord, city: City
) -> None:
    """Issue 15: a private run's (epsilon, delta) is kept with the version, written into its
    model_published entry and shown by `fedcredit model show` (table and --json); a model
    without noise says so; a privacy that cannot be read is refused and ledgers nothing."""
    from fedcredit.coordinator.client import CoordinatorClient

    text = city.model_text.replace("[learning_rate: 0.1]", "[learning_rate: 0.1]  ")
    privacy = {"epsilon": 3.9, "delta": 1e-6, "noise_multiplier": 9.9, "releases": 21}
    before = len(coord.ledger.entries())
    with CoordinatorClient(coord.target, pki.tls("operator"), timeout=20) as op:
        for bad, why in (
            ({"epsilon": 0.0, "delta": 1e-6}, "0 < epsilon"),
            ({"epsilon": 4.0, "delta": 1.5}, "delta < 1"),
            ({"epsilon": 4.0, "delta": 1e-6, "epsilon_if_one_bank_colludes": math.inf}, "finite"),
        ):
            with pytest.raises(FedcreditError) as refused:
                op.publish(text, calibration_pds=list(city.pds), version="dp-bad", privacy=bad)
            assert refused.value.reason == "INVALID_MODEL" and why in refused.value.message
        assert len(coord.ledger.entries()) == before  # nothing ledgered for a refusal
        mv = op.publish(text, calibration_pds=list(city.pds), version="dp-v1", privacy=privacy)
    assert (mv.privacy.epsilon, mv.privacy.delta) == (3.9, 1e-6)
    entry = coord.ledger.entries("model_published")[-1]
    assert entry.index == mv.publish_ledger_index and entry.payload["version"] == "dp-v1"
    assert entry.payload["privacy"] == privacy

    args = ("model", "show", "--config", str(config), "--org", "operator", "--version")
    res = run(*args, "dp-v1", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["privacy"] == privacy
    res = run(*args, "dp-v1")
    assert res.exit_code == 0 and "epsilon 3.9, delta 1e-06 per training run" in res.output
    res = run(*args, "test-v1", "--json")
    assert json.loads(res.output)["privacy"] is None
    assert "trained without differential privacy" in run(*args, "test-v1").output
    listed = json.loads(
        run("model", "list", "--config", str(config), "--org", "operator", "--json").output
    )
    assert {m["version"]: m["privacy"] for m in listed}["dp-v1"] == privacy
