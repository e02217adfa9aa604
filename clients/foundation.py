"""Foundation commands: `fedcredit init` and `fedcredit pki init|issue`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedcredit.common import pki
from fedcredit.common.cliutil import output, user_errors
from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

# `fedcredit init` sits on the root itself (the "" group); `fedcredit pki ...` in "pki".
foundation = typer.Typer()
pki_app = typer.Typer()
GROUPS: dict[str, typer.Typer] = {"": foundation, "pki": pki_app}


@foundation.command("init")
def init_cmd(
    dir: Annotated[Path, typer.Option("--dir", help="Folder for deployment.toml, pki/ and data/.")],
    base_port: Annotated[
        int | None, typer.Option(help="First loopback port (default: a free range).")
    ] = None,
    banks: Annotated[int, typer.Option(help="How many of the seven partner banks.")] = 7,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "weihai-local",
    force: Annotated[bool, typer.Option(help="Replace an existing deployment in DIR.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a working local deployment: every service on loopback, SQLite under DIR, its PKI."""
    with user_errors(as_json):
        path = write_local_deployment(
            dir, name=name, base_port=base_port, bank_count=banks, force=force
        )
        dep = load_config(path)
    result = {
        "config": str(path),
        "pki": str(dep.pki_dir),
        "organisations": len(dep.organisations),
        "nodes": len(dep.nodes),
        "banks": dep.banks,
        "services": {k: v.address for k, v in dep.services.items()},
    }
    table = Table(title=f"deployment {dep.name}")
    table.add_column("service")
    table.add_column("organisation")
    table.add_column("address")
    for s in dep.services.values():
        table.add_row(s.name, s.org_id, s.address)
    for n in dep.nodes:
        table.add_row(f"node {n.department}", n.org_id, n.address)
    output(result, as_json, table)
    if not as_json:
        typer.echo(f"wrote {path}")


@pki_app.command("init")
def pki_init(
    dir: Annotated[Path, typer.Option("--dir", help="Folder for the CA and organisations' files.")],
    config: Annotated[
        Path, typer.Option("--config", help="Deployment file listing the organisations.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Create a development CA and one key + certificate per organisation in the deployment."""
    with user_errors(as_json):
        dep = load_config(config)
        files = pki.init_pki(dir, [(o.id, o.role) for o in dep.organisations.values()])
    table = Table(title=f"PKI in {dir}")
    table.add_column("organisation")
    table.add_column("role")
    table.add_column("certificate")
    for o in dep.organisations.values():
        table.add_row(o.id, o.role, str(files[o.id].cert))
    output({k: str(v.cert) for k, v in files.items()}, as_json, table)


@pki_app.command("issue")
def pki_issue(
    org: Annotated[
        str, typer.Option("--org", help="Organisation id, or an enterprise's credit code.")
    ],
    role: Annotated[str, typer.Option("--role", help="bank, department, enterprise, auditor, ...")],
    dir: Annotated[Path, typer.Option("--dir", help="PKI folder (holding ca.pem and ca.key).")],
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="Extra DNS name for the certificate.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue a key and certificate for one more organisation (an enterprise by its credit code)."""
    with user_errors(as_json):
        if role == "enterprise":
            from fedcredit.common.uscc import validate

            validate(org)
        files = pki.issue(dir, org, role, extra_dns=dns or ())
    output({"org": org, "role": role, "cert": str(files.cert), "key": str(files.key)}, as_json)
