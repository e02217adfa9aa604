"""Fixtures for policy tests: department nodes over real mTLS gRPC on one small city (module
scope, so property tests can screen many random rules against the same nodes)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.departments import BY_ID, DEFAULT_BANKS
from fedcredit.common.tls import Identity
from fedcredit.consent.authority import local_verifier
from fedcredit.ledger.log import Log
from fedcredit.ledger.settings import LogSettings
from fedcredit.node import celvars
from fedcredit.node.client import NodeClient
from fedcredit.node.engine import FeatureEngine
from fedcredit.node.policy import AccessPolicy
from fedcredit.node.service import FeatureServicer, NodeServer, build_node_server
from fedcredit.node.store import NodeStore
from fedcredit.policies import rules
from tests.conftest import Pki
from tests.node import conftest as node_fixtures
from tests.node.conftest import Consents

# The node tests' session fixtures, shared (pytest finds fixtures by name in a conftest).
consents = node_fixtures.consents
small_world = node_fixtures.small_world

SCREEN_DEPARTMENTS = ("tax", "ip", "courts", "customs", "social_security")


@dataclass
class ScreenNode:
    department: str
    org: str
    store: NodeStore
    engine: FeatureEngine
    log: Log
    server: NodeServer
    pki: Pki

    def client(self, org: str = "policies") -> NodeClient:
        # the policy service's own certificate (role policy); other orgs as issued
        tls = self.pki.issue(org, "policy") if org == "policies" else self.pki.tls(org)
        return NodeClient(f"127.0.0.1:{self.server.port}", tls, server_org=self.org)

    def activations(self, codes: list[str]) -> list[dict[str, Any]]:
        """Test-only: the node's own values as CEL variables (the central reference)."""
        st = self.engine.state()
        values, _ = self.engine.vectors(codes, st)
        return celvars.rows(list(self.engine.features), values)


@dataclass
class City:
    nodes: dict[str, ScreenNode]
    codes: list[str]
    platform_rows: list[dict[str, Any]]

    def central_rows(self) -> list[dict[str, Any]]:
        rows = [dict(r) for r in self.platform_rows]
        for node in self.nodes.values():
            for row, own in zip(rows, node.activations(self.codes), strict=True):
                row.update(own)
        return rows


def registry_rows(world: Path, seed: int = 5) -> tuple[list[str], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    with (world / "enterprises.csv").open(encoding="utf-8") as f:
        recs = list(csv.DictReader(f))
    ratings = rng.choice(["A", "B", "C", "D", ""], len(recs), p=[0.15, 0.35, 0.3, 0.1, 0.1])
    rows = [
        rules.platform_row(
            rating=str(r) or None, industry=e["industry"], district=e["district"],
            size_class=e["size_class"], enterprise_type=e["enterprise_type"],
            founded_year=int(e["founded_on"][:4]),
        )
        for e, r in zip(recs, ratings.tolist(), strict=True)
    ]  # fmt: skip
    return [e["code"] for e in recs], rows


@pytest.fixture(scope="module")
def city(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, consents: Consents, small_world: Path
) -> Iterator[City]:
    tmp = tmp_path_factory.mktemp("screen")
    nodes: dict[str, ScreenNode] = {}
    for dep in SCREEN_DEPARTMENTS:
        org = BY_ID[dep].org_id
        store = NodeStore(f"sqlite:///{tmp / f'node-{dep}.sqlite'}", dep)
        store.create_schema()
        store.load(small_world)
        engine = FeatureEngine(store)
        log = Log.open(f"sqlite:///{tmp / f'log-{dep}.sqlite'}", Ed25519PrivateKey.generate(),
                       f"{org}/disclosures", settings=LogSettings(checkpoint_interval=0.05))  # fmt: skip
        servicer = FeatureServicer(
            node_org=org,
            engine=engine,
            verifier=local_verifier(
                consents.authority, actor=Identity(org, "department", b"\0" * 32)
            ),
            disclosures=log,
            policy=AccessPolicy(banks=list(DEFAULT_BANKS)),
        )
        server = build_node_server(servicer=servicer, address="127.0.0.1:0", tls=pki.tls(org))
        server.start()
        nodes[dep] = ScreenNode(dep, org, store, engine, log, server, pki)
    codes, rows = registry_rows(small_world)
    yield City(nodes, codes, rows)
    for n in nodes.values():
        n.server.stop(0)
        n.log.close()
        n.store.close()
