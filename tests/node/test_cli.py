"""`fedcredit node ...` commands: tables or --json, precise errors without stack traces."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedcredit.clients.cli import build_app


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(build_app(), list(args))
    return r.exit_code, r.stdout, r.stderr


def test_catalog_json_lists_66_features() -> None:
    code, out, _ = run("node", "catalog", "--json")
    assert code == 0
    feats = json.loads(out)
    assert len(feats) == 66 and {f["category"] for f in feats} >= {"judicial", "operations_tax"}
    code, out, _ = run("department", "catalog", "--department", "courts", "--json")
    assert code == 0 and len(json.loads(out)) == 7


def test_load_status_and_errors(tmp_path: Path, small_world: Path) -> None:
    db = f"sqlite:///{tmp_path / 'n.sqlite'}"
    code, out, _ = run(
        "node",
        "load",
        "--department",
        "customs",
        "--from",
        str(small_world),
        "--database",
        db,
        "--json",
    )
    assert code == 0 and json.loads(out)["data_version"] == 1
    code, out, _ = run("node", "status", "--department", "customs", "--database", db, "--json")
    assert code == 0 and json.loads(out) == {
        "department": "customs",
        "as_of": "2025-12",
        "data_version": 1,
    }
    code, _, err = run("node", "load", "--department", "customs", "--from", str(small_world))
    assert code == 3 and "error: DATABASE_REQUIRED:" in err and "Traceback" not in err
    code, _, err = run(
        "node", "load", "--department", "weather", "--from", str(small_world), "--database", db
    )
    assert code == 3 and "error: UNKNOWN_DEPARTMENT: unknown department 'weather'" in err
    code, _, err = run(
        "node", "load", "--department", "tax", "--from", str(tmp_path), "--database", db
    )
    assert code == 4 and "error: RAW_DATA_NOT_FOUND:" in err
