"""Running the policy-fund service from a deployment file: store, ledger, nodes; serve.

``[services.policies]`` names its organisation (certificate role ``policy``), address,
database and metrics address. ``[policies]`` holds its settings:

* ``registry`` (optional): the enterprise registry CSV (``fedcredit world generate``'s
  ``enterprises.csv``: public registry attributes only) loaded at start, so that a
  screening run has enterprises to screen. Relative to the deployment file's folder.
  Without it, the registry already in the database is used.
* ``tracking_day`` (1-28, default 1): from this day of each month (UTC) the service runs
  the tracking round of the month before (round id ``YYYY-MM``): pledged targets as
  booleans and the cohort aggregates (revenue, employees, tax, R&D) from the nodes under
  the ``subsidy_tracking`` legal basis (:class:`MonthlyTracking`). 0 turns it off.
* ``tracking_check_s`` (60-86,400, default 3,600): how often the schedule looks whether
  this month's round is due. Running it twice is harmless: a round runs once per month,
  whoever asks (the store claims it), so a restart or a second replica changes nothing.

The service talks to the central ledger and to every department node with its own
certificate; the nodes answer ``ScreenPolicies`` only to the roles they admit for
screening, and the ledger accepts from it only the ``policy_*`` kinds.
"""

from __future__ import annotations

import csv
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from fedcredit.common.config import Deployment
from fedcredit.common.errors import ConfigError, FedcreditError
from fedcredit.policies import rules, tracking
from fedcredit.policies.screening import NodeScreener
from fedcredit.policies.service import PolicyServer, PolicyServicer, build_policy_server
from fedcredit.policies.store import PolicyStore

SETTINGS_KEYS = frozenset({"registry", "tracking_day", "tracking_check_s"})
log = logging.getLogger(__name__)


def month_before(now: float) -> str:
    """``YYYY-MM`` of the calendar month (UTC) before the one ``now`` falls in."""
    d = datetime.fromtimestamp(now, tz=UTC).date().replace(day=1) - timedelta(days=1)
    return f"{d.year:04d}-{d.month:02d}"


@dataclass
class MonthlyTracking:
    """The monthly tracking schedule: from ``day`` of each month, the round of the month
    before, once (``tracking.run_round`` claims it in the store). ``clock`` is injectable
    (POSIX seconds), so tests move through months without waiting for them."""

    store: PolicyStore
    ledger: Any
    nodes: Mapping[str, Any]
    clock: Callable[[], float] = time.time
    day: int = 1

    def due(self) -> str | None:
        """The round id due now, or None (before ``day``, or done already)."""
        now = self.clock()
        if self.day <= 0 or datetime.fromtimestamp(now, tz=UTC).day < self.day:
            return None
        rid = month_before(now)
        got = self.store.tracking_round(rid)
        return None if got is not None and got[0] == "done" else rid

    def tick(self) -> tracking.Round | None:
        """Run the due round (None when nothing is due); errors propagate to the caller."""
        rid = self.due()
        if rid is None:
            return None
        return tracking.run_round(self.store, self.ledger, self.nodes, round_id=rid,
                                  now=self.clock())  # fmt: skip

    def run(self, stop: threading.Event, every_s: float) -> None:
        """Tick every ``every_s`` until ``stop``; a failed round is logged and retried."""
        while not stop.is_set():
            try:
                r = self.tick()
                if r is not None and not r.replayed:
                    log.info("tracking round %s: %d policies", r.round_id, len(r.policies))
            except FedcreditError as exc:
                log.warning("tracking round not run (retried in %.0f s): %s", every_s, exc)
            stop.wait(every_s)


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


def _delegation(dep: Deployment, org: str) -> Any:
    """The checker of the portal's delegation tickets, when the deployment has a portal
    (None: the portal's certificate acts for no one here)."""
    if "portal" not in dep.raw or "consent" not in dep.services:
        return None
    from fedcredit.consent.passkey_client import RemoteDelegationVerifier
    from fedcredit.consent.settings import ConsentSettings

    consent = dep.service("consent")
    return RemoteDelegationVerifier(
        consent_address=consent.address, tls=dep.tls(org), server_org=consent.org_id,
        issuer=ConsentSettings.from_deployment(dep).issuer, audience=org,
    ).verifier  # fmt: skip


def build(dep: Deployment) -> tuple[PolicyServer, PolicyStore]:
    """The configured service, not yet started (its store opened and its registry loaded)."""
    server, store, _ = build_all(dep)
    return server, store


def build_all(dep: Deployment) -> tuple[PolicyServer, PolicyStore, tuple[MonthlyTracking, float]]:
    """The service, its store and its monthly tracking schedule (with its check period)."""
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
    servicer = PolicyServicer(store=store, ledger=ledger, nodes=nodes,
                              delegation=_delegation(dep, me.org_id))  # fmt: skip
    monthly = MonthlyTracking(
        store, ledger, nodes, day=section.get_int("tracking_day", 1, min=0, max=28)
    )
    every = section.get_float("tracking_check_s", 3_600.0, min=60.0, max=86_400.0)
    return build_policy_server(servicer, address=me.address, tls=tls), store, (monthly, every)
