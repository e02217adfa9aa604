"""A bank's own training rows: CSV (``id``, label, features) or the synthetic city.

:func:`load_csv` is the one place a CSV is read, in the CLI before Flower starts and in
each bank's ClientApp in a real deployment, so both refuse the same files with the same
message: ``FILE:LINE: column 'NAME': expected X, got Y`` — one problem, one line.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedcredit.common.errors import InvalidArgument, NotFound
from fedcredit.training.gbdt.schema import schema_difference


class TrainingDataNotFound(NotFound):
    reason = "TRAINING_DATA_NOT_FOUND"


class TrainingDataInvalid(InvalidArgument):
    reason = "TRAINING_DATA_INVALID"


class TrainingSchemaMismatch(InvalidArgument):
    """Two files (two banks, or a bank and the test file) do not have the same features."""

    reason = "TRAINING_SCHEMA_MISMATCH"


# Cells read as a missing feature value (LightGBM's NaN); never accepted as a label.
MISSING = frozenset({"", "nan", "na", "null", "none"})


@dataclass(frozen=True)
class BankData:
    ids: list[str]
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    feature_names: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def positives(self) -> int:
        return int(self.y.sum())

    def one_class(self) -> float | None:
        """The only label value when every row has the same one, else None."""
        if self.rows and self.positives in (0, self.rows):
            return float(self.y[0])
        return None

    def select(self, names: Sequence[str]) -> BankData:
        """The same rows with the features in the order of ``names`` (all must be present)."""
        idx = [self.feature_names.index(n) for n in names]
        return BankData(self.ids, self.x[:, idx], self.y, tuple(names))


def _decode(p: Path) -> str:
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # a BOM (Excel's "CSV UTF-8") is fine
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        start = raw.rfind(b"\n", 0, exc.start) + 1
        field = raw.count(b",", start, exc.start) + 1
        raise TrainingDataInvalid(
            f"{p}:{line}: field {field}: expected UTF-8 text, got byte "
            f"0x{raw[exc.start]:02x} (save the file as CSV UTF-8)",
            path=str(p),
            line=line,
        ) from None


def _header(p: Path, reader: Sequence[list[str]], label: str, id_column: str) -> list[str]:
    if not reader or not any(c.strip() for c in reader[0]):
        raise TrainingDataInvalid(
            f"{p}:1: expected a header line with {id_column!r}, {label!r} and the features, "
            "got an empty file",
            path=str(p),
            line=1,
        )
    header = [c.strip() for c in reader[0]]
    seen: set[str] = set()
    for i, name in enumerate(header, start=1):
        if not name:
            raise TrainingDataInvalid(f"{p}:1: column {i}: expected a name, got an empty one")
        if name in seen:
            raise TrainingDataInvalid(f"{p}:1: column {name!r}: expected once, got twice")
        seen.add(name)
    for need, what in ((id_column, "id"), (label, "label")):
        if need not in seen:
            raise TrainingDataInvalid(
                f"{p}:1: column {need!r}: expected the {what} column in the header, got "
                f"{', '.join(header[:8])}{'...' if len(header) > 8 else ''}",
                path=str(p),
                line=1,
                column=need,
            )
    if len(header) < 3:
        raise TrainingDataInvalid(
            f"{p}:1: expected at least one feature column besides {id_column!r} and "
            f"{label!r}, got none"
        )
    return header


def _label(p: Path, line: int, label: str, cell: str) -> float:
    v = cell.strip()
    try:
        y = float(v)
    except ValueError:
        y = math.nan
    if y not in (0.0, 1.0):
        raise TrainingDataInvalid(
            f"{p}:{line}: column {label!r}: expected a label 0 or 1, got {cell!r}",
            path=str(p),
            line=line,
            column=label,
        )
    return y


def _feature(p: Path, line: int, name: str, cell: str) -> float:
    v = cell.strip()
    if v.lower() in MISSING:
        return math.nan
    try:
        x = float(v)
    except ValueError:
        x = None
    if x is None or math.isinf(x):
        raise TrainingDataInvalid(
            f"{p}:{line}: column {name!r}: expected a number (or empty for missing), got {cell!r}",
            path=str(p),
            line=line,
            column=name,
        )
    return x


def load_csv(path: str | Path, label: str = "y", id_column: str = "id") -> BankData:
    """Read ``id,<label>,features...``; empty cells and 'NA' are missing feature values."""
    p = Path(path)
    if not p.is_file():
        raise TrainingDataNotFound(f"training CSV {p} does not exist", path=str(p))
    try:
        rows = list(csv.reader(io.StringIO(_decode(p), newline="")))
    except csv.Error as exc:
        raise TrainingDataInvalid(f"{p}: expected CSV, got {exc}", path=str(p)) from None
    header = _header(p, rows, label, id_column)
    i_id, i_y = header.index(id_column), header.index(label)
    feats = [i for i in range(len(header)) if i not in (i_id, i_y)]
    ids: list[str] = []
    xs: list[list[float]] = []
    ys: list[float] = []
    first_line: dict[str, int] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise TrainingDataInvalid(
                f"{p}:{line_no}: expected {len(header)} fields as in the header, got {len(row)}",
                path=str(p),
                line=line_no,
            )
        rid = row[i_id].strip()
        if rid in first_line:
            raise TrainingDataInvalid(
                f"{p}:{line_no}: column {id_column!r}: expected a unique id, got {rid!r} "
                f"again (first on line {first_line[rid]})"
            )
        first_line[rid] = line_no
        ys.append(_label(p, line_no, label, row[i_y]))
        xs.append([_feature(p, line_no, header[i], row[i]) for i in feats])
        ids.append(rid)
    if not ids:
        raise TrainingDataInvalid(
            f"{p}:2: expected rows after the header, got none", path=str(p), line=2
        )
    return BankData(
        ids=ids,
        x=np.asarray(xs, dtype=np.float64),
        y=np.asarray(ys, dtype=np.float64),
        feature_names=tuple(header[i] for i in feats),
    )


def check_same_features(banks: Sequence[tuple[str, BankData]]) -> None:
    """Every bank's file has the first one's feature columns, in the same order."""
    ref_name, ref = banks[0]
    for name, d in banks[1:]:
        diff = schema_difference(ref.feature_names, d.feature_names, reference=ref_name, file=name)
        if diff is not None:
            raise TrainingSchemaMismatch(diff, path=name)
        if d.feature_names != ref.feature_names:
            at = next(
                i
                for i, (a, b) in enumerate(zip(ref.feature_names, d.feature_names, strict=True))
                if a != b
            )
            raise TrainingSchemaMismatch(
                f"{name}:1: column {d.feature_names[at]!r}: expected {ref.feature_names[at]!r} "
                f"in that place as in {ref_name}; the banks' files must list the features "
                "in the same order",
                path=name,
            )


def align_features(d: BankData, names: Sequence[str], *, file: str, reference: str) -> BankData:
    """``d`` with the columns of ``names`` in that order (a test file's columns may come in
    any order); refuses, naming the column, when a name is missing or extra."""
    diff = schema_difference(names, d.feature_names, reference=reference, file=file)
    if diff is not None:
        raise TrainingSchemaMismatch(diff, path=file)
    return d.select(names)


def concat(parts: list[BankData]) -> BankData:
    names = parts[0].feature_names
    for p in parts[1:]:
        if p.feature_names != names:
            raise TrainingDataInvalid("banks' CSV files have different feature columns")
    return BankData(
        ids=[i for p in parts for i in p.ids],
        x=np.vstack([p.x for p in parts]),
        y=np.concatenate([p.y for p in parts]),
        feature_names=names,
    )
