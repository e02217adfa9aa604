"""`fedcredit ledger fsck` on a deployment's ledger database: 0 when it verifies, 1 naming
the first bad index when it does not (one line, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment
from fedcredit.ledger.keys import log_signer
from fedcredit.ledger.log import Log
from fedcredit.ledger.settings import LogSettings, load_settings
from fedcredit.ledger.store import SQLITE_TRIGGERS

runner = CliRunner()


def test_ledger_fsck_command(tmp_path: Path) -> None:
    config = write_local_deployment(tmp_path / "dep")
    with open(config, "a") as f:
        f.write("\n[ledger]\nwitnesses = []\n")
    dep = load_config(config)
    settings = load_settings(dep.section("ledger"))
    url = dep.service("ledger").database
    with Log.open(
        url,
        log_signer(dep, settings.origin),
        settings.origin,
        actor="ledger",
        settings=LogSettings(checkpoint_interval=3600),
    ) as log:
        for b in range(3):
            log.append_many([("operator_note", None, {"b": b, "i": i}) for i in range(40)])
            log.checkpoint()
    app = build_app()
    r = runner.invoke(app, ["ledger", "fsck", "--config", str(config), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["verified"], out["entries"], out["checkpoints"]) == (True, 120, 3)

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER ledger_entries_no_delete")
        conn.exec_driver_sql("DELETE FROM ledger_entries WHERE idx = 77")
        conn.exec_driver_sql(SQLITE_TRIGGERS["ledger_entries_no_delete"][1])
    engine.dispose()
    r = runner.invoke(app, ["ledger", "fsck", "--config", str(config)])
    assert r.exit_code == 1, r.output
    assert "LEDGER_STORE_CORRUPT" in r.stderr and "entry 77" in r.stderr, r.stderr
    assert "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
