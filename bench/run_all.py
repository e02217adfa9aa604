"""`make bench`: run every benchmark in bench/, then print one combined table.

Each benchmark module ``bench/bench_<area>.py`` runs on its own (``python -m
bench.bench_<area>``), prints its table and writes ``bench/results/<area>.json``
with a list of rows ``{"metric", "value", "unit", "target", "met"}``. This
runner calls each in its own process (so one crashing does not hide the
others), then reads the JSON files and prints the combined table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
ORDER = ["ledger", "consent", "node", "coordinator", "training"]
# Arguments per benchmark under `make bench` (which must finish in 15 minutes): the training
# benchmark's strong settings take ~11 minutes alone; their rows are kept from the last
# full `python -m bench.bench_training` run.
ARGS = {"training": ["--skip-strong"]}
# Run only when named (`python -m bench.run_all training_city`): the synthetic-city training
# comparison takes 5-8 minutes alone; `make bench` shows the rows of its last run.
# training_rounds starts a Deployment Engine of 7 banks and trains 5 runs (~7 minutes).
# training_privacy trains 60 private models on FATE and on a generated 40,000-firm city
# (~8 minutes on the shared machine).
SEPARATE = {"training_city", "training_rounds", "training_privacy"}


def modules() -> list[str]:
    found = sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))
    return [m for m in ORDER if m in found] + [m for m in found if m not in ORDER]


def markdown() -> str:
    """The combined table as Markdown, for the README (from the JSON files as they are)."""
    lines = ["| area | metric | value | unit | target | met |", "|---|---|---:|---|---|---|"]
    for area in modules():
        path = RESULTS / f"{area}.json"
        if not path.exists():
            continue
        for row in rows_of(json.loads(path.read_text())):
            met = row.get("met")
            cells = [
                area, str(row.get("metric")), _fmt(row.get("value")), str(row.get("unit", "")),
                str(row.get("target") or ""), "" if met is None else ("yes" if met else "**no**"),
            ]  # fmt: skip
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def update_readme(path: Path) -> int:
    """Replace the table between the README's bench markers with the latest results."""
    text = path.read_text()
    if START not in text or END not in text:
        sys.stderr.write(f"{path}: expected the markers {START} and {END}\n")
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{markdown()}{END}{tail}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args == ["--markdown"]:
        sys.stdout.write(markdown())
        return 0
    if len(args) == 2 and args[0] == "--readme":
        return update_readme(Path(args[1]))
    console = Console()
    failures: list[str] = []
    timings: dict[str, float] = {}
    for area in modules():
        if (args and area not in args) or (not args and area in SEPARATE):
            continue
        console.rule(f"bench {area}")
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", f"bench.bench_{area}", *ARGS.get(area, [])], cwd=BENCH_DIR.parent
        )
        timings[area] = time.perf_counter() - t0
        if res.returncode != 0:
            failures.append(area)
    table = Table(title="fedcredit benchmarks (bench/results/*.json)")
    for col in ("area", "metric", "value", "unit", "target", "met"):
        table.add_column(col)
    for area in modules():
        path = RESULTS / f"{area}.json"
        if not path.exists():
            table.add_row(area, "(no results)", "", "", "", "")
            continue
        for row in rows_of(json.loads(path.read_text())):
            met = row.get("met")
            table.add_row(
                area, str(row.get("metric")), _fmt(row.get("value")), str(row.get("unit", "")), str(row.get("target") or ""),
                "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"),
            )  # fmt: skip
    console.print(table)
    for area, secs in timings.items():
        console.print(f"{area}: {secs:.1f} s")
    if failures:
        console.print(f"[red]benchmarks that failed: {', '.join(failures)}[/]")
        return 1
    return 0


def rows_of(data: Any) -> list[dict[str, Any]]:
    """Rows of one results file: a list of rows, ``{"rows": [...]}``, or the training
    benchmark's per-setting tables (``{"results": [{"setting", "rows": [trainer rows]}]}``)."""
    if isinstance(data, list):
        return data
    if "rows" in data:
        return list(data["rows"])
    out: list[dict[str, Any]] = []
    dataset = data.get("dataset", "")
    for res in data.get("results", []):
        for r in res.get("rows", []):
            name = f"{dataset} {res.get('setting', '')}: {r.get('trainer')}".strip()
            out.append(
                {
                    "metric": f"{name} AUC",
                    "value": r.get("auc"),
                    "unit": "AUC",
                    "target": None,
                    "met": None,
                }
            )
            if r.get("seconds_per_tree") is not None:
                out.append({"metric": f"{name} time per tree", "value": r["seconds_per_tree"], "unit": "s",
                            "target": None, "met": None})  # fmt: skip
    return out


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


if __name__ == "__main__":
    raise SystemExit(main())
