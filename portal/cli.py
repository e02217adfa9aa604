"""``fedcredit portal serve`` and ``fedcredit operator enrol``."""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedcredit.common.cliutil import console, output, user_errors
from fedcredit.common.config import load_config
from fedcredit.portal.durations import parse_duration

ConfigOpt = Annotated[Path, typer.Option("--config", help="The deployment file (deployment.toml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

portal_app = typer.Typer()
operator_app = typer.Typer()
GROUPS: dict[str, typer.Typer] = {"portal": portal_app, "operator": operator_app}


@portal_app.command("serve")
def serve(config: ConfigOpt) -> None:
    """Run the web portal of the deployment (until SIGTERM or Ctrl-C)."""
    import uvicorn

    from fedcredit.portal.app import build_app
    from fedcredit.portal.backend import Backend
    from fedcredit.portal.settings import PortalSettings
    from fedcredit.portal.watch import Watch

    with user_errors():
        dep = load_config(config)
        settings = PortalSettings.from_deployment(dep)
        backend = Backend.from_deployment(dep, settings.org)
        watch = Watch.from_deployment(dep, settings.org)
        tls = dep.tls(settings.org) if settings.tls else None
        # opens the portal's database ([portal] database): one that does not answer is a
        # precise one-line failure, never a traceback
        app = build_app(settings, backend, watch=watch)
    console.print(f"portal listening on {settings.url}")
    # FEDCREDIT_PORTAL_PROFILE=FILE: cProfile the portal until it stops (bench/bench_portal.py
    # uses it to see where a page's time goes under load; py-spy is not installed here)
    profile_to = os.environ.get("FEDCREDIT_PORTAL_PROFILE", "")
    prof = cProfile.Profile() if profile_to else None
    if prof is not None:
        # uvicorn re-raises the SIGTERM it caught once it has shut down: end with SystemExit
        # instead, so that the profile below is written
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        prof.enable()
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
            server_header=False,
            ws="none",
        )
    finally:
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile_to)
        backend.close()


@operator_app.command("enrol")
def enrol(
    config: ConfigOpt,
    org: Annotated[str, typer.Option("--org", help="The organisation (credit code or org id).")],
    expires: Annotated[
        str, typer.Option("--expires", help="How long the code is valid: 30m, 12h, 7d.")
    ] = "7d",
    role: Annotated[
        str,
        typer.Option(help="The role it signs in as (default: the deployment's, else enterprise)."),
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """Issue a one-time code for an organisation's first passkey (give it to them in person
    or by a channel you trust; only its hash is kept)."""
    from fedcredit.consent.passkey_client import PasskeyClient

    with user_errors(as_json):
        seconds = parse_duration(expires)
        dep = load_config(config)
        if not role:
            role = dep.organisations[org].role if org in dep.organisations else "enterprise"
        with PasskeyClient.from_deployment(dep, "operator") as c:
            got = c.issue_enrol_code(org, role, seconds)
    output(
        {"org": got.org, "role": got.role, "code": got.code, "expires_at": got.expires_at},
        as_json,
    )
