"""`fedcredit world generate`: write a synthetic city."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcredit.common.cliutil import err_console, output, user_errors

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

world = typer.Typer()
GROUPS: dict[str, typer.Typer] = {"world": world}


@world.command("generate")
def generate_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the city to.")],
    enterprises: Annotated[int, typer.Option(help="Number of enterprises.")] = 2000,
    banks: Annotated[int, typer.Option(help="Number of banks with loan books.")] = 7,
    months: Annotated[int, typer.Option(help="Months of departmental records.")] = 24,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    as_of: Annotated[str, typer.Option(help="Last observed month, YYYY-MM.")] = "2025-12",
    as_json: JsonOpt = False,
) -> None:
    """Generate enterprises, the 12 departments' raw records and the banks' loan books."""
    from fedcredit.world.generate import WorldParams, generate

    with user_errors(as_json):  # refused before the progress bar draws a line
        WorldParams(enterprises, banks, months, seed, as_of).validate()
    started = time.perf_counter()
    with (
        user_errors(as_json),
        Progress(
            TextColumn("{task.description:<36}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=as_json or not err_console.is_terminal,  # no bar lines in a log
            transient=False,
        ) as bar,
    ):
        # a task "world" on the bar, updated with each step (world.generate)
        manifest = generate(
            out, enterprises=enterprises, banks=banks, months=months, seed=seed,
            as_of=as_of, progress=bar,
        )  # fmt: skip
    elapsed = time.perf_counter() - started
    files = manifest.data["files"]
    rows = sum(int(v.get("rows", 0)) for v in files.values())
    result = {
        "out": str(out),
        "enterprises": enterprises,
        "banks": manifest.data["banks"],
        "months": months,
        "as_of": as_of,
        "seed": seed,
        "files": len(files),
        "rows": rows,
        "seconds": round(elapsed, 2),
        "manifest_sha256": _sha256(manifest.path),
    }
    table = Table(title=f"world in {out}")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for rel, info in files.items():
        if "rows" in info:
            table.add_row(rel, f"{info['rows']:,}")
    table.add_row("[bold]total", f"[bold]{rows:,}")
    output(result, as_json, table)
    if not as_json:
        typer.echo(f"{enterprises:,} enterprises, {rows:,} rows in {elapsed:.1f} s")


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


POLICY_KEYS = ("applications", "approved_paid", "application_payout_yuan", "cycle_days",
               "awards", "paid_yuan", "budgets_held", "policy_step_s")  # fmt: skip


@world.command("simulate")
def simulate_cmd(
    months: Annotated[int, typer.Option(help="Months to simulate.")] = 12,
    enterprises: Annotated[int, typer.Option(help="Platform enterprises.")] = 18_000,
    banks: Annotated[int, typer.Option(help="Financial institutions.")] = 23,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path(
        "bench/results/simulation"
    ),
    policies: Annotated[
        bool, typer.Option(help="Run the policy funds beside the marketplace.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Drive the synthetic city through the financing marketplace and the policy funds for a
    year; write a report, plots and the policy bench row."""
    from fedcredit.world.simulate import SimParams, simulate

    def progress(m: int, elapsed: float) -> None:
        if not as_json:
            err_console.print(f"month {m + 1}/{months} done, {elapsed:.0f} s")

    with user_errors(as_json):
        r = simulate(
            out,
            SimParams(
                enterprises=enterprises, banks=banks, months=months, seed=seed, policies=policies
            ),
            progress,
        )
        keys = ("loans", "amount", "channels", "needs", "wall_s")
        pol = {k: v for k, v in r.get("policies", {}).items() if k in POLICY_KEYS}
        output(
            {**{k: r[k] for k in keys}, "fund": r["fund"], "policies": pol,
             "bench": r.get("bench", []), "report": str(out / "report.md")},
            as_json,
        )  # fmt: skip
