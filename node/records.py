"""Columnar raw records of a group of enterprises, the input of every feature function.

A :class:`Batch` holds, for ``n`` enterprises and an as-of month, each raw table as
numpy columns plus ``_ent`` (the row's enterprise, ``0..n-1``). Typed conversions:
``month`` columns become month ordinals (int64), ``date`` columns become fractional
month ordinals (float64: ``month + (day - 1) / 31``, NaN when empty), ``int`` int64,
``float`` float64, ``str`` numpy unicode. The same structure is built from CSV files
(``read_csv``, whole population) or from the node's database (one batch of requests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcredit.node.schema import BY_DEPARTMENT, TableSpec, parse_month_column

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Columns = dict[str, npt.NDArray[Any]]


class RawDataError(ValueError):
    """A raw file does not match its table's declared columns or types."""


def parse_dates(values: npt.NDArray[np.str_] | Sequence[str]) -> FloatArray:
    """``YYYY-MM-DD`` (or empty) -> fractional month ordinal (NaN when empty)."""
    arr = np.asarray(values, dtype="U10")
    out = np.full(arr.shape, np.nan)
    present = arr != ""
    if present.any():
        p = arr[present]
        months = parse_month_column(p)
        chars = p.view("U1").reshape(p.size, -1)
        if chars.shape[1] < 10:
            raise RawDataError(f"expected a date as YYYY-MM-DD, got {str(p[0])!r}")
        d = (chars[:, 8:10].view(np.uint32).astype(np.int64) - ord("0")) @ np.array([10, 1])
        if ((d < 1) | (d > 31)).any():
            bad = p[(d < 1) | (d > 31)][0]
            raise RawDataError(f"expected a date as YYYY-MM-DD, got {str(bad)!r}")
        out[present] = months + (d - 1) / 31.0
    return out


def convert(spec: TableSpec, raw: Mapping[str, npt.NDArray[np.str_]]) -> Columns:
    """Text columns (as read from a file) -> typed columns per the table spec."""
    cols: Columns = {}
    for c in spec.columns:
        v = np.asarray(raw[c.name])
        try:
            if c.kind == "int":
                cols[c.name] = v.astype(np.int64) if v.size else np.zeros(0, np.int64)
            elif c.kind == "float":
                cols[c.name] = v.astype(np.float64) if v.size else np.zeros(0)
            elif c.kind == "month":
                cols[c.name] = parse_month_column(v)
            elif c.kind == "date":
                if not c.nullable and v.size and (v == "").any():
                    raise RawDataError("empty value in a required date column")
                cols[c.name] = parse_dates(v)
            else:
                cols[c.name] = v.astype(str)
        except ValueError as exc:
            raise RawDataError(
                f"{spec.department}/{spec.file_name} column {c.name}: {exc}"
            ) from exc
    return cols


def read_csv_text(path: Path, spec: TableSpec) -> dict[str, npt.NDArray[np.str_]]:
    """Read a table's CSV file into text columns, checking the header (fast, vectorised)."""
    text = path.read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    expected = list(spec.column_names)
    got = header.strip().split(",")
    if got != expected:
        raise RawDataError(f"{path}: expected columns {','.join(expected)}, got {header.strip()}")
    body = body.rstrip("\n")
    k = len(expected)
    if not body:
        return {c: np.zeros(0, dtype="U1") for c in expected}
    lines = body.count("\n") + 1
    cells = np.array(body.replace("\n", ",").split(","))
    if cells.size != lines * k:
        # Find the first malformed line for a precise message.
        for no, line in enumerate(body.split("\n"), start=2):
            if line.count(",") != k - 1:
                raise RawDataError(
                    f"{path}: line {no}: expected {k} fields, got {line.count(',') + 1}"
                )
    grid = cells.reshape(lines, k)
    return {c: grid[:, j] for j, c in enumerate(expected)}


@dataclass
class Batch:
    """Raw tables of ``n`` enterprises (rows tagged with ``_ent``) as of a month."""

    department: str
    n: int
    as_of: int
    tables: dict[str, Columns] = field(default_factory=dict)

    def t(self, name: str) -> Columns:
        return self.tables[name]

    def present(self) -> BoolArray:
        """Enterprises the department holds at least one record about."""
        out = np.zeros(self.n, dtype=bool)
        for cols in self.tables.values():
            out[cols["_ent"]] = True
        return out

    # -- vectorised group operations ------------------------------------------------------

    def count(self, table: str, mask: BoolArray | None = None) -> FloatArray:
        ent = self.t(table)["_ent"]
        if mask is not None:
            ent = ent[mask]
        return np.bincount(ent, minlength=self.n).astype(np.float64)

    def sum(
        self, table: str, values: npt.NDArray[Any], mask: BoolArray | None = None
    ) -> FloatArray:
        ent = self.t(table)["_ent"]
        v = values.astype(np.float64)
        if mask is not None:
            ent, v = ent[mask], v[mask]
        return np.bincount(ent, weights=v, minlength=self.n).astype(np.float64)

    def reduce(
        self, table: str, values: npt.NDArray[Any], how: str, mask: BoolArray | None = None
    ) -> FloatArray:
        """Per-enterprise min or max (NaN where no row)."""
        ent = self.t(table)["_ent"]
        v = values.astype(np.float64)
        if mask is not None:
            ent, v = ent[mask], v[mask]
        if how == "min":
            out = np.full(self.n, np.inf)
            np.minimum.at(out, ent, v)
            out[np.isinf(out)] = np.nan
        else:
            out = np.full(self.n, -np.inf)
            np.maximum.at(out, ent, v)
            out[np.isneginf(out)] = np.nan
        return out

    def at_max(
        self,
        table: str,
        key: npt.NDArray[Any],
        values: npt.NDArray[Any],
        mask: BoolArray | None = None,
    ) -> FloatArray:
        """Per enterprise, ``values`` of the row with the largest ``key`` (NaN where no row)."""
        ent = self.t(table)["_ent"]
        k, v = key.astype(np.float64), values.astype(np.float64)
        if mask is not None:
            ent, k, v = ent[mask], k[mask], v[mask]
        out = np.full(self.n, np.nan)
        if len(ent):
            order = np.lexsort((k, ent))
            last = np.r_[ent[order][1:] != ent[order][:-1], True]
            out[ent[order][last]] = v[order][last]
        return out

    def window(self, table: str, col: str, months: int, *, end_offset: int = 0) -> BoolArray:
        """Rows whose ``col`` (month or date) falls in the ``months`` months ending
        ``end_offset`` months before the as-of month (inclusive)."""
        v = self.t(table)[col]
        end = self.as_of - end_offset
        f = np.floor(v)
        return (f > end - months) & (f <= end)


def empty_batch(department: str, n: int, as_of: int) -> Batch:
    b = Batch(department, n, as_of)
    for spec in BY_DEPARTMENT[department]:
        cols = convert(spec, {c: np.zeros(0, dtype="U1") for c in spec.column_names})
        cols["_ent"] = np.zeros(0, dtype=np.int64)
        b.tables[spec.name] = cols
    return b


def batch_from_columns(
    department: str, codes: Sequence[str], as_of: int, tables: Mapping[str, Columns]
) -> Batch:
    """Tag rows with their enterprise index in ``codes`` (rows of other codes dropped)."""
    order = np.argsort(np.asarray(codes))
    sorted_codes = np.asarray(codes)[order]
    b = Batch(department, len(codes), as_of)
    for spec in BY_DEPARTMENT[department]:
        cols = tables[spec.name]
        code = cols["code"]
        if len(sorted_codes) == 0 or len(code) == 0:
            keep = np.zeros(len(code), dtype=bool)
            ent = np.zeros(len(code), dtype=np.int64)
        else:
            pos = np.clip(np.searchsorted(sorted_codes, code), 0, len(sorted_codes) - 1)
            keep = sorted_codes[pos] == code
            ent = order[pos]
        out = {k: v[keep] for k, v in cols.items()}
        out["_ent"] = ent[keep].astype(np.int64)
        b.tables[spec.name] = out
    return b
