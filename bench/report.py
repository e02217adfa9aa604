"""What every benchmark prints and writes: a rich table of rows and a JSON file.

A row is ``{"metric", "value", "unit", "target", "met"}``; ``met`` is None for rows without
a target (floors, references, breakdowns). bench/run_all.py reads these files back into the
README.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

Row = dict[str, Any]


def row(
    metric: str, value: float, unit: str, target: str | None = None, met: bool | None = None
) -> Row:
    """One result; pass ``target`` and ``met`` together for a row that has a target."""
    return {"metric": metric, "value": value, "unit": unit, "target": target, "met": met}


def table(title: str, rows: Sequence[Row], *, fmt: str = ",.1f") -> Table:
    out = Table(title=title)
    for col in ("metric", "value", "unit", "target", "met"):
        out.add_column(col)
    for r in rows:
        met = r["met"]
        out.add_row(
            str(r["metric"]), format(r["value"], fmt), str(r["unit"]), str(r["target"] or ""),
            "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"),
        )  # fmt: skip
    return out


def write(path: Path, document: dict[str, Any], console: Console | None = None) -> None:
    """Write ``document`` (with the time it was measured) as indented JSON."""
    document = {**document, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    if console is not None:
        console.print(f"wrote {path}")
