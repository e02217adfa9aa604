"""One portal federation per test session: the ledger and the consent service (with
PasskeyService) over gRPC with mTLS, and the portal itself (uvicorn on loopback, in this
process, with a clock the tests can move to expire sessions) — all real."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.passkey_client import PasskeyClient
from fedcredit.consent.passkeys import PasskeyAuthority
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.store import ConsentStore
from fedcredit.ledger.client import LedgerClient
from fedcredit.portal.backend import Backend
from fedcredit.portal.settings import PortalSettings

BANK = DEFAULT_BANKS[0]


class OffsetClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Federation:
    backend: Any
    url: str  # the portal's origin
    authority: ConsentAuthority
    passkeys: PasskeyAuthority
    ledger: Any
    clock: OffsetClock  # the portal's sessions' clock
    settings: PortalSettings
    pki: Any
    consent_address: str
    ledger_address: str
    app: Any = None  # the portal's Starlette app (tests set app.state.watch)

    def settle(self) -> None:
        """Every consent event delivered to the ledger and in a signed checkpoint (the
        consent service delivers in the background; a page shown now must include them)."""
        self.authority.deliver_events()
        self.ledger.checkpoint()

    def enrol_code(self, org: str, role: str = "enterprise") -> str:
        from fedcredit.common.tls import Identity

        code, _ = self.passkeys.issue_enrol_code(Identity("operator", "operator", b""), org, role, 3600)  # fmt: skip
        return code


def _ledger(path: Path, pki: Any) -> tuple[Any, Any, Any, int]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedcredit.common.server import build_aio_server, mark_serving
    from fedcredit.ledger.log import Log
    from fedcredit.ledger.service import LedgerServicer, register_ledger
    from fedcredit.ledger.settings import LedgerSettings, LogSettings

    log = Log.open(
        f"sqlite:///{path}", Ed25519PrivateKey.generate(), "ledger/central", actor="ledger",
        settings=LogSettings(checkpoint_interval=0.2),
    )  # fmt: skip
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
    return log, loop, server, port


def _serve_portal(app: Any, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", ws="none"
        )
    )
    thread = threading.Thread(target=server.run, name="portal", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the portal did not start within 30 s")
        time.sleep(0.05)
    return server, thread


@pytest.fixture(scope="session")
def federation(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    from fedcredit.consent.service import serve, stop
    from fedcredit.portal.app import build_app

    d = tmp_path_factory.mktemp("portal-fed")
    pki.issue("portal", "portal")
    log, loop, lserver, lport = _ledger(d / "ledger.sqlite", pki)
    sink = LedgerClient(f"127.0.0.1:{lport}", pki.tls("consent-service"), server_org="ledger")
    banks = {b: pki.tls(b).identity() for b in DEFAULT_BANKS}
    authority = ConsentAuthority(
        ConsentStore(f"sqlite:///{d / 'consent.sqlite'}"),
        ConsentSettings(),
        sink=sink,
        banks=list(DEFAULT_BANKS),
        bank_certs=lambda b: banks[b].cert_sha256 if b in banks else None,
    )
    port = free_port()
    # Many sign-ins from one address across the session's tests: a generous bucket here;
    # the limit itself is tested on an app of its own (test_portal_http).
    settings = PortalSettings(address=f"127.0.0.1:{port}", idle_timeout_s=600, signin_burst=500)
    passkeys = PasskeyAuthority(authority, rp_id="localhost", origins=[settings.url])
    cserver, cport = serve(
        authority, address="127.0.0.1:0", tls=pki.tls("consent-service"), passkeys=passkeys
    )
    backend = Backend(
        PasskeyClient(f"127.0.0.1:{cport}", pki.tls("portal"), server_org="consent-service"),
        LedgerClient(f"127.0.0.1:{lport}", pki.tls("portal"), server_org="ledger"),
    )
    clock = OffsetClock()
    app = build_app(settings, backend, clock=clock)
    userver, thread = _serve_portal(app, port)
    try:
        yield Federation(backend, settings.url, authority, passkeys, log, clock, settings, pki, f"127.0.0.1:{cport}", f"127.0.0.1:{lport}", app)  # fmt: skip
    finally:
        userver.should_exit = True
        thread.join(timeout=10)
        backend.close()
        stop(cserver, authority)
        authority.store.close()
        sink.close()
        asyncio.run_coroutine_threadsafe(lserver.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        log.close()


@dataclass
class Scoring:
    """The coordinator (a LightGBM model trained on a small synthetic city, registered and
    activated), verifying tokens against the federation's consent service and writing
    score_access entries to its ledger. It has no department nodes: a score then names
    the categories it missed, which is enough to show every access in the portal."""

    target: str
    server: Any
    store: Any


@pytest.fixture(scope="session")
def scoring(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scoring]:
    import lightgbm as lgb
    import numpy as np

    from fedcredit.common.departments import BY_ID
    from fedcredit.consent.verify import remote_verifier
    from fedcredit.coordinator.daemon import CoordinatorServer
    from fedcredit.coordinator.fanout import Catalog, CatalogFeature, NodeFeatures
    from fedcredit.coordinator.registry import Registry
    from fedcredit.coordinator.settings import CoordinatorSettings
    from fedcredit.coordinator.store import CoordinatorStore
    from fedcredit.ledger.client import AsyncLedgerClient
    from fedcredit.node.catalog import BY_NAME
    from fedcredit.world.generate import generate
    from fedcredit.world.pooled import compute_all

    d = tmp_path_factory.mktemp("portal-city")
    generate(d, enterprises=150, banks=7, months=13, seed=5)
    _codes, names, matrix = compute_all(d, departments=["tax"])
    y = (np.arange(len(matrix)) % 7 == 0).astype(np.int64)  # a label is all the model needs
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 4, "verbose": -1, "min_data_in_leaf": 5},
        lgb.Dataset(matrix, y, feature_name=list(names)),
        num_boost_round=5,
    )
    pki, ledger_address = federation.pki, federation.ledger_address
    ledger_sync = LedgerClient(ledger_address, pki.tls("coordinator"), server_org="ledger")
    store = CoordinatorStore.open(f"sqlite:///{d / 'coordinator.sqlite'}")
    settings = CoordinatorSettings()
    reg = Registry(store, ledger_sync, shares=settings.shares)
    rec = reg.publish(
        booster.model_to_string(), trainer="operator", version="portal-v1",
        calibration_pds=np.asarray(booster.predict(matrix), dtype=np.float64),
    )  # fmt: skip
    reg.activate(rec.version, actor="operator")
    verifier = remote_verifier(
        consent_address=federation.consent_address, tls=pki.tls("coordinator"),
        server_org="consent-service", issuer=federation.authority.settings.issuer,
    )  # fmt: skip
    verifier.wait_connected(10.0)  # type: ignore[attr-defined]

    async def no_nodes() -> dict[str, NodeFeatures]:
        return {}

    server = CoordinatorServer(
        settings=settings, store=store, verifier=verifier, nodes=no_nodes,
        ledger=lambda: AsyncLedgerClient(ledger_address, pki.tls("coordinator"), server_org="ledger"),
        ledger_sync=ledger_sync, tls=pki.tls("coordinator"),
        catalog=Catalog.of([CatalogFeature(n, BY_ID[BY_NAME[n].department].category, BY_NAME[n].description) for n in names]),
    ).start()  # fmt: skip
    try:
        yield Scoring(server.target, server, store)
    finally:
        server.stop()
        store.close()
        verifier.close()
        ledger_sync.close()
