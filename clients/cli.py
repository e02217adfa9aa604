"""The `fedcredit` command line: one root, a group per role and per service.

Each module in ``REGISTERED_MODULES`` defines its commands on module-level Typer apps
and exports them as ``GROUPS: dict[str, typer.Typer]`` (group name -> app; ``""`` for
commands on the root itself, such as ``fedcredit init``). This module builds the root
and its groups, in the order and with the help texts below, and merges every module's
apps into them: the root's groups hold the modules' commands and sub-groups, in module
order, exactly as the modules declared them.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import typer

from fedcredit.common.cliutil import fail, last_resort

# Groups, with the help text `fedcredit --help` shows. Roles first, then services.
GROUPS: dict[str, str] = {
    "enterprise": "Enterprise: grant, list, pause and revoke consent; see every access to your data.",
    "bank": "Bank: request consent, get scores and ratings, apply for guarantees, watch ratings.",
    "department": "Department: run and load your data node (same commands as `node`).",
    "audit": "Auditor: fetch and verify checkpoints, proofs and exports offline.",
    "operator": "Platform operator: run the services, inspect health.",
    "pki": "Development CA: create the deployment's certificates.",
    "world": "The synthetic city: generate enterprises, departments' records and loan books.",
    "node": "Department data node: load raw records, serve derived features.",
    "consent": "Consent service: serve, rotate signing keys.",
    "ledger": "Ledger service: serve, sign checkpoints, export.",
    "coordinator": "Coordinator: scoring, guarantees and the model registry.",
    "fund": "Credit guarantee fund: size, exposure, capacity, payouts.",
    "model": "Model registry: list, show, publish and activate credit models.",
    "policy": "Policy funds: publish policies with CEL eligibility rules, screen, award, pay.",
    "market": "Financing marketplace: products, needs, grab orders, loans, the fund's claims.",
    "portal": "Web portal: serve the pages where people sign in with passkeys.",
}

# The key of a module's GROUPS whose commands sit on the root (`fedcredit init`).
ROOT = ""

# Modules whose `GROUPS` add commands, in the order their commands are listed.
REGISTERED_MODULES: list[str] = [
    "fedcredit.clients.foundation",
    "fedcredit.world.cli",
    "fedcredit.node.cli",
    "fedcredit.consent.cli",
    "fedcredit.ledger.cli",
    "fedcredit.coordinator.cli",
    "fedcredit.training.run.cli",
    "fedcredit.policies.cli",
    "fedcredit.market.cli",
    "fedcredit.clients.ops",
    "fedcredit.portal.cli",
]


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only a missing module itself is tolerated (a component not installed); a
        # missing dependency inside it is a real error.
        if exc.name == name or (exc.name and name.startswith(exc.name + ".")):
            return None
        raise


def merge(into: typer.Typer, source: typer.Typer) -> None:
    """Add ``source``'s commands and sub-groups to ``into``, after those it has. Only those
    are merged: a module's app may not carry a callback of its own (it would be lost)."""
    if source.registered_callback is not None:
        raise ValueError(
            "a module's command-group app may not have a callback; the root's groups own theirs"
        )
    into.registered_commands.extend(source.registered_commands)
    into.registered_groups.extend(source.registered_groups)


def build_app(modules: list[str] | None = None) -> typer.Typer:
    app = typer.Typer(
        help="fedcredit: a privacy-preserving federated data exchange for small-business credit.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    groups: dict[str, typer.Typer] = {ROOT: app}
    for name, help_text in GROUPS.items():
        groups[name] = typer.Typer(help=help_text, no_args_is_help=True, add_completion=False)
        app.add_typer(groups[name], name=name)
    for module_name in REGISTERED_MODULES if modules is None else modules:
        module = _load(module_name)
        if module is None:
            continue
        contributed: dict[str, typer.Typer] = module.GROUPS
        for group, sub in contributed.items():
            if group not in groups:
                raise KeyError(
                    f"{module_name} adds commands to unknown group {group!r}; "
                    "add it to clients.cli.GROUPS"
                )
            merge(groups[group], sub)
    return app


def main() -> None:
    from fedcredit.common.metrics import configure_logging

    configure_logging(os.environ.get("FEDCREDIT_LOG", "WARNING"))  # JSON: FEDCREDIT_LOG_FORMAT=json
    # The container health check runs `fedcredit operator probe` every few seconds in every
    # container: it gets a root with the operator commands alone, not every role's.
    probe = sys.argv[1:3] == ["operator", "probe"]
    app = build_app(["fedcredit.clients.ops"] if probe else None)
    try:
        app()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:
        # Commands turn the errors they expect into one line and an exit code; this is
        # the floor under all of them: whatever escapes is still one line, never a
        # traceback on the user's terminal (the traceback goes to a file it names).
        fail(last_resort(exc), as_json="--json" in sys.argv[1:])


if __name__ == "__main__":
    main()
