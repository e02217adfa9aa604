"""A bank's own training rows: CSV (``id``, label, features) or the synthetic city."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedcredit.common.errors import InvalidArgument, NotFound


class TrainingDataNotFound(NotFound):
    reason = "TRAINING_DATA_NOT_FOUND"


class TrainingDataInvalid(InvalidArgument):
    reason = "TRAINING_DATA_INVALID"


@dataclass(frozen=True)
class BankData:
    ids: list[str]
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    feature_names: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.ids)


def _to_float(value: str) -> float:
    v = value.strip()
    if v == "" or v.lower() in ("nan", "na", "null", "none"):
        return float("nan")
    return float(v)


def load_csv(path: str | Path, label: str = "y", id_column: str = "id") -> BankData:
    """Read ``id,<label>,features...``; empty cells and 'NA' are missing values."""
    p = Path(path)
    if not p.is_file():
        raise TrainingDataNotFound(f"training CSV {p} does not exist", path=str(p))
    with p.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise TrainingDataInvalid(f"{p} is empty; expected a header line") from None
        if id_column not in header or label not in header:
            raise TrainingDataInvalid(
                f"{p}: expected columns {id_column!r} and {label!r} in the header, "
                f"got {', '.join(header[:6])}{'...' if len(header) > 6 else ''}"
            )
        i_id, i_y = header.index(id_column), header.index(label)
        feats = [i for i in range(len(header)) if i not in (i_id, i_y)]
        ids: list[str] = []
        xs: list[list[float]] = []
        ys: list[float] = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise TrainingDataInvalid(
                    f"{p}:{line_no}: expected {len(header)} fields, got {len(row)}"
                )
            try:
                yv = float(row[i_y])
                xv = [_to_float(row[i]) for i in feats]
            except ValueError as exc:
                raise TrainingDataInvalid(f"{p}:{line_no}: not a number ({exc})") from None
            if yv not in (0.0, 1.0):
                raise TrainingDataInvalid(
                    f"{p}:{line_no}: label {label!r} must be 0 or 1, got {row[i_y]!r}"
                )
            ids.append(row[i_id])
            ys.append(yv)
            xs.append(xv)
    if not ids:
        raise TrainingDataInvalid(f"{p} has a header but no rows")
    return BankData(
        ids=ids,
        x=np.asarray(xs, dtype=np.float64),
        y=np.asarray(ys, dtype=np.float64),
        feature_names=tuple(header[i] for i in feats),
    )


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
