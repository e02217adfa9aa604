"""A bank's batch upload from the portal: a CSV of consent ids (or of enterprises and
their consent tokens), scored by the coordinator's resumable ScoreBatch under the bank's
delegation ticket, with progress the page polls (htmx) and a CSV of the results.

Running jobs live in the portal's memory; every job is also kept in the portal's database
(portal/jobstore.py: batch id, owner, state, counts, results; input rows without consent
tokens), written when a run starts and ends, so a bank finds its batches and their
results after a restart and can send an interrupted one again under its batch id (the
coordinator returns what was scored already, with no new disclosure, ledger entry or
consent use). Each job belongs to the organisation that uploaded it; another organisation
asking for it is told it does not exist.
"""

from __future__ import annotations

import csv
import io
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedcredit.common.errors import (
    FailedPrecondition,
    FedcreditError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

if TYPE_CHECKING:
    from fedcredit.portal.jobstore import JobStore

log = logging.getLogger(__name__)

MAX_ROWS = 5_000
MAX_RUNNING = 2  # batches one organisation may run at once on this portal
MAX_BYTES = 2 * 1024 * 1024
RESULT_COLUMNS = ("row", "enterprise", "consent_id", "request_id", "rating",
                  "probability_of_default", "top_reason", "ledger_index", "replayed", "error",
                  "message")  # fmt: skip


class BatchNotFound(NotFound):
    reason = "PORTAL_BATCH_NOT_FOUND"


class BatchFileInvalid(InvalidArgument):
    reason = "PORTAL_BATCH_FILE_INVALID"


class TokenNotKept(FailedPrecondition):
    """A row given with its consent token, resumed after a restart: the portal keeps no
    token on disk, so that row must be uploaded again (consent-id rows fetch theirs)."""

    reason = "PORTAL_BATCH_TOKEN_NOT_KEPT"


class BatchesBusy(ResourceExhausted):
    """An organisation already runs :data:`MAX_RUNNING` batches on this portal."""

    reason = "PORTAL_BATCHES_BUSY"


@dataclass(frozen=True, slots=True)
class Row:
    """One usable input row: the consent id, or the enterprise and its token."""

    row: int
    consent_id: str = ""
    enterprise: str = ""
    token: str = ""
    request_id: str = ""
    token_lost: bool = (
        False  # given with a token the portal did not keep (read back after a restart)
    )


@dataclass
class Job:
    batch_id: str
    org: str
    total: int
    started: float = field(default_factory=time.time)
    done: int = 0
    refused: int = 0
    state: str = "running"  # running, done, failed
    error: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)  # the usable input, kept for a resume
    bad: list[dict[str, Any]] = field(default_factory=list)  # the unusable rows' refusals
    runs: int = 0

    def reset(self) -> None:
        """Before a run: only the unusable rows answered (each run answers every row again;
        the coordinator replays what the batch id scored already)."""
        self.done = self.refused = 0
        self.state, self.error, self.counts, self.results = "running", "", {}, []
        for b in self.bad:
            self.add(b)

    @property
    def percent(self) -> int:
        return 100 if not self.total else int(100 * self.done / self.total)

    def add(self, result: dict[str, Any]) -> None:
        self.results.append(result)
        self.done += 1
        key = result.get("rating") or "refused"
        self.refused += key == "refused"
        self.counts[key] = self.counts.get(key, 0) + 1


def new_batch_id() -> str:
    return f"pb-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


def parse_csv(data: bytes) -> tuple[list[Row], list[dict[str, Any]]]:
    """The usable rows and a refusal per unusable one. Columns: ``consent_id`` or
    ``enterprise`` and ``token``; ``request_id`` optional (default: the row number)."""
    if len(data) > MAX_BYTES:
        raise BatchFileInvalid(f"expected a CSV of at most {MAX_BYTES:,} bytes, got {len(data):,}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BatchFileInvalid("expected a UTF-8 CSV file") from None
    reader = csv.DictReader(io.StringIO(text))
    cols = set(reader.fieldnames or ())
    if "consent_id" not in cols and not {"enterprise", "token"} <= cols:
        raise BatchFileInvalid(
            f"expected a header with consent_id, or with enterprise and token; got {sorted(cols)!r:.200}"
        )
    rows: list[Row] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, rec in enumerate(reader, start=2):  # row 1 is the header
        if len(rows) + len(bad) >= MAX_ROWS:
            raise BatchFileInvalid(f"expected at most {MAX_ROWS:,} rows")
        get = {k: (v or "").strip() for k, v in rec.items() if isinstance(k, str)}
        rid = get.get("request_id") or f"row-{n}"
        r = Row(n, get.get("consent_id", ""), get.get("enterprise", ""), get.get("token", ""), rid)
        problem = _problem(r, seen)
        if problem:
            bad.append(refusal(r, "INVALID_INPUT_ROW", problem))
        else:
            seen.add(rid)
            rows.append(r)
    if not rows and not bad:
        raise BatchFileInvalid("the CSV has a header but no rows")
    return rows, bad


def _problem(r: Row, seen: set[str]) -> str:
    if r.request_id in seen:
        return f"request_id {r.request_id!r} appears twice"
    if len(r.request_id) > 128:
        return "request_id is longer than 128 characters"
    if r.consent_id:
        return "" if len(r.consent_id) <= 64 else "consent_id is longer than 64 characters"
    if not r.enterprise or not r.token:
        return "expected a consent_id, or an enterprise and its token"
    return ""


def refusal(r: Row, reason: str, message: str, enterprise: str = "") -> dict[str, Any]:
    return {"row": r.row, "enterprise": enterprise or r.enterprise, "consent_id": r.consent_id,
            "request_id": r.request_id, "error": reason, "message": message}  # fmt: skip


def scored(r: Row, item: Any) -> dict[str, Any]:
    """A ScoreBatchItem as a result row."""
    if item.HasField("error"):
        return refusal(r, item.error.reason, item.error.message, item.enterprise)
    res = item.result
    return {
        "row": r.row, "enterprise": res.enterprise, "consent_id": r.consent_id,
        "request_id": r.request_id, "rating": res.rating,
        "probability_of_default": round(res.probability_of_default, 6),
        "top_reason": res.reasons[0].description if res.reasons else "",
        "ledger_index": res.ledger_index, "replayed": "yes" if item.replayed else "",
    }  # fmt: skip


def results_csv(job: Job) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in sorted(job.results, key=lambda x: int(x["row"])):
        w.writerow(r)
    return out.getvalue()


class Jobs:
    """The portal's batch jobs, each run on a thread of its own; ``store``: where they are
    kept across restarts (portal/jobstore.py; None: in memory only)."""

    def __init__(self, keep: int = 200, store: JobStore | None = None) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.keep = keep
        self.store = store

    def get(self, org: str, batch_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(batch_id)
        if job is None and self.store is not None and len(batch_id) <= 128:
            kept = self.store.load(org, batch_id)  # after a restart: as kept
            if kept is not None:
                with self._lock:
                    job = self._jobs.setdefault(batch_id, kept)
        if job is None or job.org != org:
            raise BatchNotFound(f"no batch {batch_id[:80]!r} of yours on this portal")
        return job

    def list(self, org: str) -> list[Job]:
        with self._lock:
            mine = {j.batch_id: j for j in self._jobs.values() if j.org == org}
        for kept in self.store.list(org) if self.store is not None else ():
            mine.setdefault(kept.batch_id, kept)
        return sorted(mine.values(), key=lambda j: -j.started)

    def _save(self, job: Job, *, with_input: bool = False) -> None:
        if self.store is None:
            return
        try:
            self.store.save(job, with_input=with_input)
        except FedcreditError as exc:  # the job goes on; the page still shows it from memory
            log.warning("could not keep batch %s in the portal's database: %s", job.batch_id, exc)

    def start(self, job: Job, run: Callable[[Job], None]) -> Job:
        with self._lock:
            running = sum(j.org == job.org and j.state == "running" for j in self._jobs.values())
            if running >= MAX_RUNNING:
                raise BatchesBusy(
                    f"{job.org} already runs {running} batches here (at most {MAX_RUNNING}); "
                    "wait for one to finish",
                    retry_after_s=5,
                )
            if len(self._jobs) >= self.keep:  # forget the oldest finished jobs
                for old in sorted(self._jobs.values(), key=lambda j: j.started)[: self.keep // 4]:
                    if old.state != "running":
                        del self._jobs[old.batch_id]
            self._jobs[job.batch_id] = job
        self._save(job, with_input=True)
        return self.run(job, run)

    def run(self, job: Job, run: Callable[[Job], None]) -> Job:
        """Run (or resume: same batch id) ``job`` on a thread of its own."""
        with self._lock:
            if job.state == "running" and job.runs:
                raise InvalidArgument(f"batch {job.batch_id} is still running")
            busy = [j for j in self._jobs.values() if j.org == job.org and j.state == "running" and j.runs]  # fmt: skip
            if len(busy) >= MAX_RUNNING:
                raise BatchesBusy(
                    f"{job.org} already runs {len(busy)} batches here (at most {MAX_RUNNING}); "
                    "wait for one to finish",
                    retry_after_s=5,
                )
            job.runs += 1
            job.reset()
        self._save(job)

        def body() -> None:
            try:
                run(job)
                job.state = "done"
            except FedcreditError as exc:
                job.state, job.error = "failed", str(exc)
            except Exception as exc:  # a thread must not die silently: the page shows it
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            self._save(job)  # the results, where the bank finds them after a restart

        threading.Thread(target=body, name=f"batch-{job.batch_id}", daemon=True).start()
        return job


def in_order(rows: Iterable[Row], answers: Iterator[Any]) -> Iterator[tuple[Row, Any]]:
    """Pair each answer with its input row by request id (answers come in input order,
    but a refusal names its own request id: pair by id, never by position)."""
    by_id = {r.request_id: r for r in rows}
    for item in answers:
        r = by_id.get(item.request_id)
        if r is not None:
            yield r, item
