"""Finding 6 of issue 16: `ledger export` and `ledger bundle` fail with one line, the
right exit code and a named reason, and never leave a partial file.

The ledger service runs in-process on loopback (mTLS) from a local deployment; the
store is damaged underneath it the way the audit did (an entry that is not UTF-8,
a deleted entry), with the append-only guard silenced and put back.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment
from fedcredit.ledger.errors import StoreCorrupt
from fedcredit.ledger.export import parse_export
from fedcredit.ledger.store import SQLITE_TRIGGERS

runner = CliRunner()


@dataclass
class Served:
    config: Path
    log: Any
    url: str
    out: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    from fedcredit.ledger.service import serve

    config = write_local_deployment(tmp_path / "dep")
    with open(config, "a") as f:
        f.write("\n[ledger]\nwitnesses = []\ncheckpoint_interval = 3600\n")
    dep = load_config(config)
    ready = threading.Event()
    box: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def on_ready(port: int, log: Any) -> None:
        box["log"] = log
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve(dep, on_ready=on_ready, stop=stop))
        except BaseException as exc:  # reported by the fixture below
            box["error"] = exc
            ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(60) and "error" not in box, box.get("error")
    log = box["log"]
    log.append_many([("operator_note", None, {"i": i}) for i in range(40)])
    log.checkpoint()
    out = tmp_path / "out"
    out.mkdir()
    yield Served(config, log, dep.service("ledger").database, out)
    loop.call_soon_threadsafe(stop.set)
    t.join(30)


def _tamper(url: str, sql: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for name in SQLITE_TRIGGERS:
            conn.exec_driver_sql(f"DROP TRIGGER {name}")
        conn.exec_driver_sql(sql)
        for _, create in SQLITE_TRIGGERS.values():
            conn.exec_driver_sql(create)
    engine.dispose()


def _cli(*args: str) -> Any:
    return runner.invoke(build_app(), list(args))


def _one_line(r: Any, code: int, *words: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_export_and_bundle_succeed(served: Served) -> None:
    path = served.out / "export.json"
    r = _cli("ledger", "export", "--config", str(served.config), "--out", str(path), "--json")
    assert r.exit_code == 0, r.output
    assert len(parse_export(path.read_bytes()).entries) == 40
    b = served.out / "b.json"
    r = _cli("ledger", "bundle", "--config", str(served.config), "--index", "7", "--out", str(b))
    assert r.exit_code == 0, r.output
    assert json.loads(b.read_text())["index"] == 7
    assert sorted(p.name for p in served.out.iterdir()) == ["b.json", "export.json"]


def test_an_entry_that_is_not_utf8(served: Served) -> None:
    _tamper(served.url, "UPDATE ledger_entries SET data = X'7bff22' WHERE idx = 12")
    path = served.out / "export.json"
    r = _cli("ledger", "export", "--config", str(served.config), "--out", str(path))
    _one_line(r, 13, "LEDGER_STORE_CORRUPT", "entry 12 is not valid UTF-8")
    b = served.out / "b.json"
    r = _cli("ledger", "bundle", "--config", str(served.config), "--index", "12", "--out", str(b))
    _one_line(r, 13, "LEDGER_STORE_CORRUPT", "entry 12")
    assert list(served.out.iterdir()) == []  # no partial file, no temporary left behind
    # the library's own export names it too
    with open(served.out / "lib.json", "w") as fp, pytest.raises(StoreCorrupt) as e:
        served.log.export(fp)
    assert e.value.metadata["index"] == "12"


def test_a_deleted_entry(served: Served) -> None:
    _tamper(served.url, "DELETE FROM ledger_entries WHERE idx = 20")
    path = served.out / "export.json"
    r = _cli("ledger", "export", "--config", str(served.config), "--out", str(path))
    _one_line(r, 13, "LEDGER_STORE_CORRUPT", "entry 20 is missing")
    r = _cli(
        "ledger", "bundle", "--config", str(served.config), "--index", "20",
        "--out", str(served.out / "b.json"),
    )  # fmt: skip
    _one_line(r, 13, "LEDGER_STORE_CORRUPT", "entry 20 is missing")
    assert list(served.out.iterdir()) == []


def test_bundle_for_an_index_beyond_the_log(served: Served) -> None:
    b = served.out / "b.json"
    for index in ("40", "1000000"):
        r = _cli(
            "ledger", "bundle", "--config", str(served.config), "--index", index, "--out", str(b)
        )
        _one_line(r, 4, "LEDGER_ENTRY_NOT_FOUND", f"entry {index} does not exist")
    assert not b.exists()


def test_export_to_a_path_that_cannot_be_written(served: Served) -> None:
    path = served.out / "missing-dir" / "export.json"
    r = _cli("ledger", "export", "--config", str(served.config), "--out", str(path))
    _one_line(r, 8, "OUTPUT_NOT_WRITABLE", str(path))
    assert list(served.out.iterdir()) == []


def test_an_existing_file_is_kept_when_export_fails(served: Served) -> None:
    path = served.out / "export.json"
    path.write_text("an earlier export")
    _tamper(served.url, "UPDATE ledger_entries SET data = X'ff' WHERE idx = 3")
    r = _cli("ledger", "export", "--config", str(served.config), "--out", str(path))
    _one_line(r, 13, "LEDGER_STORE_CORRUPT")
    assert path.read_text() == "an earlier export"
    assert [p.name for p in served.out.iterdir()] == ["export.json"]
