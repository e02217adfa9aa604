"""`fedcredit audit` offline commands: verify files with only public keys; failures exit 1 naming the problem."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.ledger.checkpoint import Signer
from fedcredit.ledger.export import Bundle
from fedcredit.ledger.log import Log
from fedcredit.ledger.settings import LogSettings

ORIGIN = "fedcredit.test/ledger"
runner = CliRunner()


def _files(tmp_path: Path) -> tuple[Signer, Path]:
    signer = Signer.generate(ORIGIN)
    log = Log.open(
        f"sqlite:///{tmp_path}/l.sqlite",
        signer,
        ORIGIN,
        actor="coordinator",
        settings=LogSettings(checkpoint_interval=3600),
    )
    log.append_many([("score_access", None, {"i": i}) for i in range(30)])
    first = log.checkpoint()
    (tmp_path / "old.note").write_text(log.checkpoint_note(first))
    log.append_many([("score_access", None, {"i": i}) for i in range(30, 45)])
    second = log.checkpoint()
    (tmp_path / "new.note").write_text(log.checkpoint_note(second))
    proof = log.consistency_proof(first.size, second.size)
    (tmp_path / "proof.json").write_text(json.dumps([base64.b64encode(h).decode() for h in proof]))
    e = log.get_entries(7, 8)[0]
    b = Bundle(
        7, second.size, e.data, log.inclusion_proof(7, second.size), log.checkpoint_note(second)
    )
    (tmp_path / "bundle.json").write_text(b.to_json())
    with open(tmp_path / "export.json", "w") as f:
        log.export(f)
    log.close()
    (tmp_path / "ledger.vkey").write_text(signer.verifier.vkey + "\n")
    return signer, tmp_path / "ledger.vkey"


def test_offline_audit_commands(tmp_path: Path) -> None:
    _, vkey = _files(tmp_path)
    app = build_app()
    r = runner.invoke(
        app,
        [
            "audit",
            "verify-inclusion",
            "--bundle",
            str(tmp_path / "bundle.json"),
            "--log-key",
            str(vkey),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["index"] == 7
    r = runner.invoke(
        app,
        ["audit", "verify-consistency", "--old", str(tmp_path / "old.note"), "--new", str(tmp_path / "new.note"),
         "--proof", str(tmp_path / "proof.json"), "--log-key", str(vkey), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["new_size"] == 45
    r = runner.invoke(
        app,
        [
            "audit",
            "replay",
            "--export",
            str(tmp_path / "export.json"),
            "--log-key",
            str(vkey),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["entries"] == 45


def test_failures_exit_1_with_reason(tmp_path: Path) -> None:
    _, vkey = _files(tmp_path)
    app = build_app()
    ex = json.loads((tmp_path / "export.json").read_text())
    ex["entries"][3] = ex["entries"][3].replace('"i":3', '"i":4')
    (tmp_path / "bad.json").write_text(json.dumps(ex))
    r = runner.invoke(
        app, ["audit", "replay", "--export", str(tmp_path / "bad.json"), "--log-key", str(vkey)]
    )
    assert r.exit_code == 1
    assert "LEDGER_CHAIN_BROKEN" in r.output and "entry 3 was altered" in r.output
    # old and new swapped: a rollback
    r = runner.invoke(
        app,
        ["audit", "verify-consistency", "--old", str(tmp_path / "new.note"), "--new", str(tmp_path / "old.note"),
         "--proof", str(tmp_path / "proof.json"), "--log-key", str(vkey)],
    )  # fmt: skip
    assert r.exit_code == 1 and "CHECKPOINT_ROLLBACK" in r.output
    other = Signer.generate(ORIGIN)
    r = runner.invoke(
        app,
        [
            "audit",
            "verify-inclusion",
            "--bundle",
            str(tmp_path / "bundle.json"),
            "--log-key",
            other.verifier.vkey,
        ],
    )
    assert r.exit_code == 1 and "CHECKPOINT_UNKNOWN_KEY" in r.output
    r = runner.invoke(app, ["audit", "replay", "--export", str(tmp_path / "bad.json")])
    assert r.exit_code != 0 and "CONFIG_INVALID" in r.output and "Traceback" not in r.output
