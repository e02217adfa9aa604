"""Comparing two files' feature columns by name: one sentence naming the column that differs."""

from __future__ import annotations

from collections.abc import Sequence


def schema_difference(
    expected: Sequence[str], got: Sequence[str], *, reference: str, file: str
) -> str | None:
    """One sentence naming the one column that differs between two feature lists
    (missing, extra or renamed), or None when they hold the same names."""
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    if missing and extra and len(missing) == len(extra) == 1:
        return (
            f"{file}:1: column {extra[0]!r}: expected {missing[0]!r} as in {reference} (renamed?)"
        )
    if missing:
        return f"{file}:1: column {missing[0]!r}: expected as in {reference}, got none"
    if extra:
        return f"{file}:1: column {extra[0]!r}: not in {reference}; expected the same features"
    return None
