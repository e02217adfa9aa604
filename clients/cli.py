"""The `fedcredit` command line: one root, a group per role and per service.

Each service package contributes its commands through ``<pkg>.cli.register(root)``;
this module only builds the groups and the foundation commands (``init``, ``pki``).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import typer

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
}

# Service packages whose `cli.register(root)` adds commands. Each service owns one line.
REGISTERED_MODULES: list[str] = [
    "fedcredit.common.cli",
    "fedcredit.world.cli",
    "fedcredit.node.cli",
    "fedcredit.consent.cli",
    "fedcredit.ledger.cli",
    "fedcredit.coordinator.cli",
    "fedcredit.training.server.cli",
    "fedcredit.clients.ops",
]


@dataclass
class Root:
    app: typer.Typer
    groups: dict[str, typer.Typer] = field(default_factory=dict)

    def group(self, name: str) -> typer.Typer:
        if name not in GROUPS:
            raise KeyError(f"unknown command group {name!r}; add it to clients.cli.GROUPS")
        if name not in self.groups:
            g = typer.Typer(help=GROUPS[name], no_args_is_help=True, add_completion=False)
            self.groups[name] = g
            self.app.add_typer(g, name=name)
        return self.groups[name]


def _load(name: str) -> Callable[[Root], Any] | None:
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only a missing service module itself is tolerated (a component not
        # installed); a missing dependency inside it is a real error.
        if exc.name == name or (exc.name and name.startswith(exc.name + ".")):
            return None
        raise
    return getattr(mod, "register", None)


def build_app() -> typer.Typer:
    app = typer.Typer(
        help="fedcredit: a privacy-preserving federated data exchange for small-business credit.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    root = Root(app)
    for g in GROUPS:
        root.group(g)
    for name in REGISTERED_MODULES:
        register = _load(name)
        if register is not None:
            register(root)
    return app


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("FEDCREDIT_LOG", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    build_app()()


if __name__ == "__main__":
    main()
