"""Running the policy-fund service from a deployment file: store, ledger, nodes; serve.

``[services.policies]`` names its organisation (certificate role ``policy``), address,
database and metrics address. ``[policies]`` holds its settings:

* ``registry`` (optional): the enterprise registry CSV (``fedcredit world generate``'s
  ``enterprises.csv``: public registry attributes only) loaded at start, so that a
  screening run has enterprises to screen. Relative to the deployment file's folder.
  Without it, the registry already in the database is used.

The service talks to the central ledger and to every department node with its own
certificate; the nodes answer ``ScreenPolicies`` only to the roles they admit for
screening, and the ledger accepts from it only the ``policy_*`` kinds.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, cast

from fedcredit.common.config import Deployment
from fedcredit.common.errors import ConfigError
from fedcredit.policies import rules
from fedcredit.policies.screening import NodeScreener
from fedcredit.policies.service import PolicyServer, PolicyServicer, build_policy_server
from fedcredit.policies.store import PolicyStore

SETTINGS_KEYS = frozenset({"registry"})


def read_registry(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The registry rows of ``enterprises.csv`` (no rating: the platform has none yet)."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            recs = list(csv.DictReader(f))
        return [
            (e["code"], rules.platform_row(
                rating=None, industry=e["industry"], district=e["district"],
                size_class=e["size_class"], enterprise_type=e["enterprise_type"],
                founded_year=int(e["founded_on"][:4]),
            ))
            for e in recs
        ]  # fmt: skip
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"[policies] registry: cannot read {path}: {exc}") from None
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"[policies] registry: {path} is not a registry CSV "
            f"(expected columns code, industry, district, size_class, enterprise_type, "
            f"founded_on): {exc!r}"
        ) from None


def build(dep: Deployment) -> tuple[PolicyServer, PolicyStore]:
    """The configured service, not yet started (its store opened and its registry loaded)."""
    from fedcredit.ledger.client import LedgerClient
    from fedcredit.node.client import NodeClient

    me = dep.service("policies")
    section = dep.section("policies")
    section.check_keys(SETTINGS_KEYS)
    tls = dep.tls(me.org_id)
    store = PolicyStore.open(me.database)
    registry = section.get_str("registry", "")
    if registry:
        store.load_registry(read_registry(dep.dir / registry))
    ledger_svc = dep.service("ledger")
    ledger = LedgerClient(ledger_svc.address, tls, server_org=ledger_svc.org_id)
    # NodeClient.screen returns a concrete result whose ``bits`` is a dict; the protocol
    # declares it a read-only Mapping, which mypy cannot see through a mutable attribute.
    nodes = cast(
        "dict[str, NodeScreener]",
        {n.department: NodeClient(n.address, tls, server_org=n.org_id) for n in dep.nodes},
    )
    servicer = PolicyServicer(store=store, ledger=ledger, nodes=nodes)
    return build_policy_server(servicer, address=me.address, tls=tls), store
