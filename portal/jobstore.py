"""The banks' batch jobs and watch-list checks in the portal's own database, so a bank
finds its batches, and the ratings its last check saw, after the portal restarts
(portal/batches.py keeps the running jobs in memory as well).

One row per job: batch id (the coordinator's, under which ScoreBatch resumes), the
organisation that uploaded it, its state, counts and error, and the results themselves
(``results_json``: the result location is this row; the download reads it), written when
a run starts and when it ends. The input rows are kept for "send the batch again", but
**never a consent token**: a row given with a token is kept as its enterprise and request
id only; resumed after a restart it is refused (``PORTAL_BATCH_TOKEN_NOT_KEPT``: upload
those rows again), while consent-id rows fetch their tokens again from the consent
service. A job that was running when the portal stopped is read back as ``failed`` with
the reason (its stream ended with the process); sending it again under its batch id
replays every row the coordinator scored already (no new consent use, disclosure or
ledger entry) and scores the rest.

Watch-list checks: one row per bank, the ratings its last "check now" saw per enterprise
(rating, PD, the move since the check before), so the next check flags a downgrade even
across a restart (:class:`WatchChecks`).

SQLite by default (``[portal] database``, under the deployment's directory), PostgreSQL
as well.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Column, Float, Integer, MetaData, String, Table, Text, select
from sqlalchemy.exc import OperationalError

from fedcredit.common.db import create_schema, make_engine
from fedcredit.common.errors import StoreUnavailable

if TYPE_CHECKING:
    from fedcredit.portal.batches import Job

INTERRUPTED = "the portal stopped while this batch ran; send it again (rows scored already come back as they were)"  # fmt: skip

metadata = MetaData()
jobs = Table(
    "portal_batch_jobs",
    metadata,
    Column("batch_id", String(128), primary_key=True),
    Column("org", String(128), nullable=False, index=True),
    Column("total", Integer, nullable=False),
    Column("started", Float, nullable=False),
    Column("state", String(16), nullable=False),  # running, done, failed
    Column("error", Text, nullable=False),
    Column("done", Integer, nullable=False),
    Column("refused", Integer, nullable=False),
    Column("runs", Integer, nullable=False),
    Column("counts_json", Text, nullable=False),
    Column("results_json", Text, nullable=False),  # the results: their location is this row
    Column("rows_json", Text, nullable=False),  # the usable input, without consent tokens
    Column("bad_json", Text, nullable=False),  # the unusable rows' refusals
    Column("updated_at", BigInteger, nullable=False),
)
watch_checks = Table(
    "portal_watch_checks",
    metadata,
    Column("org", String(128), primary_key=True),
    Column("rows_json", Text, nullable=False),  # enterprise -> what the last check saw
    Column("checked_at", BigInteger, nullable=False),
)


def _row_kept(r: Any) -> dict[str, Any]:
    """An input row as kept: everything but the consent token (``token_given`` says there
    was one, so a resume after a restart can refuse that row by name)."""
    d = asdict(r)
    d["token_given"] = bool(d.pop("token")) or d.pop("token_lost")
    return d


class JobStore:
    def __init__(self, url: str) -> None:
        try:
            self.engine = make_engine(url)
            create_schema(self.engine, metadata)
        except OperationalError as exc:
            raise StoreUnavailable(f"the portal's database does not answer: {str(exc.orig).splitlines()[0]}") from None  # fmt: skip
        except OSError as exc:  # a SQLite file's folder that cannot be created
            raise StoreUnavailable(f"the portal's database cannot be opened: {exc}") from None

    def close(self) -> None:
        self.engine.dispose()

    def save(self, job: Job, *, with_input: bool = False) -> None:
        """Write the job's state (and its input rows, once, at upload)."""
        import time

        values: dict[str, Any] = {
            "org": job.org, "total": job.total, "started": job.started, "state": job.state,
            "error": job.error, "done": job.done, "refused": job.refused, "runs": job.runs,
            "counts_json": json.dumps(job.counts, sort_keys=True),
            "results_json": json.dumps(job.results, sort_keys=True), "updated_at": int(time.time()),
        }  # fmt: skip
        try:
            with self.engine.begin() as conn:
                if with_input:
                    rows = json.dumps([_row_kept(r) for r in job.rows])
                    conn.execute(jobs.insert().values(batch_id=job.batch_id, rows_json=rows, bad_json=json.dumps(job.bad), **values))  # fmt: skip
                else:
                    conn.execute(jobs.update().where(jobs.c.batch_id == job.batch_id).values(**values))  # fmt: skip
        except OperationalError as exc:
            raise StoreUnavailable(f"the portal's database does not answer: {str(exc.orig).splitlines()[0]}") from None  # fmt: skip

    def watch_check(self, org: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            got = conn.execute(select(watch_checks.c.rows_json).where(watch_checks.c.org == org)).scalar()  # fmt: skip
        return None if got is None else {"rows": json.loads(got)}

    def put_watch_check(self, org: str, rows: dict[str, Any]) -> None:
        import time

        values = {"rows_json": json.dumps(rows, sort_keys=True), "checked_at": int(time.time())}
        try:
            with self.engine.begin() as conn:
                if conn.execute(watch_checks.update().where(watch_checks.c.org == org).values(**values)).rowcount == 0:  # fmt: skip
                    conn.execute(watch_checks.insert().values(org=org, **values))
        except OperationalError as exc:
            raise StoreUnavailable(f"the portal's database does not answer: {str(exc.orig).splitlines()[0]}") from None  # fmt: skip

    def load(self, org: str, batch_id: str) -> Job | None:
        """``org``'s job ``batch_id`` as kept (None: no such job of ``org``'s)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.batch_id == batch_id, jobs.c.org == org)).first()  # fmt: skip
        return None if row is None else _job(row._mapping)

    def list(self, org: str, limit: int = 200) -> list[Job]:
        """``org``'s jobs, newest first (without their input rows)."""
        q = select(*[c for c in jobs.c if c.name not in ("rows_json", "results_json")])
        q = q.where(jobs.c.org == org).order_by(jobs.c.started.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_job({**r._mapping, "rows_json": "[]", "results_json": "[]", "bad_json": "[]"}) for r in conn.execute(q)]  # fmt: skip


def _job(m: Any) -> Job:
    from fedcredit.portal.batches import Job, Row

    rows = [
        Row(d["row"], d["consent_id"], d["enterprise"], "", d["request_id"], bool(d["token_given"]))
        for d in json.loads(m["rows_json"])
    ]
    job = Job(
        m["batch_id"], m["org"], int(m["total"]), float(m["started"]), int(m["done"]),
        int(m["refused"]), m["state"], m["error"], json.loads(m["counts_json"]),
        json.loads(m["results_json"]), rows, json.loads(m["bad_json"]), int(m["runs"]),
    )  # fmt: skip
    if job.state == "running":  # read back, not in this process's memory: its run ended
        job.state, job.error = "failed", INTERRUPTED
    return job


class WatchChecks:
    """Each bank's last watch-list check (``{"rows": {enterprise: {...}}}``): in memory,
    and in ``store`` when the portal has a database (read back after a restart)."""

    def __init__(self, store: JobStore | None) -> None:
        self.store = store
        self._mem: dict[str, dict[str, Any]] = {}

    def get(self, org: str) -> dict[str, Any]:
        if org not in self._mem and self.store is not None:
            got = self.store.watch_check(org)
            if got is not None:
                self._mem[org] = got
        return self._mem.get(org, {})

    def put(self, org: str, rows: dict[str, Any]) -> None:
        self._mem[org] = {"rows": rows}
        if self.store is not None:
            self.store.put_watch_check(org, rows)
