"""`fedcredit policy ...` against a running policy service started by `fedcredit up`.

A local deployment with a registry from a small generated city; the ledger and the
policy service run as real processes (mTLS, the service's own ``policy`` certificate, its
``policy_*`` entries appended to the real ledger). Departments publish and review, the
operator screens and pays, enterprises list, decline and apply; every refusal is one line
with its documented exit code.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcredit.common import pki
from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.common.deploy import write_local_deployment
from fedcredit.world.generate import generate

pytestmark = pytest.mark.xdist_group("up-down")

AUTO = """id = "auto-young-firms"
title = "Start-up support"
department = "dept-tax"
mode = "automatic"
amount_yuan = 10000
budget_yuan = 10000000
opens = "2026-01-01"
closes = "2026-12-31"
rule = "registry.founded_year >= 1900"
decline_days = 7
"""

APPLY = """id = "apply-export"
title = "Export credit insurance"
department = "dept-customs"
mode = "application"
amount_yuan = 50000
budget_yuan = 1000000
opens = "2026-01-01"
closes = "2026-12-31"
rule = "registry.founded_year >= 1900"
reviewers = ["dept-customs", "dept-tax"]
fields = ["project"]
"""


def fc(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedcredit.clients.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    d = tmp_path_factory.mktemp("polcli")
    cfg = write_local_deployment(d / "dep", name="polcli", bank_count=1)
    generate(cfg.parent / "world", enterprises=40, seed=3)
    with cfg.open("a", encoding="utf-8") as f:
        f.write('\n[policies]\nregistry = "world/enterprises.csv"\n')
    with (cfg.parent / "world" / "enterprises.csv").open(encoding="utf-8") as f:
        codes = [r["code"] for r in csv.DictReader(f)]
    for code in codes[:2]:
        pki.issue(cfg.parent / "pki", code, "enterprise")
    try:
        up = fc("up", "--config", str(cfg), "--only", "ledger", "--only", "policies", "--json")
        assert up.returncode == 0, up.stdout + up.stderr
        rows = {r["service"]: r for r in json.loads(up.stdout)}
        assert rows["policies"]["healthy"] and rows["policies"]["org"] == "policies"
        yield cfg, codes
    finally:
        fc("down", "--config", str(cfg), "--json")


def pol(cfg: Path, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    return fc("policy", *args, "--config", str(cfg), "--as", who, "--json")


def test_automatic_policy_publish_screen_benefits_decline_pay(
    running: tuple[Path, list[str]], tmp_path: Path
) -> None:
    cfg, codes = running
    (tmp_path / "auto.toml").write_text(AUTO)
    res = pol(cfg, "dept-tax", "publish", str(tmp_path / "auto.toml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["clauses"][0]["evaluated_by"] == "platform"
    again = pol(cfg, "dept-tax", "publish", str(tmp_path / "auto.toml"))
    assert again.returncode == 5, again.stdout  # ALREADY_EXISTS

    listed = json.loads(pol(cfg, "dept-tax", "list", "--mode", "automatic").stdout)
    assert [p["id"] for p in listed] == ["auto-young-firms"]

    # Screening is the operator's (all policies) and a department's (its own); a bank is
    # refused with exit 6, one line.
    refused = fc("policy", "screen", "--today", "2026-06-01", "--config", str(cfg),
                 "--as", DEFAULT_BANKS[0])  # fmt: skip
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    run = pol(cfg, "operator", "screen", "--today", "2026-06-01", "--run-id", "r1")
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert summary["enterprises"] == len(codes)
    assert summary["notified"] == {"auto-young-firms": len(codes)}

    mine = json.loads(pol(cfg, codes[0], "benefits").stdout)
    assert [(a["policy_id"], a["enterprise"], a["state"]) for a in mine] == [
        ("auto-young-firms", codes[0], "notified")
    ]
    declined = pol(cfg, codes[0], "decline", "auto-young-firms")
    assert declined.returncode == 0 and json.loads(declined.stdout)["state"] == "declined"
    twice = pol(cfg, codes[0], "decline", "auto-young-firms")
    assert twice.returncode in (5, 8), twice.stdout
    assert json.loads(twice.stdout)["error"]["reason"]
    # Nothing is due before the decline window ends.
    pay = pol(cfg, "operator", "pay")
    assert pay.returncode == 0 and json.loads(pay.stdout) == {"paid": 0, "amount_yuan": 0}


def test_application_apply_review_show_and_errors(
    running: tuple[Path, list[str]], tmp_path: Path
) -> None:
    cfg, codes = running
    (tmp_path / "apply.toml").write_text(APPLY)
    assert pol(cfg, "dept-customs", "publish", str(tmp_path / "apply.toml")).returncode == 0
    (tmp_path / "plan.pdf").write_bytes(b"%PDF-1.4 plan")
    res = pol(cfg, codes[1], "apply", "apply-export", "--id", "app-1",
              "--field", "project=cold chain", "--attach", f"plan={tmp_path / 'plan.pdf'}")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    app = json.loads(res.stdout)
    assert app["state"] == "under_review" and set(app["parts"]) == {"dept-customs", "dept-tax"}
    assert len(app["attachments"]["plan"]) == 64  # its SHA-256, not its bytes

    assert pol(cfg, "dept-customs", "review", "app-1", "--approve").returncode == 0
    done = json.loads(pol(cfg, "dept-tax", "review", "app-1", "--approve").stdout)
    assert done["state"] == "notice"
    again = pol(cfg, "dept-tax", "review", "app-1", "--reject")
    assert again.returncode == 8, again.stdout  # an illegal step: FAILED_PRECONDITION
    # Another enterprise does not see it; its owner does.
    assert pol(cfg, codes[0], "show", "app-1").returncode == 4  # NOT_FOUND: not its own
    assert json.loads(pol(cfg, codes[1], "show", "app-1").stdout)["state"] == "notice"

    # The public notice: an objection, its dismissal by the operator, no early close.
    objected = pol(cfg, codes[0], "object", "app-1", "--reason", "the project already ended")
    assert objected.returncode == 0 and json.loads(objected.stdout)["state"] == "objected"
    assert pol(cfg, "dept-tax", "resolve", "app-1", "--dismissed").returncode == 6
    resolved = pol(cfg, "operator", "resolve", "app-1", "--dismissed")
    assert resolved.returncode == 0 and json.loads(resolved.stdout)["state"] == "notice"
    early = pol(cfg, "operator", "advance", "app-1", "close")
    assert early.returncode == 8, early.stdout  # the notice period has not passed
    assert pol(cfg, "operator", "advance", "app-1", "sideways").returncode == 3

    bad = fc("policy", "apply", "apply-export", "--id", "app-2", "--field", "nonsense",
             "--config", str(cfg), "--as", codes[1])  # fmt: skip
    assert bad.returncode == 3 and bad.stderr.count("\n") == 1, bad.stderr
    missing = pol(cfg, codes[1], "apply", "no-such-policy", "--id", "app-3")
    assert missing.returncode == 4, missing.stdout


def test_report_progress_refusals_through_the_cli(
    running: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """The self-evaluation commands: an enterprise not paid under the policy is refused (8),
    another role (6), bad input (3) and an unknown policy (4), each with its reason."""
    cfg, codes = running
    (tmp_path / "p.toml").write_text(AUTO.replace("auto-young-firms", "auto-progress"))
    assert pol(cfg, "dept-tax", "publish", str(tmp_path / "p.toml")).returncode == 0
    args = ("report-progress", "auto-progress", "--period", "2026-01", "--indicator")
    unfunded = pol(cfg, codes[0], *args, "employees=12")
    assert unfunded.returncode == 8, unfunded.stdout
    assert json.loads(unfunded.stdout)["error"]["reason"] == "NOT_FUNDED"
    assert pol(cfg, "operator", *args, "employees=12").returncode == 6
    for bad in ("employees=twelve", "profit_yuan=1", "employees=1.5", "employees"):
        res = pol(cfg, codes[0], *args, bad)
        assert res.returncode == 3, (bad, res.stdout)
        assert json.loads(res.stdout)["error"]["reason"] == "INVALID_POLICY"
    future = pol(cfg, codes[0], "report-progress", "auto-progress", "--period", "2999-01",
                 "--indicator", "employees=3")  # fmt: skip
    assert future.returncode == 3, future.stderr
    unknown = pol(cfg, codes[0], "report-progress", "nope", "--period", "2026-01",
                  "--indicator", "employees=3")  # fmt: skip
    assert unknown.returncode == 4, unknown.stderr
    mine = pol(cfg, codes[0], "progress")
    assert mine.returncode == 0 and json.loads(mine.stdout) == []
    assert pol(cfg, "operator", "progress").returncode == 3  # --policy is required
    listed = pol(cfg, "operator", "progress", "--policy", "auto-progress")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    # A tracking round with its report (the operator only).
    assert pol(cfg, "dept-tax", "track", "--round", "2026-06").returncode == 6
    assert pol(cfg, "operator", "track", "--round", "2026 06").returncode == 3
    tracked = pol(cfg, "operator", "track", "--round", "2026-06", "--report", str(tmp_path / "r"))
    assert tracked.returncode == 0, tracked.stdout + tracked.stderr
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["policy_id"] for r in json.loads(tracked.stdout)] == [
        r["policy"] for r in doc["policies"]
    ]


def test_every_service_command_has_help() -> None:
    for cmd in ("serve", "publish", "list", "screen", "pay", "benefits", "decline", "apply",
                "review", "show", "object", "resolve", "advance", "report-progress", "progress", "track"):  # fmt: skip
        res = fc("policy", cmd, "--help", timeout=60)
        assert res.returncode == 0 and "Usage" in res.stdout, (cmd, res.stderr)
