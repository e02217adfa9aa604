"""CSV mode's inputs checked before Flower starts: every bank's file, the test file.

Each problem is one :class:`TrainingDataInvalid` (or schema mismatch) naming the file,
the line and the column, so ``fedcredit train`` exits 3 with one line instead of the
Simulation Engine's Ray tracebacks. The banks' ClientApps run the same
:func:`~fedcredit.training.bank.data.load_csv` in a real deployment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcredit.training.bank.data import (
    BankData,
    TrainingDataInvalid,
    align_features,
    check_same_features,
    load_csv,
)

# Strategies that boost on each bank's rows alone (a bank with one class cannot).
PER_BANK_STRATEGIES = ("bagging", "cyclic")


@dataclass(frozen=True)
class CsvInputs:
    banks: list[tuple[str, BankData]]  # (file name, rows), in the order given
    test: BankData | None  # columns in the banks' order

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.banks[0][1].feature_names


def _readable(p: Path, option: str) -> None:
    if not p.is_file():
        raise TrainingDataInvalid(
            f"{p}: expected a CSV file for {option}, got "
            + ("a directory" if p.is_dir() else "none: it does not exist"),
            path=str(p),
        )
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise TrainingDataInvalid(
            f"{p}: expected a readable file for {option}, got {exc.strerror}", path=str(p)
        ) from None


def _one_class(name: str, d: BankData, label: str, why: str) -> None:
    only = d.one_class()
    if only is not None:
        raise TrainingDataInvalid(
            f"{name}:2-{d.rows + 1}: column {label!r}: expected both labels 0 and 1 {why}, "
            f"got only {only:g} in all {d.rows} rows",
            path=name,
            column=label,
        )


def check_csv_inputs(
    csvs: Sequence[Path], test_csv: Path | None, *, label: str, strategy: str
) -> CsvInputs:
    """Every file read and checked, the first problem raised; nothing is trained."""
    for p in csvs:
        _readable(p, "--csv")
    if test_csv is not None:
        _readable(test_csv, "--test-csv")
    seen: dict[str, Path] = {}
    for p in csvs:
        if p.name in seen:
            raise TrainingDataInvalid(
                f"{p}: expected one file per bank with distinct names (a file's name names "
                f"its bank), got {p.name} twice ({seen[p.name]})",
                path=str(p),
            )
        seen[p.name] = p
    banks = [(str(p), load_csv(p, label)) for p in csvs]
    check_same_features(banks)
    if strategy in PER_BANK_STRATEGIES:
        for name, d in banks:
            _one_class(name, d, label, f"in every bank's file for --strategy {strategy}")
    if all(d.one_class() == banks[0][1].one_class() is not None for _, d in banks):
        raise TrainingDataInvalid(
            f"{banks[0][0]}: column {label!r}: expected both labels 0 and 1 among all the "
            f"banks' rows, got only {banks[0][1].one_class():g}",
            column=label,
        )
    test = None
    if test_csv is not None:
        raw = load_csv(test_csv, label)
        test = align_features(
            raw, banks[0][1].feature_names, file=str(test_csv), reference=banks[0][0]
        )
        _one_class(str(test_csv), test, label, "in --test-csv to measure AUC")
    return CsvInputs(banks, test)
