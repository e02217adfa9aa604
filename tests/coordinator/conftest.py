"""Integration fixtures: a small synthetic city, a LightGBM credit model trained on it, the
consent service over gRPC, a ledger, department nodes over gRPC (when available) and the
coordinator's grpc.aio server — all real, on loopback, with mTLS."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from fedcredit.common.departments import BY_ID, DEFAULT_BANKS
from fedcredit.common.tls import Identity, TlsFiles
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.coordinator.daemon import CoordinatorServer
from fedcredit.coordinator.fanout import Catalog, CatalogFeature, NodeFeatures
from fedcredit.coordinator.settings import CoordinatorSettings
from fedcredit.coordinator.store import CoordinatorStore

BANK = DEFAULT_BANKS[0]
OTHER_BANK = DEFAULT_BANKS[1]
# The model is trained on three departments' features (a deployment need not use all 12);
# their nodes are started for the scoring tests.
DEPARTMENTS = ("tax", "courts", "social_security")
N_ENTERPRISES = 600


class OffsetClock:
    """Real time plus an offset a test can move (to issue a token that is already expired)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class City:
    dir: Path
    codes: list[str]
    features: list[str]
    matrix: np.ndarray
    labels: np.ndarray
    model_text: str
    pds: np.ndarray

    def row(self, code: str) -> np.ndarray:
        return self.matrix[self.codes.index(code)]


@pytest.fixture(scope="session")
def city(tmp_path_factory: pytest.TempPathFactory) -> City:
    from fedcredit.world.generate import generate
    from fedcredit.world.pooled import compute_all

    d = tmp_path_factory.mktemp("city")
    generate(d, enterprises=N_ENTERPRISES, banks=7, months=24, seed=11)
    codes, names, matrix = compute_all(d, departments=list(DEPARTMENTS))
    truth = {}
    for line in (d / "_truth" / "enterprises.csv").read_text().splitlines()[1:]:
        parts = line.split(",")
        truth[parts[0]] = int(parts[5])
    y = np.array([truth[c] for c in codes], dtype=np.int64)
    booster = lgb.train(
        {
            "objective": "binary",
            "num_leaves": 7,
            "learning_rate": 0.1,
            "verbose": -1,
            "min_data_in_leaf": 10,
        },
        lgb.Dataset(matrix, y, feature_name=list(names)),
        num_boost_round=40,
    )
    text = booster.model_to_string()
    pds = np.asarray(booster.predict(matrix), dtype=np.float64)
    return City(d, codes, list(names), matrix, y, text, pds)


@dataclass
class ConsentEnv:
    authority: ConsentAuthority
    address: str
    clock: OffsetClock
    server: Any
    bank_ids: dict[str, Identity]

    def grant(
        self,
        enterprise: str,
        *,
        bank: str = BANK,
        purpose: str = "credit_assessment",
        scope: tuple[str, ...] = ("score_only",),
        max_uses: int | None = None,
        validity_days: int = 30,
        loan_term_days: int | None = None,
    ) -> tuple[str, str]:
        """(consent id, token) granted by ``enterprise`` to ``bank`` (uses: the purpose's cap)."""
        if max_uses is None:
            max_uses = {"credit_assessment": 5, "guarantee": 10, "post_loan_monitoring": 100}.get(
                purpose, 5
            )
        ent = Identity(enterprise, "enterprise", hashlib.sha256(enterprise.encode()).digest())
        if purpose == "post_loan_monitoring" and loan_term_days is None:
            loan_term_days = 365
        view = self.authority.grant(
            ent,
            ConsentTerms(
                enterprise=enterprise,
                bank=bank,
                purpose=purpose,
                scope=list(scope),
                validity_days=validity_days,
                max_uses=max_uses,
                retention_days=min(validity_days, 30),
                loan_term_days=loan_term_days,
            ),
        )
        tok = self.authority.token(self.bank_ids[bank], view.consent_id)
        assert tok.token is not None
        return view.consent_id, tok.token

    def enterprise(self, code: str) -> Identity:
        return Identity(code, "enterprise", hashlib.sha256(code.encode()).digest())


@pytest.fixture(scope="session")
def consent_env(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsentEnv]:
    from fedcredit.consent.service import serve, stop

    d = tmp_path_factory.mktemp("consent")
    clock = OffsetClock()
    clock.offset = (
        -5 * 86400
    )  # the first signing key dates from 5 days ago (for the expired-token case)
    banks = {b: pki.tls(b).identity() for b in DEFAULT_BANKS}
    authority = ConsentAuthority(
        ConsentStore(f"sqlite:///{d / 'consent.sqlite'}"),
        ConsentSettings(),
        banks=list(DEFAULT_BANKS),
        bank_certs=lambda b: banks[b].cert_sha256 if b in banks else None,
        clock=clock,
    )
    clock.offset = 0
    server, port = serve(authority, address="127.0.0.1:0", tls=pki.tls("consent-service"))
    env = ConsentEnv(authority, f"127.0.0.1:{port}", clock, server, banks)
    yield env
    stop(server, authority)
    authority.store.close()


def remote_verifier_for(pki: Any, consent_env: ConsentEnv) -> Any:
    from fedcredit.consent.verify import remote_verifier

    v = remote_verifier(
        consent_address=consent_env.address,
        tls=pki.tls("coordinator"),
        server_org="consent-service",
        issuer=consent_env.authority.settings.issuer,
    )
    v.wait_connected(5.0)  # type: ignore[attr-defined]
    return v


@dataclass
class Ledger:
    """The central LedgerService over gRPC (its own event-loop thread), and its log to read back."""

    log: Any
    loop: Any = None
    server: Any = None
    port: int = 0
    closed: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def entries(self, kind: str | None = None) -> list[Any]:
        from fedcredit.ledger.entry import Entry

        size = self.log.size
        out = [Entry.parse(e.data) for e in self.log.get_entries(0, size)] if size else []
        return [e for e in out if kind is None or e.kind == kind]

    def stop_service(self) -> None:
        """Take the ledger service down (the log's data stays readable here)."""
        import asyncio

        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
            self.server = None

    def close(self) -> None:
        self.stop_service()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.closed:
            self.log.close()
            self.closed = True


def open_ledger(path: Path, pki: Any) -> Ledger:
    import asyncio

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedcredit.common.server import build_aio_server, mark_serving
    from fedcredit.ledger.log import Log
    from fedcredit.ledger.service import LedgerServicer, register_ledger
    from fedcredit.ledger.settings import LedgerSettings

    log = Log.open(
        f"sqlite:///{path}", Ed25519PrivateKey.generate(), "ledger/central", actor="ledger"
    )
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="ledger-aio", daemon=True).start()
    servicer = LedgerServicer(log, LedgerSettings())

    async def start() -> tuple[Any, int]:
        server, port = build_aio_server(
            address="127.0.0.1:0",
            tls=pki.tls("ledger"),
            register=lambda srv: register_ledger(srv, servicer),
            service_names=["fedcredit.v1.LedgerService"],
        )
        await server.start()
        await mark_serving(server)
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    return Ledger(log, loop, server, port)


@dataclass
class NodeSet:
    nodes: dict[str, NodeFeatures]
    stop: Callable[[str], None]
    catalog: Catalog


def static_catalog(city: City) -> Catalog:
    from fedcredit.node.catalog import BY_NAME

    return Catalog.of(
        [
            CatalogFeature(n, BY_ID[BY_NAME[n].department].category, BY_NAME[n].description)
            for n in city.features
        ]
    )


@dataclass
class Coord:
    server: CoordinatorServer
    ledger: Ledger
    store: CoordinatorStore
    tls: dict[str, TlsFiles] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.server.target


def start_coordinator(
    *,
    pki: Any,
    consent_env: ConsentEnv,
    city: City,
    tmp: Path,
    nodes: Callable[[], Any] | None = None,
    settings: CoordinatorSettings | None = None,
    catalog: Catalog | None = None,
    activate: bool = True,
    aio_uses: bool = True,
) -> Coord:
    """``aio_uses``: count uses over grpc.aio as ``coordinator serve`` does (False: with the
    verifier's blocking counter in the scorer's threads)."""
    from fedcredit.consent.client import AsyncConsentClient
    from fedcredit.consent.remote import AsyncRemoteUseCounter
    from fedcredit.coordinator.registry import Registry
    from fedcredit.ledger.client import AsyncLedgerClient, LedgerClient

    ledger = open_ledger(tmp / "ledger.sqlite", pki)
    ledger_sync = LedgerClient(
        ledger.address, pki.tls("coordinator"), server_org="ledger", timeout=5
    )
    store = CoordinatorStore.open(f"sqlite:///{tmp / 'coordinator.sqlite'}")
    settings = settings or CoordinatorSettings()
    if activate:
        reg = Registry(store, ledger_sync, shares=settings.shares)
        rec = reg.publish(
            city.model_text, trainer="operator", version="test-v1", calibration_pds=city.pds
        )
        reg.activate(rec.version, actor="operator")

    async def no_nodes() -> dict[str, NodeFeatures]:
        return {}

    def aio_counter() -> AsyncRemoteUseCounter:
        return AsyncRemoteUseCounter(
            AsyncConsentClient(
                consent_env.address, pki.tls("coordinator"), server_org="consent-service"
            )
        )

    server = CoordinatorServer(
        settings=settings,
        store=store,
        verifier=remote_verifier_for(pki, consent_env),
        nodes=nodes or no_nodes,
        ledger=lambda: AsyncLedgerClient(
            ledger.address, pki.tls("coordinator"), server_org="ledger", timeout=5
        ),
        ledger_sync=ledger_sync,
        tls=pki.tls("coordinator"),
        catalog=catalog if catalog is not None else static_catalog(city),
        uses=aio_counter if aio_uses else None,
    ).start()
    return Coord(server, ledger, store)


def stop_coordinator(c: Coord) -> None:
    c.server.stop()
    c.store.close()
    c.ledger.close()


@dataclass
class RunningNode:
    department: str
    org_id: str
    category: str
    server: Any
    log: Any
    verifier: Any

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.server.stop(0.2)

    def close(self) -> None:
        self.server.stop(0.2)
        self.verifier.close()
        self.log.close()


def start_nodes(pki: Any, consent_env: ConsentEnv, city: City, tmp: Path) -> list[RunningNode]:
    """The department nodes of DEPARTMENTS over gRPC, each with its own store, loaded from the city."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedcredit.consent.verify import remote_verifier
    from fedcredit.ledger.log import Log
    from fedcredit.node.engine import FeatureEngine
    from fedcredit.node.service import FeatureServicer, build_node_server
    from fedcredit.node.store import NodeStore

    out: list[RunningNode] = []
    for dep in DEPARTMENTS:
        d = BY_ID[dep]
        store = NodeStore(f"sqlite:///{tmp / f'node-{dep}.sqlite'}", dep)
        store.create_schema()
        store.load(city.dir)
        log = Log.open(
            f"sqlite:///{tmp / f'disclosures-{dep}.sqlite'}",
            Ed25519PrivateKey.generate(),
            f"{d.org_id}/disclosures",
        )
        verifier = remote_verifier(
            consent_address=consent_env.address,
            tls=pki.tls(d.org_id),
            server_org="consent-service",
            issuer=consent_env.authority.settings.issuer,
        )
        servicer = FeatureServicer(
            node_org=d.org_id, engine=FeatureEngine(store), verifier=verifier, disclosures=log
        )
        server = build_node_server(servicer=servicer, address="127.0.0.1:0", tls=pki.tls(d.org_id))
        server.start()
        out.append(RunningNode(dep, d.org_id, d.category, server, log, verifier))
    return out


def node_factory(pki: Any, nodes: list[RunningNode]) -> Callable[[], Any]:
    from fedcredit.coordinator.nodes import GrpcNode

    async def make() -> dict[str, NodeFeatures]:
        return {
            n.category: GrpcNode(
                org_id=n.org_id, category=n.category, address=n.address, tls=pki.tls("coordinator")
            )
            for n in nodes
        }

    return make
