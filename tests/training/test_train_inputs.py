"""`fedcredit train --csv ...`: every bad input refused before Flower starts, in one line
naming the file, the line and the column, exit 3, never a traceback (issue 18)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.training.bank.data import (
    TrainingDataInvalid,
    TrainingSchemaMismatch,
    align_features,
    load_csv,
)

HEADER = ["id", "y", "age", "income", "debt"]


def _rows(seed: int, n: int = 40, start: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] + rng.logistic(size=n) > 0).astype(int)
    y[:2] = [0, 1]  # both classes, always
    return [[str(start + i), str(y[i]), *(f"{v:.6g}" for v in x[i])] for i in range(n)]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@dataclass
class Case:
    name: str
    # writes the three banks' files and the test file; returns the CLI's extra arguments
    make: Callable[[Path], list[str]]
    expect: list[str]  # substrings of the one stderr line (file, line, column, ...)
    code: int = 3
    extra: list[str] = field(default_factory=list)


def _banks(d: Path, bad: Callable[[Path], Path] | None = None) -> list[str]:
    """Three good banks (bank0..2.csv) and test.csv; ``bad`` rewrites bank1.csv."""
    paths = [_write(d / f"bank{b}.csv", HEADER, _rows(b, start=100 * b)) for b in range(3)]
    if bad is not None:
        paths[1] = bad(d / "bank1.csv")
    _write(d / "test.csv", HEADER, _rows(9, start=1000))
    return [a for p in paths for a in ("--csv", str(p))]


def _edit(row: int, col: str, value: str) -> Callable[[Path], Path]:
    def bad(p: Path) -> Path:
        rows = _rows(1, start=100)
        rows[row - 2][HEADER.index(col)] = value
        return _write(p, HEADER, rows)

    return bad


def _header(header: list[str]) -> Callable[[Path], Path]:
    def bad(p: Path) -> Path:
        rows = _rows(1, start=100)
        keep = [HEADER.index(h) if h in HEADER else HEADER.index("debt") for h in header]
        return _write(p, header, [[r[i] for i in keep] for r in rows])

    return bad


def _raw(data: bytes) -> Callable[[Path], Path]:
    def bad(p: Path) -> Path:
        p.write_bytes(data)
        return p

    return bad


def _labels(value: str) -> Callable[[Path], Path]:
    def bad(p: Path) -> Path:
        rows = _rows(1, start=100)
        for r in rows:
            r[1] = value
        return _write(p, HEADER, rows)

    return bad


def _test_file(
    header: list[str], rows: list[list[str]] | None = None
) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        args = _banks(d)
        src = _rows(9, start=1000)
        idx = [HEADER.index(h) if h in HEADER else 2 for h in header]
        body = rows if rows is not None else [[r[i] for i in idx] for r in src]
        _write(d / "other_test.csv", header, body)
        return [*args, "--test-csv", str(d / "other_test.csv")]

    return make


def _second_bank0(d: Path) -> str:
    (d / "sub").mkdir()
    return str(_write(d / "sub" / "bank0.csv", HEADER, _rows(4)))


def _bank(bad: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda d: _banks(d, bad)


CASES = [
    Case(
        "missing label column",
        _bank(_header(["id", "age", "income", "debt"])),
        ["bank1.csv:1:", "column 'y'", "label column"],
    ),
    Case(
        "missing id column",
        _bank(_header(["y", "age", "income", "debt"])),
        ["bank1.csv:1:", "column 'id'"],
    ),
    Case(
        "non-numeric value",
        _bank(_edit(7, "income", "12,5k")),
        ["bank1.csv:7:", "column 'income'", "expected a number", "'12,5k'"],
    ),
    Case(
        "infinite value", _bank(_edit(5, "age", "inf")), ["bank1.csv:5:", "column 'age'", "'inf'"]
    ),
    Case(
        "label yes", _bank(_edit(4, "y", "yes")), ["bank1.csv:4:", "column 'y'", "0 or 1", "'yes'"]
    ),
    Case("label 2", _bank(_edit(9, "y", "2")), ["bank1.csv:9:", "column 'y'", "'2'"]),
    Case("label NaN", _bank(_edit(3, "y", "NaN")), ["bank1.csv:3:", "column 'y'", "'NaN'"]),
    Case("label empty", _bank(_edit(3, "y", "")), ["bank1.csv:3:", "column 'y'", "''"]),
    Case("empty file", _bank(_raw(b"")), ["bank1.csv:1:", "empty file"]),
    Case("blank lines only", _bank(_raw(b"\n\n")), ["bank1.csv:1:", "empty file"]),
    Case(
        "header only",
        _bank(_raw(b"id,y,age,income,debt\n")),
        ["bank1.csv:2:", "expected rows after the header"],
    ),
    Case(
        "not UTF-8",
        _bank(_raw(b"id,y,age,income,debt\n1,0,3,4,5\n2,1,caf\xe9,4,5\n")),
        ["bank1.csv:3:", "field 3", "UTF-8", "0xe9"],
    ),
    Case(
        "short row",
        _bank(_raw(b"id,y,age,income,debt\n1,0,3,4,5\n2,1,3,4\n")),
        ["bank1.csv:3:", "expected 5 fields", "got 4"],
    ),
    Case(
        "duplicate column",
        _bank(_raw(b"id,y,age,age,debt\n1,0,3,4,5\n")),
        ["bank1.csv:1:", "column 'age'", "twice"],
    ),
    Case(
        "duplicate id",
        _bank(_raw(b"id,y,age,income,debt\n7,0,3,4,5\n7,1,3,4,5\n")),
        ["bank1.csv:3:", "column 'id'", "'7'", "line 2"],
    ),
    Case(
        "dropped column",
        _bank(_header(["id", "y", "age", "income"])),
        ["bank1.csv:1:", "column 'debt'", "bank0.csv"],
    ),
    Case(
        "renamed column",
        _bank(_header(["id", "y", "age", "income", "debts"])),
        ["bank1.csv:1:", "column 'debts'", "expected 'debt'", "bank0.csv"],
    ),
    Case(
        "extra column",
        _bank(_header(["id", "y", "age", "income", "debt", "zip"])),
        ["bank1.csv:1:", "column 'zip'", "bank0.csv"],
    ),
    Case(
        "columns in another order",
        _bank(_header(["id", "y", "income", "age", "debt"])),
        ["bank1.csv:1:", "column 'income'", "expected 'age'", "same order"],
    ),
    Case(
        "bank file does not exist",
        lambda d: [*_banks(d), "--csv", str(d / "nope.csv")],
        ["nope.csv", "does not exist"],
    ),
    Case(
        "bank file is a directory",
        lambda d: [*_banks(d), "--csv", str(d)],
        ["--csv", "a directory"],
    ),
    Case(
        "test file does not exist",
        lambda d: [*_banks(d), "--test-csv", str(d / "missing_test.csv")],
        ["missing_test.csv", "--test-csv", "does not exist"],
    ),
    Case(
        "test file drops a column",
        _test_file(["id", "y", "age", "income"]),
        ["other_test.csv:1:", "column 'debt'", "bank0.csv"],
    ),
    Case(
        "test file renames a column",
        _test_file(["id", "y", "age", "income", "Debt"]),
        ["other_test.csv:1:", "column 'Debt'", "expected 'debt'"],
    ),
    Case(
        "test file has one class",
        _test_file(HEADER, [[str(i), "0", "1", "2", "3"] for i in range(9)]),
        ["other_test.csv:2-10:", "column 'y'", "both labels"],
    ),
    Case(
        "test file non-numeric",
        _test_file(HEADER, [["1", "0", "x1", "2", "3"]]),
        ["other_test.csv:2:", "column 'age'", "'x1'"],
    ),
    Case(
        "bagging with a one-class bank",
        _bank(_labels("0")),
        ["bank1.csv:2-41:", "column 'y'", "--strategy bagging", "only 0"],
        extra=["--strategy", "bagging"],
    ),
    Case(
        "cyclic with a one-class bank",
        _bank(_labels("1")),
        ["bank1.csv:2-41:", "column 'y'", "--strategy cyclic", "only 1"],
        extra=["--strategy", "cyclic"],
    ),
    Case(
        "every bank one class",
        lambda d: [a for b in range(3) for a in ("--csv", str(_labels("0")(d / f"b{b}.csv")))],
        ["column 'y'", "among all the banks"],
    ),
    Case(
        "same file name twice",
        lambda d: [*_banks(d), "--csv", _second_bank0(d)],
        ["bank0.csv twice"],
    ),
    Case(
        "SecAgg+ with 2 banks",
        lambda d: _banks(d)[:4],
        ["at least 3 banks", "SecAgg+", "subtract"],
        extra=["--secagg"],
    ),
    Case(
        "--min-banks below SecAgg+'s 3",
        _bank(lambda p: _write(p, HEADER, _rows(1))),
        ["--min-banks must be >= 3 with SecAgg+", "subtract"],
        extra=["--secagg", "--min-banks", "2"],
    ),
    Case(
        "more banks wanted than given",
        _bank(lambda p: _write(p, HEADER, _rows(1))),
        ["at least 5 banks", "got 3"],
        extra=["--min-banks", "5"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_3(tmp_path: Path, case: Case) -> None:
    args = case.make(tmp_path)
    res = CliRunner().invoke(
        build_app(), ["train", "--engine", "simulation", "--trees", "2", *case.extra, *args]
    )
    assert res.exit_code == case.code, (res.exit_code, res.stderr, res.stdout)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.output and "ray" not in res.stderr.lower()
    assert lines[0].startswith("error: "), lines[0]
    for part in case.expect:
        assert part in lines[0], (part, lines[0])
    assert res.stdout == ""  # nothing trained, nothing printed


def test_json_error_names_reason(tmp_path: Path) -> None:
    args = _banks(tmp_path, _edit(7, "income", "12,5k"))
    res = CliRunner().invoke(build_app(), ["train", "--json", *args])
    assert res.exit_code == 3
    err = json.loads(res.stdout)["error"]
    assert err["reason"] == "TRAINING_DATA_INVALID"
    assert err["metadata"]["line"] == "7" and err["metadata"]["column"] == "income"


def test_load_csv_accepts_bom_missing_values_and_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "b.csv"
    p.write_bytes(b"\xef\xbb\xbfid,y,a,b\r\n1,0,,NA\r\n\r\n2,1.0,3.5,-1e3\r\n")
    d = load_csv(p)
    assert d.feature_names == ("a", "b") and d.ids == ["1", "2"]
    assert np.isnan(d.x[0]).all() and d.x[1].tolist() == [3.5, -1000.0]
    assert d.y.tolist() == [0.0, 1.0] and d.one_class() is None


def test_test_file_columns_reordered_by_name(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "t.csv", ["debt", "y", "id", "age", "income"], [["3", "1", "9", "1", "2"]]
    )
    d = align_features(load_csv(p), ("age", "income", "debt"), file=str(p), reference="bank0.csv")
    assert d.feature_names == ("age", "income", "debt") and d.x.tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(TrainingSchemaMismatch, match=r"t.csv:1: column 'debt': not in bank0.csv"):
        align_features(load_csv(p), ("age", "income"), file=str(p), reference="bank0.csv")
    with pytest.raises(TrainingDataInvalid):
        load_csv(_write(tmp_path / "e.csv", ["id", "y"], [["1", "0"]]))
