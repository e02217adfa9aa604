"""`fedcredit ledger fsck` against a deployment: its ledger database, published key and
witnesses (kept apart from ledger.fsck, which the log itself imports at start)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedcredit.ledger.fsck import FsckReport, fsck, witness_states
from fedcredit.ledger.store import LedgerStore


def fsck_deployment(
    deployment: Any,
    *,
    ask_witnesses: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[FsckReport, dict[str, str]]:
    """``fedcredit ledger fsck``: the full check of the deployment's ledger database,
    against its published key and (unless told not to) what its witnesses cosigned.
    Returns the report and, per witness that did not answer, why."""
    from fedcredit.ledger.keys import log_verifier
    from fedcredit.ledger.service import build_witness_clients
    from fedcredit.ledger.settings import load_settings

    settings = load_settings(deployment.section("ledger"))
    verifier = log_verifier(deployment)
    clients: list[Any] = []
    if ask_witnesses:
        orgs = deployment.section("ledger").get_list(
            "witnesses", [n.org_id for n in deployment.nodes]
        )
        clients = build_witness_clients(deployment, settings, orgs)
    store = LedgerStore.open(deployment.service("ledger").database)
    try:
        states, down = witness_states(clients, settings.origin)
        return fsck(store, verifier, witnesses=states, progress=progress), down
    finally:
        store.close()
        for c in clients:
            c.close()
