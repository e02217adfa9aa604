"""The portal's batch bookkeeping alone (portal/batches.py): the CSV rules, the per-
organisation limit on running batches, a job's owner, a failing run shown, not lost."""

from __future__ import annotations

import threading
import time

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
