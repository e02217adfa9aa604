"""What `fedcredit audit checkpoint` compares the quorum-cosigned checkpoint with.

The newest checkpoint with the demanded cosignatures proves little if the log
has moved on without its witnesses: the auditor also fetches the ledger's
newest signed checkpoint (signature verified) and asks each witness of the
deployment what it cosigned. A newer size is given a short while to gather its
quorum (witnesses cosign within a checkpoint interval) before it counts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcredit.common.errors import FedcreditError
from fedcredit.ledger.checkpoint import SignedCheckpoint, Verifier

if TYPE_CHECKING:
    from fedcredit.ledger.audit import Trust


def _no_key() -> Verifier:
    raise FedcreditError("asking a witness its state needs no key")


def witness_sizes(deployment: Any, org: str, origin: str) -> dict[str, int]:
    """Each reachable witness's cosigned size for ``origin`` (asked with ``org``'s certificate)."""
    from fedcredit.ledger.client import WitnessClient

    wanted = deployment.section("ledger").get_list(
        "witnesses", [n.org_id for n in deployment.nodes]
    )
    nodes = {n.org_id: n for n in deployment.nodes}
    out: dict[str, int] = {}
    for name in wanted:
        node = nodes.get(name)
        if node is None:
            continue
        try:
            with WitnessClient(
                name, _no_key, node.address, deployment.tls(org), server_org=name, timeout=3.0
            ) as w:
                info = w.info()
        except FedcreditError:  # a witness that does not answer tells nothing
            continue
        for lg in info.logs:
            if lg.origin == origin:
                out[f"witness {name}"] = int(lg.size)
    return out


def current_checkpoint(
    client: Any, trust: Trust, config: Path | None, org: str, quorum: int, max_age: float | None
) -> tuple[str, SignedCheckpoint, dict[str, int], float]:
    """The quorum-cosigned note, its verified form, the newer sizes others report, and
    the --max-age to apply (derived from the deployment when not given)."""
    from fedcredit.common.config import load_config
    from fedcredit.ledger.settings import load_settings

    dep = load_config(config) if config is not None else None
    settings = load_settings(dep.section("ledger")) if dep is not None else None
    interval = settings.log.checkpoint_interval if settings else 1.0
    refresh = settings.log.witness_refresh if settings else 10.0
    limit = max_age if max_age is not None else 3 * (interval + refresh)
    deadline = time.monotonic() + 2 * interval + 2.0  # time for a new checkpoint's quorum
    while True:
        note = client.checkpoint(min_cosignatures=quorum)
        sc = trust.open(note)
        newer: dict[str, int] = {}
        if quorum:
            latest = trust.open(client.checkpoint(min_cosignatures=0), quorum=0)
            newer["the ledger"] = latest.size
            if dep is not None:
                newer.update(witness_sizes(dep, org, sc.checkpoint.origin))
        if all(v <= sc.size for v in newer.values()) or time.monotonic() > deadline:
            return note, sc, newer, limit
        time.sleep(0.5)
