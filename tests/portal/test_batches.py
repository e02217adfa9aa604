"""The portal's batch bookkeeping alone (portal/batches.py): the CSV rules, the per-
organisation limit on running batches, a job's owner, a failing run shown, not lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fedcredit.common.errors import Unavailable
from fedcredit.portal import batches as B


def test_csv_rows_and_refusals() -> None:
    rows, bad = B.parse_csv(b"\xef\xbb\xbfconsent_id,request_id\nc_1,a\nc_2,a\n,b\nc_3,\n")
    assert [(r.consent_id, r.request_id) for r in rows] == [("c_1", "a"), ("c_3", "row-5")]
    assert [(b["row"], b["error"]) for b in bad] == [(3, "INVALID_INPUT_ROW"), (4, "INVALID_INPUT_ROW")]  # fmt: skip
    assert "twice" in bad[0]["message"]
    rows, bad = B.parse_csv(b"enterprise,token\n913700000000000000,eyJx\n913700000000000001,\n")
    assert len(rows) == 1 and len(bad) == 1


@pytest.mark.parametrize(
    "data",
    [b"", b"name\nx\n", b"consent_id\n", b"\xff\xfe", b"consent_id\n" + b"c\n" * (B.MAX_ROWS + 1),
     b"x" * (B.MAX_BYTES + 1)],
)  # fmt: skip
def test_unusable_files_are_refused(data: bytes) -> None:
    with pytest.raises(B.BatchFileInvalid):
        B.parse_csv(data)


def _wait(job: B.Job) -> None:
    deadline = time.monotonic() + 10
    while job.state == "running" and time.monotonic() < deadline:
        time.sleep(0.01)


def test_running_batches_are_limited_per_organisation_and_owned() -> None:
    jobs, gate = B.Jobs(), threading.Event()
    held = [jobs.start(B.Job(f"pb-{i}", "bank-a", 1), lambda j: gate.wait(10)) for i in range(B.MAX_RUNNING)]  # fmt: skip
    with pytest.raises(B.BatchesBusy):
        jobs.start(B.Job("pb-x", "bank-a", 1), lambda j: None)
    other = jobs.start(B.Job("pb-y", "bank-b", 1), lambda j: None)  # another bank is not held up
    with pytest.raises(B.BatchNotFound):
        jobs.get("bank-b", "pb-0")  # another bank's batch does not exist for it
    gate.set()
    for j in (*held, other):
        _wait(j)
    assert [j.state for j in held] == ["done"] * B.MAX_RUNNING
    assert {j.batch_id for j in jobs.list("bank-a")} == {f"pb-{i}" for i in range(B.MAX_RUNNING)}


def test_a_failed_run_is_shown_and_can_run_again() -> None:
    jobs = B.Jobs()

    def fail(j: B.Job) -> None:
        raise Unavailable("the coordinator is down")

    job = jobs.start(B.Job("pb-f", "bank-a", 2, bad=[{"row": 2, "error": "INVALID_INPUT_ROW"}]), fail)  # fmt: skip
    _wait(job)
    assert job.state == "failed" and "coordinator is down" in job.error and job.done == 1
    jobs.run(job, lambda j: None)
    _wait(job)
    assert job.state == "done" and job.runs == 2 and job.done == 1  # the refusal, once


def test_a_job_running_when_the_portal_stopped_is_found_failed_and_can_run_again(
    db_url: str,
) -> None:
    """The portal's database keeps every job; one that was running when the process
    ended is read back as failed, saying why, with its input (never a consent token)."""
    from fedcredit.portal.jobstore import INTERRUPTED, JobStore

    url = db_url  # the portal's database: SQLite or PostgreSQL
    gate = threading.Event()
    first = B.Jobs(store=JobStore(url))
    rows = [B.Row(2, consent_id="c_1", request_id="a"), B.Row(3, enterprise="91370000MA3C5LTX1X", token="eyJsecret", request_id="b")]  # fmt: skip
    job = first.start(B.Job("pb-1", "bank-a", 2, rows=rows), lambda j: gate.wait(10))
    assert job.state == "running"
    # the process "ends" here; a new one reads the same database
    second = B.Jobs(store=JobStore(url))
    kept = second.get("bank-a", "pb-1")
    assert (kept.state, kept.error, kept.total) == ("failed", INTERRUPTED, 2)
    assert [(r.consent_id, r.request_id, r.token, r.token_lost) for r in kept.rows] == [
        ("c_1", "a", "", False), ("", "b", "", True)]  # fmt: skip
    assert [j.batch_id for j in second.list("bank-a")] == ["pb-1"] and second.list("bank-b") == []
    with pytest.raises(B.BatchNotFound):
        second.get("bank-b", "pb-1")  # another organisation: as if it did not exist
    seen: list[B.Row] = []
    second.run(kept, lambda j: seen.extend(j.rows))
    _wait(kept)
    assert kept.state == "done" and [r.request_id for r in seen] == ["a", "b"]
    deadline = time.monotonic() + 10  # written by the run's thread right after it ends
    reader = JobStore(url)
    while (got := reader.load("bank-a", "pb-1")) is None or got.state != "done":
        assert time.monotonic() < deadline, "the finished run was not kept"
        time.sleep(0.02)
    gate.set()
    _wait(job)


def test_a_deployments_portal_keeps_its_jobs_in_its_directory(tmp_path: Path) -> None:
    """``fedcredit init``'s deployment gives the portal a database under the deployment's
    directory (relative SQLite paths resolve there); a URL that does not parse is refused."""
    from fedcredit.common.config import load_config
    from fedcredit.common.deploy import write_local_deployment
    from fedcredit.common.errors import ConfigError
    from fedcredit.portal.settings import PortalSettings

    path = write_local_deployment(tmp_path / "dep", base_port=46500)
    s = PortalSettings.from_deployment(load_config(path))
    assert s.database == f"sqlite:///{(path.parent / 'data' / 'portal.sqlite').resolve()}"
    path.write_text(path.read_text().replace("[portal]\n", '[portal]\ndatabase = "::not a url::"\n', 1))  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        PortalSettings.from_deployment(load_config(path))
    assert "[portal]" in exc.value.message


def test_watch_checks_are_kept_per_bank(db_url: str) -> None:
    from fedcredit.portal.jobstore import JobStore, WatchChecks

    first = WatchChecks(JobStore(db_url))
    assert first.get("bank-a") == {}
    first.put("bank-a", {"E1": {"rating": "B", "previous": "", "move": "", "pd_pct": 3.1}})
    first.put("bank-a", {"E1": {"rating": "C", "previous": "B", "move": "down", "pd_pct": 7.0}})
    again = WatchChecks(JobStore(db_url))  # after a restart
    assert again.get("bank-a")["rows"]["E1"]["move"] == "down" and again.get("bank-b") == {}
    assert WatchChecks(None).get("bank-a") == {}  # without a database: memory only


def test_a_portal_database_that_does_not_answer_stops_serve_in_one_line(tmp_path: Path) -> None:
    """`fedcredit portal serve` with a [portal] database that does not answer: a precise
    one-line failure and the documented exit code, never a traceback (nothing listens)."""
    from typer.testing import CliRunner

    from fedcredit.clients.cli import build_app
    from fedcredit.common.cliutil import EXIT_CODES
    from fedcredit.common.deploy import write_local_deployment

    path = write_local_deployment(tmp_path / "dep", base_port=46700)
    bad = 'database = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"\n'
    path.write_text(path.read_text().replace("[portal]\n", "[portal]\n" + bad, 1))
    r = CliRunner().invoke(build_app(), ["portal", "serve", "--config", str(path)])
    assert r.exit_code == EXIT_CODES["UNAVAILABLE"], r.output
    assert "portal's database does not answer" in r.output and "Traceback" not in r.output
