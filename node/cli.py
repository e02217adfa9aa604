"""`fedcredit node load|serve|catalog|status` (also under `fedcredit department`)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcredit.common.cliutil import err_console, output, user_errors
from fedcredit.common.departments import BY_ID
from fedcredit.common.errors import InvalidArgument

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DeptOpt = Annotated[str, typer.Option("--department", help="Department id, e.g. tax.")]

# The same commands under `fedcredit node` and `fedcredit department`.
node_app = typer.Typer()
department_app = typer.Typer()
GROUPS: dict[str, typer.Typer] = {"node": node_app, "department": department_app}


class DatabaseRequired(InvalidArgument):
    reason = "DATABASE_REQUIRED"


def _database(department: str, config: Path | None, database: str | None) -> str:
    if database:
        return database
    if config is not None:
        from fedcredit.common.config import load_config

        return load_config(config).node(department).database
    raise DatabaseRequired(
        "give --config FILE (the node's database from the deployment) or --database URL"
    )


def _check_department(department: str) -> None:
    if department not in BY_ID:
        from fedcredit.node.errors import UnknownDepartment

        raise UnknownDepartment(
            f"unknown department {department!r}; expected one of {', '.join(BY_ID)}"
        )


@node_app.command("load")
@department_app.command("load")
def load_cmd(
    department: DeptOpt,
    source: Annotated[
        Path, typer.Option("--from", help="World directory or departments/<id> export.")
    ],
    append: Annotated[
        bool, typer.Option("--append", help="Add the rows instead of replacing.")
    ] = False,
    config: Annotated[Path | None, typer.Option("--config", help="Deployment file.")] = None,
    database: Annotated[
        str | None, typer.Option("--database", help="Database URL (overrides --config).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load a department's raw records into its node's own database."""
    from fedcredit.node.store import NodeStore

    with user_errors(as_json):
        _check_department(department)
        store = NodeStore(_database(department, config, database), department)
        with Progress(
            TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, disable=as_json,
        ) as bar:  # fmt: skip
            task = bar.add_task("reading files", total=None)

            def progress(table: str, done: int, total: int) -> None:
                bar.update(task, description=f"loading {table}", completed=done, total=total)

            result = store.load(source, append=append, progress=progress)
        store.close()
    table = Table(title=f"{department} node: {result.mode} load, as of {result.as_of}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in result.rows.items():
        table.add_row(name, f"{n:,}")
    data = {
        "department": result.department, "mode": result.mode, "rows": result.rows,
        "as_of": result.as_of, "data_version": result.data_version, "seconds": round(result.seconds, 2),
    }  # fmt: skip
    output(data, as_json, table)


@node_app.command("status")
@department_app.command("status")
def status_cmd(
    department: DeptOpt,
    config: Annotated[Path | None, typer.Option("--config", help="Deployment file.")] = None,
    database: Annotated[str | None, typer.Option("--database", help="Database URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The node database's department, as-of month and data version."""
    from fedcredit.node.store import NodeStore

    with user_errors(as_json):
        _check_department(department)
        store = NodeStore(_database(department, config, database), department)
        st = store.state()
        store.close()
    output(
        {"department": st.department, "as_of": st.as_of_text, "data_version": st.data_version},
        as_json,
    )


@node_app.command("catalog")
@department_app.command("catalog")
def catalog_cmd(
    department: Annotated[
        str | None, typer.Option("--department", help="Only this department.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The feature catalog (definitions; no data needed)."""
    from fedcredit.node import catalog

    with user_errors(as_json):
        if department is not None:
            _check_department(department)
        feats = [f for f in catalog.FEATURES if department is None or f.department == department]
    table = Table(title=f"feature catalog ({len(feats)} features)")
    for col in ("name", "category", "unit", "type", "sensitivity", "description"):
        table.add_column(col)
    for f in feats:
        table.add_row(f.name, f.category, f.unit, f.type, f.sensitivity, f.description)
    data = [
        {"name": f.name, "department": f.department, "category": f.category, "description": f.description,
         "unit": f.unit, "type": f.type, "sensitivity": f.sensitivity, "tables": list(f.tables),
         "computation": f.computation, "zero_when_absent": f.absent == "zero",
         "significant_digits": f.significant_digits}
        for f in feats
    ]  # fmt: skip
    output(data, as_json, table)


@node_app.command("serve")
@department_app.command("serve")
def serve_cmd(
    department: DeptOpt,
    config: Annotated[Path, typer.Option("--config", help="Deployment file.")],
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC (debugging only).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Serve the department's FeatureService over mTLS until interrupted."""
    from fedcredit.common.config import load_config
    from fedcredit.common.gctune import tune_for_service
    from fedcredit.node.runtime import build_process

    with user_errors(as_json):
        _check_department(department)
        dep = load_config(config)
        from fedcredit.common import metrics

        metrics.start(dep.node(department).metrics, f"node-{department}")
        proc = build_process(dep, department, insecure=insecure)
        proc.start()

        def data_age() -> float:
            at = proc.store.last_load_at()
            return -1.0 if at is None else time.time() - at

        metrics.gauge_from(metrics.NODE_DATA_AGE, data_age, metrics.service(), proc.org)
    tune_for_service()
    info: dict[str, Any] = {
        "department": department, "organisation": proc.org, "port": proc.port,
        "address": dep.node(department).address, "tls": not insecure,
        "witness": proc.witness is not None, "publishing_checkpoints": proc.publisher is not None,
        "notes": proc.notes,
    }  # fmt: skip
    output(info, as_json)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    proc.stop()
