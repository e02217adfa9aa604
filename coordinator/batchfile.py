"""The files of `fedcredit bank score-batch`: the input rows, the results journal, the CSV.

* Input: CSV (``enterprise,token|consent[,request_id]``) or JSON lines (``{enterprise,
  token|consent_token|consent[, request_id]}``). A row that cannot be used is an
  :class:`InputRowError` (its row number and why) and the rest goes on.
* Journal: JSON lines, one per answered (or refused, or unusable) row, written and
  flushed as each answer arrives, so an interrupted run keeps every answer it received;
  every line names the batch id, which ``--resume`` reads back.
* CSV: made from the journal at the end when ``--out`` ends in ``.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fedcredit.common.errors import FailedPrecondition, InvalidArgument


class JournalMismatch(FailedPrecondition):
    """``--resume`` was given a results file of another batch, or one it cannot read."""

    reason = "BATCH_JOURNAL_MISMATCH"


class JournalExists(FailedPrecondition):
    """The results file holds answers already and neither --resume nor --restart was given."""

    reason = "BATCH_JOURNAL_EXISTS"


@dataclass(frozen=True, slots=True)
class InputRowError:
    row: int  # the row's line (CSV: counting the header as 1)
    request_id: str
    message: str

    def to_dict(self, batch_id: str) -> dict[str, Any]:
        return {
            "batch_id": batch_id,
            "request_id": self.request_id,
            "input_row": self.row,
            "error": {"reason": "INVALID_INPUT_ROW", "message": self.message},
        }


Row = tuple[str, str, str]  # enterprise, token, request id


def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"{path} is not a batch file: expected UTF-8 CSV or JSON lines, got bytes that are not UTF-8"
        ) from None


def _token(base: Path, token: object, consent: object, read_token: Any) -> str:
    if isinstance(token, str) and token:
        return token
    if isinstance(consent, str) and consent:
        return str(read_token(base / consent))
    return ""


def read_rows(path: Path, read_token: Any) -> Iterator[Row | InputRowError]:
    """Every row of the input, or why it cannot be used (``read_token``: a token file's token)."""
    text = _text(path)
    seen: set[str] = set()
    as_json = path.suffix in (".jsonl", ".ndjson", ".json")
    parsed = _json_rows(text) if as_json else _csv_rows(text)
    for n, rid, fields, problem in parsed:
        if problem is None:
            try:
                tok = _token(path.parent, fields.get("token") or fields.get("consent_token"),
                             fields.get("consent"), read_token)  # fmt: skip
            except InvalidArgument as exc:
                problem = exc.message
            else:
                ent = fields.get("enterprise")
                if not isinstance(ent, str) or not ent or not tok:
                    problem = "expected enterprise and token (or a consent file)"
                elif rid in seen:
                    problem = f"request id {rid!r} is used by an earlier row"
        if problem is not None:
            yield InputRowError(n, rid, problem)
            continue
        seen.add(rid)
        yield str(fields["enterprise"]), tok, rid


def _json_rows(text: str) -> Iterator[tuple[int, str, dict[str, Any], str | None]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, str(n), {}, f"not JSON ({exc.msg} at column {exc.colno})"
            continue
        if not isinstance(row, dict):
            yield n, str(n), {}, f"expected a JSON object, got {type(row).__name__}"
            continue
        rid = row.get("request_id", n)
        yield n, str(rid) if isinstance(rid, str | int) else str(n), row, None


def _csv_rows(text: str) -> Iterator[tuple[int, str, dict[str, Any], str | None]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        for rec in reader:
            n = reader.line_num
            rid = rec.get("request_id") or str(n - 1)
            if None in rec:  # more cells than columns
                yield n, rid, {}, f"{len(rec[None]) + len(reader.fieldnames or [])} cells, expected at most {len(reader.fieldnames or [])}"  # type: ignore[index]  # fmt: skip
                continue
            yield n, rid, dict(rec), None
    except csv.Error as exc:
        yield reader.line_num, str(reader.line_num), {}, f"not CSV ({exc})"


# ---------------------------------------------------------------- the journal


def journal_path(out: Path) -> Path:
    """Where the answers are written as they arrive: ``--out`` itself (JSON lines) or,
    for ``--out x.csv``, ``x.csv.jsonl`` beside it."""
    return out.with_name(out.name + ".jsonl") if out.suffix == ".csv" else out


def read_journal(path: Path) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The batch id of a journal and its rows by request id (a torn last line is ignored)."""
    batch_id: str | None = None
    rows: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, rows
    except (OSError, UnicodeDecodeError) as exc:
        raise JournalMismatch(f"cannot read the results file {path}: {exc}") from None
    for n, line in enumerate(text.splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(text.splitlines()):
                break  # the line being written when the run was killed
            raise JournalMismatch(f"{path}:{n} is not a results line") from None
        bid = row.get("batch_id") if isinstance(row, dict) else None
        if not isinstance(bid, str):
            raise JournalMismatch(f"{path}:{n} names no batch id; it is not a score-batch journal")
        if batch_id is not None and bid != batch_id:
            raise JournalMismatch(f"{path} holds two batches ({batch_id!r} and {bid!r})")
        batch_id = bid
        rows[str(row.get("request_id", ""))] = row
    return batch_id, rows


class Journal:
    """Append-only JSON lines, flushed per line and synced every ``sync_every`` lines."""

    def __init__(self, path: Path, *, append: bool, sync_every: int = 1000) -> None:
        self.path = path
        if append:
            self._trim_torn_tail(path)
        self._fh: IO[str] = path.open("a" if append else "w", encoding="utf-8")
        self._n = 0
        self._sync_every = sync_every

    @staticmethod
    def _trim_torn_tail(path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        self._n += 1
        if self._n % self._sync_every == 0:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


CSV_COLUMNS = [
    "request_id", "enterprise", "rating", "probability_of_default", "model_version",
    "top_reason", "missing_categories", "ledger_index", "consent_jti", "feature_hash",
    "replayed", "error_reason", "error_message",
]  # fmt: skip


def csv_from_journal(journal: Path, out: Path) -> int:
    """Write the CSV of a journal's rows (last answer per request id); how many rows."""
    _, rows = read_journal(journal)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, CSV_COLUMNS)
        w.writeheader()
        for r in rows.values():
            err = r.get("error") or {}
            reasons = r.get("reasons") or []
            w.writerow({
                "request_id": r.get("request_id", ""), "enterprise": r.get("enterprise", ""),
                "rating": r.get("rating", ""),
                "probability_of_default": r.get("probability_of_default", ""),
                "model_version": r.get("model_version", ""),
                "top_reason": reasons[0]["description"] if reasons else "",
                "missing_categories": ";".join(r.get("missing_categories") or []),
                "ledger_index": r.get("ledger_index", ""), "consent_jti": r.get("consent_jti", ""),
                "feature_hash": r.get("feature_hash", ""), "replayed": r.get("replayed", ""),
                "error_reason": err.get("reason", ""), "error_message": err.get("message", ""),
            })  # fmt: skip
    tmp.replace(out)
    return len(rows)
