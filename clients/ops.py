"""Operator commands: `fedcredit up | status | down` and `fedcredit demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedcredit.clients.supervisor import (
    ServiceNotReady,
    Supervisor,
    portal_healthy,
    service_specs,
)
from fedcredit.common.cliutil import console, fail, output, user_errors
from fedcredit.common.config import load_config
from fedcredit.common.errors import ConfigError, InvalidArgument

ConfigOpt = Annotated[
    Path, typer.Option("--config", help="The deployment file (fedcredit init writes one).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

# `fedcredit up | status | down | demo` sit on the root itself (the "" group).
ops = typer.Typer()
operator = typer.Typer()
GROUPS: dict[str, typer.Typer] = {"": ops, "operator": operator}


def _status_table(rows: list[dict[str, object]]) -> Table:
    t = Table(title="services")
    for col in ("service", "org", "address", "pid", "running", "healthy", "metrics"):
        t.add_column(col)
    for r in rows:
        m = r.get("metrics")
        shown = ", ".join(f"{k} {v:,.0f}" for k, v in m.items()) if isinstance(m, dict) else "-"
        t.add_row(
            str(r["service"]), str(r["org"]), str(r["address"]), str(r["pid"] or "-"),
            "[green]yes[/]" if r["running"] else "[red]no[/]", "[green]SERVING[/]" if r["healthy"] else "[red]no[/]",
            shown,
        )  # fmt: skip
    return t


def _with_metrics(dep: Any, rows: list[dict[str, object]]) -> None:
    """Each running service's essentials from its /metrics (requests, refusals, ledger size,
    checkpoint age, disclosures, ...): the same figures an operator's Prometheus sees."""
    from fedcredit.common.metrics import essentials

    where = {s: c.metrics for s, c in dep.services.items()}
    where.update({f"node-{n.department}": n.metrics for n in dep.nodes})
    for r in rows:
        address = where.get(str(r["service"]), "")
        r["metrics"] = essentials(address) if address and r["running"] else None


@ops.command("up")
def up(
    config: ConfigOpt,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Start only these services (e.g. ledger, node-tax)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds each service has to become healthy.")
    ] = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """Start every service of the deployment as a local process, each healthy before the next."""
    with user_errors(as_json):
        if not (0 < timeout < 86_400):  # NaN fails this too
            raise InvalidArgument(
                f"expected --timeout in seconds, more than 0 and under a day, got {timeout}",
                reason="TIMEOUT_OUT_OF_RANGE",
            )
        dep = load_config(config)
        sup = Supervisor(dep)
        known = service_specs(dep)
        unknown = sorted(set(only or ()) - {s.name for s in known})
        if unknown:  # a typo would otherwise start nothing and exit 0
            raise InvalidArgument(
                f"expected --only among {', '.join(s.name for s in known)}; got "
                f"{', '.join(repr(u[:40]) for u in unknown[:3])}",
                reason="UNKNOWN_SERVICE",
            )
        specs = [s for s in known if not only or s.name in only]
        with console.status("starting services...") if not as_json else _null():
            sup.start_all(specs, timeout=timeout)
        rows = sup.status()
        wanted = {s.name for s in specs}
        down = [str(r["service"]) for r in rows if r["service"] in wanted and not r["healthy"]]
        if down:
            # A service that is up but not serving is a failed `up`, never exit 0.
            raise ServiceNotReady(
                f"not healthy after start: {', '.join(down)}; see `fedcredit status` and "
                f"{sup.logs}/<service>.log",
                services=",".join(down),
            )
    output(rows, as_json, _status_table(rows))


def _witness_rows(dep: object, rows: list[dict[str, object]]) -> Table | None:
    """The ledger's witness pushes (cosigned / refused / unreachable counts, last reason),
    from its database: added to the ledger's row and shown as a second table."""
    from sqlalchemy.exc import SQLAlchemyError

    from fedcredit.ledger.store import read_witness_status

    try:
        seen = read_witness_status(dep.service("ledger").database)  # type: ignore[attr-defined]
    except (SQLAlchemyError, ConfigError):
        return None
    for r in rows:
        if r["service"] == "ledger":
            r["witnesses"] = seen
    if not seen:
        return None
    t = Table(title="ledger witnesses")
    for col in ("witness", "cosigned size", "cosigned", "refused", "unreachable", "last"):
        t.add_column(col)
    for name, w in seen.items():
        bad = w["last_outcome"] != "cosigned"
        t.add_row(
            name, str(w["cosigned_size"]), str(w["cosigned"]), str(w["refused"]), str(w["unreachable"]),
            f"[red]{w['last_outcome']}: {w['last_reason']}[/]" if bad else "cosigned",
        )  # fmt: skip
    return t


@ops.command("status")
def status(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Show each service: process, address, gRPC health; the ledger's witness pushes."""
    with user_errors(as_json):
        dep = load_config(config)
        rows = Supervisor(dep).status()
        _with_metrics(dep, rows)
        witnesses = _witness_rows(dep, rows)
    output(rows, as_json, _status_table(rows))
    if witnesses is not None and not as_json:
        console.print(witnesses)
    if not all(r["healthy"] for r in rows):
        raise typer.Exit(1)


@ops.command("down")
def down(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Stop every service of the deployment (SIGTERM, then SIGKILL after 10 s)."""
    with user_errors(as_json):
        stopped = Supervisor(load_config(config)).stop()
    output({"stopped": stopped}, as_json)


@operator.command("health")
def health(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Probe every service's gRPC health endpoint (same as `fedcredit status`)."""
    status(config, as_json)


@operator.command("probe")
def probe(
    config: Annotated[
        Path | None,
        typer.Option("--config", envvar="FEDCREDIT_CONFIG", help="The deployment file."),
    ] = None,
    service: Annotated[
        str,
        typer.Option(
            "--service",
            envvar="FEDCREDIT_SERVICE",
            help="ledger, consent, coordinator, policies, portal or node-<department>.",
        ),
    ] = "",
    as_org: Annotated[
        str,
        typer.Option(
            "--as", envvar="FEDCREDIT_ORG", help="Organisation whose certificate makes the call."
        ),
    ] = "operator",
    plain: Annotated[
        str,
        typer.Option(
            "--plain-health",
            help="HOST:PORT of a plaintext gRPC health server instead (Flower's SuperLink "
            "and SuperNode serve one on their --health-server-address).",
        ),
    ] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 3.0,
    as_json: JsonOpt = False,
) -> None:
    """Health-check one service over mTLS (exit 0 when SERVING): for container health checks.

    The portal is asked over HTTP(S) for its /healthz (HTTPS checked against the CA when
    its [portal] tls is set).

    The image's HEALTHCHECK runs it bare: the container's FEDCREDIT_CONFIG,
    FEDCREDIT_SERVICE and FEDCREDIT_ORG say what to check and as whom."""
    from fedcredit.common.errors import NotFound
    from fedcredit.common.server import check_health
    from fedcredit.common.tls import check_address

    with user_errors(as_json):
        if not (0 < timeout <= 3_600):  # NaN fails this too; a probe answers in seconds
            raise InvalidArgument(
                f"expected --timeout in seconds, more than 0 and at most 3600, got {timeout}",
                reason="TIMEOUT_OUT_OF_RANGE",
            )
        if plain:  # an address that is not one is the caller's mistake, not "not serving"
            ok = check_health(check_address(plain), None, server_org="", timeout=timeout)
            output({"address": plain, "serving": ok}, as_json)
            raise typer.Exit(0 if ok else 1)
        if config is None or not service:
            raise ConfigError(
                "expected --config and --service (or FEDCREDIT_CONFIG and FEDCREDIT_SERVICE), "
                "or --plain-health HOST:PORT"
            )
        dep = load_config(config)
        specs = {s.name: s for s in service_specs(dep)}
        if service not in specs:
            raise NotFound(
                f"no service {service!r} in {config}; expected one of {', '.join(specs)}"
            )
        spec = specs[service]
        if spec.name == "portal":  # HTTP(S): its /healthz, no client certificate
            ok = portal_healthy(dep, spec.address, timeout=timeout)
        else:
            ok = check_health(spec.address, dep.tls(as_org), server_org=spec.org_id,
                              timeout=timeout)  # fmt: skip
    output({"service": service, "address": spec.address, "serving": ok}, as_json)
    raise typer.Exit(0 if ok else 1)


@operator.command("compose")
def compose(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for docker-compose.yml and deploy/.")
    ] = Path("."),
    loopback: Annotated[
        int | None,
        typer.Option(
            "--loopback",
            help="Host networking instead of a compose network: every service on its own "
            "127.0.0.1 port from this base (what `make compose-test` runs; 40 ports).",
            min=1024,
            max=65000,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the compose files (all-in-one and per organisation) and their deployment file."""
    from fedcredit.clients.compose import Layout, write_compose

    with user_errors(as_json):
        paths = write_compose(out, Layout(loopback_base=loopback))
    output({"written": [str(p) for p in paths]}, as_json)


@ops.command("demo")
def demo(
    dir: Annotated[Path, typer.Option("--dir", help="Where the demo deployment lives.")] = Path(
        "var/demo"
    ),
    enterprises: Annotated[int, typer.Option(help="Enterprises in the synthetic city.")] = 5000,
    banks: Annotated[
        int, typer.Option(help="Partner banks (3-7: secure aggregation needs at least 3).")
    ] = 7,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic city.")] = 20240601,
    keep: Annotated[bool, typer.Option(help="Leave the services running at the end.")] = False,
    engine: Annotated[
        str,
        typer.Option(
            help="Flower engine for training: 'deployment' (default: a SuperLink and one "
            "SuperNode per bank as processes, TLS and SuperNode authentication; ~1.5-2 min "
            "of training for 7 banks with SecAgg+ on 2 cores) or 'simulation' (Flower's "
            "Simulation Engine in one process)."
        ),
    ] = "deployment",
    trees: Annotated[
        int,
        typer.Option(
            help="Trees of the credit model (depth 3, 32 bins, learning rate 0.3). 20 by "
            "default: on the default city (5,000 firms, this seed) 20 trees score AUC "
            "0.718 on held-out borrowers and 0.700 on non-borrowers, 30 trees 0.684 and "
            "0.696 (they overfit), and SecAgg+ costs 12 rounds per tree."
        ),
    ] = 20,  # clients.demo_stage.DEMO_TREES (not imported here: the CLI starts lighter)
    as_json: JsonOpt = False,
) -> None:
    """Run the whole federation locally on SQLite and play the story end to end."""
    from fedcredit.clients.demo import run_demo

    if dir.exists() and not dir.is_dir():  # before step 1, not as its failure
        fail(
            ConfigError(f"--dir: expected a folder or a new path, got a file: {dir}"),
            as_json=as_json,
        )
    if not 3 <= banks <= 7:
        fail(
            ConfigError(
                f"--banks: expected 3 to 7 (SecAgg+ needs at least three banks), got {banks}"
            ),
            as_json=as_json,
        )
    if engine not in ("simulation", "deployment"):
        fail(
            ConfigError(f"--engine: expected simulation or deployment, got {engine!r}"),
            as_json=as_json,
        )
    if not 1 <= trees <= 200:
        fail(ConfigError(f"--trees: expected 1 to 200, got {trees}"), as_json=as_json)
    if not 0 <= seed < 2**63:  # the world's generator takes no negative seed
        fail(ConfigError(f"--seed: expected 0 to 2^63-1, got {seed}"), as_json=as_json)
    if not 200 <= enterprises <= 200_000:
        fail(
            ConfigError(f"--enterprises: expected 200 to 200,000, got {enterprises}"),
            as_json=as_json,
        )

    code = run_demo(
        dir=dir,
        enterprises=enterprises,
        banks=banks,
        seed=seed,
        keep=keep,
        as_json=as_json,
        engine=engine,
        trees=trees,
    )
    raise typer.Exit(code)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
