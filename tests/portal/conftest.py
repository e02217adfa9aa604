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

    def witnessed(self, timeout: float = 30.0) -> str:
        """Settle, then wait until the newest checkpoint carries every witness's
        cosignature (the log pushes to them in the background); its signed note."""
        from fedcredit.ledger.checkpoint import Note

        self.settle()
        deadline = time.monotonic() + timeout
        while True:
            cp = self.ledger.last_checkpoint()
            note = self.ledger.checkpoint_note(cp)
            if cp.size == self.ledger.size and len(Note.parse(note).signatures) == 1 + len(
                WITNESSES
            ):
                return str(note)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the witnesses did not cosign size {cp.size} within {timeout} s"
                )
            time.sleep(0.05)

    def delegation_checker(self, service: str) -> Any:
        """A service's checker of the portal's delegation tickets, over gRPC from the
        consent service (as the daemons build it); ``service``: its organisation id."""
        from fedcredit.consent.passkey_client import RemoteDelegationVerifier

        return RemoteDelegationVerifier(
            consent_address=self.consent_address, tls=self.pki.tls(service),
            server_org="consent-service", issuer=self.authority.settings.issuer, audience=service,
        )  # fmt: skip

    def signed_in(self, org: str, role: str) -> tuple[Any, Any]:
        """A passkey enrolled for ``org`` and a sign-in with it through the portal's
        certificate, as the portal does: (the consent service's Session, the SoftKey)."""
        from tests.consent.softkey import SoftKey

        key = SoftKey(self.url)
        with PasskeyClient(self.consent_address, self.pki.tls("portal"), server_org="consent-service") as pk:  # fmt: skip
            t, opts = pk.begin_registration(org, enrol_code=self.enrol_code(org, role), label="t")
            pk.finish_registration(t, key.create(opts))
            st, opts = pk.challenge(org, "sign_in")
            return pk.sign_in(st, key.get(opts)), key

    def delegate(self, session: str, audience: str) -> str:
        """A delegation ticket from the consent service (PasskeyService.Delegate)."""
        with PasskeyClient(self.consent_address, self.pki.tls("portal"), server_org="consent-service") as pk:  # fmt: skip
            return pk.delegate(session, audience)[0]

    def enrol_code(self, org: str, role: str = "enterprise") -> str:
        from fedcredit.common.tls import Identity

        code, _ = self.passkeys.issue_enrol_code(Identity("operator", "operator", b""), org, role, 3600)  # fmt: skip
        return code


WITNESSES = ("dept-tax", "dept-courts")  # cosign every checkpoint (WitnessService over gRPC)
SILENT_WITNESS = "dept-customs"  # its key is published, it never cosigns (a witness down)
QUORUM = 2


def _witness_servers(d: Path, pki: Any, loop: Any, origin: str, log_key: Any) -> list[Any]:
    """The witnesses, each a real WitnessService on its own mTLS server, and the ledger's
    clients of them; returns [(server, client)]."""
    from fedcredit.common.server import build_aio_server, mark_serving
    from fedcredit.ledger.checkpoint import SIG_COSIGNATURE_V1, Signer
    from fedcredit.ledger.client import WitnessClient
    from fedcredit.ledger.witness import WITNESS_SERVICE, register_witness

    out = []
    for org in WITNESSES:
        signer = Signer.generate(org, SIG_COSIGNATURE_V1)

        async def start(org: str = org, signer: Signer = signer) -> tuple[Any, int]:
            server, port = build_aio_server(
                address="127.0.0.1:0",
                tls=pki.tls(org),
                register=lambda srv: register_witness(
                    srv,
                    database=f"sqlite:///{d / org}.sqlite",
                    signer=signer,
                    logs={origin: log_key},
                ),
                service_names=[WITNESS_SERVICE],
            )
            await server.start()
            await mark_serving(server)
            return server, port

        server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        client = WitnessClient(org, signer.verifier, f"127.0.0.1:{port}", pki.tls("ledger"), server_org=org)  # fmt: skip
        out.append((server, client))
    return out


def _ledger(path: Path, pki: Any) -> tuple[Any, Any, Any, int, list[Any], Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedcredit.common.server import build_aio_server, mark_serving
    from fedcredit.ledger.checkpoint import Signer
    from fedcredit.ledger.log import Log
    from fedcredit.ledger.service import LedgerServicer, register_ledger
    from fedcredit.ledger.settings import LedgerSettings, LogSettings

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="ledger-aio", daemon=True).start()
    key = Signer("ledger/central", Ed25519PrivateKey.generate())
    witnesses = _witness_servers(path.parent, pki, loop, key.name, key.verifier)
    log = Log.open(
        f"sqlite:///{path}", key, "ledger/central", actor="ledger",
        settings=LogSettings(checkpoint_interval=0.2, witness_retry_min=0.05, witness_retry_max=1.0),
        witnesses=[c for _, c in witnesses],
    )  # fmt: skip
    servicer = LedgerServicer(log, LedgerSettings(witness_quorum=QUORUM))

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
    return log, loop, server, port, witnesses, servicer


def _silent_key() -> Any:
    from fedcredit.ledger.checkpoint import SIG_COSIGNATURE_V1, Signer

    return Signer.generate(SILENT_WITNESS, SIG_COSIGNATURE_V1).verifier


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
    log, loop, lserver, lport, witnesses, lservicer = _ledger(d / "ledger.sqlite", pki)
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
    backend.witness_keys = (*(c.verifier.vkey for _, c in witnesses), _silent_key().vkey)
    clock = OffsetClock()
    app = build_app(settings, backend, clock=clock)
    userver, thread = _serve_portal(app, port)
    fed = Federation(backend, settings.url, authority, passkeys, log, clock, settings, pki, f"127.0.0.1:{cport}", f"127.0.0.1:{lport}", app)  # fmt: skip
    # the ledger reads an enterprise's entries for the portal only under a delegation ticket
    ledger_delegation = fed.delegation_checker("ledger")
    lservicer.delegation = ledger_delegation.verifier
    try:
        yield fed
    finally:
        ledger_delegation.close()
        userver.should_exit = True
        thread.join(timeout=10)
        backend.close()
        stop(cserver, authority)
        authority.store.close()
        sink.close()
        asyncio.run_coroutine_threadsafe(lserver.stop(0), loop).result(10)
        log.close()
        for wserver, wclient in witnesses:
            wclient.close()
            asyncio.run_coroutine_threadsafe(wserver.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


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

    delegation = federation.delegation_checker("coordinator")
    server = CoordinatorServer(
        settings=settings, store=store, verifier=verifier, nodes=no_nodes,
        delegation=delegation.verifier,
        ledger=lambda: AsyncLedgerClient(ledger_address, pki.tls("coordinator"), server_org="ledger"),
        ledger_sync=ledger_sync, tls=pki.tls("coordinator"),
        catalog=Catalog.of([CatalogFeature(n, BY_ID[BY_NAME[n].department].category, BY_NAME[n].description) for n in names]),
    ).start()  # fmt: skip
    from fedcredit.coordinator.client import CoordinatorClient

    portal_client = CoordinatorClient(server.target, pki.tls("portal"), timeout=60)
    federation.backend.coordinator = portal_client
    try:
        yield Scoring(server.target, server, store)
    finally:
        federation.backend.coordinator = None
        portal_client.close()
        delegation.close()
        server.stop()
        store.close()
        verifier.close()
        ledger_sync.close()
