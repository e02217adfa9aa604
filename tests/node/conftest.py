"""Fixtures for node tests: a small city, a consent authority, a node over real mTLS gRPC."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.departments import BY_ID, DEFAULT_BANKS
from fedcredit.common.tls import Identity
from fedcredit.consent.authority import ConsentAuthority, local_verifier
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.ledger.log import Log
from fedcredit.ledger.settings import LogSettings
from fedcredit.node.client import NodeClient
from fedcredit.node.engine import FeatureEngine
from fedcredit.node.policy import AccessPolicy
from fedcredit.node.service import FeatureServicer, NodeServer, build_node_server
from fedcredit.node.settings import NodeSettings
from fedcredit.node.sigpool import SignaturePool
from fedcredit.node.store import NodeStore
from fedcredit.world.generate import generate
from tests.conftest import Pki

BANK = DEFAULT_BANKS[0]
OTHER_BANK = DEFAULT_BANKS[1]


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate(out, enterprises=300, seed=11)
    return out


def world_codes(world: Path) -> list[str]:
    lines = (world / "enterprises.csv").read_text(encoding="utf-8").splitlines()[1:]
    return [ln.split(",", 1)[0] for ln in lines]


# The use id tests send as the coordinator: one Score's use, whatever nodes it asks.
COORDINATOR_USE = "score-under-test"


@dataclass
class Consents:
    """Grants consents and hands out tokens, in-process, through the real authority."""

    authority: ConsentAuthority
    pki: Pki
    granted: dict[str, str] = field(default_factory=dict)  # token -> consent id

    def bank(self, org: str) -> Identity:
        return self.pki.tls(org).identity()

    def token(
        self,
        enterprise: str,
        *,
        bank: str = BANK,
        purpose: str = "credit_assessment",
        scope: Sequence[str] = ("operations_tax",),
        nodes: Sequence[str] = (),
        max_uses: int = 1,
    ) -> str:
        who = Identity(enterprise, "enterprise", b"\x01" * 32)
        view = self.authority.grant(
            who,
            ConsentTerms(enterprise=enterprise, bank=bank, purpose=purpose, scope=list(scope),
                         nodes=list(nodes), validity_days=7, max_uses=max_uses),
        )  # fmt: skip
        tok = self.authority.token(self.bank(bank), view.consent_id).token
        assert tok is not None
        self.granted[tok] = view.consent_id
        return tok

    def revoke(self, enterprise: str, token: str) -> None:
        self.authority.revoke(Identity(enterprise, "enterprise", b"\x01" * 32), self.granted[token])


@pytest.fixture(scope="session")
def consents(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Consents]:
    d = tmp_path_factory.mktemp("consent")
    store = ConsentStore(f"sqlite:///{d / 'consent.sqlite'}")

    def bank_cert(org: str) -> bytes | None:
        return pki.tls(org).identity().cert_sha256 if org in pki.files else None

    authority = ConsentAuthority(store, banks=list(DEFAULT_BANKS), bank_certs=bank_cert)
    yield Consents(authority, pki)
    store.close()


@dataclass
class Node:
    department: str
    org: str
    store: NodeStore
    engine: FeatureEngine
    log: Log
    servicer: FeatureServicer
    server: NodeServer
    pki: Pki

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def client(self, org: str = "coordinator") -> NodeClient:
        return NodeClient(self.address, self.pki.tls(org), server_org=self.org)

    def entries(self) -> int:
        return self.log.size

    def coordinator_kw(self, bank: str = BANK, use_id: str = COORDINATOR_USE) -> dict[str, object]:
        """What the coordinator sends: the bank it acts for and the use id of its Score
        (one use id per Score, joined by every node it asks)."""
        ident = self.pki.tls(bank).identity()
        return {
            "purpose": "credit_assessment",
            "on_behalf_of": bank,
            "on_behalf_of_cert_sha256": ident.cert_sha256,
            "request_id": use_id,
        }


NodeFactory = Callable[..., Node]


@pytest.fixture
def make_node(
    tmp_path: Path, pki: Pki, consents: Consents, small_world: Path
) -> Iterator[NodeFactory]:
    made: list[Node] = []

    def factory(
        department: str = "tax",
        *,
        db_url: str | None = None,
        settings: NodeSettings | None = None,
        world: Path | None = None,
        load: bool = True,
        signatures: SignaturePool | None = None,
        warm: bool = False,
    ) -> Node:
        org = BY_ID[department].org_id
        url = db_url or f"sqlite:///{tmp_path / f'node-{department}.sqlite'}"
        store = NodeStore(url, department)
        store.create_schema()
        if load:
            store.load(world or small_world)
        s = settings or NodeSettings()
        # Warm-up off unless asked: most tests count what a request puts in the cache.
        engine = FeatureEngine(
            store, cache_size=s.cache_size, min_bin_count=s.min_bin_count, warm=warm
        )
        log = Log.open(
            f"sqlite:///{tmp_path / f'disclosures-{department}-{len(made)}.sqlite'}",
            Ed25519PrivateKey.generate(),
            f"{org}/disclosures",
            settings=LogSettings(checkpoint_interval=0.05),
        )
        servicer = FeatureServicer(
            node_org=org,
            engine=engine,
            verifier=local_verifier(
                consents.authority, actor=Identity(org, "department", b"\0" * 32)
            ),
            disclosures=log,
            policy=AccessPolicy(banks=list(DEFAULT_BANKS)),
            settings=s,
            signatures=signatures,
        )
        server = build_node_server(servicer=servicer, address="127.0.0.1:0", tls=pki.tls(org))
        server.start()
        node = Node(department, org, store, engine, log, servicer, server, pki)
        made.append(node)
        return node

    yield factory
    for n in made:
        n.server.stop(0)
        n.log.close()
        n.store.close()
