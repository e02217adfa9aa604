"""What the department and operator pages read, all through published interfaces under the
portal's own certificate: a node's catalog (any authenticated organisation may read it:
department, data month, data version), each service's gRPC health check (the one `fedcredit
status` uses), and each service's Prometheus ``/metrics`` (the series an operator's
Prometheus scrapes: data age, disclosures by node, purpose and bank, requests, refusals).

No new right at any service: the portal reads what the deployment already publishes.
Disclosure counts come from the node's counter, so they cover the node process's lifetime
(since its last start); the ledger remains the record of every single disclosure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedcredit.common import metrics
from fedcredit.common.config import Deployment
from fedcredit.common.errors import FedcreditError
from fedcredit.common.server import check_health
from fedcredit.common.tls import TlsFiles


@dataclass(frozen=True)
class Target:
    """One server of the deployment as the portal watches it."""

    name: str  # as `fedcredit status` names it: ledger, consent, node-tax, ...
    org: str
    address: str  # gRPC
    metrics: str = ""  # loopback HTTP /metrics; empty: not served


@dataclass
class NodeView:
    """A department's node as its staff see it."""

    node: str
    reachable: bool
    department: str = ""
    as_of: str = ""  # YYYY-MM: the month the features describe
    data_version: int = 0
    features: int = 0
    data_age_s: float | None = None  # seconds since the records were loaded (metrics)
    metrics_ok: bool = False
    # (bank, purpose, count), most first
    disclosures: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(n for _, _, n in self.disclosures)


@dataclass
class ServiceHealth:
    name: str
    org: str
    address: str
    healthy: bool
    essentials: dict[str, float] | None  # None: /metrics not served or not answering


def _catalog_of(address: str, org: str, tls: TlsFiles | None) -> Any:
    from fedcredit.node.client import NodeClient

    with NodeClient(address, tls, server_org=org, timeout=2.0) as c:
        return c.catalog()


class Watch:
    def __init__(
        self,
        nodes: list[Target],
        services: list[Target],
        tls: TlsFiles | None,
        *,
        catalog: Callable[[str, str, TlsFiles | None], Any] = _catalog_of,
    ) -> None:
        self.nodes = {n.org: n for n in nodes}
        self.services = services
        self.tls = tls
        self._catalog = catalog

    @classmethod
    def from_deployment(cls, dep: Deployment, org: str) -> Watch:
        nodes = [Target(f"node-{n.department}", n.org_id, n.address, n.metrics) for n in dep.nodes]  # fmt: skip
        order = ("ledger", "consent", "coordinator")
        services = [
            Target(name, s.org_id, s.address, s.metrics)
            for name in (*order, *sorted(set(dep.services) - set(order)))
            if (s := dep.services.get(name)) is not None and name != "portal"
        ]
        return cls(nodes, [*services[:2], *nodes, *services[2:]], dep.tls(org))

    def node_view(self, org: str) -> NodeView | None:
        """The node this department runs; ``None`` when the deployment has none for it."""
        t = self.nodes.get(org)
        if t is None:
            return None
        try:
            cat = self._catalog(t.address, t.org, self.tls)
            view = NodeView(org, True, str(cat.department), str(cat.as_of),
                            int(cat.data_version), len(cat.features))  # fmt: skip
        except FedcreditError:  # the client maps every gRPC failure to one (UNAVAILABLE, ...)
            view = NodeView(org, False)
        samples = metrics.scrape(t.metrics) if t.metrics else None
        if samples is not None:
            view.metrics_ok = True
            view.data_age_s, view.disclosures = _node_series(samples, org)
        return view

    def health(self) -> list[ServiceHealth]:
        """Each server's gRPC health and its /metrics essentials (as `fedcredit status`)."""
        out = []
        for t in self.services:
            ok = check_health(t.address, self.tls, server_org=t.org, timeout=1.0)
            out.append(ServiceHealth(t.name, t.org, t.address, ok,
                                     metrics.essentials(t.metrics) if t.metrics else None))  # fmt: skip
        return out


def _node_series(
    samples: list[tuple[str, dict[str, str], float]], org: str
) -> tuple[float | None, list[tuple[str, str, int]]]:
    age: float | None = None
    counts: dict[tuple[str, str], int] = {}
    for name, labels, value in samples:
        if labels.get("node") != org:
            continue
        if name == "fedcredit_node_data_age_seconds" and value >= 0:
            age = value
        elif name == "fedcredit_disclosures_total":
            key = (labels.get("bank", "?"), labels.get("purpose", "?"))
            counts[key] = counts.get(key, 0) + int(value)
    rows = sorted(((b, p, n) for (b, p), n in counts.items() if n), key=lambda r: (-r[2], r[0], r[1]))  # fmt: skip
    return age, rows
